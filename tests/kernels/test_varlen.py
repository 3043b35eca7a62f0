"""Packed sequences on the CPU chunk backend: one stream of chunks with the state reset between
sequences (varlen.stream_layout), against each sequence run on its own by the float64 recurrence."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_cases import OPS, make_case, rel_rms

from alloyml.kernels.common import checks
from alloyml.kernels.common.chunk_torch import SCALAR_GATE_CHUNK, VECTOR_GATE_CHUNK
from alloyml.kernels.common.varlen import stream_layout

TOL = 1e-5
# odd lengths around the chunk sizes (32 scalar gates, 64 vector gates): sequences that end one step
# into a chunk, fill one exactly, and length-1 sequences at the start, between and at the end
LENGTHS = [1, 33, 64, 65, 1, 2, 31, 1]


def _offsets(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)


def _weights(T, N, H, V):
    """A fixed random projection of (o [1, T, H, V], final states [N, H, K, V]) to differentiate."""
    gen = torch.Generator().manual_seed(5)
    return torch.randn(1, T, H, V, generator=gen, dtype=torch.float64), torch.randn(N, H, 1, V, generator=gen,
                                                                                    dtype=torch.float64)


def _run(case, inputs, h0, cu_seqlens, backend, dtype, w_o, w_s):
    leaves = {n: x.detach().to(dtype).requires_grad_() for n, x in inputs.items()}
    h0_leaf = h0.detach().to(dtype).requires_grad_()
    o, state = case(leaves, initial_state=h0_leaf, cu_seqlens=cu_seqlens, backend=backend)
    ((o.double() * w_o).sum() + (state.double() * w_s).sum()).backward()
    out = {"o": o, "state": state, "dh0": h0_leaf.grad, **{f"d{n}": x.grad for n, x in leaves.items()}}
    return {key: x.detach().double() for key, x in out.items()}


def _loop(case, inputs, h0, lengths, w_o, w_s):
    """Each sequence on its own through the float64 recurrence, joined: the reference."""
    cu = _offsets(lengths).tolist()
    outs = []
    for i, (a, b) in enumerate(zip(cu, cu[1:], strict=False)):
        part = {n: (x[:, a:b] if n in case.time_args else x) for n, x in inputs.items()}
        outs.append(_run(case, part, h0[i : i + 1], None, "naive", torch.float64, w_o[:, a:b], w_s[i : i + 1]))
    joined = {"o": torch.cat([o["o"] for o in outs], dim=1), "state": torch.cat([o["state"] for o in outs]),
              "dh0": torch.cat([o["dh0"] for o in outs])}
    for n in inputs:
        if n in case.time_args:
            joined[f"d{n}"] = torch.cat([o[f"d{n}"] for o in outs], dim=1)
        else:  # per-head parameters: summed over the sequences
            joined[f"d{n}"] = sum(o[f"d{n}"] for o in outs)
    return joined


@pytest.mark.parametrize("readable", [True, False], ids=["exact-chunks", "shape-bound"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_stream_equals_each_sequence_alone(name, readable, monkeypatch):
    """Outputs, final states and every gradient; "shape-bound" is the layout torch.compile and CUDA get
    (the number of chunks from the shapes alone, no value read)."""
    if not readable:
        monkeypatch.setattr(checks, "values_readable", lambda x: False)
    case = OPS[name]
    inputs, h0 = make_case(case, B=1, T=sum(LENGTHS), H=2, K=12, V=10, scale=2.0, seed=4)
    h0 = torch.cat([h0] * len(LENGTHS)) * torch.linspace(0.5, 1.5, len(LENGTHS)).view(-1, 1, 1, 1)
    w_o, w_s = _weights(sum(LENGTHS), len(LENGTHS), 2, 10 + case.state_extra)
    w_o = w_o[..., :10]
    got = _run(case, inputs, h0, _offsets(LENGTHS), "chunk", torch.float32, w_o, w_s)
    want = _loop(case, inputs, h0, LENGTHS, w_o, w_s)
    assert set(got) == set(want)
    for key in want:
        assert rel_rms(got[key], want[key]) <= TOL, (key, rel_rms(got[key], want[key]))


def test_the_stream_is_not_padded_to_the_longest_sequence():
    lengths = [300, 1, 5, 40]
    for C in (SCALAR_GATE_CHUNK, VECTOR_GATE_CHUNK):
        layout = stream_layout(_offsets(lengths), sum(lengths), C)
        assert layout.n_chunks == sum(math.ceil(n / C) for n in lengths)
        assert layout.n_chunks < len(lengths) * math.ceil(max(lengths) / C)  # what padding would take
        # every step has its own slot, each sequence starting a chunk
        assert layout.position.unique().numel() == sum(lengths)
        assert (layout.position[_offsets(lengths)[:-1]] % C == 0).all()


def test_an_empty_sequence_keeps_its_initial_state(monkeypatch):
    """Where values are not read (torch.compile, CUDA) an empty sequence is not refused: its final state is
    its initial state and its neighbours are unaffected."""
    monkeypatch.setattr(checks, "values_readable", lambda x: False)
    case = OPS["gla"]
    lengths = [7, 0, 40]
    inputs, h0 = make_case(case, B=1, T=sum(lengths), H=2, K=8, V=6, seed=2)
    h0 = torch.cat([h0] * 3) + torch.arange(3.0).view(-1, 1, 1, 1)
    o, state = case({n: x.float() for n, x in inputs.items()}, initial_state=h0.float(),
                    cu_seqlens=_offsets(lengths), backend="chunk")
    w_o, w_s = _weights(sum(lengths), 2, 2, 6)
    want = _loop(case, inputs, h0[[0, 2]], [7, 40], w_o, w_s)
    assert rel_rms(o, want["o"]) <= TOL
    assert rel_rms(state[[0, 2]], want["state"]) <= TOL
    assert torch.equal(state[1], h0[1].float())
