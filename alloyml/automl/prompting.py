"""Prompt templates and zero-shot scoring of an instruction on labelled examples.

APE, budgeted inference tuning and the benchmarks all score "instruction + template + decoding
settings" the same way, through `evaluate_prompt`.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alloyml.automl.metrics import Metric, get_metric
from alloyml.errors import InvalidInputError
from alloyml.lm import LanguageModel

DEFAULT_TEMPLATE = "{instruction}\n\nInput: {input}\nOutput:"


@dataclass(frozen=True)
class Example:
    """One demonstration: an input and its expected output."""

    input: str
    output: str


def check_template(template: str) -> str:
    """A template must use `{input}` and may use `{instruction}`; nothing else."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if "input" not in fields or not fields <= {"input", "instruction"}:
        raise InvalidInputError(
            f"prompt template must contain {{input}} and at most {{instruction}} besides, got fields "
            f"{sorted(fields)} in {template!r}"
        )
    return template


def render(template: str, instruction: str, text: str) -> str:
    """The prompt for one input; with no instruction, the whitespace that would have followed it goes too."""
    prompt = template.format(instruction=instruction, input=text)
    return prompt if instruction else prompt.lstrip()


@dataclass
class PromptScore:
    """Per-example outcome of one prompt: `scores[i]` in [0, 1], `tokens[i]` prompt + completion tokens."""

    scores: np.ndarray  # [N] float
    tokens: np.ndarray  # [N] int
    outputs: list[str]

    @property
    def mean(self) -> float:
        return float(self.scores.mean()) if len(self.scores) else 0.0


def evaluate_prompt(
    lm: LanguageModel,
    instruction: str,
    examples: Sequence[Example],
    *,
    template: str = DEFAULT_TEMPLATE,
    metric: str | Metric = "exact",
    max_tokens: int = 16,
    stop: Sequence[str] | None = ("\n",),
) -> PromptScore:
    """Greedy zero-shot answers to every example under `instruction`, scored by `metric`."""
    score = get_metric(metric)
    prompts = [render(check_template(template), instruction, ex.input) for ex in examples]
    gens = lm.generate(prompts, max_tokens=max_tokens, stop=stop)
    return PromptScore(
        scores=np.array([score(g.text, ex.output) for g, ex in zip(gens, examples, strict=True)], dtype=float),
        tokens=np.array([g.total_tokens for g in gens], dtype=np.int64),
        outputs=[g.text for g in gens],
    )
