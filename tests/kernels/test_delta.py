"""DeltaNet and Gated DeltaNet: the chunked WY / UT form and the step against the naive recurrence
(outputs, final states and every gradient, initial state included) in float32 at relative RMS <= 1e-5,
over odd lengths, chunk sizes 16 / 32 / 64, writing strengths beta in (0, 1) and up to 2 (DeltaNet, unit
keys), decays from strong to weak, and packed sequences; the naive recurrence itself against the exact
associative memory the delta rule is."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ssm_cases import TOL, as64, errors, grads

from alloyml.errors import InvalidInputError
from alloyml.kernels.delta import delta_rule, delta_rule_step, gated_delta_rule, gated_delta_rule_step
from alloyml.kernels.delta.naive import naive_delta_rule

# log-gate scale: g = logsigmoid(x + shift); shift -2 forgets within a few steps, +6 keeps ~400 steps
GATE_SHIFTS = [-2.0, 2.0, 6.0]


def make(B, T, H, K, V, gen, beta_max=1.0, gate_shift=None, state_rows=None, dtype=torch.float32):
    inputs = {
        "q": torch.randn(B, T, H, K, generator=gen, dtype=torch.float64),
        "k": F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1),
        "v": torch.randn(B, T, H, V, generator=gen, dtype=torch.float64),
        "beta": beta_max * torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        "initial_state": torch.randn(state_rows or B, H, K, V, generator=gen, dtype=torch.float64),
    }
    if gate_shift is not None:
        inputs["g"] = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=torch.float64) + gate_shift)
    return {n: x.to(dtype).requires_grad_() for n, x in inputs.items()}


def run_op(backend, chunk_size=64, cu_seqlens=None):
    def fn(i):
        kw = dict(initial_state=i["initial_state"], cu_seqlens=cu_seqlens, chunk_size=chunk_size, backend=backend)
        if "g" in i:
            return gated_delta_rule(i["q"], i["k"], i["v"], i["g"], i["beta"], **kw)
        return delta_rule(i["q"], i["k"], i["v"], i["beta"], **kw)
    return fn


def run_steps(i):
    state, outs = i["initial_state"], []
    for t in range(i["q"].shape[1]):
        token = [i[n][:, t] for n in ("q", "k", "v")]
        if "g" in i:
            o, state = gated_delta_rule_step(*token, i["g"][:, t], i["beta"][:, t], state)
        else:
            o, state = delta_rule_step(*token, i["beta"][:, t], state=state)
        outs.append(o)
    return torch.stack(outs, 1), state


def assert_all_within_tol(got, want):
    for name, err in errors(got, want).items():
        assert err <= TOL, (name, err)


@pytest.mark.parametrize(("T", "chunk_size", "beta_max"), [(37, 16, 1.0), (149, 32, 2.0), (149, 64, 1.0), (1, 16, 1.0)])
def test_deltanet_chunked_and_step_match_naive(T, chunk_size, beta_max):
    inputs = make(2, T, 3, 20, 12, torch.Generator().manual_seed(T + chunk_size), beta_max=beta_max)
    want = grads(run_op("naive"), as64(inputs), torch.Generator().manual_seed(1))
    assert_all_within_tol(grads(run_op("chunk", chunk_size), inputs, torch.Generator().manual_seed(1)), want)
    if T < 100:
        assert_all_within_tol(grads(run_steps, inputs, torch.Generator().manual_seed(1)), want)


@pytest.mark.parametrize("gate_shift", GATE_SHIFTS)
@pytest.mark.parametrize(("T", "chunk_size"), [(37, 16), (149, 32), (149, 64)])
def test_gated_deltanet_chunked_and_step_match_naive(gate_shift, T, chunk_size):
    inputs = make(2, T, 2, 20, 12, torch.Generator().manual_seed(T * chunk_size), gate_shift=gate_shift)
    want = grads(run_op("naive"), as64(inputs), torch.Generator().manual_seed(1))
    assert_all_within_tol(grads(run_op("chunk", chunk_size), inputs, torch.Generator().manual_seed(1)), want)
    if T < 100:
        assert_all_within_tol(grads(run_steps, inputs, torch.Generator().manual_seed(1)), want)


@pytest.mark.parametrize("gate_shift", [None, 2.0])
@pytest.mark.parametrize("T", [67, 64])  # padded, and a whole number of chunks
def test_time_major_inputs_match_naive(gate_shift, T):
    """Inputs whose time axis has stride 1 (what a convolution's output, transposed back, gives the delta
    mixers): buffers allocated like them would inherit those strides, and a product written into a
    reshaped copy of one would be lost."""
    inputs = make(2, T, 2, 16, 16, torch.Generator().manual_seed(T), gate_shift=gate_shift)
    for n in ("q", "k", "v"):
        x = inputs[n].detach()
        inputs[n] = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).requires_grad_()  # [B, T, H, D], T stride 1
        assert inputs[n].stride(1) == 1
    want = grads(run_op("naive"), as64(inputs), torch.Generator().manual_seed(1))
    assert_all_within_tol(grads(run_op("chunk", 32), inputs, torch.Generator().manual_seed(1)), want)


@pytest.mark.parametrize("gate_shift", [None, 2.0])
def test_packed_sequences_restart_from_their_initial_state(gate_shift):
    cu = torch.tensor([0, 1, 40, 41, 97, 130])
    inputs = make(1, 130, 2, 12, 8, torch.Generator().manual_seed(5), gate_shift=gate_shift, state_rows=5)
    want = grads(run_op("naive", cu_seqlens=cu), as64(inputs), torch.Generator().manual_seed(2))
    assert_all_within_tol(grads(run_op("chunk", 32, cu), inputs, torch.Generator().manual_seed(2)), want)
    i64 = as64(inputs)  # the naive packed run is each sequence on its own
    alone = run_op("naive")({**{n: x[:, 41:97] for n, x in i64.items() if n != "initial_state"},
                             "initial_state": i64["initial_state"][3:4]})
    assert torch.equal(alone[0], want[0][:, 41:97]) and torch.equal(alone[1], want[1][3:4])


def test_naive_is_an_exact_associative_memory():
    # Orthonormal keys written once each with beta = 1 from a zero state: S^T k_i = v_i for every i,
    # whatever the order (each write replaces what the key read before and touches no other key).
    gen = torch.Generator().manual_seed(0)
    keys = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0][:, :10].T  # [10, 16]
    values = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    k, v = keys[None, :, None], values[None, :, None]  # [1, 10, 1, 16], [1, 10, 1, 5]
    _, S = naive_delta_rule(k, k, v, torch.ones(1, 10, 1, dtype=torch.float64))
    torch.testing.assert_close(keys @ S[0, 0], values, rtol=0, atol=1e-12)
    # and rewriting key 0 with beta = 1 replaces its value, leaving the others
    new = torch.randn(1, 1, 1, 5, generator=gen, dtype=torch.float64)
    _, S2 = naive_delta_rule(k[:, :1], k[:, :1], new, torch.ones(1, 1, 1, dtype=torch.float64), initial_state=S)
    torch.testing.assert_close(keys[0] @ S2[0, 0], new[0, 0, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(keys[1:] @ S2[0, 0], values[1:], rtol=0, atol=1e-12)


def test_gates_decay_the_state_before_the_write():
    # one step of the gated form from S0 with k = 0: S1 = alpha S0 and o = scale * alpha S0^T q
    gen = torch.Generator().manual_seed(1)
    q, S0 = torch.randn(1, 1, 1, 4, generator=gen, dtype=torch.float64), torch.randn(1, 1, 4, 3, generator=gen,
                                                                                      dtype=torch.float64)
    g = torch.full((1, 1, 1), -0.7, dtype=torch.float64)
    o, S1 = naive_delta_rule(q, torch.zeros_like(q), torch.zeros(1, 1, 1, 3, dtype=torch.float64),
                             torch.ones(1, 1, 1, dtype=torch.float64), g, scale=0.5, initial_state=S0)
    torch.testing.assert_close(S1, torch.exp(torch.tensor(-0.7, dtype=torch.float64)) * S0)
    torch.testing.assert_close(o[0, 0, 0], 0.5 * q[0, 0, 0] @ S1[0, 0])


def test_l2_normalize_divides_q_and_k_by_their_norms():
    gen = torch.Generator().manual_seed(2)
    i = {n: x.detach() for n, x in make(1, 20, 2, 8, 4, gen, dtype=torch.float64).items()}
    q, k = 3 * i["q"], 0.2 * i["k"]
    got = delta_rule(q, k, i["v"], i["beta"], l2_normalize=True, backend="naive")
    want = delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), i["v"], i["beta"], backend="naive")
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)


def test_bad_inputs_are_refused():
    i = {n: x.detach() for n, x in make(1, 5, 2, 4, 3, torch.Generator().manual_seed(3)).items()}
    with pytest.raises(InvalidInputError, match="beta"):
        delta_rule(i["q"], i["k"], i["v"], i["beta"][..., :1])
    with pytest.raises(InvalidInputError, match="g must have shape"):
        gated_delta_rule(i["q"], i["k"], i["v"], i["beta"][None], i["beta"])
    with pytest.raises(InvalidInputError, match="chunk_size"):
        delta_rule(i["q"], i["k"], i["v"], i["beta"], chunk_size=0)
    with pytest.raises(InvalidInputError, match="initial_state"):
        delta_rule(i["q"], i["k"], i["v"], i["beta"], initial_state=torch.zeros(2, 2, 4, 3))


# Half-precision bounds: relative RMS of outputs and every gradient against the float64 recurrence on the
# same rounded inputs, about twice the worst measured (2026-12-03: fp16 3.2e-4, bf16 2.4e-3: the dtype's
# rounding of what is returned in it); the state is carried and returned in float32.
HALF_TOL = {torch.float16: 6e-4, torch.bfloat16: 5e-3}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate_shift", [None, 2.0])
def test_half_precision_inputs_against_float64(dtype, gate_shift):
    i = make(2, 63, 2, 32, 16, torch.Generator().manual_seed(0), gate_shift=gate_shift, dtype=torch.float64)
    rounded = {n: x.detach().to(dtype).double().requires_grad_() for n, x in i.items()}
    rounded["initial_state"] = i["initial_state"].detach().float().double().requires_grad_()
    want = grads(run_op("naive"), rounded, torch.Generator().manual_seed(1))
    half = {n: x.detach().to(dtype).requires_grad_() for n, x in rounded.items()}
    half["initial_state"] = rounded["initial_state"].detach().float().requires_grad_()
    got = grads(run_op("chunk"), half, torch.Generator().manual_seed(1))
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    err = errors(got, want)
    assert err["final"] <= TOL, err
    assert max(err.values()) <= HALF_TOL[dtype], err
