"""The delta rule's written-out backward (kernels/delta/chunk_backward.py) on its own: every gradient
against the float64 naive recurrence's autograd gradients (fp32 relative RMS <= 1e-5) when only the outputs
or only the final state carry a loss (the Function gets a None gradient for the other), without an
initial state, at odd lengths and chunk sizes; and against autograd through the chunked form's own ops
(ut_transform + chunk_scan_torch), which shares the forward but not one line of the backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ssm_cases import TOL, as64, rel_rms

from alloyml.kernels.common.checks import default_scale
from alloyml.kernels.delta import delta_rule, gated_delta_rule
from alloyml.kernels.delta.chunk import chunk_scan_torch, ut_transform


def make(T, gated, beta_max, gate_shift, gen, B=2, H=3, K=19, V=23):
    i = {"q": torch.randn(B, T, H, K, generator=gen, dtype=torch.float64),
         "k": F.normalize(torch.randn(B, T, H, K, generator=gen, dtype=torch.float64), dim=-1),
         "v": torch.randn(B, T, H, V, generator=gen, dtype=torch.float64),
         "beta": beta_max * torch.rand(B, T, H, generator=gen, dtype=torch.float64)}
    if gated:
        i["g"] = F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=torch.float64) + gate_shift)
    return {n: x.float().requires_grad_() for n, x in i.items()}


def call(i, backend, chunk_size):
    kw = dict(chunk_size=chunk_size, backend=backend)
    if "g" in i:
        return gated_delta_rule(i["q"], i["k"], i["v"], i["g"], i["beta"], **kw)
    return delta_rule(i["q"], i["k"], i["v"], i["beta"], **kw)


def gradients(i, o, state, which, gen):
    loss = 0.0
    if which in ("o", "both"):
        loss = loss + (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
    if which in ("state", "both"):
        loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=torch.float64).to(state.dtype)).sum()
    got = torch.autograd.grad(loss, list(i.values()), allow_unused=True)  # q does not reach the state
    return {n: torch.zeros_like(x) if d is None else d for (n, x), d in zip(i.items(), got, strict=True)}


@pytest.mark.parametrize("which", ["o", "state"])
@pytest.mark.parametrize("gated,beta_max,gate_shift,T,chunk", [
    (False, 1.0, None, 37, 16), (False, 2.0, None, 70, 32),
    (True, 1.0, -2.0, 37, 16), (True, 1.0, 6.0, 70, 32), (True, 2.0, 0.0, 45, 64),
])
def test_one_sided_losses_match_float64_naive(which, gated, beta_max, gate_shift, T, chunk):
    i = make(T, gated, beta_max, gate_shift, torch.Generator().manual_seed(T))
    i64 = as64(i)
    want = gradients(i64, *call(i64, "naive", chunk), which, torch.Generator().manual_seed(1))
    got = gradients(i, *call(i, "chunk", chunk), which, torch.Generator().manual_seed(1))
    for name in i:
        if which == "state" and name == "q":  # no path from q to the state: both zero
            assert not got[name].any() and not want[name].any()
            continue
        assert rel_rms(got[name], want[name]) <= TOL, (name, rel_rms(got[name], want[name]))


@pytest.mark.parametrize("gated", [False, True])
def test_matches_autograd_through_the_chunked_ops(gated):
    i = make(53, gated, 1.0, 1.0, torch.Generator().manual_seed(5))
    got = gradients(i, *call(i, "chunk", 16), "both", torch.Generator().manual_seed(2))

    def by_autograd():
        B, T, H, K = i["q"].shape
        parts = ut_transform(i["q"], i["k"], i["v"], i["beta"], i.get("g"), 16)
        o, state = chunk_scan_torch(*parts, parts[0].new_zeros(B, H, K, i["v"].shape[-1]), default_scale(None, K))
        n, C = o.shape[2], o.shape[3]
        return o.movedim(1, 3).reshape(B, n * C, H, -1)[:, :T], state

    want = gradients(i, *by_autograd(), "both", torch.Generator().manual_seed(2))
    for name in i:
        assert rel_rms(got[name], want[name]) <= TOL, (name, rel_rms(got[name], want[name]))


@pytest.mark.parametrize("gated", [False, True])
def test_function_backward_passes_float64_gradcheck(gated):
    """The written-out backward against finite differences of its own forward, in float64, over several
    chunks and more than one chunk group (so the state gradient crosses from group to group)."""
    import alloyml.kernels.delta.chunk_backward as cb

    gen = torch.Generator().manual_seed(11)
    n, N, C, K, V = 3, 2, 3, 2, 3
    q = torch.randn(n, N, C, K, generator=gen, dtype=torch.float64)
    k = F.normalize(torch.randn(n, N, C, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(n, N, C, V, generator=gen, dtype=torch.float64)
    beta = torch.rand(n, N, C, generator=gen, dtype=torch.float64)
    gamma = F.logsigmoid(torch.randn(n, N, C, generator=gen, dtype=torch.float64)).cumsum(-1) if gated else None
    S = torch.randn(N, K, V, generator=gen, dtype=torch.float64)
    inputs = [x.requires_grad_() for x in (q, k, v, beta, S)] + ([gamma.requires_grad_()] if gated else [])

    def f(q, k, v, beta, S, gamma=None):
        return cb.ChunkDeltaFunction.apply(q, k, v, beta, gamma, S, 0.7)

    group = cb.GROUP
    cb.GROUP = 2  # 3 chunks: groups of 2 and 1
    try:
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)
    finally:
        cb.GROUP = group
