"""The autograd wrapper both Triton engines share: a forward and a backward launcher become one
torch.autograd.Function over (q, k, v, g, scale, initial_state) -> (o, final_state)."""

from __future__ import annotations


def gated_function(name: str, forward, backward):
    """forward(q, k, v, g, scale, initial_state) -> (o, final_state, saved): `saved` is one tensor kept
    for the backward; backward(q, k, v, g, scale, initial_state, saved, do, dht) -> (dq, dk, dv, dg, dh0),
    with do contiguous and dht contiguous or None (an unused final state)."""
    import torch

    class GatedFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, g, scale, initial_state, segments=None):
            ctx.set_materialize_grads(False)  # an unused final state skips its gradient's work
            extra = {} if segments is None else {"segments": segments}
            with device_guard(q):
                o, final_state, saved = forward(q, k, v, g, scale, initial_state, **extra)
            ctx.save_for_backward(q, k, v, g, initial_state, saved)
            ctx.scale = scale
            ctx.extra = extra
            ctx.n_inputs = 6 if segments is None else 7
            return o, final_state

        @staticmethod
        def backward(ctx, do, dht):
            q, k, v, g, initial_state, saved = ctx.saved_tensors
            do = torch.zeros_like(v) if do is None else do.contiguous()
            dht = None if dht is None else dht.contiguous()
            with device_guard(q):
                dq, dk, dv, dg, dh0 = backward(q, k, v, g, ctx.scale, initial_state, saved, do, dht, **ctx.extra)
            return (dq, dk, dv, dg, None, dh0, None)[: ctx.n_inputs]

    GatedFunction.__name__ = GatedFunction.__qualname__ = name
    return GatedFunction


def device_guard(x):
    """Launches go to x's GPU, not the current one (tensors on cuda:1 while cuda:0 is current would
    otherwise be read by kernels running on cuda:0); a no-op off CUDA (the interpreter)."""
    import contextlib

    import torch

    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def apply_contiguous(function, q, k, v, g, scale: float, initial_state, segments=None):
    """function.apply on contiguous inputs (the kernels index them as dense row-major arrays); `segments`
    (packed sequences, chunk_triton.Segments) is passed on where given."""
    q, k, v, g, initial_state = (None if x is None else x.contiguous() for x in (q, k, v, g, initial_state))
    if segments is None:
        return function.apply(q, k, v, g, scale, initial_state)
    return function.apply(q, k, v, g, scale, initial_state, segments)
