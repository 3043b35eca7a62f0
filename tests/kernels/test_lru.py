"""The LRU op: the parallel scan and the step against the naive loop (outputs, final states, every input
gradient) in float32 at relative RMS <= 1e-5, over odd sizes, packed sequences and decay timescales from
a few steps to ~10^4 steps; the naive loop itself against the closed form of a constant input."""

from __future__ import annotations

import pytest
import torch
from ssm_cases import TIMESCALES, TOL, as64, assert_match, check_forms_against_naive, grads, rel_rms

from alloyml.errors import InvalidInputError
from alloyml.kernels import lru, lru_step
from alloyml.kernels.lru import naive_lru


def make(b, T, N, timescale, gen, dtype=torch.float32, gamma=True, state_rows=None):
    low, high = timescale
    modulus = low + (high - low) * torch.rand(N, generator=gen, dtype=torch.float64)
    inputs = {
        "x": torch.randn(b, T, N, generator=gen, dtype=torch.complex128),
        "nu_log": (-modulus.log()).log(),
        "theta_log": (torch.rand(N, generator=gen, dtype=torch.float64) * 3).log(),
        "gamma_log": torch.randn(N, generator=gen, dtype=torch.float64) * 0.3 if gamma else None,
        "initial_state": torch.randn(state_rows or b, N, generator=gen, dtype=torch.complex128),
    }
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    return {k: None if v is None else v.to(cdtype if v.is_complex() else dtype).requires_grad_()
            for k, v in inputs.items()}


def run_scan(backend, cu_seqlens=None):
    def fn(i):
        return lru(i["x"], i["nu_log"], i["theta_log"], i["gamma_log"], initial_state=i["initial_state"],
                   cu_seqlens=cu_seqlens, backend=backend)
    return fn


def run_steps(i):
    state, hs = i["initial_state"], []
    for t in range(i["x"].shape[1]):
        h, state = lru_step(i["x"][:, t], i["nu_log"], i["theta_log"], i["gamma_log"], state)
        hs.append(h)
    return torch.stack(hs, 1), state


@pytest.mark.parametrize("timescale", TIMESCALES)
@pytest.mark.parametrize(("b", "T", "N", "gamma"), [(2, 1, 3, True), (3, 37, 5, False), (1, 301, 17, True)])
def test_scan_and_step_match_naive(timescale, b, T, N, gamma):
    gen = torch.Generator().manual_seed(T * N)
    inputs = make(b, T, N, timescale, gen, gamma=gamma)
    check_forms_against_naive(run_scan("naive"), [run_scan("auto"), run_steps], inputs)


@pytest.mark.parametrize("timescale", TIMESCALES[:2])
def test_packed_sequences_restart_from_their_initial_state(timescale):
    cu = torch.tensor([0, 1, 40, 41, 97, 130])
    gen = torch.Generator().manual_seed(5)
    inputs = make(1, 130, 7, timescale, gen, state_rows=5)
    want = grads(run_scan("naive", cu), as64(inputs), torch.Generator().manual_seed(2))
    assert_match(grads(run_scan("auto", cu), inputs, torch.Generator().manual_seed(2)), want)
    # and the naive packed run is each sequence on its own
    i64 = as64(inputs)
    h, f = run_scan("naive")({**i64, "x": i64["x"][:, 40:41], "initial_state": i64["initial_state"][2:3]})
    assert torch.equal(h, want[0][:, 40:41]) and torch.equal(f, want[1][2:3])


def test_naive_matches_the_closed_form_of_a_constant_input():
    # h_T = lambda^T h0 + gamma x (1 - lambda^T) / (1 - lambda) for x_t = x at every step
    gen = torch.Generator().manual_seed(0)
    i = make(2, 50, 4, TIMESCALES[1], gen, dtype=torch.float64)
    x = i["x"][:, :1].detach().expand(2, 50, 4)
    lam = torch.polar(torch.exp(-i["nu_log"].exp()), i["theta_log"].exp()).detach()
    gamma = i["gamma_log"].exp().detach()
    h0 = i["initial_state"].detach()
    t = torch.arange(1, 51, dtype=torch.float64)[None, :, None]
    want = lam**t * h0[:, None] + gamma * x * (1 - lam**t) / (1 - lam)
    h, f = naive_lru(x, i["nu_log"].detach(), i["theta_log"].detach(), i["gamma_log"].detach(), initial_state=h0)
    torch.testing.assert_close(h, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, want[:, -1], rtol=1e-12, atol=1e-12)


def test_default_gamma_normalises_white_input():
    # gamma = sqrt(1 - |lambda|^2): the stationary E|h|^2 of unit white input is 1 for every channel
    with torch.no_grad():
        mod = torch.tensor([0.5, 0.9, 0.99])
        x = torch.randn(64, 4000, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
        h, _ = lru(x, (-mod.log()).log(), torch.zeros(3))
    power = h[:, 2000:].abs().pow(2).mean((0, 1))
    torch.testing.assert_close(power, torch.ones(3), rtol=0.05, atol=0)  # E|x|^2 = 1 for complex randn


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_runs_the_recurrence_in_float32(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 200, 6, generator=gen).to(dtype)
    nu = torch.full((6,), 0.999).log().neg().log()
    th = torch.rand(6, generator=gen).log()
    h, f = lru(x, nu, th)
    assert h.dtype == torch.complex64
    want, wf = naive_lru(x.double(), nu.double(), th.double())
    assert rel_rms(h, want) <= TOL and rel_rms(f, wf) <= TOL


def test_bad_inputs_are_refused_before_work():
    x = torch.randn(1, 5, 3)
    p = torch.zeros(3)
    with pytest.raises(InvalidInputError, match="nu_log"):
        lru(x, torch.zeros(4), p)
    with pytest.raises(InvalidInputError, match="initial_state"):
        lru(x, p, p, initial_state=torch.zeros(2, 3))
    with pytest.raises(InvalidInputError, match="cu_seqlens"):
        lru(x, p, p, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(InvalidInputError, match="backend"):
        lru(x, p, p, backend="cuda")
    with pytest.raises(InvalidInputError, match="T >= 1"):
        lru(x[:, :0], p, p)
    with pytest.raises(InvalidInputError, match="state"):
        lru_step(x[:, 0], p, p, torch.zeros(3), torch.zeros(1, 4))
