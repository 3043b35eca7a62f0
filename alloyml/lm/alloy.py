"""alloyml's own linear-architecture LMs behind the `LanguageModel` interface.

`RecurrentLM` pairs a `LinearLM` with the byte tokenizer and generates with `alloyml.models.generate`
(one parallel prefill, then constant-memory recurrent decoding). `completion_tokens` counts every token
decoded, stop string included: what the call cost. Sampled prompts decode one at a time, each with a
generator seeded from (seed, prompt) by `row_seed`, so a prompt's samples do not depend on its batch.
`logprob` runs one parallel forward over prompt + continuation bytes.
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.lm.base import Generation, LanguageModel, Prompt, SamplingParams, as_text, cut_at_stop, row_seed
from alloyml.models.tokenizer import ByteTokenizer


class RecurrentLM(LanguageModel):
    """A LinearLM with the byte tokenizer, as a `LanguageModel`."""

    supports_logprob = True

    def __init__(self, model, name: str = "linear-lm"):
        self.model = model
        self.name = name
        self.tokenizer = ByteTokenizer()

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.tokenizer.encode(as_text(prompt)))

    def _fingerprint_parts(self) -> list[bytes]:
        from alloyml.lm.base import module_fingerprint_parts

        return module_fingerprint_parts(self.model)

    def _stopper(self, stop):
        if not stop:
            return None
        return lambda row, tokens: cut_at_stop(self.tokenizer.decode(tokens), stop)[1]

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        from alloyml.models.generate import decode, prefill  # torch loads only when generating

        texts = [as_text(p) for p in prompts]
        ids = [self.tokenizer.encode(t) for t in texts]
        settings = dict(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                        done=self._stopper(params.stop))
        was_training = self.model.training
        self.model.eval()
        try:
            if params.greedy:
                logits, states = prefill(self.model, ids, params.n)
                tokens = decode(self.model, logits, states, **settings)
            else:
                base = params.seed if params.seed is not None else int(np.random.default_rng().integers(2**62))
                tokens = []
                for text, prompt_ids in zip(texts, ids, strict=True):
                    logits, states = prefill(self.model, [prompt_ids], params.n)
                    tokens += decode(self.model, logits, states, seed=row_seed(base, text, 0), **settings)
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

    def _logprobs(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        import torch

        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for i, (prompt, continuation) in enumerate(pairs):
                head, tail = self.tokenizer.encode(as_text(prompt)), self.tokenizer.encode(continuation)
                if not tail:
                    out.append(0.0)
                    continue
                if not head:
                    raise InvalidInputError(f"logprobs pair {i}: the prompt encodes to no token to condition on")
                device = next(self.model.parameters()).device
                with torch.no_grad():
                    logits = self.model(torch.tensor([head + tail], device=device)).logits[0].float()  # [T, V]
                logp = torch.log_softmax(logits[len(head) - 1 : -1], dim=-1)  # rows predicting the continuation
                out.append(float(logp.gather(-1, torch.tensor(tail, device=device)[:, None]).sum()))
        finally:
            self.model.train(was_training)
        return out
