"""A Hugging Face causal LM as something `Trainer` can train: full fine-tuning, or LoRA through `peft`.

`HFTrainable(model)` gives a transformers causal LM the interface `Trainer.fit` uses on alloyml's own
models: `forward(ids, targets=...)` returning the loss, `moe_stats()`, and its own checkpoint format
(`save_checkpoint` / `load_checkpoint`): the trainable tensors only — every weight in a full fine-tune,
the adapter's in a LoRA one — under their parameter names in `model.safetensors`, so a resume rebuilds the
base model from its source and loads them on top. Tied weights (an LM head sharing the embedding) are one
parameter and are stored once. `save_pretrained` writes the result in the standard layout: with LoRA the
adapter folded in (W + scale·B·A) plus the PEFT adapter folder beside it, for `base+adapter` merges.

Batches are right-padded rows (`text_data.example_batches(packed=False)`): causal attention never lets a
real token see a pad that follows it, so no attention mask is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from alloyml.atomic import atomic_directory
from alloyml.errors import InvalidInputError

ADAPTER_DIR = "adapter"
_CHECKPOINT_WEIGHTS = "model.safetensors"


@dataclass
class HFStepOutput:
    loss: torch.Tensor
    aux_loss: torch.Tensor


@dataclass(frozen=True)
class LoraSettings:
    """peft's LoraConfig in brief: rank r, scale alpha / r, the module names adapted."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class HFTrainable(torch.nn.Module):
    """`model` (a transformers causal LM) trained in place; with `lora`, a peft LoRA adapter on it."""

    def __init__(self, model, lora: LoraSettings | None = None):
        super().__init__()
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=list(lora.target_modules), bias="none"))
        self.model = model
        self.lora = lora

    def forward(self, ids, states=None, targets=None, cu_seqlens=None) -> HFStepOutput:
        """ids, targets: [B, T] (targets[:, t] is the token after ids[:, :t + 1], IGNORE_INDEX unscored)."""
        from alloyml.models.model import IGNORE_INDEX

        if cu_seqlens is not None:
            raise InvalidInputError("HFTrainable takes padded rows, not packed documents (cu_seqlens)")
        logits = self.model(input_ids=ids, use_cache=False).logits  # [B, T, vocab]
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return HFStepOutput(loss, loss.new_zeros(()))

    def moe_stats(self) -> list:
        return []

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def save_checkpoint(self, directory, metadata: dict) -> Path:
        import json

        from safetensors.torch import save_file

        with atomic_directory(Path(directory), overwrite=True) as staging:
            save_file(self.trainable_state(), str(staging / _CHECKPOINT_WEIGHTS), metadata={"format": "pt"})
            (staging / "config.json").write_text(json.dumps({"trainable": "hf", **metadata}) + "\n")
        return Path(directory)

    def load_checkpoint(self, directory, device) -> None:
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / _CHECKPOINT_WEIGHTS), device=str(device))
        expected = set(self.trainable_state())
        if set(state) != expected:
            raise InvalidInputError(f"checkpoint {directory} holds other tensors than this model trains: missing "
                                    f"{sorted(expected - set(state))[:3]}, "
                                    f"unexpected {sorted(set(state) - expected)[:3]}")
        self.load_state_dict(state, strict=False)

    def save_pretrained(self, directory, tokenizer=None, metadata: dict | None = None) -> Path:
        """The trained model in the Hugging Face layout (config, safetensors, generation config, tokenizer);
        with LoRA, merged, and the adapter alone in `directory/adapter`."""
        import copy

        with atomic_directory(Path(directory), overwrite=True) as staging:
            model = self.model
            if self.lora is not None:
                model.save_pretrained(str(staging / ADAPTER_DIR))
                model = copy.deepcopy(model).merge_and_unload()
            if metadata:
                model.config.update({"alloyml_training": metadata})
            model.save_pretrained(str(staging))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(staging))
        return Path(directory)
