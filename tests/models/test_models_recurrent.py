"""Recurrent decoding equals the parallel forward, for every mixer: the step kernels and the chunked
kernels are independent implementations of the same recurrence, so agreement to float64 rounding checks
both (and the conv / token-shift / KV-cache state plumbing around them)."""

import pytest
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import MIXERS
from alloyml.models.model import LinearLM

T = 67  # crosses chunk boundaries of both the scalar-gate (64) and vector-gate (16) chunked kernels


def tiny(mixer, ffn="mlp", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, ffn=ffn, vocab_size=40, d_model=32, n_layers=2, n_heads=2, n_experts=4, **kw)
    return LinearLM(cfg).double().eval()


@pytest.mark.parametrize("mixer", list(MIXERS))
@torch.no_grad()
def test_token_by_token_equals_parallel(mixer):
    model = tiny(mixer)
    ids = torch.randint(0, 40, (2, T), generator=torch.Generator().manual_seed(1))
    parallel = model(ids).logits
    states, stepped = None, []
    for t in range(T):
        logits, states = model.step(ids[:, t], states)
        stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), parallel, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", list(MIXERS))
@torch.no_grad()
def test_prefill_then_continue_equals_one_pass(mixer):
    model = tiny(mixer, ffn="moe")
    ids = torch.randint(0, 40, (3, 30), generator=torch.Generator().manual_seed(2))
    whole = model(ids).logits
    head = model(ids[:, :11])
    logits, states = model.step(ids[:, 11], head.states)
    rest = model(ids[:, 12:], states).logits
    torch.testing.assert_close(logits, whole[:, 11], rtol=0, atol=1e-10)
    torch.testing.assert_close(rest, whole[:, 12:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", ["mamba", "softmax", "rwkv", "lru", "hawk", "s4d", "mamba1", "performer",
                                   "gated_deltanet", "ttt_linear", "ttt_mlp", "h3", "hyena", "local_attn", "griffin"])
@torch.no_grad()
def test_regrouped_states_decode_each_sequence_as_alone(mixer):
    # Prompts of different lengths, prefilled apart, concatenated (the KV cache left-pads), one row dropped:
    # each remaining row must continue exactly as that sequence decoded on its own.
    model = tiny(mixer)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 40, (1, n), generator=gen) for n in (5, 12, 8)]
    nexts = torch.randint(0, 40, (3, 4), generator=gen)
    alone = []
    for p, nxt in zip(prompts, nexts, strict=True):
        alone.append(model(torch.cat([p, nxt[None]], 1)).logits[0, -4:])
    states = model.cat_states([model(p).states for p in prompts])
    keep = torch.tensor([2, 0])
    states = model.select_states(states, keep)
    for t in range(4):
        logits, states = model.step(nexts[keep, t], states)
        for row, which in enumerate(keep.tolist()):
            torch.testing.assert_close(logits[row], alone[which][t], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", [m for m in MIXERS if m not in ("softmax", "hyena")])
@torch.no_grad()
def test_linear_mixer_state_is_constant_size(mixer):
    model = tiny(mixer)
    sizes = []
    for length in (8, 200):
        states = model(torch.zeros(1, length, dtype=torch.long)).states
        sizes.append(sum(t.numel() for state in states for t in state))
    assert sizes[0] == sizes[1]
    cache = model.__class__(model.config.replace(mixer="softmax")).eval()
    grows = [sum(s.k.numel() for s in cache(torch.zeros(1, n, dtype=torch.long)).states) for n in (8, 200)]
    assert grows[1] == 25 * grows[0]


@torch.no_grad()
def test_hyena_state_caches_each_long_convolution_input():
    """Hyena has no fixed-size state: its cache grows by order * d_model inputs a token and layer."""
    model = tiny("hyena")
    sizes = [sum(t.numel() for state in model(torch.zeros(1, n, dtype=torch.long)).states for t in state)
             for n in (8, 200)]
    order, d = model.blocks[0].mixer.order, model.config.d_model
    assert sizes[1] - sizes[0] == model.config.n_layers * order * d * (200 - 8)
