"""The selective scan (SSD form) as a plain float32 recurrence over time: the ground truth for the fast
paths."""

from __future__ import annotations


def naive_selective_scan(x, dt, A, B, C, D=None, *, initial_state=None, output_final_state=True,
                         cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.selective_scan`; one `selective_scan_step` per token."""
    from alloyml.kernels.common.recurrence import scan_steps
    from alloyml.kernels.selective_scan.recurrent import selective_scan_step

    def step(x_t, dt_t, B_t, C_t, state):
        return selective_scan_step(x_t, dt_t, A, B_t, C_t, state, D)

    return scan_steps(step, (x, dt, B, C), initial_state, output_final_state, cu_seqlens)
