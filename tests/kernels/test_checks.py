"""Inputs are checked before any work, with errors that name the argument."""

from __future__ import annotations

import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.kernels import gla, gla_step, linear_attn, selective_scan


def qkv(B=1, T=5, H=2, K=4, V=3):
    return torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda q, k, v: linear_attn(q, k[:, :4], v), "k must have shape [1, 5, 2, 4]"),
        (lambda q, k, v: linear_attn(q, k, v[..., 0]), "v must have shape"),
        (lambda q, k, v: linear_attn(q, k, v, torch.tensor([0.5, 1.5])), "decay must lie in (0.0, 1.0]"),
        (lambda q, k, v: linear_attn(q, k, v, torch.ones(3)), "decay must have shape [2]"),
        (lambda q, k, v: linear_attn(q, k, v, backend="fast"), "backend must be one of"),
        (lambda q, k, v: linear_attn(q, k, v, backend="triton"), "backend='triton' needs CUDA"),
        (lambda q, k, v: gla(q, k, v, torch.zeros(1, 5, 2, 4), backend="triton_recurrent"),
         "backend='triton_recurrent' needs CUDA"),
        (lambda q, k, v: linear_attn(q, k, v, normalize=True, initial_state=torch.zeros(1, 2, 4, 3)),
         "initial_state must have shape [1, 2, 4, 4]"),
        (lambda q, k, v: gla(q, k, v, torch.zeros(1, 5, 2, 3)), "g must have shape [1, 5, 2, 4]"),
        (lambda q, k, v: gla(q.long(), k, v, torch.zeros(1, 5, 2, 4)), "q must be a floating-point tensor"),
        (lambda q, k, v: gla(q, k, v, torch.zeros(1, 5, 2, 4), cu_seqlens=torch.tensor([0, 3, 3, 5])),
         "cu_seqlens must rise strictly from 0 to T = 5"),
        (lambda q, k, v: gla(q, k, v, torch.zeros(1, 5, 2, 4), cu_seqlens=torch.tensor([0.0, 5.0])),
         "cu_seqlens must be an int32/int64 tensor"),
        (lambda q, k, v: gla_step(q[:, 0], k[:, 0], v[:, 0], torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, 4)),
         "state must have shape [1, 2, 4, 3]"),
        (lambda q, k, v: selective_scan(v, torch.ones(1, 5, 2), torch.tensor([-1.0, 0.5]), k, q),
         "A must lie in [-inf, 0.0]"),
        (lambda q, k, v: selective_scan(v, torch.ones(1, 5, 2), -torch.ones(2), k, q, D=torch.ones(3)),
         "D must have shape [2]"),
        (lambda q, k, v: selective_scan(v, torch.ones(1, 5), -torch.ones(2), k, q), "dt must have shape"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, needle, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InvalidInputError) as err:
        call(*qkv())
    assert needle in str(err.value)


def test_packed_sequences_need_batch_of_one():
    q, k, v = qkv(B=2)
    with pytest.raises(InvalidInputError, match="need batch size B = 1, got B = 2"):
        gla(q, k, v, torch.zeros_like(q), cu_seqlens=torch.tensor([0, 5]))
