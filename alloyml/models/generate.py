"""Batched sampling: prefill each prompt with one parallel forward, then decode all sequences together one
token at a time on the recurrent states.

The linear mixers carry a fixed-size state per sequence, so each decoding step costs the same and memory
stays flat however long the context; the softmax baseline reads and grows its KV cache instead.
Finished sequences leave the batch (`select_states`), so stragglers do not pay for them.

`RecurrentLM` wraps a model and the byte tokenizer behind the shared `LanguageModel` interface
(`alloyml.models.lm`): `generate(prompts, n=, temperature=, top_p=, max_tokens=, stop=, seed=)` returns one
`Generation` per prompt with `prompt_tokens` and `completion_tokens` (every token decoded, stop string
included: what the call cost).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alloyml.errors import InvalidInputError
from alloyml.models.lm.base import Generation, LanguageModel, Prompt, SamplingParams, as_text, cut_at_stop
from alloyml.models.tokenizer import ByteTokenizer


def sample_next(logits, temperature: float, top_p: float, generator: torch.Generator | None):
    """logits: [B, V] -> next tokens [B]: greedy at temperature 0, else nucleus sampling (the smallest set
    of tokens whose probability reaches top_p, renormalised)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def prefill(model, prompts: list[list[int]], n: int = 1):
    """Run each prompt (token ids) once; returns (last logits [len(prompts) * n, V], states), each prompt's
    row repeated n times (prompt-major)."""
    device = next(model.parameters()).device
    logits, states = [], []
    for ids in prompts:
        if not ids:
            raise InvalidInputError("every prompt must encode to at least one token")
        out = model(torch.tensor([ids], device=device))
        repeat = torch.zeros(n, dtype=torch.long, device=device)
        logits.append(out.logits[0, -1].expand(n, -1))
        states.append(model.select_states(out.states, repeat))
    return torch.cat(logits), model.cat_states(states)


@torch.no_grad()
def decode(model, logits, states, params: SamplingParams, done: Callable[[int, list[int]], bool] | None = None):
    """Sample up to `params.max_tokens` tokens for every row of `logits` [B, V], continuing `states`.

    done(row, tokens) says a row has finished (e.g. it produced a stop string). Returns the token lists."""
    generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
    tokens: list[list[int]] = [[] for _ in range(logits.shape[0])]
    active = list(range(logits.shape[0]))
    for _ in range(params.max_tokens):
        chosen = sample_next(logits, params.temperature, params.top_p, generator)  # [len(active)]
        keep = []
        for i, (row, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
            tokens[row].append(token)
            if not (done and done(row, tokens[row])):
                keep.append(i)
        if len(tokens[active[0]]) == params.max_tokens or not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=logits.device)
            states, chosen = model.select_states(states, index), chosen[index]
            active = [active[i] for i in keep]
        logits, states = model.step(chosen, states)
    return tokens


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
        ids = [self.tokenizer.encode(as_text(p)) for p in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            logits, states = prefill(self.model, ids, params.n)
            tokens = decode(self.model, logits, states, params, self._stopper(params.stop))
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
