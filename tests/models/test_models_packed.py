"""Packed documents (cu_seqlens) give each document exactly what it gets in a row of its own: logits and
states, for every mixer (Mamba's convolution and RWKV's token shift restart at each boundary)."""

import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.models.config import ModelConfig
from alloyml.models.mixers import MIXERS, packed_positions
from alloyml.models.model import LinearLM

LENGTHS = [5, 70, 1, 2, 30]  # a one-token document, one shorter than Mamba's conv window, one past a chunk


def tiny(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_state=8)
    return LinearLM(cfg).double().eval()


def test_packed_positions_restart_at_each_document():
    cu = torch.tensor([0, 3, 4, 7])
    assert packed_positions(cu, 7, "cpu").tolist() == [0, 1, 2, 0, 0, 1, 2]


@pytest.mark.parametrize("mixer", list(MIXERS))
@torch.no_grad()
def test_packed_documents_equal_one_row_each(mixer):
    model = tiny(mixer)
    gen = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, 40, (1, n), generator=gen) for n in LENGTHS]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    packed = model(torch.cat(docs, dim=1), cu_seqlens=cu)
    alone = [model(doc) for doc in docs]
    want = torch.cat([out.logits for out in alone], dim=1)
    torch.testing.assert_close(packed.logits, want, rtol=0, atol=1e-10)
    if mixer == "softmax":
        return
    # one state row per document, as the documents' own states regrouped (cat_states: Hyena's input caches
    # of different lengths are left-padded with zeros; packed, they are all as long as the packed row)
    regrouped = model.cat_states([out.states for out in alone])
    for state, want_state in zip(packed.states, regrouped, strict=True):
        for got, want_part in zip(state, want_state, strict=True):
            if mixer == "hyena" and got.dim() == 3 and got.shape[1] > want_part.shape[1]:
                want_part = torch.nn.functional.pad(want_part, (0, 0, got.shape[1] - want_part.shape[1], 0))
            torch.testing.assert_close(got, want_part, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", ["mamba", "rwkv", "rwkv5", "lru", "hawk", "s4d", "mamba1", "deltanet", "ttt_linear",
                                   "h3", "hyena", "griffin"])
@torch.no_grad()
def test_packing_without_the_reset_would_leak(mixer):
    """The boundary reset matters: the second document's logits differ when the first precedes it in
    one row without cu_seqlens (the check above could not pass by ignoring the reset)."""
    model = tiny(mixer)
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randint(0, 40, (1, 9), generator=gen), torch.randint(0, 40, (1, 9), generator=gen)
    joined = model(torch.cat([a, b], dim=1)).logits[:, 9:]
    packed = model(torch.cat([a, b], dim=1), cu_seqlens=torch.tensor([0, 9, 18])).logits[:, 9:]
    torch.testing.assert_close(packed, model(b).logits, rtol=0, atol=1e-10)
    assert (joined - packed).abs().max() > 1e-3


def test_packed_input_needs_one_row_and_no_state():
    model = tiny("gla")
    ids = torch.randint(0, 40, (2, 6))
    with pytest.raises(InvalidInputError, match="batch of one"):
        model(ids, cu_seqlens=torch.tensor([0, 3, 6]))
