"""alloyml language models inside DSPy, and DSPy optimisers as tracked runs.

`AlloyEngine` implements DSPy 3.4's canonical engine contract (`complete(Request) -> Response`,
`stream`, `close`), so any `LanguageModel`, or an `alloyml.lm` spec of one, becomes a DSPy LM with
`dspy_lm(lm)` — the `dspy.LM(..., engine=...)` route; subclassing `BaseLM` is deprecated in 3.4. The engine counts the
tokens it serves, which is how optimiser runs report their cost.

`run_dspy_optimizer` compiles a program with a registered optimiser (`bootstrap_fewshot`, `copro`,
`miprov2`, `gepa`) and scores it before and after on a dev set.
"""

from __future__ import annotations

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
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
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


def dspy_lm(lm: ModelLike, *, default_max_tokens: int = 256, **kwargs):
    """A `dspy.LM` backed by `lm` (DSPy's response cache off unless `cache=True` is passed)."""
    import dspy

    kwargs.setdefault("cache", False)
    engine = AlloyEngine(lm, default_max_tokens)
    return dspy.LM(f"alloyml/{engine.lm.name}", engine=engine, **kwargs)


DSPyMetric = Callable[..., float]
OPTIMIZERS: dict[str, Callable[..., Any]] = {}


def optimizer(name: str):
    """Register `build(metric, lm, seed, **options) -> (teleprompter, compile_kwargs)` under `name`."""

    def register(build):
        OPTIMIZERS[name] = build
        return build

    return register


@optimizer("bootstrap_fewshot")
def _bootstrap_fewshot(metric, lm, seed, valset, **options):
    import dspy

    options.setdefault("max_bootstrapped_demos", 4)
    options.setdefault("max_labeled_demos", 4)
    return dspy.BootstrapFewShot(metric=metric, **options), {}


@optimizer("copro")
def _copro(metric, lm, seed, valset, **options):
    import dspy

    options.setdefault("breadth", 3)
    options.setdefault("depth", 1)
    return dspy.COPRO(prompt_model=lm, metric=metric, **options), {"eval_kwargs": {"num_threads": 1}}


@optimizer("miprov2")
def _miprov2(metric, lm, seed, valset, num_trials=4, **options):
    import dspy

    options.setdefault("auto", None)
    options.setdefault("num_candidates", 2)
    options.setdefault("num_threads", 1)
    opt = dspy.MIPROv2(metric=metric, prompt_model=lm, task_model=lm, seed=seed, **options)
    return opt, {"valset": list(valset), "num_trials": num_trials, "minibatch": False}


@optimizer("gepa")
def _gepa(metric, lm, seed, valset, **options):
    import dspy

    def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        return float(metric(gold, pred, trace))

    options.setdefault("max_metric_calls", 40)
    options.setdefault("num_threads", 1)
    opt = dspy.GEPA(metric=feedback_metric, reflection_lm=lm, seed=seed, **options)
    return opt, {"valset": list(valset)}


@dataclass
class DSPyRunResult:
    """Scores are the metric's mean on the dev set, in [0, 1] for 0/1 metrics."""

    optimizer: str
    score_before: float
    score_after: float
    program: Any  # the compiled dspy.Module
    seconds: float
    tokens: int  # all tokens the alloyml LM served during compile and both evaluations


def evaluate_program(program, devset: Sequence, metric: DSPyMetric) -> float:
    """Mean metric over `devset`, sequentially (deterministic for a deterministic LM)."""
    import dspy

    evaluate = dspy.Evaluate(devset=list(devset), metric=metric, num_threads=1, display_progress=False)
    return float(evaluate(program).score) / 100.0


def run_dspy_optimizer(
    program,
    trainset: Sequence,
    devset: Sequence,
    metric: DSPyMetric,
    lm: ModelLike,
    *,
    optimizer: str = "bootstrap_fewshot",
    seed: int = 0,
    max_tokens: int = 256,
    options: dict | None = None,
    on_trial: TrialCallback | None = None,
) -> DSPyRunResult:
    """Compile `program` (a `dspy.Module`) with `optimizer`, using `lm` for both task and proposals.

    `max_tokens` caps every completion DSPy asks for (small local models ramble past the end marker).
    """
    import dspy

    if optimizer not in OPTIMIZERS:
        raise InvalidInputError(f"unknown DSPy optimizer {optimizer!r}; known: {sorted(OPTIMIZERS)}")
    if not trainset or not devset:
        raise InvalidInputError("trainset and devset must be non-empty lists of dspy.Example")
    model = dspy_lm(lm, max_tokens=max_tokens)
    engine = model.engine
    start = time.perf_counter()
    with dspy.context(lm=model):
        before = evaluate_program(program, devset, metric)
        teleprompter, compile_kwargs = OPTIMIZERS[optimizer](metric, model, seed, devset, **(options or {}))
        compiled = teleprompter.compile(program.deepcopy(), trainset=list(trainset), **compile_kwargs)
        after = evaluate_program(compiled, devset, metric)
    result = DSPyRunResult(optimizer, before, after, compiled, time.perf_counter() - start, engine.total_tokens)
    if on_trial is not None:
        on_trial(
            TrialRecord(
                trial_id=f"dspy-{optimizer}",
                config={"optimizer": optimizer, "seed": seed, **(options or {})},
                metrics={"score_before": before, "score_after": after},
                cost=float(result.tokens),
                seconds=result.seconds,
            )
        )
    return result
