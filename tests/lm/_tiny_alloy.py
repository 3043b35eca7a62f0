"""A tiny alloyml LinearLM saved as a checkpoint folder, and decoding it by hand (no states, no loading)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_linear_lm(path: Path, mixer: str = "linear_attn", seed: int = 0):
    """Save a 1-layer LinearLM with `mixer` at `path`; returns the in-memory model it was saved from."""
    import torch

    from alloyml.models import LinearLM, ModelConfig, save_model

    torch.manual_seed(seed)
    model = LinearLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, mixer=mixer, ffn="none")).eval()
    save_model(model, path)
    return model


def greedy_by_hand(model, text: str, steps: int) -> str:
    """`steps` greedy byte tokens after `text`, re-running the whole sequence each step."""
    import torch

    from alloyml.models.tokenizer import ByteTokenizer

    ids, out = ByteTokenizer().encode(text), []
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return ByteTokenizer().decode(out)
