"""The naive references and the decode steps against forms derived by hand, not by running a recurrence:
a two-step scalar case worked out on paper, and each op's explicit matrix (attention) form in float64.

The chunked paths are tested against the naive references (test_chunk.py) and decoding against the
chunked forward; this file checks the references themselves, so a wrong formula in a naive recurrence or
in a step cannot pass by agreeing with itself."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import OPS, make_case, rel_rms

from alloyml.kernels import gla, linear_attn, selective_scan
from alloyml.kernels.linear_attn import NORMALIZER_EPS

# Two steps, one head, K = V = 1, scale 1 (worked by hand):
#   S_1 = a_1 S_0 + k_1 v_1,  o_1 = q_1 S_1;   S_2 = a_2 S_1 + k_2 v_2,  o_2 = q_2 S_2
# with q = (1, 2), k = (3, 4), v = (5, 6), S_0 = 7 and decays a = (1/2, 1/4):
#   S_1 = 3.5 + 15 = 18.5, o_1 = 18.5;  S_2 = 4.625 + 24 = 28.625, o_2 = 57.25
HAND_O, HAND_S = [18.5, 57.25], 28.625


def _scalar(*values):
    return torch.tensor(values, dtype=torch.float64).view(1, len(values), 1, 1)


def _hand_gla(backend):
    g = torch.log(_scalar(0.5, 0.25))
    return gla(_scalar(1, 2), _scalar(3, 4), _scalar(5, 6), g, scale=1.0, initial_state=_scalar(7),
               backend=backend)


def _hand_linear_attn(backend):
    # a constant decay cannot be 1/2 then 1/4: gamma = 1/2 at both steps gives S_2 = 9.25 + 24 = 33.25
    return linear_attn(_scalar(1, 2), _scalar(3, 4), _scalar(5, 6), torch.tensor([0.5], dtype=torch.float64),
                       scale=1.0, initial_state=_scalar(7), backend=backend)


def _hand_selective_scan(backend):
    # exp(dt A) = (1/2, 1/4) with A = -ln 2, dt = (1, 2); dt B = (3, 4) with B = (3, 2); C = q, x = v
    A = torch.tensor([-torch.log(torch.tensor(2.0, dtype=torch.float64))])
    dt = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1)
    return selective_scan(_scalar(5, 6), dt, A, _scalar(3, 2), _scalar(1, 2), initial_state=_scalar(7),
                          backend=backend)


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize(
    ("run", "want_o", "want_s"),
    [(_hand_gla, HAND_O, HAND_S), (_hand_selective_scan, HAND_O, HAND_S),
     (_hand_linear_attn, [18.5, 66.5], 33.25)],
    ids=["gla", "selective_scan", "linear_attn"],
)
def test_two_steps_worked_by_hand(run, want_o, want_s, backend):
    o, state = run(backend)
    assert o.dtype == torch.float64 and state.dtype == torch.float64  # the reference runs in float64
    assert torch.allclose(o.flatten(), torch.tensor(want_o, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(state.flatten(), torch.tensor([want_s], dtype=torch.float64), rtol=1e-12)


# ---- explicit matrix forms: every output as a sum over earlier steps, with the decay between them ----

def _decay_between(G):
    """G: [B, T, H, ...] cumulative log-gates -> exp(G_t - G_s) for s <= t, 0 above: [B, H, T, T, ...].
    Formed as a difference (fine in float64 for the tiny gates used here)."""
    G = G.movedim(1, 2)  # [B, H, T, ...]
    diff = G[:, :, :, None] - G[:, :, None, :]  # [B, H, T(t), T(s), ...]
    T = G.shape[2]
    mask = torch.ones(T, T, dtype=torch.bool).tril().view(1, 1, T, T, *([1] * (diff.dim() - 4)))
    return torch.where(mask, diff.exp(), torch.zeros((), dtype=diff.dtype))


def matrix_gla(q, k, v, g, h0, scale):
    """o_t = scale * (sum_{s<=t} sum_j q_tj k_sj exp(G_tj - G_sj) v_s + sum_j q_tj exp(G_tj) S0_j),
    G = cumsum(g) over time; S_T = sum_s diag(exp(G_T - G_s)) k_s v_s^T + diag(exp(G_T)) S0."""
    G = g.cumsum(1)
    W = _decay_between(G)  # [B, H, T, T, K]
    qh, kh, vh = (x.movedim(1, 2) for x in (q, k, v))  # [B, H, T, D]
    attn = torch.einsum("bhtj,bhsj,bhtsj->bhts", qh, kh, W)
    o = attn @ vh + torch.einsum("bhtj,bhtj,bhjv->bhtv", qh, G.movedim(1, 2).exp(), h0)
    G_T = G[:, -1]  # [B, H, K]
    decay_to_end = (G_T[:, None] - G).exp()  # [B, T, H, K]
    state = torch.einsum("bshj,bshv->bhjv", k * decay_to_end, v) + G_T.exp()[..., None] * h0
    return scale * o.movedim(2, 1), state


def matrix_linear_attn(q, k, v, decay, h0, scale, normalize):
    """The RetNet parallel form, o = scale (Q K^T * D) V + scale gamma^(t+1) Q S0, D_ts = gamma^(t - s)
    for s <= t; normalised by the same form with v = 1 and S0 the key-sum column."""
    B, T, H, K = q.shape
    gamma = torch.ones(H, dtype=q.dtype) if decay is None else decay
    g = gamma.log().view(1, 1, H, 1).expand(B, T, H, 1)
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    o, state = matrix_gla(q, k, v, g.expand(B, T, H, K), h0, scale)
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + NORMALIZER_EPS)
    return o, state


def matrix_selective_scan(x, dt, A, B, C, D, h0):
    """y_t = sum_{s<=t} (C_t . B_s) dt_s exp(A (dt_{s+1} + .. + dt_t)) x_s + exp(A (dt_1 + .. + dt_t))
    C_t h0 + D x_t: GLA's matrix form with q = C, k = dt B, v = x, the gate dt A on every channel."""
    g = (dt * A)[..., None].expand_as(B)
    y, state = matrix_gla(C, dt[..., None] * B, x, g, h0, 1.0)
    return y + D[:, None] * x, state


