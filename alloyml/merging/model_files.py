"""The files of a merged model besides its weights: config and tokenizer files copied from the reference
model's directory, with config.json updated for the output dtype and, after a `slices:` merge, the new
layer count (alloyml `LinearLM` configs and Hugging Face configs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from alloyml.errors import ConfigError
from alloyml.merging.checkpoints import WEIGHT_INDEXES, WEIGHT_SUFFIXES

CONFIG_FILE = "config.json"
# Where Hugging Face configs keep the layer count (Llama/Mistral/Qwen; GPT-2; others).
HF_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _with_layer_count(model_config: dict[str, Any], layers: int, path: Path) -> dict[str, Any]:
    from alloyml.models.saving import ARCHITECTURE, hf_fields

    if model_config.get("architecture") == ARCHITECTURE:
        import torch

        from alloyml.models.config import ModelConfig
        from alloyml.models.model import LinearLM

        config = ModelConfig.from_dict({**model_config["config"], "n_layers": layers})
        with torch.device("meta"):  # only to count parameters: no memory, no initialisation cost
            model = LinearLM(config)
        return {
            **model_config,
            "config": config.to_dict(),
            # format 2 repeats the fields flat for transformers; they must say the same
            **(hf_fields(config) if "model_type" in model_config else {}),
            "num_params": model.num_params(),
            "num_active_params": model.num_params(active=True),
        }
    key = next((k for k in HF_LAYER_KEYS if isinstance(model_config.get(k), int)), None)
    if key is None:
        raise ConfigError(
            f"{path} has no layer count to set to {layers} (looked for {', '.join(HF_LAYER_KEYS)} and an "
            f"alloyml {ARCHITECTURE} config); the merged model would not load with it"
        )
    return {**model_config, key: layers}


def output_model_config(source: Path | None, out_dtype: str | None, layers: int | None) -> dict[str, Any] | None:
    """The merged model's config.json contents (None when the reference model has none): the reference's,
    with `out_dtype` and `layers` set when given. Raises before any work when the layer count has no key."""
    path = source / CONFIG_FILE if source is not None else None
    if path is None or not path.exists():
        return None
    model_config = json.loads(path.read_text())
    if out_dtype:
        model_config["torch_dtype"] = out_dtype
        if "dtype" in model_config:
            model_config["dtype"] = out_dtype
    if layers is not None:
        model_config = _with_layer_count(model_config, layers, path)
    return model_config


def copy_model_files(
    source: Path | None, target: Path, model_config: dict[str, Any] | None, skip: tuple[str, ...] = ()
) -> None:
    """Copy config/tokenizer files (everything but weights and `skip`) from `source`; write `model_config`
    as config.json."""
    if source is None:
        return
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.suffix not in WEIGHT_SUFFIXES:
            if path.name not in (*WEIGHT_INDEXES, CONFIG_FILE, *skip):
                shutil.copy2(path, target / path.name)
    if model_config is not None:
        (target / CONFIG_FILE).write_text(json.dumps(model_config, indent=2) + "\n")
