"""Budgeted inference tuning (EcoOptiGen-style): pick decoding settings and a prompt template that
maximise a utility subject to average inference cost <= budget.

The search space is a grid over `n`, temperature, top_p, `max_tokens`, stop strings and prompt
templates (optionally a random subset). Configurations are evaluated on a doubling number of examples
(`initial_examples`, 2x, 4x, ... up to all), and two pruning rules drop a configuration early; both are
provable, so the returned configuration is the one an exhaustive evaluation would pick:

* **cost**: a configuration's average cost over all N examples is at least
  (cost already spent + prompt cost of the examples not yet run) / N, since completions cost >= 0 and
  the model's `count_tokens` gives each prompt's exact token count before any call. It is pruned as
  soon as that bound exceeds the budget — on zero examples when the prompts alone are too long.
* **dominance**: with utilities in the declared `utility_range` [lo, hi] (default [0, 1]), a
  configuration's final mean utility lies in [(spent_sum + lo * remaining) / N,
  (spent_sum + hi * remaining) / N]. It is pruned when some configuration that is certain to fit the
  budget (its cost upper bound, with every remaining completion at `n * max_tokens`, is <= budget) has a
  lower utility bound above its upper bound.

Both rules are exact for sampled models too, on two conditions the code enforces or checks: a
configuration's output on an example must not depend on which other examples share its `generate`
call (every `alloyml.lm` model seeds each (prompt, sample) pair on its own, `alloyml.lm.row_seed`), and
every utility must lie in `utility_range` (a utility outside it raises `InvalidInputError`; a utility on
another scale needs its range declared). A configuration whose calls raise is recorded as `failed`; when
every configuration fails, `AllTrialsFailedError` carries the first failure.

`eta` adds successive halving (keep the best 1/eta by observed mean utility each round): cheaper, but
heuristic, so off by default.

**Model selection** (as EcoOptiGen tunes the model too): pass several models as `{name: model}` and
their prices as `{name: Price}`; the space becomes model x settings, each configuration names its
`model`, and both rules stay exact (each candidate's bounds use its own model's token counts and price).
`max_tuning_cost` caps what the whole search may spend: once reached, configurations still running are
marked `stopped_tuning_budget` and the best completed one is returned (no longer provably the exhaustive
answer; the result says so with `complete=False`).
"""


from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alloyml.automl.metrics import Metric, get_metric, normalize
from alloyml.automl.prompting import Example, check_template
from alloyml.errors import AlloyError, InvalidInputError
from alloyml.lm import TOKEN_COUNT, LanguageModel, ModelLike, Price, as_lm
from alloyml.trials import TrialCallback, TrialRecord

Utility = Callable[[list[str], str], float]


class AllTrialsFailedError(AlloyError):
    """Every configuration of a search raised; the first exception is the cause (`__cause__`)."""


def majority_vote(metric: str | Metric = "exact") -> Utility:
    """Score the most common (normalised) answer among the n samples; ties go to the earliest."""
    score = get_metric(metric)

    def utility(texts: list[str], target: str) -> float:
        counts = Counter(normalize(t) for t in texts)
        top = max(counts.values())
        winner = next(t for t in texts if counts[normalize(t)] == top)
        return score(winner, target)

    return utility


def any_correct(metric: str | Metric = "exact") -> Utility:
    """1 when any of the n samples is right (pass@n, for tasks with a checker)."""
    score = get_metric(metric)
    return lambda texts, target: max(score(t, target) for t in texts)


class InferenceConfig(BaseModel):
    """One point of the search space."""

    model_config = ConfigDict(frozen=True)

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    template: str = "{input}"
    model: str | None = None  # which model, when several are searched

    def sampling(self) -> dict:
        """The keyword arguments of `LanguageModel.generate` this configuration sets."""
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "stop": self.stop}


