"""The Real-Gated Linear Recurrent Unit of Griffin and Hawk (De et al. 2024): a real diagonal recurrence
whose decay is gated by the input,

    a_t = sigmoid(Lambda)^(c r_t),   h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t),

with recurrence gate r_t and input gate i_t (values in [0, 1], computed by the mixer) and c = 8. The fast
form is the chunked scan of common/scan_autograd.py on log a_t = -c r_t softplus(-Lambda) (O(T) per
channel, one autograd node); naive.py is the reference loop, recurrent.py the one-token step.
"""

from __future__ import annotations

from alloyml.kernels.rglru.naive import naive_rglru

RGLRU_C = 8.0  # the paper's fixed exponent scale


def check_rglru_inputs(x, r, i, Lambda, state, n, token=False, state_name="state"):
    """x, r, i: [b, T, D] (or [b, D] for one token); Lambda: [D]; state: [n, D]."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common.checks import check_tensor

    check_tensor("x", x, (None,) * (2 if token else 3), x)
    if not token and x.shape[1] == 0:
        raise InvalidInputError("x must hold at least one time step (T >= 1), got T = 0")
    check_tensor("r", r, tuple(x.shape), x)
    check_tensor("i", i, tuple(x.shape), x)
    check_tensor("Lambda", Lambda, (x.shape[-1],), x)
    if state is not None:
        check_tensor(state_name, state, (n, x.shape[-1]), x)


def rglru_coefficients(r, Lambda, c, f):
    """(log a_t, sqrt(1 - a_t^2)) in float dtype f. log sigmoid(Lambda) = -softplus(-Lambda) keeps log a
    exact for Lambda far from 0, and 1 - a^2 = -expm1(2 log a) keeps the normaliser accurate for a near 1
    (clamped at the smallest normal number so that r = 0, where a = 1, gives a zero input, not a NaN
    gradient)."""
    import torch
    import torch.nn.functional as F

    log_a = -c * r.to(f) * F.softplus(-Lambda.to(f))
    scale = (-torch.expm1(2 * log_a)).clamp_min(torch.finfo(f).tiny).sqrt()
    return log_a, scale


def rglru(x, r, i, Lambda, *, c=RGLRU_C, initial_state=None, output_final_state=True, cu_seqlens=None,
          backend="auto"):
    """All RG-LRU states.

    x: [b, T, D] the branch input; r, i: [b, T, D] recurrence and input gates (sigmoid outputs, in [0, 1]);
    Lambda: [D] the decay parameter (any real: sigmoid maps it into (0, 1)); c: the exponent scale (8 in the
    paper); initial_state: [n, D] (n = b, or the number of packed sequences); cu_seqlens: int64 offsets
    [n + 1] of packed sequences in a batch of one (the state restarts at each); backend: "naive" (the
    reference loop); "auto" or a Triton name on CUDA: the Triton scan (unpacked float32 / half); any other
    name, or off CUDA, the chunked scan (any device).
    Returns (h: [b, T, D] in x's dtype, final_state: [n, D] float32 (float64 for float64 input), or None
    when `output_final_state` is False). The recurrence runs in float32 for half-precision inputs."""
    import torch

    from alloyml.kernels.common import checks
    from alloyml.kernels.common.diagonal_scan import final_states, fold_initial_state, starts_mask
    from alloyml.kernels.common.scan_autograd import linear_scan

    checks.check_tensor("x", x, (None, None, None), x)
    b, T = x.shape[:2]
    n = checks.check_cu_seqlens(cu_seqlens, b, T)
    check_rglru_inputs(x, r, i, Lambda, initial_state, n, state_name="initial_state")
    if checks.diagonal_backend(backend) == "naive":
        return naive_rglru(x, r, i, Lambda, c, initial_state=initial_state, output_final_state=output_final_state,
                           cu_seqlens=cu_seqlens)
    f = torch.promote_types(x.dtype, torch.float32)
    log_a, scale = rglru_coefficients(r, Lambda, c, f)
    u = fold_initial_state(log_a, scale * (i.to(f) * x.to(f)), None if initial_state is None else
                           initial_state.to(f), cu_seqlens)
    if _use_triton(x, backend, cu_seqlens):
        from alloyml.kernels.common.diagonal_scan_triton import diagonal_scan_triton

        h = diagonal_scan_triton(log_a, u)
    else:
        h = linear_scan(log_a, u, None if cu_seqlens is None else starts_mask(cu_seqlens, T, x.device))
    return h.to(x.dtype), (final_states(h, cu_seqlens) if output_final_state else None)


def _use_triton(x, backend: str, cu_seqlens) -> bool:
    """The Triton scan (common/diagonal_scan_triton.py) for unpacked float32 / half CUDA tensors under
    "auto" or a Triton backend name, and on CPU under a Triton name with TRITON_INTERPRET=1; otherwise
    (packed, float64, a Triton name on plain CPU) the chunked scan."""
    from alloyml.kernels.s6 import _use_triton as s6_rule

    return s6_rule(x, backend, cu_seqlens)


from alloyml.kernels.rglru.recurrent import rglru_step  # noqa: E402  (it imports the checks above)

__all__ = ["RGLRU_C", "check_rglru_inputs", "naive_rglru", "rglru", "rglru_step", "rglru_coefficients"]