def _matrix_form(name, inputs, h0):
    if name == "gla":
        return matrix_gla(**inputs, h0=h0, scale=inputs["q"].shape[-1] ** -0.5)
    if name == "selective_scan":
        return matrix_selective_scan(**inputs, h0=h0)
    case = OPS[name]
    return matrix_linear_attn(inputs["q"], inputs["k"], inputs["v"], inputs.get("decay"), h0,
                              inputs["q"].shape[-1] ** -0.5, case.kwargs.get("normalize", False))


@pytest.mark.parametrize("name", sorted(OPS))
def test_naive_and_decode_steps_equal_the_matrix_form(name):
    """In float64 at T = 11 the naive recurrence, the token-by-token steps and the explicit matrix form
    agree to rounding: a mistake in any one formula (a decay applied after the write, a missing
    scale, a transposed state) shows as an O(1) difference."""
    case = OPS[name]
    inputs, h0 = make_case(case, B=2, T=11, H=3, K=5, V=4, scale=1.0, seed=21)
    want_o, want_state = _matrix_form(name, inputs, h0)
    naive_o, naive_state = case(inputs, initial_state=h0, backend="naive")
    step_o, step_state = case.decode(inputs, h0, t0=0)
    assert naive_o.dtype == torch.float64
    for got_o, got_state in ((naive_o, naive_state), (step_o, step_state)):
        assert rel_rms(got_o, want_o) <= 1e-12
        assert rel_rms(got_state, want_state) <= 1e-12
