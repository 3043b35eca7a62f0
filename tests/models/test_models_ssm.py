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
