"""Local (sliding-window) attention and Griffin: the blocked band form against dense masked attention
(outputs and q, k, v gradients, odd sizes, windows from 1 to past T, packed); the mixer's ring-buffer
decoding against its parallel forward with windows small enough to wrap many times; a window past the
sequence is plain causal attention (the softmax mixer on the same weights); tokens outside the window
have no influence."""

from __future__ import annotations

import pytest
import torch

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.kernels.local_attn import local_attn
from alloyml.models.config import ModelConfig
from alloyml.models.griffin import LocalAttention
from alloyml.models.mixers import SoftmaxAttention
from alloyml.models.model import LinearLM


def rel_rms(got, want):
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-300)).item()


def qkv(B, T, H, Dh, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, Dh, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3)]


def grads(fn, q, k, v, seed=0):
    o = fn(q, k, v)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(o.dtype)
    return [o, *torch.autograd.grad((o * w).sum(), [q, k, v])]


@pytest.mark.parametrize(("B", "T", "H", "Dh", "window"), [(2, 1, 1, 4, 3), (2, 37, 3, 8, 1), (1, 37, 2, 6, 5),
                                                           (3, 29, 2, 4, 29), (1, 50, 2, 4, 64), (1, 130, 1, 8, 16)])
def test_blocked_form_equals_dense_masked_attention(B, T, H, Dh, window):
    q, k, v = qkv(B, T, H, Dh, T + window)
    want = grads(lambda *a: local_attn(*a, window, backend="naive"),
                 *(t.detach().double().requires_grad_() for t in (q, k, v)))
    got = grads(lambda *a: local_attn(*a, window), q, k, v)
    for g, w in zip(got, want, strict=True):
        assert rel_rms(g, w) <= 1e-5


@pytest.mark.parametrize("window", [2, 7, 100])
def test_packed_sequences_attend_within_themselves(window):
    cu = torch.tensor([0, 1, 9, 10, 31, 40])
    q, k, v = qkv(1, 40, 2, 4, window, torch.float64)
    got = grads(lambda *a: local_attn(*a, window, cu_seqlens=cu), q, k, v)
    want = grads(lambda *a: local_attn(*a, window, cu_seqlens=cu, backend="naive"), q, k, v)
    for g, w in zip(got, want, strict=True):
        assert rel_rms(g, w) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_attend_in_float32(dtype):
    q, k, v = (t.detach().to(dtype) for t in qkv(2, 45, 2, 8, 3))
    o = local_attn(q, k, v, 9)
    assert o.dtype == dtype
    assert rel_rms(o, local_attn(q.double(), k.double(), v.double(), 9, backend="naive")) <= torch.finfo(dtype).eps


def test_bad_window_is_refused():
    q, k, v = qkv(1, 4, 1, 2, 0)
    with pytest.raises(InvalidInputError, match="window"):
        local_attn(q, k, v, 0)
    with pytest.raises(ConfigError, match="window"):
        ModelConfig(mixer="griffin", window=0)
    with pytest.raises(ConfigError, match="griffin_period"):
        ModelConfig(mixer="griffin", griffin_period=0)


def mixer(window, seed=0):
    torch.manual_seed(seed)
    return LocalAttention(ModelConfig(mixer="local_attn", d_model=16, n_heads=2, window=window)).double()


@torch.no_grad()
def test_a_window_past_the_sequence_is_causal_attention():
    local = mixer(window=50)
    full = SoftmaxAttention(ModelConfig(mixer="softmax", d_model=16, n_heads=2)).double()
    full.load_state_dict(local.state_dict())
    x = torch.randn(2, 31, 16, dtype=torch.float64)
    torch.testing.assert_close(local(x)[0], full(x)[0], rtol=0, atol=1e-12)


@torch.no_grad()
def test_tokens_outside_the_window_have_no_influence():
    m = mixer(window=4)
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, :10] = torch.randn(1, 10, 16, dtype=torch.float64)
    y, y2 = m(x)[0], m(changed)[0]
    torch.testing.assert_close(y2[:, 13:], y[:, 13:], rtol=0, atol=1e-12)  # t >= 13 sees 10 .. t only
    assert (y2[:, 12] - y[:, 12]).abs().max() > 1e-3  # t = 12 still sees token 9


