"""Packed variable-length batches (`cu_seqlens`, as in flash-attn and fla).

Two layouts:

- `stream_layout` (the CPU "chunk" backend): the sequences stay one stream. Each starts at a chunk
  boundary, so it is followed by at most C - 1 empty steps (C: the kernel's chunk size), never padded to
  the longest sequence: the stream holds sum_i ceil(L_i / C) chunks, at most (T + N (C - 1)) / C, against
  N ceil(T_max / C) for a padded batch. The chunk-to-chunk carry resets the state to the next sequence's
  initial state at each sequence's first chunk, and each final state is read after its last chunk.
- `padding_index` / `pad_sequences` (the Triton backends): a zero-padded batch [N, T_max].

Either way a padded step has k = v = 0 and log-gate g = 0, which leaves the state unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamLayout:
    """Where each packed step and sequence sits in a stream of `n_chunks` chunks of `chunk` steps.

    position [T]: each packed step's index in the stream; first [n_chunks] bool: the chunk starts a
    sequence; owner [n_chunks]: the sequence a chunk belongs to (the last one for chunks past the end);
    last [N]: each sequence's last chunk; empty [N] bool: a sequence of no steps (its final state is its
    initial state)."""

    chunk: int
    n_chunks: int
    position: object
    first: object
    owner: object
    last: object
    empty: object


def stream_layout(cu_seqlens, T: int, chunk: int) -> StreamLayout:
    """The layout of packed sequences (offsets cu_seqlens [N + 1], T steps in all) in a stream of chunks.

    Built from tensor operations only; the number of chunks is read from the offsets only where that is
    free (`checks.values_readable`: CPU tensors outside torch.compile), and is otherwise the bound
    (T + N (C - 1)) // C that the shapes give (the chunks past the last sequence stay empty)."""
    import torch

    from alloyml.kernels.common.checks import values_readable

    N = cu_seqlens.numel() - 1
    device = cu_seqlens.device
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]  # [N]
    chunks = (lengths + chunk - 1) // chunk  # [N]
    ends = chunks.cumsum(0)  # [N]: one past each sequence's last chunk
    firsts = ends - chunks  # [N]
    if values_readable(cu_seqlens):
        n_chunks = max(int(ends[-1]), 1)
    else:
        n_chunks = max((T + N * (chunk - 1)) // chunk, 1)
    steps = torch.arange(T, device=device)
    seq = torch.searchsorted(cu[1:], steps, right=True)  # [T]: the sequence of each step
    position = firsts[seq] * chunk + steps - cu[seq]
    n = torch.arange(n_chunks, device=device)
    owner = torch.searchsorted(ends, n, right=True).clamp_max(N - 1)  # [n_chunks]
    first = n == firsts[owner]
    return StreamLayout(chunk, n_chunks, position, first, owner, (ends - 1).clamp_min(0), lengths == 0)


def to_stream(x, layout: StreamLayout):
    """x: [1, T, ...] packed -> [1, n_chunks * chunk, ...], zeros between the sequences."""
    stream = x.new_zeros(1, layout.n_chunks * layout.chunk, *x.shape[2:])
    return stream.index_copy(1, layout.position, x)


def from_stream(y, layout: StreamLayout):
    """y: [1, n_chunks * chunk, ...] -> [1, T, ...] packed."""
    return y.index_select(1, layout.position)


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
