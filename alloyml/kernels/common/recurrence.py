"""The naive references: run an op's one-token step over time, one packed sequence at a time.

This is deliberately the slowest, plainest form (a Python loop over T), kept as the ground truth that
every fast path is tested against.
"""

from __future__ import annotations


def scan_steps(step, sequences: tuple, initial_state, output_final_state: bool, cu_seqlens):
    """`step(*[x[:, t] for x in sequences], state) -> (o_t, state)` for t = 0..T-1.

    sequences: tensors [B, T, ...]; initial_state: [N, H, K, V] or None (zeros, made by the step).
    Returns (o: [B, T, H, V] in the first sequence's dtype, final_state or None)."""
    import torch

    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        outs, states = [], []
        for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
            h0 = None if initial_state is None else initial_state[i : i + 1]
            o, state = scan_steps(step, tuple(x[:, start:end] for x in sequences), h0, True, None)
            outs.append(o)
            states.append(state)
        return torch.cat(outs, dim=1), (torch.cat(states) if output_final_state else None)

    state = initial_state
    outs = []
    # unbind, not x[:, t]: each x[:, t] would give the backward a zero-filled [B, T, ...] gradient per step,
    # a cost quadratic in T that would make this reference look slower than a recurrence is.
    for steps in zip(*(x.unbind(1) for x in sequences), strict=True):
        o, state = step(*steps, state)
        outs.append(o)
    return torch.stack(outs, dim=1), (state if output_final_state else None)
