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


def mergekit_yaml(data: dict, out_dir, **options) -> dict[str, torch.Tensor]:
    """Run a config through mergekit exactly as `mergekit-yaml` does (its own parsing of the raw YAML data,
    none of alloyml's validation) and return the merged state dict."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(data)
    run_merge(config, str(out_dir), MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, **options))
    return load_state(out_dir)


def load_state(directory) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint directory (one file or shards)."""
    from pathlib import Path

    from safetensors.torch import load_file

    state = {}
    for shard in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def assert_same_weights(ours: dict, theirs: dict, atol: float = 1e-6) -> None:
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype, name
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=atol, msg=name)


def tiny_llama(folder):
    """A seeded two-layer Hugging Face Llama saved (safetensors) to `folder`; returns the model."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return model
