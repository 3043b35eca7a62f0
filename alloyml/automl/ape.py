"""Automatic Prompt Engineer (APE, Zhou et al. 2023).

1. A proposer LM reads input/output demonstrations and *continues* a completion template (the paper's
   "forward" template ends "...The instruction was to"; the "insert" template puts the instruction in a
   gap). The template reaches chat models as a prefill: a user turn with the demonstrations and an
   assistant turn the model continues, so it writes the instruction, not commentary about it.
2. Every candidate is scored zero-shot on a dev set by the target LM: execution accuracy (`metric`) or the
   mean log-probability of the expected outputs (`scoring="logprob"`). Where the target gives
   log-probabilities, candidates that tie on accuracy are ranked by them.
3. Monte-Carlo resampling: the top `n_keep` are rewritten ("a variation of this instruction") and the
   variations scored; repeat `n_rounds` times.

The candidates always include the `seed_instructions` and the empty instruction (the zero-shot baseline),
so APE returns a proposal only when it beats both on the dev set. The proposer should be a different,
usually larger, model than the target, as in the paper; they are separate arguments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from alloyml.automl.metrics import Metric, normalize
from alloyml.automl.prompting import DEFAULT_TEMPLATE, Example, check_template, evaluate_prompt, render
from alloyml.errors import InvalidInputError
from alloyml.lm import ModelLike, as_lm
from alloyml.trials import TrialCallback, TrialRecord


@dataclass(frozen=True)
class CompletionTemplate:
    """A prompt the proposer continues: `user` (with `{demos}` or `{instruction}`) and the `prefill` that
    opens its answer. Text models see both joined by a blank line."""

    user: str
    prefill: str

    def prompt(self, **fields: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.user.format(**fields)}, {"role": "assistant", "content": self.prefill}]


FORWARD_TEMPLATE = CompletionTemplate(
    "I gave a friend an instruction and {count} inputs. The friend read the instruction and wrote an output for "
    "every one of the inputs. Here are the input-output pairs:\n\n{demos}",
    "The instruction was to",
)
# The paper's insert template puts the gap before the demonstrations ("I instructed my friend to <INSERT>.
# ... Here are the input-output pairs: ..."). A causal LM cannot read past a gap, so the demonstrations come
# first and the gap is the completion.
INSERT_TEMPLATE = CompletionTemplate(
    "A friend read an instruction and wrote an output for every one of {count} inputs. Here are the "
    "input-output pairs:\n\n{demos}",
    "Before writing them, I had instructed my friend to",
)
VARIATION_TEMPLATE = CompletionTemplate(
    "Generate a variation of the following instruction while keeping the semantic meaning.\n\n"
    "Instruction: {instruction}",
    "New instruction:",
)
PROPOSAL_TEMPLATES = {"forward": FORWARD_TEMPLATE, "insert": INSERT_TEMPLATE}


@dataclass(frozen=True)
class InstructionScore:
    """One scored candidate. `origin` is "proposal", "given", "empty", or the instruction it varies.

    `score` is execution accuracy, or the mean log-probability when APE scores by log-probability;
    `logprob` is the mean log-probability of the dev outputs (None when the target gives none)."""

    instruction: str
    score: float
    tokens: int  # target-LM tokens spent scoring it on the dev set
    round: int
    origin: str
    logprob: float | None = None

    @property
    def rank_key(self) -> tuple[float, float]:
        """Higher is better: the score, then the log-probability (ties on accuracy are common on small sets)."""
        return self.score, self.logprob if self.logprob is not None else -math.inf


@dataclass
class APEResult:
    best_instruction: str
    best_score: float
    table: list[InstructionScore]  # every candidate, in the order scored
    proposer_tokens: int
    target_tokens: int

    @property
    def scores(self) -> np.ndarray:
        return np.array([row.score for row in self.table])


def clean_instruction(text: str) -> str:
    """First line of a proposal, without surrounding quotes or a leading label, first letter capitalised."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "").strip("\"'` ")
    for label in ("Instruction:", "New instruction:", "The instruction was:"):
        if line.lower().startswith(label.lower()):
            line = line[len(label) :].strip()
    line = line.strip("\"'` ")
    return line[:1].upper() + line[1:]


def mean_logprob(target, instruction: str, examples: Sequence[Example], template: str = DEFAULT_TEMPLATE) -> float:
    """Mean over `examples` of log P(" " + output | prompt): the paper's log-probability score."""
    pairs = [(render(template, instruction, ex.input), " " + ex.output) for ex in examples]
    return float(np.mean(target.logprobs(pairs)))


