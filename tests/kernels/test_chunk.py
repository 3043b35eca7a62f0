"""The chunked PyTorch path (and the decode step) against the naive float64 recurrence."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import OPS, make_case, rel_rms, run_with_grads

TOL = 1e-5


def assert_matches_naive(case, inputs, h0, backend="chunk", tol=TOL, device="cpu"):
    """Outputs, final state and every gradient of `backend` in float32 against the naive recurrence in
    float64, to relative RMS `tol`.

    One case is ill-conditioned in any float32 arithmetic: with normalize=True and a strong decay,
    o_t ~ v_t whatever q_t is, so dq is a cancellation remainder. There the bar is the naive float32
    recurrence's own error (times 3), which `tol` still bounds wherever that error is small."""
    want = run_with_grads(case, inputs, h0, torch.float64, "naive")
    normalized = case.kwargs.get("normalize", False)
    naive32 = run_with_grads(case, inputs, h0, torch.float32, "naive") if normalized else want
    got = run_with_grads(case, inputs, h0, torch.float32, backend, device=device)
    assert set(got) == set(want)
    for key in want:
        assert torch.isfinite(got[key]).all(), key
        bar = max(tol, 3 * rel_rms(naive32[key], want[key]))
        assert rel_rms(got[key], want[key]) <= bar, (key, rel_rms(got[key], want[key]), bar)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize(
    ("T", "K", "V", "scale"),
    [(63, 60, 20, 0.1), (63, 60, 20, 10.0), (1, 8, 8, 1.0), (130, 16, 24, 3.0)],
)
def test_chunk_matches_naive_outputs_state_and_every_gradient(name, T, K, V, scale):
    case = OPS[name]
    inputs, h0 = make_case(case, B=2, T=T, H=2, K=K, V=V, scale=scale)
    assert_matches_naive(case, inputs, h0)


@pytest.mark.parametrize("name", sorted(OPS))
def test_huge_gates_stay_finite_and_accurate(name):
    """Gate scale 50 drives exp(cumulative gate) far below float32's range within one chunk."""
    case = OPS[name]
    inputs, h0 = make_case(case, B=1, T=150, H=2, K=16, V=16, scale=50.0, seed=3)
    assert_matches_naive(case, inputs, h0)


# Half-precision bounds per op: relative RMS of outputs, final state and every gradient against the
# float64 recurrence on the same (rounded) inputs, worst over the shapes of the test below; each bound is
# about twice the worst measured (measured, 2026-12-03: see README's kernels section). Outputs and
# gradients are returned in the input dtype, so the bar is its rounding (2^-9 bf16, 2^-12 fp16) plus the
# float32 arithmetic inside. The normalised, decayed linear attention's dq is ill-conditioned (o ~ v
# whatever q is, as in assert_matches_naive), hence its looser bound.
HALF_TOL = {
    torch.bfloat16: {"gla": 5e-3, "linear_attn": 8e-3, "linear_attn_decay_norm": 5e-2,
                     "linear_attn_nodecay_norm": 1.2e-2, "selective_scan": 1.6e-2},
    torch.float16: {"gla": 6e-4, "linear_attn": 6e-4, "linear_attn_decay_norm": 6e-3,
                    "linear_attn_nodecay_norm": 1.5e-3, "selective_scan": 1.5e-3},
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(OPS))
def test_half_precision_inputs_against_float64(name, dtype):
    case = OPS[name]
    worst = {}
    for seed, (T, gate_scale) in enumerate([(63, 1.0), (200, 0.1), (200, 10.0)]):
        inputs, h0 = make_case(case, B=2, T=T, H=2, K=32, V=16, scale=gate_scale, seed=seed)
        rounded = {n: x.to(dtype).double() for n, x in inputs.items()}  # the values the dtype can hold
        h0 = h0.float().double()
        want = run_with_grads(case, rounded, h0, torch.float64, "naive")
        got = run_with_grads(case, rounded, h0, dtype, "chunk")
        for key in want:
            worst[key] = max(worst.get(key, 0.0), rel_rms(got[key], want[key]))
    o, state = case({n: x.to(dtype) for n, x in inputs.items()}, initial_state=h0.float(), backend="chunk")
    assert o.dtype == dtype and state.dtype == torch.float32
    assert max(worst.values()) <= HALF_TOL[dtype][name], worst
    assert worst["final_state"] <= 1e-4, worst  # the state is carried in float32