class InferenceSpace(BaseModel):
    """Candidate values per setting; the space is their cartesian product."""

    model_config = ConfigDict(extra="forbid")

    n: list[int] = Field(default_factory=lambda: [1])
    temperature: list[float] = Field(default_factory=lambda: [0.0])
    top_p: list[float] = Field(default_factory=lambda: [1.0])
    max_tokens: list[int] = Field(default_factory=lambda: [16])
    stop: list[tuple[str, ...]] = Field(default_factory=lambda: [()])
    templates: list[str] = Field(default_factory=lambda: ["{input}"])

    @field_validator("n", "temperature", "top_p", "max_tokens", "stop", "templates")
    @classmethod
    def _non_empty(cls, values: list) -> list:
        if not values:
            raise ValueError("every setting needs at least one candidate")
        return values

    @field_validator("templates")
    @classmethod
    def _templates_take_input(cls, values: list[str]) -> list[str]:
        for t in values:
            check_template(t)
        return values

    def configs(self) -> list[InferenceConfig]:
        """The grid in order, without settings a greedy decoder ignores: n > 1 samples of it are identical
        (pay for them only when sampling) and top_p does not change its argmax (one greedy config, top_p=1)."""
        grid = itertools.product(self.n, self.temperature, self.top_p, self.max_tokens, self.stop, self.templates)
        out: dict[InferenceConfig, None] = {}
        for n, t, p, m, s, tpl in grid:
            if n > 1 and t == 0.0:
                continue
            out.setdefault(InferenceConfig(n=n, temperature=t, top_p=1.0 if t == 0.0 else p, max_tokens=m,
                                           stop=s, template=tpl))
        return list(out)


