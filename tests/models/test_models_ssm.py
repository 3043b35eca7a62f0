"""The diagonal state-space mixers (LRU, Hawk, S4D, Mamba-1) in half precision: the recurrence runs in
float32 (complex64 for the LRU and S4D) whatever the model's dtype, and a half model's state matches
float64 math on the same (rounded) weights to about one rounding of the inputs."""

import pytest
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.model import LinearLM

SSM_MIXERS = ["lru", "hawk", "s4d", "mamba1"]


def rel_rms(got, want):
    got, want = (torch.view_as_real(t) if t.is_complex() else t for t in (got, want))
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mixer", SSM_MIXERS)
@torch.no_grad()
def test_half_precision_model_keeps_state_math_in_float32(mixer, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, vocab_size=40, d_model=32, n_layers=1, n_heads=2)
    half = LinearLM(cfg).to(dtype).eval()
    ids = torch.randint(0, 40, (2, 150), generator=torch.Generator().manual_seed(1))
    out = half(ids)
    state = out.states[0][-1]
    assert state.dtype in (torch.float32, torch.complex64)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    # the same rounded weights in float64: the half model's state is off only by its input rounding
    wide = LinearLM(cfg).double().eval()
    wide.load_state_dict({k: v.double() for k, v in half.state_dict().items()})
    want = wide(ids).states[0][-1]
    assert rel_rms(state, want) <= torch.finfo(dtype).eps  # ~one rounding of the inputs, not T of them


# ----------------------------------------------------------------------------------------------------------
# LinearLM re-initialises linears and embeddings GPT-2's way; the mixers whose own initialisation is part of
# the method keep it (model.reinit). Each check would fail under the N(0, 0.02) / zero-bias rule.

MAMBA_DT_MIN, MAMBA_DT_MAX = 1e-3, 1e-1  # both Mamba papers' dt_min, dt_max


def _dt_at_init(model, mixer):
    """The dt each channel (Mamba-1) or head (Mamba-2) starts at for a zero dt input, i.e. softplus(dt bias)."""
    layer = model.blocks[0].mixer
    if mixer == "mamba1":
        return torch.nn.functional.softplus(layer.dt_proj(torch.zeros(layer.dt_rank)))
    return torch.nn.functional.softplus(layer.dt_bias)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba"])
@torch.no_grad()
def test_mamba_dt_bias_init_survives_the_model_init(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, vocab_size=40, d_model=64, n_layers=2, n_heads=8)
    dt = _dt_at_init(LinearLM(cfg), mixer)
    # a zeroed bias would give softplus(0) = log 2 everywhere
    assert dt.min() >= MAMBA_DT_MIN * (1 - 1e-5) and dt.max() <= MAMBA_DT_MAX * (1 + 1e-5)
    # log-uniform over two decades: samples on both sides of the geometric middle, not one value
    middle = (MAMBA_DT_MIN * MAMBA_DT_MAX) ** 0.5
    assert dt.min() < middle < dt.max()


@torch.no_grad()
def test_mamba1_projections_keep_pytorch_default_init():
    torch.manual_seed(0)
    d = 64
    layer = LinearLM(ModelConfig(mixer="mamba1", vocab_size=40, d_model=d, n_layers=1, n_heads=8)).blocks[0].mixer
    # kaiming_uniform(a=sqrt 5): uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in); GPT-2's would be 0.02
    for linear, fan_in in [(layer.in_proj, d), (layer.x_proj, layer.width), (layer.dt_proj, layer.dt_rank)]:
        bound = fan_in**-0.5
        assert linear.weight.abs().max() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.15)


@torch.no_grad()
def test_hyena_filter_and_rwkv5_decay_keep_their_init_while_other_linears_are_reset():
    torch.manual_seed(0)
    hyena = LinearLM(ModelConfig(mixer="hyena", vocab_size=40, d_model=32, n_layers=1, n_heads=2)).blocks[0].mixer
    fc1 = hyena.filter.fc1
    assert fc1.weight.std().item() == pytest.approx(fc1.in_features**-0.5 / 3**0.5, rel=0.15)
    assert fc1.bias.abs().max() > 0  # default bias, not zeroed
    assert hyena.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.15)  # the LM's init elsewhere
    rwkv = LinearLM(ModelConfig(mixer="rwkv5", vocab_size=40, d_model=32, n_layers=1, n_heads=2)).blocks[0].mixer
    assert torch.equal(rwkv.decay_up.weight, torch.zeros_like(rwkv.decay_up.weight))  # decays start at decay_base
    assert rwkv.decay_down.weight.std().item() == pytest.approx(0.02, rel=0.15)


# ----------------------------------------------------------------------------------------------------------
# Causality of the whole model: changing token t leaves every output before t as it was (to float64 FFT
# round-off for the convolution mixers) and changes the output at t.

CAUSAL_MIXERS = ["lru", "hawk", "s4d", "mamba1", "mamba", "h3", "hyena", "griffin", "local_attn"]


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
@torch.no_grad()
def test_model_is_causal(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, vocab_size=40, d_model=32, n_layers=2, n_heads=2, window=8)
    model = LinearLM(cfg).double().eval()
    ids = torch.randint(0, 40, (2, 37), generator=torch.Generator().manual_seed(1))
    t = 21
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 7) % 40
    before, after = model(ids).logits, model(changed).logits
    scale = before.abs().max()
    assert (after[:, :t] - before[:, :t]).abs().max() <= 1e-12 * scale
    assert (after[:, t] - before[:, t]).abs().max() >= 1e-4 * scale
