"""Tiny checkpoints built in the test session: Llama bases (width 64) and two fine-tunes of each (the base
plus different perturbations), saved with `save_pretrained` like real Hugging Face models."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import perturbed


def _save_llamas(root, num_layers: int):
    """Paths of `base`, `a` and `b` Hugging Face Llama checkpoints with `num_layers` layers, under `root`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = {}
    for name, state in (
        ("base", base_state),
        ("a", perturbed(base_state, 0.02, 1)),
        ("b", perturbed(base_state, 0.02, 2)),
    ):
        model.load_state_dict(state)
        paths[name] = root / name
        model.save_pretrained(paths[name])
    return paths


@pytest.fixture(scope="session")
def tiny_llamas(tmp_path_factory):
    """Paths of `base`, `a` and `b` Hugging Face Llama checkpoints (2 layers, hidden 64)."""
    return _save_llamas(tmp_path_factory.mktemp("tiny_llamas"), num_layers=2)


@pytest.fixture(scope="session")
def four_layer_llamas(tmp_path_factory):
    """Like `tiny_llamas` with 4 layers, so that slices can take different layer ranges of each model."""
    return _save_llamas(tmp_path_factory.mktemp("four_layer_llamas"), num_layers=4)
