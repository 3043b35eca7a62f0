"""Packed variable-length batches (`cu_seqlens`, as in flash-attn and fla) to a zero-padded batch and back.

Every chunked op is a gated linear recurrence; a padded step with k = v = 0 and log-gate g = 0 leaves the
state unchanged, so running the padded batch gives each sequence's exact outputs and final state.
"""

from __future__ import annotations


def padding_index(cu_seqlens):
    """Offsets [N + 1] -> (index [N, T_max] into the packed time axis, valid mask [N, T_max]).

    Padded slots point at position T (one past the end), where `pad_sequences` puts a zero row."""
    import torch

    lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # [N]
    t_max = int(lengths.max())
    steps = torch.arange(t_max, device=cu_seqlens.device)  # [T_max]
    valid = steps[None, :] < lengths[:, None]  # [N, T_max]
    index = torch.where(valid, cu_seqlens[:-1, None] + steps[None, :], cu_seqlens[-1])
    return index, valid


def pad_sequences(x, index):
    """x: [1, T, ...] packed -> [N, T_max, ...] zero-padded."""
    import torch

    rows = torch.cat([x[0], x.new_zeros((1, *x.shape[2:]))])  # [T + 1, ...]; row T is the padding
    return rows[index]


def unpad_sequences(y, valid):
    """y: [N, T_max, ...] padded -> [1, T, ...] packed."""
    return y[valid][None]
