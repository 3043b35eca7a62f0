"""The S4D op: its FFT convolution, the recurrence (decode step, and the parallel scan used for packed
sequences) and the naive loop agree (outputs, final states, every input gradient) in float32 at relative
RMS <= 1e-5 over odd sizes, both initialisations and step sizes dt from 1e-3 to 1; the convolution equals
the recurrence in float64 to rounding; the naive loop against the closed-form impulse response."""

from __future__ import annotations

import math

import pytest
import torch
from ssm_cases import TOL, as64, assert_match, check_forms_against_naive, grads, rel_rms

from alloyml.errors import InvalidInputError
from alloyml.kernels import s4d, s4d_step
from alloyml.kernels.s4d import naive_s4d, s4d_init

DT_RANGES = [(1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0)]


def make(b, T, H, N, init, dt_range, gen, dtype=torch.float32, state_rows=None):
    ar, ai = s4d_init(init, H, N)
    low, high = dt_range
    log_dt = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(H, generator=gen, dtype=torch.float64)
    inputs = {
        "u": torch.randn(b, T, H, generator=gen, dtype=torch.float64),
        "log_dt": log_dt,
        "A_real_log": ar.double() + 0.2 * torch.randn(H, N // 2, generator=gen, dtype=torch.float64),
        "A_imag": ai.double(),
        "C": torch.randn(H, N // 2, 2, generator=gen, dtype=torch.float64) / math.sqrt(N),
        "D": torch.randn(H, generator=gen, dtype=torch.float64),
        "initial_state": torch.randn(state_rows or b, H, N // 2, generator=gen, dtype=torch.complex128),
    }
    return {k: v.to(torch.complex64 if v.is_complex() and dtype == torch.float32 else
                    (v.dtype if v.is_complex() else dtype)).requires_grad_() for k, v in inputs.items()}


def run(backend, cu_seqlens=None):
    def fn(a):
        return s4d(a["u"], a["log_dt"], a["A_real_log"], a["A_imag"], a["C"], a["D"],
                   initial_state=a["initial_state"], cu_seqlens=cu_seqlens, backend=backend)
    return fn


def run_steps(a):
    state, ys = a["initial_state"], []
    for t in range(a["u"].shape[1]):
        y, state = s4d_step(a["u"][:, t], a["log_dt"], a["A_real_log"], a["A_imag"], a["C"], a["D"], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def run_whole_scan(a):  # the parallel-scan form on one sequence (a packing of one)
    return run("auto", torch.tensor([0, a["u"].shape[1]]))(a)


@pytest.mark.parametrize("dt_range", DT_RANGES)
@pytest.mark.parametrize(("b", "T", "H", "N", "init"), [(2, 1, 3, 2, "lin"), (3, 37, 5, 8, "inv"),
                                                        (1, 301, 17, 8, "lin"), (1, 200, 3, 16, "inv")])
def test_convolution_recurrence_and_naive_agree(dt_range, b, T, H, N, init):
    inputs = make(b, T, H, N, init, dt_range, torch.Generator().manual_seed(T * H))
    forms = [run("auto"), run_steps] + ([run_whole_scan] if b == 1 else [])
    check_forms_against_naive(run("naive"), forms, inputs)


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_convolution_equals_recurrence_in_float64(init):
    inputs = make(1, 150, 4, 8, init, DT_RANGES[1], torch.Generator().manual_seed(9), dtype=torch.float64)
    conv = grads(run("auto"), inputs, torch.Generator().manual_seed(3))
    rec = grads(run_steps, inputs, torch.Generator().manual_seed(3))
    for got, want in [(conv[0], rec[0]), (conv[1], rec[1]), *((conv[2][k], rec[2][k]) for k in conv[2])]:
        assert rel_rms(got, want) <= 1e-12


def test_packed_sequences_restart_from_their_initial_state():
    cu = torch.tensor([0, 1, 40, 41, 97, 130])
    inputs = make(1, 130, 5, 8, "inv", DT_RANGES[1], torch.Generator().manual_seed(5), state_rows=5)
    want = grads(run("naive", cu), as64(inputs), torch.Generator().manual_seed(2))
    assert_match(grads(run("auto", cu), inputs, torch.Generator().manual_seed(2)), want)


def test_naive_impulse_response_is_the_closed_form_kernel():
    # u = (1, 0, 0, ...), no D, x0 = 0: y_l = K_l = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n)^l),
    # written here with exp(l dt A) (no recurrence), for S4D-Lin's A_n = -1/2 + i pi n
    H, N, T, dt = 2, 6, 40, 0.05
    ar, ai = s4d_init("lin", H, N)
    assert torch.allclose(ai[0], math.pi * torch.arange(3.0)) and torch.allclose(ar.exp(), torch.full((H, 3), 0.5))
    C = torch.randn(H, N // 2, dtype=torch.complex128)
    u = torch.zeros(1, T, H, dtype=torch.float64)
    u[0, 0] = 1
    y, _ = naive_s4d(u, torch.full((H,), math.log(dt), dtype=torch.float64), ar.double(), ai.double(), C)
    A = torch.complex(-ar[0].double().exp(), ai[0].double())  # -1/2 + i pi n, as rounded to float32
    lag = torch.arange(T, dtype=torch.float64)[:, None, None]
    K = 2 * (C * (torch.exp(dt * A) - 1) / A * torch.exp(lag * dt * A)).sum(-1).real  # [T, H]
    torch.testing.assert_close(y[0], K, rtol=1e-12, atol=1e-14)


def test_inv_init_follows_the_inverse_law():
    _, ai = s4d_init("inv", 1, 8)
    want = [(8 / math.pi) * (8 / (2 * n + 1) - 1) for n in range(4)]
    assert ai[0].tolist() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_computes_in_float32(dtype):
    a = {k: v.detach() for k, v in make(2, 120, 4, 8, "lin", DT_RANGES[1], torch.Generator().manual_seed(3)).items()}
    u = a["u"].to(dtype)
    y, f = s4d(u, a["log_dt"], a["A_real_log"], a["A_imag"], a["C"], a["D"])
    assert y.dtype == dtype and f.dtype == torch.complex64
    wy, wf = naive_s4d(u.double(), *(a[k].double() for k in ("log_dt", "A_real_log", "A_imag", "C", "D")))
    assert rel_rms(f, wf) <= TOL and rel_rms(y, wy) <= torch.finfo(dtype).eps


def test_bad_inputs_are_refused_before_work():
    u = torch.randn(1, 5, 3)
    ar, ai = s4d_init("lin", 3, 4)
    C, ldt = torch.zeros(3, 2, 2), torch.zeros(3)
    with pytest.raises(InvalidInputError, match="A_imag"):
        s4d(u, ldt, ar, ai[:, :1], C)
    with pytest.raises(InvalidInputError, match="C must"):
        s4d(u, ldt, ar, ai, torch.zeros(3, 2))
    with pytest.raises(InvalidInputError, match="initial_state"):
        s4d(u, ldt, ar, ai, C, initial_state=torch.zeros(1, 3, 3))
    with pytest.raises(InvalidInputError, match="init must"):
        s4d_init("legs", 3, 4)
    with pytest.raises(InvalidInputError, match="even"):
        s4d_init("lin", 3, 5)
