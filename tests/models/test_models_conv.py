"""The long-convolution mixers (H3, Hyena) against loops written here from the papers' equations in
float64 (outputs and every parameter and input gradient): H3's FFT convolution against its shift-register
and diagonal recurrences, Hyena's FFT long convolutions against direct sums; their implicit filters and
half-precision behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.conv_mixers import H3, HYENA_LAG_SCALE, Hyena
from alloyml.models.model import LinearLM

TOL = 1e-5


def rel_rms(got, want):
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-300)).item()


def causal_fir(u, weight):
    """Depthwise causal FIR as a loop: u [B, T, C], weight [C, 1, W] (tap W - 1 on the current input)."""
    W, out = weight.shape[-1], []
    for t in range(u.shape[1]):
        y = sum(weight[:, 0, W - 1 - i] * u[:, t - i] for i in range(W) if t - i >= 0)
        out.append(y)
    return torch.stack(out, 1)


def h3_loop(m: H3, x):
    """H3 from its definition: shift SSM on k, per-head outer product with v, a ZOH diagonal SSM per entry
    run as a recurrence, contracted with q."""
    q, k, v = m.qkv(x).chunk(3, dim=-1)
    k = causal_fir(k, m.shift.weight)
    B, T, D = x.shape
    H = m.n_heads
    dh = D // H
    A = torch.complex(-m.A_real_log.exp(), m.A_imag)  # [ch, N2]
    dt = m.log_dt.exp()[:, None]
    A_bar, B_bar = torch.exp(dt * A), (torch.exp(dt * A) - 1) / A
    C = torch.complex(m.C[..., 0], m.C[..., 1])
    state = torch.zeros(B, *A.shape, dtype=A.dtype)
    outs = []
    for t in range(T):
        kt, vt, qt = (z[:, t].reshape(B, H, dh) for z in (k, v, q))
        kv = (kt[:, :, :, None] * vt[:, :, None, :]).reshape(B, -1)  # [B, H * dh * dh]
        state = A_bar * state + B_bar * kv[..., None]
        s = (2 * (C * state).sum(-1).real + m.D * kv).reshape(B, H, dh, dh)
        outs.append(torch.einsum("bhi,bhij->bhj", qt, s).reshape(B, D))
    return m.out(torch.stack(outs, 1))


def hyena_loop(m: Hyena, x):
    """Hyena from its definition: z^1 = v, z^(n+1) = x^n (h^n * z^n + D^n z^n), each long convolution a
    direct sum over lags."""
    u = causal_fir(m.in_proj(x), m.conv.weight) + m.conv.bias
    z, *gates = u.chunk(m.order + 1, dim=-1)
    T = x.shape[1]
    h = m.filter(T).double()
    for n, gate in enumerate(gates):
        conv = torch.stack([sum(h[n, lag] * z[:, t - lag] for lag in range(t + 1)) for t in range(T)], 1)
        z = gate * (conv + m.bias[n] * z)
    return m.out(z)


def mixer(kind, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=kind, d_model=12, n_heads=3, d_state=6, d_conv=3, **kw)
    return {"h3": H3, "hyena": Hyena}[kind](cfg).double()


@pytest.mark.parametrize(("kind", "loop"), [("h3", h3_loop), ("hyena", hyena_loop)])
@pytest.mark.parametrize("T", [1, 29])
def test_fast_forward_equals_the_loop_with_gradients(kind, loop, T):
    m = mixer(kind)
    x = torch.randn(2, T, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(T), requires_grad=True)
    w = torch.randn(2, T, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [x, *m.parameters()]
    got = m(x)[0]
    got_grads = torch.autograd.grad((got * w).sum(), leaves)
    want = loop(m, x)
    want_grads = torch.autograd.grad((want * w).sum(), leaves)
    assert rel_rms(got, want) <= 1e-12
    for g, wg in zip(got_grads, want_grads, strict=True):
        assert rel_rms(g, wg) <= 1e-10


@pytest.mark.parametrize("kind", ["h3", "hyena"])
def test_float32_forward_is_within_tolerance_of_float64(kind):
    m = mixer(kind)
    x = torch.randn(1, 301, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    want = m(x)[0]
    got = m.float()(x.float())[0]
    assert rel_rms(got.double(), want) <= TOL


def test_hyena_filters_depend_on_the_lag_alone_and_decay():
    f = mixer("hyena").filter
    with torch.no_grad():
        short, long = f(50), f(3000)
        # decoding extends the same filter, it does not stretch it (equal up to the BLAS kernel's blocking,
        # which depends on the number of rows on some CPUs)
        torch.testing.assert_close(short, long[:, :50], rtol=1e-5, atol=1e-6)
        lag = torch.arange(3000, dtype=torch.float32)[:, None] / HYENA_LAG_SCALE
        window = torch.exp(-f.decay_rates("cpu") * lag).unflatten(-1, (f.order, f.d)).transpose(0, 1)
        # the MLP's output is bounded by its last layer's weights (sin in [-1, 1]), so |h| <= bound * window
        bound = f.fc3.weight.abs().sum(-1) + f.fc3.bias.abs()  # [order * d]
        assert (long.abs() <= bound.view(f.order, 1, f.d) * window + 1e-6).all()
        # the fastest channel is at 1e-2 of its start by lag 0.3 S, the slowest by 1.5 S
        alpha = f.decay_rates("cpu")
        assert math.exp(-alpha[0].item() * 0.3) == pytest.approx(1e-2, rel=1e-5)
        assert math.exp(-alpha[f.d - 1].item() * 1.5) == pytest.approx(1e-2, rel=1e-5)
    assert math.isfinite(long.sum().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["h3", "hyena"])
@torch.no_grad()
def test_half_precision_model_stays_close_to_float64(kind, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=kind, vocab_size=40, d_model=32, n_layers=1, n_heads=2)
    half = LinearLM(cfg).to(dtype).eval()
    ids = torch.randint(0, 40, (2, 150), generator=torch.Generator().manual_seed(1))
    out = half(ids)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    if kind == "h3":
        assert out.states[0][-1].dtype == torch.complex64  # the diagonal SSM's state in float32
    wide = LinearLM(cfg).double().eval()
    wide.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
    # a few roundings of the activations between the layers, none compounding over the 150 steps
    assert rel_rms(out.logits.double(), wide(ids).logits) <= 8 * torch.finfo(dtype).eps


@torch.no_grad()
def test_distilled_hyena_decodes_in_constant_memory_close_to_the_original():
    from alloyml.models.conv_mixers import distill_hyena

    torch.manual_seed(0)
    cfg = ModelConfig(mixer="hyena", vocab_size=40, d_model=8, n_layers=2, n_heads=2)
    model = LinearLM(cfg).double().eval()
    ids = torch.randint(0, 40, (2, 60), generator=torch.Generator().manual_seed(1))
    original = model(ids).logits
    errors = distill_hyena(model, order=16, length=1024)  # the filters have decayed to ~1e-3 by 1024
    assert len(errors) == 2 and all(e.shape == (2, 8) for e in errors)
    assert max(e.median().item() for e in errors) <= 1e-2  # the fitted filters, over 1024 taps
    model.double()
    distilled = model(ids)
    assert rel_rms(distilled.logits, original) <= 1e-2
    # its own convolution (FFT, S4D op) equals its recurrence, token by token, and the state is fixed-size
    states, stepped = None, []
    for t in range(60):
        logits, states = model.step(ids[:, t], states)
        stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), distilled.logits, rtol=0, atol=1e-10)
    sizes = [sum(t.numel() for s in model(ids[:, :n]).states for t in s) for n in (5, 60)]
    assert sizes[0] == sizes[1]
    # packed documents (the S4D op's scan form) equal each document alone
    packed = model(ids.reshape(1, -1), cu_seqlens=torch.tensor([0, 60, 120])).logits
    torch.testing.assert_close(packed, distilled.logits.reshape(1, 120, -1), rtol=0, atol=1e-10)


@torch.no_grad()
def test_distilled_hyena_survives_save_and_load(tmp_path):
    """A model with distilled Hyena layers saved and loaded: the loaded one has the same DistilledHyena
    layers (orders recorded in config.json), the same tensors, and generates the same tokens greedily."""
    import json

    from alloyml.models.conv_mixers import DistilledHyena, distill_hyena
    from alloyml.models.saving import load_model, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(mixer="hyena", vocab_size=40, d_model=8, n_layers=3, n_heads=2)
    model = LinearLM(cfg).eval()
    distill_hyena(model, order=6, length=256)
    model.blocks[1].mixer = model.blocks[1].mixer.hyena  # one layer left undistilled: recorded per layer

    def greedy(m, prompt, n):
        logits, states = m(prompt).logits[:, -1], m(prompt).states
        out = []
        for _ in range(n):
            token = logits.argmax(-1)
            out.append(token)
            logits, states = m.step(token, states)
        return torch.stack(out, 1)

    prompt = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(1))
    before = greedy(model, prompt, 25)
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["distilled_hyena"] == {"0": 6, "2": 6}
    loaded = load_model(tmp_path / "m")
    assert [type(b.mixer).__name__ for b in loaded.blocks] == ["DistilledHyena", "Hyena", "DistilledHyena"]
    assert isinstance(loaded.blocks[2].mixer, DistilledHyena) and loaded.blocks[2].mixer.modes == 6
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    torch.testing.assert_close(loaded(prompt).logits, model(prompt).logits, rtol=0, atol=0)
    assert torch.equal(greedy(loaded, prompt, 25), before)
