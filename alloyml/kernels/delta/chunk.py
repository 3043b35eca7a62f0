"""The delta rule in chunks (PyTorch; the CPU fast path): the WY / UT-transform algorithm of Yang et al.
(2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length"), with the gated form
of Yang et al. (2025, "Gated Delta Networks").

State S [K, V] (o_t = scale * S_t^T q_t). Write one step as S_t = alpha_t S_{t-1} + k_t u_t^T with the
"pseudo-value" u_t = beta_t (v_t - alpha_t S_{t-1}^T k_t). Inside a chunk that starts from S_0, with
gamma_t = sum_{s <= t} log alpha_s (the within-chunk cumulative log-gate),

    S_t = e^{gamma_t} S_0 + sum_{s <= t} e^{gamma_t - gamma_s} k_s u_s^T,
    u_t + beta_t sum_{s < t} e^{gamma_t - gamma_s} (k_t . k_s) u_s = beta_t (v_t - e^{gamma_t} S_0^T k_t).

So (I + A) U = diag(beta) (V - diag(e^gamma) K S_0) with A strictly lower triangular,
A_ts = beta_t e^{gamma_t - gamma_s} k_t . k_s. One triangular solve per chunk (for all chunks at once)
gives the UT transform T = (I + A)^{-1} diag(beta) applied to V and to diag(e^gamma) K:
U_part = T V, W = T diag(e^gamma) K, and U = U_part - W S_0. Only that last product and the state update
S_C = e^{gamma_C} S_0 + sum_s e^{gamma_C - gamma_s} k_s u_s^T depend on the previous chunk: the loop runs
over chunks (T / C steps), never over tokens. The outputs of all chunks then come in one batch:
O = scale (diag(e^gamma) Q S_0 + (Q K^T * e^{gamma_t - gamma_s} [s <= t]) U).

Every exponent above is a difference gamma_t - gamma_s with s <= t, or gamma_t itself: a sum of log-gates
<= 0, so no factor exceeds 1 and none can overflow, however strong the decay. On the "chunk" backend
the gradients are written out (chunk_backward.py); the Triton path's backward takes them by autograd
through `chunk_scan_torch`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 32


def _chunked(x, C):
    """[B, T, H, ...] with T a multiple of C -> [B, H, T / C, C, ...]."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // C, C, H, *x.shape[3:])
    return x.movedim(3, 1).contiguous()  # contiguous once here, not inside every batched matmul


def _decay(gamma):
    """e^{gamma_t - gamma_s} on s <= t, 0 above: [..., C, C]."""
    C = gamma.shape[-1]
    keep = torch.ones(C, C, dtype=torch.bool, device=gamma.device).tril()
    diff = gamma[..., :, None] - gamma[..., None, :]  # [..., C, C], <= 0 where kept
    return diff.masked_fill(~keep, -math.inf).exp()


