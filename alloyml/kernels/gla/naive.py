"""Gated linear attention as a plain float32 recurrence over time: the ground truth for the fast paths."""

from __future__ import annotations


def naive_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.gla`; one `gla_step` per token."""
    from functools import partial

    from alloyml.kernels.common.recurrence import scan_steps
    from alloyml.kernels.gla.recurrent import gla_step

    step = partial(gla_step, scale=scale)
    return scan_steps(step, (q, k, v, g), initial_state, output_final_state, cu_seqlens)
