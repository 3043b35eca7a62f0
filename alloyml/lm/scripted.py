"""A deterministic language model: a Python function of the prompt. For fast tests and for simulating
a model's cost profile without running one."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from alloyml.lm.base import Generation, LanguageModel, Prompt, SamplingParams, as_text, cut_at_stop

_TOKEN = re.compile(r"\w+|[^\w\s]")


def word_tokens(text: str) -> list[re.Match]:
    """The scripted model's tokenizer: runs of word characters and single punctuation marks."""
    return list(_TOKEN.finditer(text))


@dataclass(frozen=True)
class Sample:
    """What a scripted response function sees besides the prompt text."""

    index: int
    temperature: float
    top_p: float
    rng: np.random.Generator


class ScriptedLM(LanguageModel):
    """`respond(prompt_text, sample) -> str` decides every completion.

    Tokens are word-or-punctuation pieces (`word_tokens`). The response is cut to `max_tokens` tokens and
    then before the first stop string, as a model that stops on either would; `completion_tokens`
    counts the tokens of what is returned. `sample.rng` is seeded from `(seed, prompt, sample index)`,
    so a call is reproducible and independent of batch order. `score(prompt_text, continuation) -> float`,
    when given, is what `logprob` returns (a scripted log-probability, for tests of scoring code).
    """

    def __init__(self, respond: Callable[[str, Sample], str], name: str = "scripted",
                 score: Callable[[str, str], float] | None = None):
        self.respond = respond
        self.name = name
        self.score = score

    @property
    def supports_logprob(self) -> bool:  # type: ignore[override]
        return self.score is not None

    def _logprobs(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        return [float(self.score(as_text(p), c)) for p, c in pairs]

    def _fingerprint_parts(self) -> list[bytes]:
        # The function's code, constants and captured values (a closure over "Paris" differs from one over
        # "Lyon"); a value without a stable repr only makes the fingerprint change more often.
        parts = []
        for fn in (self.respond, self.score):
            code = getattr(fn, "__code__", None)
            if code is None:
                parts.append(repr(fn).encode())
                continue
            cells = [c.cell_contents for c in (fn.__closure__ or ())]
            parts.append(code.co_code + repr((code.co_consts, fn.__qualname__, cells)).encode())
        return parts

    def count_tokens(self, prompt: Prompt) -> int:
        return len(word_tokens(as_text(prompt)))

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        return [self._complete(as_text(p), params) for p in prompts]

    def _complete(self, text: str, params: SamplingParams) -> Generation:
        digest = hashlib.sha256(text.encode()).digest()
        texts, reasons, used = [], [], 0
        for i in range(params.n):
            rng = np.random.default_rng([params.seed or 0, int.from_bytes(digest[:8], "little"), i])
            raw = self.respond(text, Sample(i, params.temperature, params.top_p, rng))
            tokens = word_tokens(raw)
            truncated = len(tokens) > params.max_tokens
            if truncated:
                raw = raw[: tokens[params.max_tokens - 1].end()]
            out, stopped = cut_at_stop(raw, params.stop)
            texts.append(out)
            reasons.append("stop" if stopped or not truncated else "length")
            used += len(word_tokens(out))
        return Generation(texts, self.count_tokens(text), used, reasons)
