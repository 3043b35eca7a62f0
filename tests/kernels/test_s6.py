"""Mamba-1's selective scan (S6): the parallel scan and the step against the naive loop (outputs, final
states, gradients of x, dt, A, B, C, D, z and the initial state) in float32 at relative RMS <= 1e-5, over
odd sizes, packed sequences and step sizes dt from 1e-3 to 1; the naive loop against two steps by hand."""

from __future__ import annotations

import math

import pytest
import torch
from ssm_cases import TOL, as64, assert_match, check_forms_against_naive, grads, rel_rms

from alloyml.errors import InvalidInputError
from alloyml.kernels import s6, s6_step
from alloyml.kernels.s6 import naive_s6

DT_RANGES = [(1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0)]


def make(b, T, D, N, dt_range, gen, state_rows=None, gate=True):
    low, high = dt_range
    log_dt = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(b, T, D, generator=gen, dtype=torch.float64)
    inputs = {
        "x": torch.randn(b, T, D, generator=gen, dtype=torch.float64),
        "dt": log_dt.exp(),
        "A": -torch.arange(1, N + 1, dtype=torch.float64).expand(D, N) * (0.5 + torch.rand(D, N, generator=gen)),
        "B": torch.randn(b, T, N, generator=gen, dtype=torch.float64),
        "C": torch.randn(b, T, N, generator=gen, dtype=torch.float64),
        "D": torch.randn(D, generator=gen, dtype=torch.float64),
        "z": torch.randn(b, T, D, generator=gen, dtype=torch.float64) if gate else None,
        "initial_state": torch.randn(state_rows or b, D, N, generator=gen, dtype=torch.float64),
    }
    return {k: None if v is None else v.float().requires_grad_() for k, v in inputs.items()}


def run(backend, cu_seqlens=None):
    def fn(a):
        return s6(a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], initial_state=a["initial_state"],
                  cu_seqlens=cu_seqlens, backend=backend)
    return fn


def run_steps(a):
    state, ys = a["initial_state"], []
    for t in range(a["x"].shape[1]):
        z = None if a["z"] is None else a["z"][:, t]
        y, state = s6_step(a["x"][:, t], a["dt"][:, t], a["A"], a["B"][:, t], a["C"][:, t], a["D"], z, state)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("dt_range", DT_RANGES)
@pytest.mark.parametrize(("b", "T", "D", "N", "gate"), [(2, 1, 3, 2, True), (3, 37, 5, 7, False),
                                                        (1, 201, 9, 16, True)])
def test_scan_and_step_match_naive(dt_range, b, T, D, N, gate):
    inputs = make(b, T, D, N, dt_range, torch.Generator().manual_seed(T * D), gate=gate)
    check_forms_against_naive(run("naive"), [run("auto"), run_steps], inputs)


def test_packed_sequences_restart_from_their_initial_state():
    cu = torch.tensor([0, 1, 40, 41, 97, 130])
    inputs = make(1, 130, 6, 5, DT_RANGES[1], torch.Generator().manual_seed(5), state_rows=5)
    want = grads(run("naive", cu), as64(inputs), torch.Generator().manual_seed(2))
    assert_match(grads(run("auto", cu), inputs, torch.Generator().manual_seed(2)), want)


def test_naive_matches_two_steps_by_hand():
    # D = N = 1, A = -ln 2, dt = (1, 2): A_bar = (1/2, 1/4); x = (3, 5), B = (1, 2), C = (2, 1), h0 = 4, no skip
    #   h1 = 2 + 1 * 3 * 1 = 5, y1 = 10;   h2 = 5/4 + 2 * 5 * 2 = 21.25, y2 = 21.25
    x = torch.tensor([3.0, 5.0], dtype=torch.float64).view(1, 2, 1)
    dt = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1)
    A = torch.tensor([[-math.log(2)]], dtype=torch.float64)
    B = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1)
    C = torch.tensor([2.0, 1.0], dtype=torch.float64).view(1, 2, 1)
    y, h = naive_s6(x, dt, A, B, C, initial_state=torch.full((1, 1, 1), 4.0, dtype=torch.float64))
    torch.testing.assert_close(y.flatten(), torch.tensor([10.0, 21.25], dtype=torch.float64), rtol=1e-14, atol=0)
    assert h.item() == pytest.approx(21.25, rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_keep_the_state_in_float32(dtype):
    a = {k: v.detach() for k, v in make(2, 100, 4, 8, DT_RANGES[2], torch.Generator().manual_seed(3)).items()}
    half = {k: v.to(dtype) for k, v in a.items() if k in ("x", "B", "C", "z")}
    y, f = s6(half["x"], a["dt"], a["A"], half["B"], half["C"], a["D"], half["z"])
    assert y.dtype == dtype and f.dtype == torch.float32
    wy, wf = naive_s6(half["x"].double(), a["dt"].double(), a["A"].double(), half["B"].double(),
                      half["C"].double(), a["D"].double(), half["z"].double())
    assert rel_rms(f, wf) <= TOL and rel_rms(y, wy) <= torch.finfo(dtype).eps


def test_bad_inputs_are_refused_before_work():
    x = torch.randn(1, 5, 3)
    A, BC = -torch.ones(3, 4), torch.randn(1, 5, 4)
    with pytest.raises(InvalidInputError, match="A must lie"):
        s6(x, x.abs(), -A, BC, BC)
    with pytest.raises(InvalidInputError, match="B must"):
        s6(x, x.abs(), A, BC[..., :2], BC)
    with pytest.raises(InvalidInputError, match="z must"):
        s6(x, x.abs(), A, BC, BC, z=x[:, :2])
    with pytest.raises(InvalidInputError, match="initial_state"):
        s6(x, x.abs(), A, BC, BC, initial_state=torch.zeros(1, 3, 3))