def ape(
    proposer: ModelLike,
    target: ModelLike,
    demos: Sequence[Example],
    dev: Sequence[Example],
    *,
    n_proposals: int = 8,
    demos_per_proposal: int = 5,
    n_rounds: int = 1,
    n_keep: int = 2,
    n_variations: int = 2,
    seed_instructions: Sequence[str] = (),
    template: str = DEFAULT_TEMPLATE,
    metric: str | Metric = "exact",
    scoring: Literal["accuracy", "logprob"] = "accuracy",
    proposal_mode: Literal["forward", "insert"] = "forward",
    temperature: float = 0.9,
    max_tokens: int = 16,
    proposal_max_tokens: int = 40,
    seed: int = 0,
    on_trial: TrialCallback | None = None,
) -> APEResult:
    """Propose, score on `dev`, resample around the best `n_rounds` times.

    The empty instruction and `seed_instructions` are always scored. `proposer` and `target` are language
    models or `alloyml.lm` specs of them; `scoring="logprob"` needs a target with `supports_logprob`."""
    if not demos or not dev:
        raise InvalidInputError("demos and dev must be non-empty lists of Example")
    if n_proposals < 1 or n_keep < 1 or n_rounds < 0 or n_variations < 0 or demos_per_proposal < 1:
        raise InvalidInputError("n_proposals, n_keep, demos_per_proposal must be >= 1 and n_rounds, n_variations >= 0")
    if scoring not in ("accuracy", "logprob"):
        raise InvalidInputError(f"scoring must be 'accuracy' or 'logprob', got {scoring!r}")
    if proposal_mode not in PROPOSAL_TEMPLATES:
        raise InvalidInputError(f"proposal_mode must be one of {sorted(PROPOSAL_TEMPLATES)}, got {proposal_mode!r}")
    check_template(template)
    proposer, target = as_lm(proposer, "proposer"), as_lm(target, "target")
    if scoring == "logprob" and not target.supports_logprob:
        raise InvalidInputError(f"scoring='logprob' needs a target with log-probabilities; {target.name!r} has none")
    rng = np.random.default_rng(seed)
    table: list[InstructionScore] = []
    seen: set[str] = set()
    proposer_tokens = 0

    def score_all(candidates: list[tuple[str, str]], round_: int) -> None:
        for instruction, origin in candidates:
            key = normalize(instruction)
            if key in seen or (not instruction and origin != "empty"):
                continue
            seen.add(key)
            start = time.perf_counter()
            result = evaluate_prompt(target, instruction, dev, template=template, metric=metric, max_tokens=max_tokens)
            logprob = mean_logprob(target, instruction, dev, template) if target.supports_logprob else None
            score = logprob if scoring == "logprob" else result.mean
            row = InstructionScore(instruction, score, int(result.tokens.sum()), round_, origin, logprob)
            table.append(row)
            if on_trial is not None:
                metrics = {"score": row.score, "accuracy": result.mean}
                if logprob is not None:
                    metrics["logprob"] = logprob
                on_trial(
                    TrialRecord(
                        trial_id=f"instruction-{len(table) - 1}",
                        config={"instruction": instruction, "round": round_, "origin": origin},
                        metrics=metrics,
                        cost=float(row.tokens),
                        seconds=time.perf_counter() - start,
                    )
                )

    def sample(prompts: list) -> list[str]:
        nonlocal proposer_tokens
        gens = proposer.generate(
            prompts, temperature=temperature, max_tokens=proposal_max_tokens, seed=int(rng.integers(2**31))
        )
        proposer_tokens += sum(g.total_tokens for g in gens)
        return [clean_instruction(g.text) for g in gens]

    def ranked() -> list[InstructionScore]:
        order = {id(r): i for i, r in enumerate(table)}  # ties on both keys: the earlier candidate first
        return sorted(table, key=lambda r: (-r.rank_key[0], -r.rank_key[1], order[id(r)]))

    k = min(demos_per_proposal, len(demos))
    propose_prompts = []
    for _ in range(n_proposals):
        picked = [demos[i] for i in rng.choice(len(demos), size=k, replace=False)]
        text = "\n\n".join(f"Input: {d.input}\nOutput: {d.output}" for d in picked)
        propose_prompts.append(PROPOSAL_TEMPLATES[proposal_mode].prompt(demos=text, count=str(k)))
    score_all([("", "empty")] + [(s, "given") for s in seed_instructions], 0)
    score_all([(s, "proposal") for s in sample(propose_prompts)], 0)

    for round_ in range(1, n_rounds + 1):
        parents = [r.instruction for r in ranked()[:n_keep] if r.instruction for _ in range(n_variations)]
        if not parents:
            break
        variations = sample([VARIATION_TEMPLATE.prompt(instruction=p) for p in parents])
        score_all(list(zip(variations, parents, strict=True)), round_)

    best = ranked()[0]
    return APEResult(
        best_instruction=best.instruction,
        best_score=best.score,
        table=table,
        proposer_tokens=proposer_tokens,
        target_tokens=sum(r.tokens for r in table),
    )
