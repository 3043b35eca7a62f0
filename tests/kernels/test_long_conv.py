"""The causal long convolution (Hyena's): the FFT form and the decoding step against the direct sum
(outputs, final input caches, every input gradient) at relative RMS <= 1e-5 in float32, odd sizes,
filters from a few steps to thousands of steps long, continuing from past inputs and packed; the direct
sum against a hand-worked case."""

from __future__ import annotations

import pytest
import torch
from ssm_cases import as64, assert_match, check_forms_against_naive, grads, rel_rms

from alloyml.errors import InvalidInputError
from alloyml.kernels.long_conv import long_conv, long_conv_step, naive_long_conv

LENGTH_SCALES = [3.0, 60.0, 1e4]  # the filter's e-folding lag: short, medium, ~no decay


def make(b, T, C, P, scale, gen, dtype=torch.float32, rows=None, extra=3):
    lag = torch.arange(P + T + extra, dtype=torch.float64)[:, None]
    inputs = {
        "u": torch.randn(b, T, C, generator=gen, dtype=torch.float64),
        "h": torch.randn(P + T + extra, C, generator=gen, dtype=torch.float64) * torch.exp(-lag / scale) / 3,
        "D": torch.randn(C, generator=gen, dtype=torch.float64),
        "initial_inputs": torch.randn(rows or b, P, C, generator=gen, dtype=torch.float64) if P else None,
    }
    return {k: None if v is None else v.to(dtype).requires_grad_() for k, v in inputs.items()}


def run(backend, cu_seqlens=None):
    def fn(a):
        return long_conv(a["u"], a["h"], a["D"], initial_inputs=a["initial_inputs"], cu_seqlens=cu_seqlens,
                         backend=backend)
    return fn


def run_steps(a):
    cache, ys = a["initial_inputs"], []
    for t in range(a["u"].shape[1]):
        y, cache = long_conv_step(a["u"][:, t], a["h"], a["D"], cache)
        ys.append(y)
    return torch.stack(ys, 1), cache


@pytest.mark.parametrize("scale", LENGTH_SCALES)
@pytest.mark.parametrize(("b", "T", "C", "P"), [(2, 1, 3, 0), (3, 37, 5, 4), (1, 129, 7, 0), (2, 61, 3, 17)])
def test_fft_step_and_direct_sum_agree(scale, b, T, C, P):
    inputs = make(b, T, C, P, scale, torch.Generator().manual_seed(T * C + P))
    check_forms_against_naive(run("naive"), [run("auto"), run_steps], inputs)


def test_packed_sequences_do_not_see_each_other():
    cu = torch.tensor([0, 1, 40, 41, 97, 131])
    inputs = make(1, 131, 4, 0, 60.0, torch.Generator().manual_seed(5))
    want = grads(run("naive", cu), as64(inputs), torch.Generator().manual_seed(2))
    got = grads(run("auto", cu), inputs, torch.Generator().manual_seed(2))
    assert_match(got, want)
    final = got[1]
    assert final.shape == (5, 131, 4)  # one right-aligned row per sequence, zeros before its start
    assert torch.equal(final[1, -39:], inputs["u"][0, 1:40].detach()) and not final[1, :-39].any()


def test_direct_sum_by_hand():
    # one channel, h = (1, 2, 3), past input 5, u = (1, -1): y_0 = 1*1 + 2*5 = 11, y_1 = 1*(-1) + 2*1 + 3*5 = 16
    h = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    u = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)
    y, cache = naive_long_conv(u, h, initial_inputs=torch.tensor([[[5.0]]], dtype=torch.float64))
    assert y.flatten().tolist() == [11.0, 16.0] and cache.flatten().tolist() == [5.0, 1.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_computes_in_float32(dtype):
    made = make(2, 150, 4, 5, 60.0, torch.Generator().manual_seed(3))
    a = {k: None if v is None else v.detach() for k, v in made.items()}
    u = a["u"].to(dtype)
    y, cache = long_conv(u, a["h"], a["D"], initial_inputs=a["initial_inputs"].to(dtype))
    assert y.dtype == dtype and cache.dtype == dtype
    wy, _ = naive_long_conv(u.double(), a["h"].double(), a["D"].double(),
                            initial_inputs=a["initial_inputs"].to(dtype).double())
    assert rel_rms(y, wy) <= torch.finfo(dtype).eps  # the output's own rounding, not T of them


def test_bad_inputs_are_refused_before_work():
    u, h = torch.randn(1, 5, 3), torch.randn(5, 3)
    with pytest.raises(InvalidInputError, match="h must hold at least P \\+ T = 7"):
        long_conv(u, h, initial_inputs=torch.zeros(1, 2, 3))
    with pytest.raises(InvalidInputError, match="h must have shape"):
        long_conv(u, torch.randn(5, 2))
    with pytest.raises(InvalidInputError, match="initial_inputs must be None"):
        long_conv(u, h, initial_inputs=torch.zeros(1, 0, 3), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(InvalidInputError, match="cache must have shape"):
        long_conv_step(u[:, 0], h, cache=torch.zeros(2, 1, 3))


def test_distilling_a_sum_of_modes_recovers_it_exactly():
    from alloyml.kernels.long_conv.distill import distill_filter

    lag = torch.arange(120, dtype=torch.float64)[:, None]
    h = torch.cat([0.9**lag * torch.cos(0.3 * lag) + 0.5 * 0.7**lag, -(0.95**lag) * torch.sin(1.1 * lag)], 1)
    h[0] += torch.tensor([0.25, 0.0], dtype=torch.float64)  # a skip term on tap 0 (the fit's D)
    fit = distill_filter(h, 3)
    assert fit.error.max() <= 1e-10
    got = sorted(fit.poles[0].tolist(), key=lambda z: (z.real, z.imag))
    want = sorted([0.7 + 0j, *(0.9 * torch.exp(torch.tensor([0.3j, -0.3j], dtype=torch.complex128))).tolist()],
                  key=lambda z: (z.real, z.imag))
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-9
    assert fit.D[0].item() == pytest.approx(0.25, abs=1e-9)


def test_distilled_state_space_convolution_equals_its_recurrence():
    """The distilled filter run as a long convolution of its kernel equals its recurrence (outputs and
    final state) in float64, on a filter the fit cannot match exactly (so the check is not of the filter)."""
    from alloyml.kernels.long_conv.distill import distill_filter

    gen = torch.Generator().manual_seed(0)
    lag = torch.arange(200, dtype=torch.float64)[:, None]
    h = torch.randn(200, 3, generator=gen, dtype=torch.float64) * torch.exp(-lag / 40)
    fit = distill_filter(h, 6)
    assert (fit.error > 1e-3).all() and (fit.poles.abs() <= 0.9999 + 1e-12).all()
    u = torch.randn(2, 150, 3, generator=gen, dtype=torch.float64)
    conv, _ = long_conv(u, fit.kernel(150))
    state, ys = None, []
    for t in range(150):
        y, state = fit.step(u[:, t], state)
        ys.append(y)
    assert rel_rms(torch.stack(ys, 1), conv) <= 1e-12
    assert rel_rms(state, fit.final_state(u)) <= 1e-12


def test_distilling_refuses_bad_orders():
    from alloyml.kernels.long_conv.distill import distill_filter

    with pytest.raises(InvalidInputError, match="order"):
        distill_filter(torch.randn(10, 2), 5)
    with pytest.raises(InvalidInputError, match="real"):
        distill_filter(torch.randn(10), 2)
