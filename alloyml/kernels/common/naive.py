"""What the naive references share: computing in float64 when given float64, and running one packed
sequence at a time. The recurrences themselves are written out in each op's naive.py."""

from __future__ import annotations


def compute_dtype(dtype):
    """float32 for half-precision inputs, float64 for float64 ones: the references' working precision."""
    import torch

    return torch.promote_types(dtype, torch.float32)


def per_sequence(run, time_inputs: dict, initial_state, output_final_state: bool, cu_seqlens):
    """run(**time_inputs, initial_state) -> (o, final_state) on the whole batch, or with `cu_seqlens` on
    each packed sequence of a batch of one (time_inputs sliced on axis 1, initial_state row i), joined."""
    import torch

    if cu_seqlens is None:
        o, state = run(**time_inputs, initial_state=initial_state)
        return o, (state if output_final_state else None)
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for i, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        part = {name: x[:, start:end] for name, x in time_inputs.items()}
        o, state = run(**part, initial_state=None if initial_state is None else initial_state[i : i + 1])
        outs.append(o)
        states.append(state)
    return torch.cat(outs, dim=1), (torch.cat(states) if output_final_state else None)
