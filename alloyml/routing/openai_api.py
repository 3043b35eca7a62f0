"""The HTTP face of a served cascade: request validation and the OpenAI-compatible routes.

`POST /{name}` takes `{"query": str, "query_id": str?}`; `POST /{name}/v1/chat/completions` and
`/{name}/v1/completions` take OpenAI's request shapes with `model` = the cascade name, so OpenAI
clients (base URL `http://127.0.0.1:PORT/NAME/v1`) and LiteLLM can call a cascade. The chat route
answers the last user message. Answers carry OpenAI's response shape plus an `alloyml` field: which
stage answered, its score, the cost and the request id that labels refer to (the response id ends in
it too). Bodies over the size limit get 413, malformed JSON 400, wrong types 422, an unknown model
404, a cascade none of whose stages answered 503.
"""

from __future__ import annotations

import json
import time

from starlette.responses import JSONResponse

__all__ = ["JSONResponse", "error", "handle", "native_problem", "read_json"]


def error(message: str, status: int, kind: str = "invalid_request_error") -> JSONResponse:
    """An error in OpenAI's shape (`{"error": {"message", "type"}}`), which plain clients read too."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


async def read_json(request, max_bytes: int):
    """The parsed JSON body, or the error response to send: 413 over `max_bytes`, 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        return error(f"request body of {declared} bytes exceeds the limit of {max_bytes}", 413)
    raw = b""
    async for chunk in request.stream():  # counted as it arrives: a missing or false length is no way round
        raw += chunk
        if len(raw) > max_bytes:
            return error(f"request body exceeds the limit of {max_bytes} bytes", 413)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return error(f'expected a JSON body like {{"query": "..."}}: {err}', 400)


def native_problem(body) -> str | None:
    """What is wrong with a `{"query": str, "query_id": str?}` body, or None."""
    if not isinstance(body, dict) or "query" not in body:
        return 'expected a JSON object {"query": str}'
    if not isinstance(body["query"], str):
        return f"'query' must be a string, got {type(body['query']).__name__}"
    if body.get("query_id") is not None and not isinstance(body["query_id"], str):
        return f"'query_id' must be a string, got {type(body['query_id']).__name__}"
    return None


def _chat_query(body) -> tuple[str | None, str | None]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return None, f"messages[{i}] must be an object with string 'role' and string 'content'"
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        return None, "'messages' has no message with role 'user'"
    return users[-1], None


def _completion_query(body) -> tuple[str | None, str | None]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        return None, "'prompt' must be a string (or a list of one string)"
    return prompt, None


async def handle(ingress, path: str, body) -> JSONResponse:
    """Answer an OpenAI route with `ingress.route`."""
    from alloyml.routing.failures import NoStageAnsweredError

    if not isinstance(body, dict):
        return error("expected a JSON object", 422)
    chat = path.endswith("/chat/completions")
    if body.get("model") != ingress.name:
        status = 422 if not isinstance(body.get("model"), str) else 404
        return error(f"model must be the cascade's name {ingress.name!r}, got {body.get('model')!r}", status,
                     "model_not_found" if status == 404 else "invalid_request_error")
    if body.get("stream"):
        return error("stream=true is not supported; the cascade answers in one piece", 422)
    if body.get("n", 1) != 1:
        return error("only n=1 is supported", 422)
    query, problem = (_chat_query if chat else _completion_query)(body)
    if problem:
        return error(problem, 422)
    try:
        record = await ingress.route(query, body.get("user") if isinstance(body.get("user"), str) else None)
    except NoStageAnsweredError as err:
        return error(str(err), 503, "server_error")
    extra = {k: record[k] for k in ("request_id", "model", "stage_reached", "score", "scores", "cost", "version",
                                    "frontier_point", "errors")}
    common = {"created": int(time.time()), "model": ingress.name,
              "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "alloyml": extra}
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": record["answer"]}, "finish_reason": "stop"}
        return JSONResponse({"id": f"chatcmpl-{record['request_id']}", "object": "chat.completion",
                             "choices": [choice], **common})
    choice = {"index": 0, "text": record["answer"], "finish_reason": "stop", "logprobs": None}
    return JSONResponse({"id": f"cmpl-{record['request_id']}", "object": "text_completion", "choices": [choice],
                         **common})
