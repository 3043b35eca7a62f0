"""What the vector-state op tests share (LRU, RG-LRU): relative RMS for real and complex tensors, float64
reference copies, gradients of a random functional, and the error criterion."""

from __future__ import annotations

import torch

TOL = 1e-5
# (low, high) of the per-step decay |a|: fast (memory of a few steps), the LRU paper's ring, near 1
TIMESCALES = [(0.3, 0.8), (0.9, 0.999), (0.999, 0.9999)]


def rel_rms(got, want) -> float:
    got, want = (torch.view_as_real(t) if t.is_complex() else t for t in (got, want))
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-300)).item()


def as64(inputs):
    """Float64 / complex128 copies of the inputs, leaves of their own: the reference runs on these."""
    return {k: None if v is None else v.detach().to(torch.complex128 if v.is_complex() else torch.float64)
            .requires_grad_() for k, v in inputs.items()}


def _weight(t, gen):
    dtype = torch.complex128 if t.is_complex() else torch.float64
    return torch.randn(t.shape, generator=gen, dtype=dtype).to(t.device, t.dtype)  # CPU stream, any device


def grads(fn, inputs, gen):
    """(h, final, gradients of a random real functional of h and final w.r.t. every input that requires it)."""
    h, final = fn(inputs)
    loss = (h * _weight(h, gen).conj()).real.sum() + (final * _weight(final, gen).conj()).real.sum()
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    return h, final, dict(zip(names, torch.autograd.grad(loss, [inputs[k] for k in names]), strict=True))


def errors(got, want) -> dict:
    (h, f, g), (hw, fw, gw) = got, want
    assert g.keys() == gw.keys()
    return {"h": rel_rms(h, hw), "final": rel_rms(f, fw), **{k: rel_rms(g[k], gw[k]) for k in g}}


def assert_match(got, want, loop32=None):
    """Every error against the float64 reference within TOL; where the float32 reference loop (`loop32`,
    the same recurrence in the same precision) is itself past TOL (phases up to 3 rad over hundreds of
    steps at |a| ~ 0.9999: the problem's own float32 conditioning), within 1.5x of that loop."""
    got_err = errors(got, want)
    floor = errors(loop32, want) if loop32 is not None else {}
    for name, err in got_err.items():
        assert err <= max(TOL, 1.5 * floor.get(name, 0.0)), (name, err, floor.get(name))


def check_forms_against_naive(naive, forms, inputs, seed=1):
    """Each fast form (a function of the input dict -> (out, final)) against the float64 naive, with the
    float32 naive as the conditioning floor (assert_match)."""
    want = grads(naive, as64(inputs), torch.Generator().manual_seed(seed))
    loop32 = grads(naive, inputs, torch.Generator().manual_seed(seed))
    for form in forms:
        assert_match(grads(form, inputs, torch.Generator().manual_seed(seed)), want, loop32)
