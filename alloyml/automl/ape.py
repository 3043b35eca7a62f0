"""Automatic Prompt Engineer (APE, Zhou et al. 2023).

1. A proposer LM reads input/output demonstrations and writes the instruction that produced them
   ("forward generation": the instruction is what follows "The instruction was").
2. Each candidate is scored zero-shot on a dev set by the target LM.
3. The best `n_keep` are resampled ("a variation of this instruction") and scored; repeat.

Returns the best instruction and the full score table. Each instruction is scored once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alloyml.automl.metrics import Metric, normalize
from alloyml.automl.prompting import DEFAULT_TEMPLATE, Example, check_template, evaluate_prompt
from alloyml.errors import InvalidInputError
from alloyml.lm import ModelLike, as_lm
from alloyml.trials import TrialCallback, TrialRecord

PROPOSE_TEMPLATE = (
    "I gave a friend an instruction and some inputs. The friend read the instruction and wrote an "
    "output for every one of the inputs. Here are the input-output pairs:\n\n{demos}\n\n"
    "Write the instruction in one sentence. The instruction was:"
)
VARIATION_TEMPLATE = (
    "Generate a variation of the following instruction while keeping the semantic meaning. "
    "Write only the new instruction.\n\nInstruction: {instruction}\n\nNew instruction:"
)


@dataclass(frozen=True)
class InstructionScore:
    """One scored candidate. `origin` is "proposal", "given", or the instruction it is a variation of."""

    instruction: str
    score: float
    tokens: int  # target-LM tokens spent scoring it on the dev set
    round: int
    origin: str


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
    """First line of a proposal, without surrounding quotes or a leading label."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "").strip("\"'` ")
    for label in ("Instruction:", "New instruction:", "The instruction was:"):
        if line.lower().startswith(label.lower()):
            line = line[len(label) :].strip()
    return line.strip("\"'` ")


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
    temperature: float = 0.9,
    max_tokens: int = 16,
    proposal_max_tokens: int = 40,
    seed: int = 0,
    on_trial: TrialCallback | None = None,
) -> APEResult:
    """Propose, score on `dev`, resample the best `n_rounds` times. `seed_instructions` are scored too.

    `proposer` and `target` are language models or `alloyml.lm` specs of them."""
    if not demos or not dev:
        raise InvalidInputError("demos and dev must be non-empty lists of Example")
    if n_proposals < 1 or n_keep < 1 or n_rounds < 0 or n_variations < 0 or demos_per_proposal < 1:
        raise InvalidInputError("n_proposals, n_keep, demos_per_proposal must be >= 1 and n_rounds, n_variations >= 0")
    check_template(template)
    proposer, target = as_lm(proposer, "proposer"), as_lm(target, "target")
    rng = np.random.default_rng(seed)
    table: list[InstructionScore] = []
    seen: set[str] = set()
    proposer_tokens = 0

    def score_all(candidates: list[tuple[str, str]], round_: int) -> None:
        for instruction, origin in candidates:
            key = normalize(instruction)
            if not instruction or key in seen:
                continue
            seen.add(key)
            start = time.perf_counter()
            result = evaluate_prompt(target, instruction, dev, template=template, metric=metric, max_tokens=max_tokens)
            row = InstructionScore(instruction, result.mean, int(result.tokens.sum()), round_, origin)
            table.append(row)
            if on_trial is not None:
                on_trial(
                    TrialRecord(
                        trial_id=f"instruction-{len(table) - 1}",
                        config={"instruction": instruction, "round": round_, "origin": origin},
                        metrics={"score": row.score},
                        cost=float(row.tokens),
                        seconds=time.perf_counter() - start,
                    )
                )

    def sample(prompts: list[str]) -> list[str]:
        nonlocal proposer_tokens
        gens = proposer.generate(
            prompts, temperature=temperature, max_tokens=proposal_max_tokens, seed=int(rng.integers(2**31))
        )
        proposer_tokens += sum(g.total_tokens for g in gens)
        return [clean_instruction(g.text) for g in gens]

    k = min(demos_per_proposal, len(demos))
    propose_prompts = []
    for _ in range(n_proposals):
        picked = [demos[i] for i in rng.choice(len(demos), size=k, replace=False)]
        text = "\n\n".join(f"Input: {d.input}\nOutput: {d.output}" for d in picked)
        propose_prompts.append(PROPOSE_TEMPLATE.format(demos=text))
    score_all([(s, "given") for s in seed_instructions], 0)
    score_all([(s, "proposal") for s in sample(propose_prompts)], 0)

    for round_ in range(1, n_rounds + 1):
        top = sorted(table, key=lambda r: -r.score)[:n_keep]
        parents = [r.instruction for r in top for _ in range(n_variations)]
        if not parents:
            break
        variations = sample([VARIATION_TEMPLATE.format(instruction=p) for p in parents])
        score_all(list(zip(variations, parents, strict=True)), round_)

    if not table:
        raise InvalidInputError("the proposer produced no usable instruction (all empty)")
    best = max(table, key=lambda r: r.score)  # first of equals: earlier, cheaper-to-find candidates win
    return APEResult(
        best_instruction=best.instruction,
        best_score=best.score,
        table=table,
        proposer_tokens=proposer_tokens,
        target_tokens=sum(r.tokens for r in table),
    )
