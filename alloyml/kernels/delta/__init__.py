"""The delta rule: DeltaNet (Schlag et al. 2021, made parallel by Yang et al. 2024) and Gated DeltaNet
(Yang et al. 2025), a linear attention whose state is corrected towards each new key-value pair
instead of only added to.

The op is defined here: checks, then the chunked WY / UT-transform form of chunk.py. naive.py is the
reference recurrence, recurrent.py the one-token step for decoding. chunk_triton.py runs the chunk-to-chunk
pass as a Triton kernel (backend="triton"; forward in Triton, backward by recomputing the PyTorch pass);
"auto" picks the PyTorch form on every device until that kernel has been checked on a GPU.
"""

from __future__ import annotations

from alloyml.kernels.delta.naive import naive_delta_rule
from alloyml.kernels.delta.recurrent import delta_rule_step


def l2_normalized(x, eps: float = 1e-6):
    """x / max(||x||_2, eps) over the last axis (as F.normalize)."""
    import torch.nn.functional as F

    return F.normalize(x, dim=-1, eps=eps)


def check_delta_inputs(q, k, v, beta, g, state, cu_seqlens, token=False, state_name="state"):
    """q, k: [B, T, H, K], v: [B, T, H, V], beta and g: [B, T, H] (no T axis for one token), state
    [N, H, K, V]. Returns (B, T, H, K, V), or (B, H, K, V) for one token."""
    from alloyml.kernels.common import checks

    dims = checks.check_qkv(q, k, v, token=token)
    checks.check_tensor("beta", beta, tuple(q.shape[:-1]), q)
    if g is not None:
        checks.check_tensor("g", g, tuple(q.shape[:-1]), q)
    N = q.shape[0] if token else checks.check_cu_seqlens(cu_seqlens, q.shape[0], q.shape[1])
    checks.check_state(state_name, state, N, q.shape[-2], q.shape[-1], v.shape[-1], q)
    return dims


def delta_backend(backend: str, ref) -> str:
    """"naive", "chunk" (PyTorch, on any device) or "triton" (the chunk-to-chunk pass and the outputs as a
    Triton kernel; "triton_recurrent" maps to it: there is no step-by-step kernel). "auto" is "chunk" on
    every device: the kernel has run only in Triton's CPU interpreter so far, never on a GPU."""
    from alloyml.kernels.common import checks

    if backend == "auto":
        checks.resolve_backend(backend, ref)
        return "chunk"
    resolved = checks.resolve_backend(backend, ref)
    return "triton" if resolved in checks.TRITON_BACKENDS else resolved


def _run(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, chunk_size, l2_normalize,
         backend):
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common import checks
    from alloyml.kernels.common.varlen import pad_sequences, padding_index, unpad_sequences
    from alloyml.kernels.delta.chunk import chunk_delta_rule

    check_delta_inputs(q, k, v, beta, g, initial_state, cu_seqlens, state_name="initial_state")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if l2_normalize:
        q, k = l2_normalized(q), l2_normalized(k)
    backend = delta_backend(backend, q)
    if backend == "naive":
        return naive_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    dtype = q.dtype
    if cu_seqlens is not None:  # padded steps have k = v = 0, beta = 0, g = 0: the state stays as it is
        index, valid = padding_index(cu_seqlens)
        q, k, v, beta = (pad_sequences(x, index) for x in (q, k, v, beta))
        g = None if g is None else pad_sequences(g, index)
    o, state = chunk_delta_rule(q, k, v, beta, g, checks.default_scale(scale, q.shape[-1]), initial_state,
                                chunk_size, backend)
    if cu_seqlens is not None:
        o = unpad_sequences(o, valid)
    return o.to(dtype), (state if output_final_state else None)


def delta_rule(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None,
               chunk_size=32, l2_normalize=False, backend="auto"):
    """DeltaNet: S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale * S_t^T q_t
    (the papers' S_t = S_{t-1}(I - beta_t k_t k_t^T) + beta_t v_t k_t^T, kept transposed as [K, V]).

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H] writing strengths, in (0, 1] as the papers use
    them (sigmoid), and stable up to 2 for unit-norm keys (then I - beta k k^T has eigenvalues 1 and
    1 - beta in [-1, 1]); scale: default K ** -0.5; initial_state: [N, H, K, V] (N = B, or the number of
    packed sequences); cu_seqlens: int64 offsets [N + 1] of packed sequences in a batch of one;
    chunk_size: tokens per chunk of the chunked form (32 by default: the fastest of 16 / 32 / 64 / 128 on CPU
    at D = 64, fwd + bwd); l2_normalize: divide q and k by their L2 norms
    first (what the DeltaNet layer does); backend: "naive" (the reference recurrence, float64 for float64
    inputs), "auto" or "chunk" (the chunked form in PyTorch, any device), "triton" / "triton_recurrent" (its
    chunk-to-chunk pass as a Triton kernel: CUDA, or TRITON_INTERPRET=1 on CPU).
    Returns (o: [B, T, H, V] in q's dtype, final_state: [N, H, K, V] float32 (float64 for float64 input),
    or None when `output_final_state` is False)."""
    return _run(q, k, v, beta, None, scale, initial_state, output_final_state, cu_seqlens, chunk_size,
                l2_normalize, backend)


def gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=True,
                     cu_seqlens=None, chunk_size=32, l2_normalize=False, backend="auto"):
    """Gated DeltaNet: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T with
    alpha_t = exp(g_t) in (0, 1], o_t = scale * S_t^T q_t.

    g: [B, T, H] log-space decays (<= 0; e.g. -softplus(.) * exp(A_log), Mamba-2's parameterisation);
    everything else as in `delta_rule`."""
    return _run(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, chunk_size,
                l2_normalize, backend)


def gated_delta_rule_step(q, k, v, g, beta, state=None, *, scale=None, l2_normalize=False):
    """One token of `gated_delta_rule` (shapes without T); see `delta_rule_step`."""
    return delta_rule_step(q, k, v, beta, g, state, scale=scale, l2_normalize=l2_normalize)


__all__ = ["delta_rule", "delta_rule_step", "gated_delta_rule", "gated_delta_rule_step", "naive_delta_rule"]
