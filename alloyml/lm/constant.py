"""A stub language model with a fixed answer, for measuring what surrounds a model (routing, serving)."""

from __future__ import annotations

import time

from alloyml.lm.base import Generation, LanguageModel, Prompt, SamplingParams, cut_at_stop


class ConstantLM(LanguageModel):
    """Answers `text` to every prompt after sleeping `delay_s` once per `generate` call.

    It reads no prompt: `prompt_tokens` is 0 and each sample charges `tokens` completion tokens, whatever
    `max_tokens` says (a stub sets its own cost). Stop strings still cut the text.
    """

    def __init__(self, text: str = "", delay_s: float = 0.0, tokens: int = 0, name: str = "constant"):
        self.text = text
        self.delay_s = delay_s
        self.tokens = tokens
        self.name = name

    def _fingerprint_parts(self) -> list[bytes]:
        return [repr((self.text, self.tokens)).encode()]

    def count_tokens(self, prompt: Prompt) -> int:
        return 0

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        text, _ = cut_at_stop(self.text, params.stop)
        return [Generation([text] * params.n, 0, self.tokens * params.n, ["stop"] * params.n) for _ in prompts]
