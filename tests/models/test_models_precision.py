"""Low-precision models keep the numbers that compound over a sequence in float32: RetNet's decays and
Mamba's step sizes dt (and with them the decays exp(dt A)), checked against float64 after
`model.to(torch.bfloat16)`."""

import pytest
import torch

import alloyml.kernels
from alloyml.models.config import ModelConfig
from alloyml.models.mixers import Mamba
from alloyml.models.model import LinearLM


def _capture(monkeypatch, name):
    """Replace alloyml.kernels.<name> by a wrapper that records each call's positional arguments."""
    calls, original = [], getattr(alloyml.kernels, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(alloyml.kernels, name, wrapper)
    return calls


@torch.no_grad()
def test_retnet_decays_stay_float32_through_bfloat16(monkeypatch):
    """bfloat16 holds 1 - 2^-9 and closer to 1 as exactly 1: a decay cast with the model would leave
    12 of 16 heads at gamma = 1 (no forgetting). The decays the kernel receives must be float32 and
    equal to 1 - 2^(-5-h) as computed in float64."""
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="retnet", vocab_size=32, d_model=64, n_layers=1, n_heads=16)
    model = LinearLM(cfg).to(torch.bfloat16).eval()
    calls = _capture(monkeypatch, "linear_attn")
    model(torch.randint(0, 32, (1, 20)))
    (q, _, _, decay), = calls
    assert q.dtype == torch.bfloat16 and decay.dtype == torch.float32
    want = 1 - 2.0 ** (-5 - torch.arange(16, dtype=torch.float64))
    assert not (decay == 1.0).any()
    assert torch.equal(decay.double(), want)  # 1 - 2^-m is exact in float32 for m <= 24


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_mamba_decays_match_float64_in_low_precision(monkeypatch, dtype):
    """The scan's decays exp(dt A) against float64 from the same (rounded) weights and inputs.

    One-hot inputs make the input projection exact in any dtype (each output is one weight), so the
    only rounding left is the model's own arithmetic from there to the scan. dt sizable (softplus of
    about 3) and A up to -16 give |dt A| up to ~50, where a dt rounded to bfloat16 (2^-9 relative)
    would put exp(dt A) ~10% off; kept in float32 it stays within 1e-5."""
    torch.manual_seed(0)
    cfg = ModelConfig(mixer="mamba", vocab_size=32, d_model=32, n_heads=4, d_state=16)
    mixer = Mamba(cfg)
    mixer.dt_bias.data.fill_(3.0)
    mixer.A_log.data.uniform_(0.5, 2.77)  # A in [-16, -1.6]
    mixer = mixer.to(dtype)
    calls = _capture(monkeypatch, "selective_scan")
    x = torch.eye(32, dtype=dtype)[None, :20] * 2  # [1, 20, 32]: one channel per step
    mixer(x)
    (_, dt, A, _, _, _), = calls
    assert dt.dtype == torch.float32 and A.dtype == torch.float32

    W = mixer.in_proj.weight.double()  # [out, in], the rounded weights
    H = cfg.n_heads
    dt_raw = (x[0].double() @ W.T)[:, -H:]  # [20, H]: exact in any dtype (a weight times 2)
    dt_ref = torch.nn.functional.softplus(dt_raw + mixer.dt_bias.double())
    A_ref = -mixer.A_log.double().exp()
    got, want = (dt.double()[0] * A.double()).exp(), (dt_ref * A_ref).exp()
    assert (dt_ref * A_ref).abs().max() > 30  # the regime where rounding dt matters
    assert ((got - want).abs() / want).max() <= 1e-5