@pytest.mark.parametrize("name", sorted(OPS))
def test_prefill_then_decode_equals_one_forward(name):
    case = OPS[name]
    inputs, h0 = make_case(case, B=2, T=63, H=2, K=20, V=12, scale=1.0, seed=7)
    inputs = {n: x.float() for n, x in inputs.items()}
    full_o, full_state = case(inputs, initial_state=h0.float(), backend="chunk")
    prefix = {n: (x[:, :40] if n in case.time_args else x) for n, x in inputs.items()}
    pre_o, state = case(prefix, initial_state=h0.float(), backend="chunk")
    dec_o, state = case.decode(inputs, state, t0=40)
    assert rel_rms(torch.cat([pre_o, dec_o], dim=1), full_o) <= TOL
    assert rel_rms(state, full_state) <= TOL


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_packed_varlen_equals_loop_over_sequences(name, backend):
    case = OPS[name]
    lengths = [5, 70, 1, 30]
    inputs, h0 = make_case(case, B=1, T=sum(lengths), H=2, K=12, V=10, scale=2.0, seed=11)
    inputs = {n: x.float().requires_grad_() for n, x in inputs.items()}
    h0 = torch.cat([h0.float()] * len(lengths)) + torch.arange(len(lengths)).view(-1, 1, 1, 1)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    o, state = case(inputs, initial_state=h0, cu_seqlens=cu_seqlens, backend=backend)
    grads = torch.autograd.grad(o.sum() + state.sum(), list(inputs.values()))

    loop_o, loop_state = [], []
    for i, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
        part = {n: (x[:, start:end] if n in case.time_args else x) for n, x in inputs.items()}
        o_i, s_i = case(part, initial_state=h0[i : i + 1], backend=backend)
        loop_o.append(o_i)
        loop_state.append(s_i)
    loop_o, loop_state = torch.cat(loop_o, dim=1), torch.cat(loop_state)
    loop_grads = torch.autograd.grad(loop_o.sum() + loop_state.sum(), list(inputs.values()))
    assert rel_rms(o, loop_o) <= TOL
    assert rel_rms(state, loop_state) <= TOL
    for got, want in zip(grads, loop_grads, strict=True):
        assert rel_rms(got, want) <= TOL


@pytest.mark.parametrize("name", sorted(OPS))
def test_no_final_state_when_not_asked(name):
    case = OPS[name]
    inputs, _ = make_case(case, B=1, T=9, H=1, K=4, V=4)
    for backend in ("naive", "chunk"):
        o, state = case(inputs, output_final_state=False, backend=backend)
        assert state is None and o.shape[:2] == (1, 9)


def _gla_paths_taken(monkeypatch):
    """Records which per-channel path the chunk backend takes: "factored" or "sub-chunked"."""
    from alloyml.kernels.common import chunk_torch

    taken = []
    factored, sub_chunked = chunk_torch.VectorChunk.apply, chunk_torch._sub_chunked
    monkeypatch.setattr(chunk_torch.VectorChunk, "apply", lambda *a: (taken.append("factored"), factored(*a))[1])
    monkeypatch.setattr(chunk_torch, "_sub_chunked",
                        lambda *a: (taken.append("sub-chunked"), sub_chunked(*a))[1])
    return taken


@pytest.mark.parametrize(("gate_scale", "path"), [(0.05, "factored"), (0.4, "factored"), (3.0, "sub-chunked"),
                                                  (50.0, "sub-chunked")])
def test_gla_factored_chunk_only_where_the_gates_allow_it(gate_scale, path, monkeypatch):
    """The factored whole-chunk form (exp(G) and exp(-G) per chunk) is chosen only where every chunk's gate
    sum is >= -FACTORED_GATE_LIMIT; either path matches the float64 recurrence, gradients included, over
    several chunks with a ragged last one and an initial state."""
    taken = _gla_paths_taken(monkeypatch)
    case = OPS["gla"]
    inputs, h0 = make_case(case, B=2, T=101, H=2, K=24, V=20, scale=gate_scale, seed=5)
    assert_matches_naive(case, inputs, h0)
    assert set(taken) == {path}, taken


