"""alloyml language models inside DSPy, and DSPy optimisers as tracked runs.

`AlloyEngine` implements DSPy 3.4's canonical engine contract (`complete(Request) -> Response`,
`stream`, `close`), so any `LanguageModel`, or an `alloyml.lm` spec of one, becomes a DSPy LM with
`dspy_lm(lm)` — the `dspy.LM(..., engine=...)` route; subclassing `BaseLM` is deprecated in 3.4. The engine counts the
tokens it serves, which is how optimiser runs report their cost.

`run_dspy_optimizer` compiles a program with a registered optimiser (`bootstrap_fewshot`, `copro`,
`miprov2`, `gepa`) and scores it before and after on a held-out split that no optimiser sees: MIPROv2
and GEPA select on `valset` (default: their own split of the training set), which must not share an
example with it. Proposals and GEPA's reflections can come from a separate, stronger `prompt_lm`.

Only text reaches an alloyml model: a request with an image or any other non-text part raises
`InvalidInputError` rather than reaching the model as an empty prompt. With DSPy's cache on, the LM's
name carries the model's `fingerprint`, so a changed model under the same name misses the cache.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alloyml.errors import InvalidInputError
from alloyml.lm import ModelLike, as_lm
from alloyml.trials import TrialCallback, TrialRecord


class AlloyEngine:
    """A DSPy engine over an alloyml `LanguageModel`; one `generate` call per request.

    DSPy's system prompt becomes a system message; unset sampling settings fall back to greedy
    decoding with `default_max_tokens`.
    """

    def __init__(self, lm: ModelLike, default_max_tokens: int = 256):
        self.lm = as_lm(lm)
        self.default_max_tokens = default_max_tokens
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self._lock = threading.Lock()  # DSPy evaluates with threads

    def complete(self, request):
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import Message, Response, TextPart, Usage

        validate_request(request)
        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else _text_of(request.system, "system")
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": _text_of(m.parts, m.role)} for m in request.messages)
        cfg = request.config
        [gen] = self.lm.generate(
            [messages],
            temperature=cfg.temperature if cfg.temperature is not None else 0.0,
            top_p=cfg.top_p if cfg.top_p is not None else 1.0,
            max_tokens=cfg.max_tokens or self.default_max_tokens,
            stop=list(cfg.stop) or None,
            seed=cfg.seed,
        )
        with self._lock:
            self.prompt_tokens += gen.prompt_tokens
            self.completion_tokens += gen.completion_tokens
            self.calls += 1
        finish = "length" if gen.finish_reasons and gen.finish_reasons[0] == "length" else "stop"
        return Response(
            id=None,
            model=self.lm.name,
            message=Message.assistant([TextPart(gen.text)]),
            finish_reason=finish,
            usage=Usage(input_tokens=gen.prompt_tokens, output_tokens=gen.completion_tokens),
        )

    def stream(self, request):
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The engine borrows the model; nothing to release."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AsyncAlloyEngine:
    """DSPy's async engine contract over an `AlloyEngine`: each request runs in a worker thread (the
    models are synchronous), so `acall` and async programs work and share the sync engine's counts."""

    def __init__(self, engine: AlloyEngine):
        self.engine = engine

    async def complete(self, request):
        return await asyncio.to_thread(self.engine.complete, request)

    async def stream(self, request):
        for event in self.engine.stream(request):
            yield event

    async def aclose(self) -> None:
        """Nothing to release."""


def _text_of(parts, role: str) -> str:
    """The text of a message's parts; anything else (images, audio, files, tool calls) is refused."""
    from dspy.lm15 import TextPart

    if isinstance(parts, str):
        return parts
    other = sorted({type(p).__name__ for p in parts if not isinstance(p, TextPart)})
    if other:
        raise InvalidInputError(f"alloyml language models take text only; a {role} message carries {other}")
    return "".join(p.text for p in parts)


def dspy_lm(lm: ModelLike, *, default_max_tokens: int = 256, **kwargs):
    """A `dspy.LM` backed by `lm` (DSPy's response cache off unless `cache=True` is passed). With the cache
    on, the LM's name includes the model's fingerprint (`alloyml/<name>@<fingerprint>`)."""
    import dspy

    kwargs.setdefault("cache", False)
    engine = AlloyEngine(lm, default_max_tokens)
    name = f"alloyml/{engine.lm.name}"
    if kwargs["cache"]:
        name += "@" + engine.lm.fingerprint()
    return dspy.LM(name, engine=engine, async_engine=AsyncAlloyEngine(engine), **kwargs)


