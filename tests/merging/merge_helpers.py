"""Helpers shared by the merging tests."""

from __future__ import annotations

import torch


def perturbed(state: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """A stand-in fine-tune: every floating tensor moved by seeded Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }


def small_state(seed: int = 0, layers: int = 3) -> dict[str, torch.Tensor]:
    """A toy transformer-shaped state dict with an integer buffer."""
    gen = torch.Generator().manual_seed(seed)
    state = {"embed.weight": torch.randn(10, 6, generator=gen)}
    for i in range(layers):
        state[f"model.layers.{i}.attn.weight"] = torch.randn(6, 6, generator=gen)
        state[f"model.layers.{i}.mlp.weight"] = torch.randn(12, 6, generator=gen)
        state[f"model.layers.{i}.norm.bias"] = torch.randn(6, generator=gen)
    state["position_ids"] = torch.arange(7)
    return state