def test_gla_factored_chunk_is_not_chosen_where_values_are_not_read(monkeypatch):
    """Where the gates' values may not be read (CUDA, torch.compile), the sub-chunked path runs, whose
    choice needs no value: no host read, no data-dependent branch."""
    from alloyml.kernels.common import checks

    taken = _gla_paths_taken(monkeypatch)
    monkeypatch.setattr(checks, "values_readable", lambda x: False)
    case = OPS["gla"]
    inputs, h0 = make_case(case, B=1, T=40, H=1, K=8, V=8, scale=0.05, seed=1)
    assert_matches_naive(case, inputs, h0)
    assert set(taken) == {"sub-chunked"}, taken


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("plain_q", [True, False])
def test_scalar_chunk_backward_equals_autograd_of_its_formula(shared, plain_q):
    """ScalarChunk's written-out backward (on the joined [A | q'] and [v; S] buffers) against autograd
    through the formula it implements, written out plainly with a Python loop for the carry: every
    input's gradient, decays shared over the batch ([1, H, N, 1, 1], as RetNet's) or not, float64."""
    from alloyml.kernels.common.chunk_torch import ScalarChunk

    gen = torch.Generator().manual_seed(3)
    B, H, N, C, K, V, scale = 2, 3, 4, 8, 5, 6, 0.7

    def rand(*shape, positive=False):
        x = torch.rand(*shape, generator=gen, dtype=torch.float64) if positive else \
            torch.randn(*shape, generator=gen, dtype=torch.float64)
        return x.requires_grad_()

    lead = (1 if shared else B, H)
    q, k, v = rand(B, H, N, C, K), rand(B, H, N, C, K), rand(B, H, N, C, V)
    D = (rand(*lead, N if not shared else 1, C, C, positive=True) * torch.ones(C, C).tril().double()).detach()
    D.requires_grad_()
    eq = None if plain_q else rand(*lead, N, C, 1, positive=True)
    ek, decay, h0 = rand(*lead, N, C, 1, positive=True), rand(*lead, N, 1, 1, positive=True), rand(B, H, K, V)
    inputs = [x for x in (q, k, v, D, eq, ek, decay, h0) if x is not None]

    def formula():
        qi = q * scale if eq is None else q * eq
        S, outs = h0, []
        for n in range(N):
            outs.append((q[:, :, n] @ k[:, :, n].transpose(-1, -2) * D[:, :, min(n, D.shape[2] - 1)]) @ v[:, :, n]
                        + qi[:, :, n] @ S)
            S = decay[:, :, n] * S + (k[:, :, n] * ek[:, :, n]).transpose(-1, -2) @ v[:, :, n]
        return torch.stack(outs, dim=2), S

    d_o, d_s = torch.randn(B, H, N, C, V, generator=gen, dtype=torch.float64), torch.randn(B, H, K, V, generator=gen,
                                                                                      dtype=torch.float64)
    results = []
    for run in (formula, lambda: ScalarChunk.apply(q, k, v, D, eq, ek, decay, h0, scale)):
        o, state = run()
        grads = torch.autograd.grad((o * d_o).sum() + (state * d_s).sum(), inputs)
        results.append((o, state, *grads))
    for want, got in zip(*results, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), (got - want).abs().max()


def test_vector_chunk_backward_equals_autograd_of_its_formula():
    """VectorChunk's written-out backward (joined buffers, the gate gradient split into pair and state
    parts) against autograd through the factored formula written out plainly, float64, every input."""
    from alloyml.kernels.common.chunk_torch import VectorChunk

    gen = torch.Generator().manual_seed(4)
    B, H, N, C, K, V, scale = 2, 2, 3, 8, 5, 6, 0.6

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    q, k, v, h0 = rand(B, H, N, C, K), rand(B, H, N, C, K), rand(B, H, N, C, V), rand(B, H, K, V)
    g = (-torch.rand(B, H, N, C, K, generator=gen, dtype=torch.float64)).requires_grad_()
    inputs = [q, k, v, g, h0]

    def formula():
        G = g.cumsum(-2)
        S, outs = h0, []
        for n in range(N):
            qg, kg = scale * q[:, :, n] * G[:, :, n].exp(), k[:, :, n] * (-G[:, :, n]).exp()
            E = G[:, :, n, -1].exp()  # [B, H, K]
            outs.append((qg @ kg.transpose(-1, -2)).tril() @ v[:, :, n] + qg @ S)
            S = E[..., None] * S + (kg * E[:, :, None]).transpose(-1, -2) @ v[:, :, n]
        return torch.stack(outs, dim=2), S

    d_o = torch.randn(B, H, N, C, V, generator=gen, dtype=torch.float64)
    d_s = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    results = []
    for run in (formula, lambda: VectorChunk.apply(q, k, v, g, g.detach().cumsum(-2), h0, scale)):
        o, state = run()
        grads = torch.autograd.grad((o * d_o).sum() + (state * d_s).sum(), inputs)
        results.append((o, state, *grads))
    for want, got in zip(*results, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), (got - want).abs().max()