DSPyMetric = Callable[..., float]
OPTIMIZERS: dict[str, Callable[..., Any]] = {}


def optimizer(name: str):
    """Register `build(metric, lm, seed, **options) -> (teleprompter, compile_kwargs)` under `name`."""

    def register(build):
        OPTIMIZERS[name] = build
        return build

    return register


def _valset(valset) -> dict:
    return {} if valset is None else {"valset": list(valset)}


@optimizer("bootstrap_fewshot")
def _bootstrap_fewshot(metric, lm, prompt_lm, seed, valset, **options):
    import dspy

    options.setdefault("max_bootstrapped_demos", 4)
    options.setdefault("max_labeled_demos", 4)
    return dspy.BootstrapFewShot(metric=_scalar(metric), **options), {}


@optimizer("copro")
def _copro(metric, lm, prompt_lm, seed, valset, **options):
    import dspy

    options.setdefault("breadth", 3)
    options.setdefault("depth", 1)
    opt = dspy.COPRO(prompt_model=prompt_lm, metric=_scalar(metric), **options)
    return opt, {"eval_kwargs": {"num_threads": 1}}


@optimizer("miprov2")
def _miprov2(metric, lm, prompt_lm, seed, valset, num_trials=4, **options):
    import dspy

    options.setdefault("auto", None)
    options.setdefault("num_candidates", 2)
    options.setdefault("num_threads", 1)
    opt = dspy.MIPROv2(metric=_scalar(metric), prompt_model=prompt_lm, task_model=lm, seed=seed, **options)
    return opt, {**_valset(valset), "num_trials": num_trials, "minibatch": False}


@optimizer("gepa")
def _gepa(metric, lm, prompt_lm, seed, valset, **options):
    import dspy

    options.setdefault("max_metric_calls", 40)
    options.setdefault("num_threads", 1)
    opt = dspy.GEPA(metric=gepa_feedback(metric), reflection_lm=prompt_lm, seed=seed, **options)
    return opt, _valset(valset)


def _score_of(value) -> float:
    """A metric's number: a float, or the `score` of a `dspy.Prediction(score=..., feedback=...)`."""
    return float(value.score if hasattr(value, "score") else value)


def _scalar(metric: DSPyMetric) -> DSPyMetric:
    return lambda gold, pred, trace=None: _score_of(metric(gold, pred, trace))


def gepa_feedback(metric: DSPyMetric) -> DSPyMetric:
    """GEPA's five-argument metric returning `dspy.Prediction(score=..., feedback=...)`.

    A metric that already returns a prediction with `feedback` passes it through; a bare number gets a
    textual feedback naming the expected and the predicted output fields, which GEPA's reflection reads."""
    import dspy

    def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        value = metric(gold, pred, trace)
        if hasattr(value, "feedback"):
            return dspy.Prediction(score=_score_of(value), feedback=str(value.feedback))
        score = _score_of(value)
        outputs = [k for k in gold.keys() if k not in gold.inputs().keys()]
        expected = ", ".join(f"{k}={gold[k]!r}" for k in outputs)
        got = ", ".join(f"{k}={pred.get(k)!r}" for k in outputs) if hasattr(pred, "get") else repr(pred)
        verdict = "correct" if score >= 1.0 else "wrong" if score <= 0.0 else "partly correct"
        return dspy.Prediction(score=score, feedback=f"Score {score:g} ({verdict}): expected {expected}; got {got}.")

    return feedback_metric


@dataclass
class DSPyRunResult:
    """Scores are the metric's mean on the dev set, in [0, 1] for 0/1 metrics."""

    optimizer: str
    score_before: float
    score_after: float
    program: Any  # the compiled dspy.Module
    seconds: float
    tokens: int  # all tokens the alloyml LMs (task and prompt model) served during compile and both evaluations


def evaluate_program(program, devset: Sequence, metric: DSPyMetric) -> float:
    """Mean metric over `devset`, sequentially (deterministic for a deterministic LM). An answer no adapter
    can parse scores 0 (DSPy's `failure_score`) rather than counting toward `max_errors`, which would cancel
    the whole evaluation once a small model misformats 10 answers."""
    import dspy

    devset = list(devset)
    evaluate = dspy.Evaluate(devset=devset, metric=_scalar(metric), num_threads=1, display_progress=False,
                             max_errors=len(devset) + 1, failure_score=0.0)
    return float(evaluate(program).score) / 100.0