def ut_transform(q, k, v, beta, g, chunk_size):
    """The per-chunk quantities of the module docstring, for all chunks at once (no dependence between
    chunks). q, k: [B, T, H, K]; v: [B, T, H, V]; beta, g: [B, T, H] (g None: DeltaNet).
    Returns (q_start, qk, u_part, w, k_end, end_decay), with a chunk axis n after the head axis:
    q_start = e^gamma q, qk = causal decayed Q K^T [B, H, n, C, C], u_part = T V, w = T e^gamma K,
    k_end = e^{gamma_C - gamma} k, end_decay = e^{gamma_C} [B, H, n, 1, 1] (None without gates)."""
    T = q.shape[1]
    V = v.shape[-1]
    c = torch.promote_types(q.dtype, torch.float32)
    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T  # zero steps at the end (k = 0, beta = 0, g = 0) leave the state as it is
    q, k, v = (F.pad(x.to(c), (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    beta = F.pad(beta.to(c), (0, 0, 0, pad))
    q, k, v = (_chunked(x, C) for x in (q, k, v))  # [B, H, n, C, K or V]
    beta = _chunked(beta, C)  # [B, H, n, C]
    kk = k @ k.transpose(-1, -2)  # [B, H, n, C, C]
    qk = q @ k.transpose(-1, -2)
    eye = torch.eye(C, dtype=c, device=q.device)
    causal = torch.ones(C, C, dtype=c, device=q.device).tril()
    strict = causal - eye
    if g is None:
        A = beta[..., :, None] * kk * strict
        rhs = beta[..., None] * torch.cat([v, k], dim=-1)
        qk = qk * causal
        k_end, q_start, end_decay = k, q, None
    else:
        gamma = _chunked(F.pad(g.to(c), (0, 0, 0, pad)), C).cumsum(-1)  # [B, H, n, C]
        decay = _decay(gamma)
        A = beta[..., :, None] * kk * (decay * strict)
        rhs = beta[..., None] * torch.cat([v, gamma.exp()[..., None] * k], dim=-1)
        qk = qk * decay
        k_end = k * (gamma[..., -1:] - gamma).exp()[..., None]  # k_s e^{gamma_C - gamma_s}
        q_start = q * gamma.exp()[..., None]
        end_decay = gamma[..., -1].exp()[..., None, None]  # [B, H, n, 1, 1]
    solved = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    u_part, w = solved.split([V, k.shape[-1]], dim=-1)  # [B, H, n, C, V], [B, H, n, C, K]
    return q_start, qk, u_part, w, k_end, end_decay


def chunk_scan_torch(q_start, qk, u_part, w, k_end, end_decay, S, scale):
    """The pass from chunk to chunk (U = U_part - W S_0, then the state update), and the outputs of all
    chunks in one batch. S: [B, H, K, V] entering the first chunk. Returns (o [B, H, n, C, V], final S)."""
    n = u_part.shape[2]
    starts, pseudo_values = [], []
    per_chunk = zip(u_part.unbind(2), w.unbind(2), k_end.unbind(2),
                    (end_decay.unbind(2) if end_decay is not None else [None] * n), strict=True)
    for u_i, w_i, k_i, a_i in per_chunk:
        starts.append(S)
        u = u_i - w_i @ S  # [B, H, C, V]
        pseudo_values.append(u)
        S = (S if a_i is None else a_i * S) + k_i.transpose(-1, -2) @ u
    S0 = torch.stack(starts, dim=2)  # [B, H, n, K, V]
    U = torch.stack(pseudo_values, dim=2)  # [B, H, n, C, V]
    return scale * (q_start @ S0 + qk @ U), S


def chunk_delta_rule(q, k, v, beta, g, scale, initial_state, chunk_size=DEFAULT_CHUNK, backend="chunk"):
    """q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; g: [B, T, H] log-gates or None (DeltaNet);
    initial_state: [B, H, K, V] or None; backend: "chunk" (the chunk-to-chunk pass in PyTorch) or
    "triton" (that pass as a Triton kernel, chunk_triton.py). Returns (o: [B, T, H, V], final_state:
    [B, H, K, V]) in float32 (float64 for float64 input)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if backend != "triton":
        return _chunk_function(q, k, v, beta, g, scale, initial_state, chunk_size)
    parts = ut_transform(q, k, v, beta, g, chunk_size)
    S = parts[0].new_zeros(B, H, K, V) if initial_state is None else initial_state.to(parts[0].dtype)
    if backend == "triton":
        from alloyml.kernels.delta.chunk_triton import chunk_scan_triton

        o, S = chunk_scan_triton(*parts, S, scale)
    else:
        o, S = chunk_scan_torch(*parts, S, scale)
    n, C = o.shape[2], o.shape[3]
    o = o.movedim(1, 3).reshape(B, n * C, H, V)[:, :T]
    return o, S


def _chunk_major(x, C):
    """[B, T, H, ...] with T a multiple of C -> [T / C, B * H, C, ...]: chunk-major, so that each chunk of the
    loop (all sequences and heads) is one contiguous slice."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // C, C, H, *x.shape[3:]).movedim(3, 2).movedim(1, 0)  # [n, B, H, C, ...]
    return x.reshape(T // C, B * H, C, *x.shape[4:]).contiguous()  # reshape may return a strided view


def _chunk_function(q, k, v, beta, g, scale, initial_state, chunk_size):
    """The PyTorch path: padding and chunking here (autograd), the rest in chunk_backward's Function with
    its hand-written backward."""
    from alloyml.kernels.delta.chunk_backward import ChunkDeltaFunction

    B, T, H, K = q.shape
    V = v.shape[-1]
    c = torch.promote_types(q.dtype, torch.float32)
    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T
    def chunked(x):  # zero steps at the end (k = v = 0, beta = 0, g = 0) leave the state as it is
        x = x.to(c)
        if pad:  # F.pad copies even when it pads nothing
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        return _chunk_major(x, C)

    q, k, v, beta = (chunked(x) for x in (q, k, v, beta))
    gamma = None if g is None else chunked(g).cumsum(-1)
    S = q.new_zeros(B * H, K, V) if initial_state is None else initial_state.to(c).reshape(B * H, K, V)
    o, S = ChunkDeltaFunction.apply(q, k, v, beta, gamma, S, scale)
    o = o.view(n, B, H, C, V).movedim(0, 1).movedim(3, 2)  # [B, n, C, H, V]
    return o.reshape(B, n * C, H, V)[:, :T], S.view(B, H, K, V)