@dataclass
class _Candidate:
    index: int
    config: InferenceConfig
    prompt_costs: np.ndarray  # [N] exact cost of each example's call before any completion token
    lm: LanguageModel
    price: Price
    utilities: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    status: str = "running"
    seconds: float = 0.0
    error: str = ""

    @property
    def done(self) -> int:
        return len(self.costs)

    def cost_bounds(self) -> tuple[float, float]:
        """(lower, upper) bound on the mean cost over all N examples."""
        n_total, rest = len(self.prompt_costs), self.prompt_costs[self.done :]
        spent = sum(self.costs)
        low = (spent + rest.sum()) / n_total
        worst_completion = self.price.per_completion_token * self.config.n * self.config.max_tokens
        high = (spent + rest.sum() + worst_completion * len(rest)) / n_total
        return low, high

    def utility_bounds(self, low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
        """(lower, upper) bound on the mean utility over all N examples, utilities in [low, high]."""
        n_total, got = len(self.prompt_costs), sum(self.utilities)
        rest = n_total - self.done
        return (got + low * rest) / n_total, (got + high * rest) / n_total


@dataclass
class InferenceTuningResult:
    """The chosen configuration (None if nothing fits the budget) and every configuration's trial."""

    best: InferenceConfig | None
    best_utility: float
    best_cost: float
    trials: list[TrialRecord]
    tuning_cost: float  # everything the search spent, in cost units
    budget: float
    complete: bool = True  # False when max_tuning_cost stopped the search early

    @property
    def status_counts(self) -> dict[str, int]:
        return dict(Counter(t.status for t in self.trials))


def tune_inference(
    lm: ModelLike | Mapping[str, ModelLike],
    examples: Sequence[Example],
    space: InferenceSpace,
    *,
    budget: float,
    instruction: str = "",
    utility: Utility | None = None,
    price: Price | Mapping[str, Price] = TOKEN_COUNT,
    max_tuning_cost: float | None = None,
    initial_examples: int = 2,
    max_configs: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    utility_range: tuple[float, float] = (0.0, 1.0),
    on_trial: TrialCallback | None = None,
) -> InferenceTuningResult:
    """Search `space` for the highest mean `utility` on `examples` with mean cost per example <= `budget`.

    `utility(texts, target)` scores the n completions of one example (default: majority vote, exact
    match) and must lie in `utility_range`. Templates may use `{instruction}`, filled with `instruction`.
    `lm` is a model or an `alloyml.lm` spec of one; `price` says what a call costs (default: one unit per
    token). `on_trial` gets each configuration's record as soon as it is settled (pruned, completed or
    failed), so an interrupted search has recorded what it finished. Several models: `lm={name: model}`
    and `price={name: Price}` (or one Price for all); `max_tuning_cost` caps the search's own spend.
    """
    models = _models(lm, price)
    low, high = _check_range(utility_range)
    if max_tuning_cost is not None and not (np.isfinite(max_tuning_cost) and max_tuning_cost > 0):
        raise InvalidInputError(f"max_tuning_cost must be a finite number > 0, got {max_tuning_cost!r}")
    if not examples:
        raise InvalidInputError("examples must be a non-empty list of Example")
    if budget <= 0:
        raise InvalidInputError(f"budget must be > 0 cost units per example, got {budget}")
    if initial_examples < 1:
        raise InvalidInputError(f"initial_examples must be >= 1, got {initial_examples}")
    if eta is not None and eta <= 1:
        raise InvalidInputError(f"eta must be > 1 (keep 1/eta per round), got {eta}")
    utility = utility or majority_vote()
    configs = [c if name is None else c.model_copy(update={"model": name})
               for name in models for c in space.configs()]
    if not configs:
        raise InvalidInputError("the space has no configuration (n > 1 needs a temperature > 0)")
    if max_configs is not None and max_configs < len(configs):
        pick = np.random.default_rng(seed).choice(len(configs), size=max_configs, replace=False)
        configs = [configs[i] for i in sorted(pick)]

    prompts = {
        tpl: [tpl.format(instruction=instruction, input=ex.input) for ex in examples]
        for tpl in {c.template for c in configs}
    }
    prompt_costs = {
        (name, tpl): np.array([p_.cost(m.count_tokens(p), 0) for p in ps], dtype=float)
        for name, (m, p_) in models.items() for tpl, ps in prompts.items()
    }
    cands = [_Candidate(i, c, prompt_costs[c.model, c.template], *models[c.model]) for i, c in enumerate(configs)]
    n_total, tuning_cost, target, complete = len(examples), 0.0, initial_examples, True

    def prune(cand: _Candidate) -> None:
        if cand.cost_bounds()[0] > budget:
            cand.status = "pruned_cost"

    failures: list[Exception] = []
    reported: set[int] = set()

    def settle() -> None:
        """Hand every newly settled configuration to `on_trial` (in index order within a round)."""
        for cand in cands:
            if cand.status != "running" and cand.index not in reported:
                reported.add(cand.index)
                if on_trial is not None:
                    on_trial(_record(cand))

    for cand in cands:
        prune(cand)
    settle()
    while any(c.status == "running" for c in cands):
        target = min(target, n_total)
        for cand in (c for c in cands if c.status == "running"):
            if max_tuning_cost is not None and tuning_cost >= max_tuning_cost:
                for c in cands:
                    if c.status == "running":
                        c.status = "stopped_tuning_budget"
                complete = False
                break
            start = time.perf_counter()
            cfg, lo = cand.config, cand.done
            try:
                gens = cand.lm.generate(prompts[cfg.template][lo:target], **cfg.sampling(), seed=seed)
            except Exception as exc:  # one failing configuration must not end the search; see failures below
                cand.status, cand.error = "failed", f"{type(exc).__name__}: {exc}"
                failures.append(exc)
                continue
            finally:
                cand.seconds += time.perf_counter() - start
            for gen, ex in zip(gens, examples[lo:target], strict=True):
                cand.utilities.append(_checked(utility(gen.texts, ex.output), low, high, cfg))
                cand.costs.append(cand.price.cost(gen.prompt_tokens, gen.completion_tokens))
            tuning_cost += sum(cand.costs[lo:])
            prune(cand)
            if cand.status == "running" and cand.done == n_total:
                cand.status = "completed" if np.mean(cand.costs) <= budget else "over_budget"
        _prune_dominated(cands, budget, low, high)
        if eta is not None:
            _halve(cands, eta)
        settle()
        target *= 2
    settle()

    if failures and all(c.status == "failed" for c in cands):
        raise AllTrialsFailedError(
            f"all {len(cands)} configurations failed; the first with {cands[0].error}"
        ) from failures[0]
    feasible = [c for c in cands if c.status == "completed"]
    best = max(feasible, key=lambda c: (np.mean(c.utilities), -np.mean(c.costs), -c.index), default=None)
    trials = [_record(c) for c in cands]
    return InferenceTuningResult(
        best=best.config if best else None,
        best_utility=float(np.mean(best.utilities)) if best else float("nan"),
        best_cost=float(np.mean(best.costs)) if best else float("nan"),
        trials=trials,
        tuning_cost=tuning_cost,
        budget=budget,
        complete=complete,
    )


def _models(lm, price) -> dict[str | None, tuple[LanguageModel, Price]]:
    """{name: (model, price)}; one model is keyed None (its configurations name no model)."""
    if not isinstance(lm, Mapping):
        if isinstance(price, Mapping):
            raise InvalidInputError("price is a mapping of model names but lm is a single model")
        return {None: (as_lm(lm), price)}
    if not lm:
        raise InvalidInputError("lm must be a model or a non-empty {name: model} mapping")
    if isinstance(price, Mapping):
        missing = sorted(set(lm) - set(price))
        if missing or set(price) - set(lm):
            raise InvalidInputError(f"price must name the same models as lm; missing {missing}, "
                                    f"unknown {sorted(set(price) - set(lm))}")
    out = {}
    for name, model in lm.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"model names must be non-empty strings, got {name!r}")
        p = price[name] if isinstance(price, Mapping) else price
        if not isinstance(p, Price):
            raise InvalidInputError(f"price for {name!r} must be a Price, got {type(p).__name__}")
        out[name] = (as_lm(model, name), p)
    return out


