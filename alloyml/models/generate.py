"""Batched sampling: prefill each prompt with one parallel forward, then decode all sequences together one
token at a time on the recurrent states.

The linear mixers carry a fixed-size state per sequence, so each decoding step costs the same and memory
stays flat however long the context; the softmax baseline reads and grows its KV cache instead.
Finished sequences leave the batch (`select_states`), so stragglers do not pay for them.

The `LanguageModel` over these functions (prompts in, texts and token counts out) is `alloyml.lm.RecurrentLM`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alloyml.errors import InvalidInputError


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
def decode(model, logits, states, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
           seed: int | None = None, done: Callable[[int, list[int]], bool] | None = None):
    """Sample up to `max_tokens` tokens for every row of `logits` [B, V], continuing `states`.

    done(row, tokens) says a row has finished (e.g. it produced a stop string). Returns the token lists."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    tokens: list[list[int]] = [[] for _ in range(logits.shape[0])]
    active = list(range(logits.shape[0]))
    for _ in range(max_tokens):
        chosen = sample_next(logits, temperature, top_p, generator)  # [len(active)]
        keep = []
        for i, (row, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
            tokens[row].append(token)
            if not (done and done(row, tokens[row])):
                keep.append(i)
        if len(tokens[active[0]]) == max_tokens or not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=logits.device)
            states, chosen = model.select_states(states, index), chosen[index]
            active = [active[i] for i in keep]
        logits, states = model.step(chosen, states)
    return tokens