@pytest.mark.parametrize("name", ["local_attn", "griffin"])
@torch.no_grad()
def test_ring_buffer_decoding_equals_the_parallel_forward(name):
    """Windows of 1, 3 and 8 (griffin: 3) over 41 tokens: the buffer wraps many times; prefill lengths on either side
    of the window; prompts of different lengths regrouped into one batch."""
    for window in (1, 3, 8) if name == "local_attn" else (3,):
        torch.manual_seed(window)
        model = LinearLM(ModelConfig(mixer=name, vocab_size=30, d_model=16, n_layers=2, n_heads=2,
                                     window=window)).double().eval()
        ids = torch.randint(0, 30, (2, 41), generator=torch.Generator().manual_seed(window))
        whole = model(ids).logits
        for prefix in (2, window + 3):
            out = model(ids[:, :prefix])
            states, stepped = out.states, []
            for t in range(prefix, 41):
                logits, states = model.step(ids[:, t], states)
                stepped.append(logits)
            torch.testing.assert_close(torch.stack(stepped, 1), whole[:, prefix:], rtol=0, atol=1e-10)
            rest = model(ids[:, prefix + 1 :], model(ids[:, : prefix + 1]).states).logits
            torch.testing.assert_close(rest, whole[:, prefix + 1 :], rtol=0, atol=1e-10)
        # regrouped states of prompts of different lengths continue as each alone
        short, long = ids[:1, :window], ids[1:, : 2 * window + 1]
        states = model.cat_states([model(short).states, model(long).states])
        logits, _ = model.step(torch.tensor([5, 6]), states)
        torch.testing.assert_close(logits[0], model(torch.cat([short, torch.tensor([[5]])], 1)).logits[0, -1],
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(logits[1], model(torch.cat([long, torch.tensor([[6]])], 1)).logits[0, -1],
                                   rtol=0, atol=1e-10)
        sizes = [sum(t.numel() for s in model(ids[:, :n]).states for t in s) for n in (2, 41)]
        assert sizes[0] == sizes[1]  # the ring buffer: fixed size however long the context


@pytest.mark.parametrize("period", [1, 3, 4])
@torch.no_grad()
def test_griffin_stacks_its_pattern_residually(period):
    """One griffin block: h <- h + layer(norm(h)) for period - 1 RG-LRU layers, then local attention;
    returns the updates."""
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="griffin", d_model=16, n_heads=2, window=5, griffin_period=period)
    g = LinearLM(cfg.replace(n_layers=1)).blocks[0].mixer.double()
    assert [type(layer).__name__ for layer in g.layers] == ["Hawk"] * (period - 1) + ["LocalAttention"]
    assert g.layers[-1].kv_heads == 1  # multi-query, as in the paper
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    h = x
    for norm, layer in zip(g.norms, g.layers, strict=True):
        h = h + layer(norm(h))[0]
    torch.testing.assert_close(g(x)[0], h - x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["local_attn", "griffin"])
@torch.no_grad()
def test_half_precision_model_stays_close_to_float64(name, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=name, vocab_size=40, d_model=32, n_layers=1, n_heads=2, window=16)
    half = LinearLM(cfg).to(dtype).eval()
    ids = torch.randint(0, 40, (2, 100), generator=torch.Generator().manual_seed(1))
    out = half(ids)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    wide = LinearLM(cfg).double().eval()
    wide.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
    assert rel_rms(out.logits, wide(ids).logits) <= 8 * torch.finfo(dtype).eps
    # decoding the half model continues its own forward to about its rounding
    states = half(ids[:, :60]).states
    logits, _ = half.step(ids[:, 60], states)
    assert rel_rms(logits, half(ids[:, :61]).logits[:, -1]) <= 8 * torch.finfo(dtype).eps