def run_dspy_optimizer(
    program,
    trainset: Sequence,
    devset: Sequence,
    metric: DSPyMetric,
    lm: ModelLike,
    *,
    optimizer: str = "bootstrap_fewshot",
    valset: Sequence | None = None,
    prompt_lm: ModelLike | None = None,
    seed: int = 0,
    max_tokens: int = 256,
    options: dict | None = None,
    on_trial: TrialCallback | None = None,
) -> DSPyRunResult:
    """Compile `program` (a `dspy.Module`) with `optimizer` on `trainset` (and `valset` for the optimisers
    that select on one), then score it before and after on `devset`, which the optimiser never sees.

    `lm` runs the task; `prompt_lm` (default: `lm`) writes proposals (COPRO, MIPROv2) and GEPA's
    reflections. `options` go to the optimiser; `prompt_model` / `reflection_lm` there may be alloyml
    models or specs too. `max_tokens` caps every completion (small local models ramble past the end marker).
    The metric may return a number or `dspy.Prediction(score=..., feedback=...)` (GEPA reads the feedback).
    """
    import dspy

    if optimizer not in OPTIMIZERS:
        raise InvalidInputError(f"unknown DSPy optimizer {optimizer!r}; known: {sorted(OPTIMIZERS)}")
    if not trainset or not devset:
        raise InvalidInputError("trainset and devset must be non-empty lists of dspy.Example")
    if valset is not None and not valset:
        raise InvalidInputError("valset must be None (the optimiser's own split of trainset) or non-empty")
    held_out = {_example_key(ex) for ex in devset}
    for name, split in (("trainset", trainset), ("valset", valset or ())):
        leaked = sum(_example_key(ex) in held_out for ex in split)
        if leaked:
            raise InvalidInputError(f"{leaked} example(s) of {name} are also in devset, the reported split; "
                                    "the optimiser must not see it")
    options = dict(options or {})
    model = dspy_lm(lm, max_tokens=max_tokens)
    named = [options.pop(k, None) for k in ("prompt_model", "reflection_lm")]
    supplied = next((m for m in named if m is not None), prompt_lm)
    proposer = model if supplied is None else _as_dspy_lm(supplied, max_tokens)
    engine = model.engine
    start = time.perf_counter()
    # Optimisers count unparseable answers toward dspy.settings.max_errors as well: allow one per call they
    # may make on trainset and valset, so a misformatting small model lowers scores instead of aborting.
    with dspy.context(lm=model, max_errors=max(10, 10 * (len(trainset) + len(valset or ())))):
        before = evaluate_program(program, devset, metric)
        teleprompter, compile_kwargs = OPTIMIZERS[optimizer](metric, model, proposer, seed, valset, **options)
        compiled = teleprompter.compile(program.deepcopy(), trainset=list(trainset), **compile_kwargs)
        after = evaluate_program(compiled, devset, metric)
    tokens = engine.total_tokens + (proposer.engine.total_tokens if proposer is not model and
                                    isinstance(getattr(proposer, "engine", None), AlloyEngine) else 0)
    result = DSPyRunResult(optimizer, before, after, compiled, time.perf_counter() - start, tokens)
    if on_trial is not None:
        on_trial(
            TrialRecord(
                trial_id=f"dspy-{optimizer}",
                config={"optimizer": optimizer, "seed": seed, **{k: v for k, v in options.items()
                                                                   if isinstance(v, str | int | float | bool)}},
                metrics={"score_before": before, "score_after": after},
                cost=float(result.tokens),
                seconds=result.seconds,
            )
        )
    return result


def _example_key(example) -> str:
    """What makes two examples the same for the leak check: their fields and values."""
    data = example.toDict() if hasattr(example, "toDict") else dict(example)
    return repr(sorted((str(k), repr(v)) for k, v in data.items()))


def _as_dspy_lm(model, max_tokens: int):
    """A DSPy LM as given, or an alloyml model / spec wrapped as one."""
    import dspy

    return model if isinstance(model, dspy.BaseLM) else dspy_lm(model, max_tokens=max_tokens)