def _check_range(utility_range) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in utility_range)
    except (TypeError, ValueError):
        raise InvalidInputError(f"utility_range must be (low, high) numbers, got {utility_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise InvalidInputError(f"utility_range must be finite with low < high, got {utility_range!r}")
    return low, high


def _checked(value, low: float, high: float, cfg: InferenceConfig) -> float:
    """A utility inside the declared range; anything else would void the dominance bound."""
    value = float(value)
    if not (np.isfinite(value) and low <= value <= high):
        raise InvalidInputError(
            f"utility returned {value!r} for {cfg!r}, outside utility_range [{low}, {high}]; declare the "
            "utility's range with utility_range=(low, high) or rescale it"
        )
    return value


def _prune_dominated(cands: list[_Candidate], budget: float, low: float, high: float) -> None:
    alive = [c for c in cands if c.status in ("running", "completed")]
    sure = [c.utility_bounds(low, high)[0] for c in alive if c.cost_bounds()[1] <= budget]
    if not sure:
        return
    floor = max(sure)
    for c in alive:
        # Strictly below: a tie could still win on cost, so it stays.
        if c.status == "running" and c.utility_bounds(low, high)[1] < floor:
            c.status = "pruned_dominated"


def _halve(cands: list[_Candidate], eta: float) -> None:
    running = [c for c in cands if c.status == "running"]
    keep = max(1, int(np.ceil(len(running) / eta)))
    ranked = sorted(running, key=lambda c: (-np.mean(c.utilities), np.mean(c.costs)))
    for c in ranked[keep:]:
        c.status = "pruned_halving"


def _record(c: _Candidate) -> TrialRecord:
    return TrialRecord(
        trial_id=f"config-{c.index}",
        config=c.config.model_dump(),
        metrics={
            "utility": float(np.mean(c.utilities)) if c.utilities else float("nan"),
            "mean_cost": float(np.mean(c.costs)) if c.costs else float("nan"),
            "examples": float(c.done),
        },
        cost=float(sum(c.costs)),
        seconds=c.seconds,
        status=c.status,
        extra={"error": c.error} if c.error else {},
    )
