"""alloyml's own linear-architecture LMs behind the `LanguageModel` interface.

`RecurrentLM` pairs a `LinearLM` with the byte tokenizer and generates with `alloyml.models.generate`
(one parallel prefill, then constant-memory recurrent decoding). `completion_tokens` counts every token
decoded, stop string included: what the call cost.
"""

from __future__ import annotations

from alloyml.lm.base import Generation, LanguageModel, Prompt, SamplingParams, as_text, cut_at_stop
from alloyml.models.tokenizer import ByteTokenizer


class RecurrentLM(LanguageModel):
    """A LinearLM with the byte tokenizer, as a `LanguageModel`."""

    def __init__(self, model, name: str = "linear-lm"):
        self.model = model
        self.name = name
        self.tokenizer = ByteTokenizer()

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.tokenizer.encode(as_text(prompt)))

    def _stopper(self, stop):
        if not stop:
            return None
        return lambda row, tokens: cut_at_stop(self.tokenizer.decode(tokens), stop)[1]

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        from alloyml.models.generate import decode, prefill  # torch loads only when generating

        ids = [self.tokenizer.encode(as_text(p)) for p in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            logits, states = prefill(self.model, ids, params.n)
            tokens = decode(self.model, logits, states, max_tokens=params.max_tokens, temperature=params.temperature,
                            top_p=params.top_p, seed=params.seed, done=self._stopper(params.stop))
        finally:
            self.model.train(was_training)
        results = []
        for p, prompt_ids in enumerate(ids):
            rows = tokens[p * params.n : (p + 1) * params.n]
            texts, reasons = [], []
            for row in rows:
                text, hit = cut_at_stop(self.tokenizer.decode(row), params.stop)
                texts.append(text)
                reasons.append("stop" if hit else "length")
            results.append(Generation(texts, len(prompt_ids), sum(len(r) for r in rows), reasons))
        return results
