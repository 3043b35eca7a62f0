"""A remote chat model through litellm, configured from a validated `LiteLLMSpec` (the `litellm` kind of
`alloyml.lm.specs`).

The API key is never part of the config: `api_key_env` names the environment variable that holds it,
read when a request is built. `build_request` is the exact keyword set passed to `litellm.completion`.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.lm.base import Generation, LanguageModel, Prompt, SamplingParams, as_messages


class LiteLLMSpec(BaseModel):
    """Where and how to reach a chat model. `model` is litellm's `provider/name`, e.g. `openai/gpt-4o-mini`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["litellm"] = "litellm"
    model: str = Field(description="litellm model string, provider/name")
    api_base: str | None = Field(None, description="endpoint URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0)
    num_retries: int = Field(2, ge=0)
    extra_body: dict[str, str | int | float | bool] = Field(default_factory=dict)
    mock_response: str | None = Field(None, description="litellm's offline dry run: answer this, send nothing")

    @field_validator("model")
    @classmethod
    def _provider_slash_name(cls, value: str) -> str:
        provider, _, name = value.partition("/")
        if not provider or not name:
            raise ValueError(f"model must look like 'provider/name', got {value!r}")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"api_base must be an http(s) URL, got {value!r}")
        return value

    def build(self) -> LiteLLMChat:
        return LiteLLMChat(self)


class LiteLLMChat(LanguageModel):
    """One `litellm.completion` call per prompt; token counts come from the provider's `usage`."""

    def __init__(self, config: LiteLLMSpec | dict):
        if not isinstance(config, LiteLLMSpec):
            from alloyml.lm.specs import parse_lm_spec

            config = parse_lm_spec({"kind": "litellm", **config}, what="litellm config")
        self.config = config
        self.name = self.config.model

    def build_request(self, prompt: Prompt, params: SamplingParams) -> dict:
        """Keyword arguments of the `litellm.completion` call for one prompt."""
        cfg = self.config
        request = {
            "model": cfg.model,
            "messages": as_messages(prompt),
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "timeout": cfg.timeout_s,
            "num_retries": cfg.num_retries,
        }
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if cfg.api_base:
            request["api_base"] = cfg.api_base
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(f"api_key_env={cfg.api_key_env!r} names an unset environment variable")
            request["api_key"] = key
        if cfg.extra_body:
            request["extra_body"] = dict(cfg.extra_body)
        if cfg.mock_response is not None:
            request["mock_response"] = cfg.mock_response
        return request

    def _fingerprint_parts(self) -> list[bytes]:
        # A remote model can change behind the same endpoint; what is known is the configuration.
        return [self.config.model_dump_json(exclude={"api_key_env"}).encode()]

    def count_tokens(self, prompt: Prompt) -> int:
        """litellm's count for the model's tokenizer (its generic one for models it does not know)."""
        import litellm

        return int(litellm.token_counter(model=self.config.model, messages=as_messages(prompt)))

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        import litellm

        out = []
        for prompt in prompts:
            response = litellm.completion(**self.build_request(prompt, params))
            choices = response.choices
            if not choices:
                raise InvalidInputError(f"{self.name} returned no choices")
            usage = response.usage
            out.append(
                Generation(
                    texts=[c.message.content or "" for c in choices],
                    prompt_tokens=int(usage.prompt_tokens),
                    completion_tokens=int(usage.completion_tokens),
                    finish_reasons=[c.finish_reason or "stop" for c in choices],
                )
            )
        return out
