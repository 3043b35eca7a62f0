"""The RG-LRU op: the parallel scan and the step against the naive loop (outputs, final states, gradients
of x, both gates, Lambda and the initial state) in float32 at relative RMS <= 1e-5, over odd sizes,
packed sequences and base decays sigmoid(Lambda)^c from fast to ~10^4 steps; the naive loop itself
against a two-step case worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from ssm_cases import TIMESCALES, TOL, as64, assert_match, check_forms_against_naive, grads, rel_rms

from alloyml.errors import InvalidInputError
from alloyml.kernels import rglru, rglru_step
from alloyml.kernels.rglru import naive_rglru

C = 8.0


def make(b, T, D, timescale, gen, state_rows=None):
    low, high = timescale
    base = (low + (high - low) * torch.rand(D, generator=gen, dtype=torch.float64)) ** (1 / C)  # a^c in range
    inputs = {
        "x": torch.randn(b, T, D, generator=gen, dtype=torch.float64),
        "r": torch.rand(b, T, D, generator=gen, dtype=torch.float64) * 0.98 + 0.01,
        "i": torch.rand(b, T, D, generator=gen, dtype=torch.float64),
        "Lambda": torch.log(base / (1 - base)),
        "initial_state": torch.randn(state_rows or b, D, generator=gen, dtype=torch.float64),
    }
    return {k: v.float().requires_grad_() for k, v in inputs.items()}


def run_scan(backend, cu_seqlens=None):
    def fn(a):
        return rglru(a["x"], a["r"], a["i"], a["Lambda"], initial_state=a["initial_state"], cu_seqlens=cu_seqlens,
                     backend=backend)
    return fn


def run_steps(a):
    state, hs = a["initial_state"], []
    for t in range(a["x"].shape[1]):
        h, state = rglru_step(a["x"][:, t], a["r"][:, t], a["i"][:, t], a["Lambda"], state)
        hs.append(h)
    return torch.stack(hs, 1), state


@pytest.mark.parametrize("timescale", TIMESCALES)
@pytest.mark.parametrize(("b", "T", "D"), [(2, 1, 3), (3, 37, 5), (1, 301, 17)])
def test_scan_and_step_match_naive(timescale, b, T, D):
    inputs = make(b, T, D, timescale, torch.Generator().manual_seed(T * D))
    check_forms_against_naive(run_scan("naive"), [run_scan("auto"), run_steps], inputs)


@pytest.mark.parametrize("timescale", TIMESCALES[:2])
@pytest.mark.parametrize("cu", [[0, 1, 40, 41, 97, 130], [0, 32, 64, 65, 96, 130]])  # starts mid-chunk / on chunk edges
def test_packed_sequences_restart_from_their_initial_state(timescale, cu):
    cu = torch.tensor(cu)
    inputs = make(1, 130, 7, timescale, torch.Generator().manual_seed(5), state_rows=5)
    want = grads(run_scan("naive", cu), as64(inputs), torch.Generator().manual_seed(2))
    assert_match(grads(run_scan("auto", cu), inputs, torch.Generator().manual_seed(2)), want)
    i64, (start, end) = as64(inputs), cu[3:5].tolist()
    alone = {k: v[:, start:end] if v.dim() == 3 else v for k, v in i64.items()}
    h, f = run_scan("naive")({**alone, "initial_state": i64["initial_state"][3:4]})
    assert torch.equal(h, want[0][:, start:end]) and torch.equal(f, want[1][3:4])


def test_naive_matches_two_steps_by_hand():
    # sigmoid(Lambda) = 1/2, c = 8: r = 1/8 gives a = 1/2, r = 1/4 gives a = 1/4; h0 = 2
    #   h1 = 1/2 * 2 + sqrt(3/4) * (i1 x1),  h2 = 1/4 * h1 + sqrt(15/16) * (i2 x2)
    x = torch.tensor([[[3.0], [5.0]]], dtype=torch.float64)
    r = torch.tensor([[[0.125], [0.25]]], dtype=torch.float64)
    i = torch.tensor([[[0.5], [0.2]]], dtype=torch.float64)
    h, f = naive_rglru(x, r, i, torch.zeros(1, dtype=torch.float64), initial_state=torch.tensor([[2.0]]).double())
    h1 = 1 + math.sqrt(0.75) * 1.5
    h2 = h1 / 4 + math.sqrt(15 / 16) * 1.0
    torch.testing.assert_close(h.flatten(), torch.tensor([h1, h2], dtype=torch.float64), rtol=1e-14, atol=0)
    assert f.item() == pytest.approx(h2, rel=1e-14)


def test_closed_gate_keeps_the_state_and_adds_nothing():
    # r = 0: a = 1 exactly and sqrt(1 - a^2) = 0, the state passes unchanged, gradients stay finite
    x = torch.randn(1, 9, 4, requires_grad=True)
    lam = torch.randn(4, requires_grad=True)
    h0 = torch.randn(1, 4)
    h, f = rglru(x, torch.zeros(1, 9, 4), torch.ones(1, 9, 4), lam, initial_state=h0)
    assert torch.equal(h, h0[:, None].expand(1, 9, 4)) and torch.equal(f, h0)
    (h.sum() + f.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(lam.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_runs_the_recurrence_in_float32(dtype):
    a = {k: v.detach() for k, v in make(2, 200, 6, TIMESCALES[2], torch.Generator().manual_seed(3)).items()}
    x, r, i = (a[k].to(dtype) for k in ("x", "r", "i"))
    h, f = rglru(x, r, i, a["Lambda"])
    assert h.dtype == dtype and f.dtype == torch.float32
    want, wf = naive_rglru(x.double(), r.double(), i.double(), a["Lambda"].double())
    assert rel_rms(f, wf) <= TOL  # the state: float32 math on the rounded inputs
    assert rel_rms(h, want) <= torch.finfo(dtype).eps  # the output: one rounding to the input dtype


def test_bad_inputs_are_refused_before_work():
    x = torch.randn(1, 5, 3)
    lam = torch.zeros(3)
    with pytest.raises(InvalidInputError, match="Lambda"):
        rglru(x, x, x, torch.zeros(4))
    with pytest.raises(InvalidInputError, match="r must"):
        rglru(x, x[:, :4], x, lam)
    with pytest.raises(InvalidInputError, match="initial_state"):
        rglru(x, x, x, lam, initial_state=torch.zeros(2, 3))
    with pytest.raises(InvalidInputError, match="backend"):
        rglru(x, x, x, lam, backend="cuda")
    with pytest.raises(InvalidInputError, match="state"):
        rglru_step(x[:, 0], x[:, 0], x[:, 0], lam, torch.zeros(1, 4))
