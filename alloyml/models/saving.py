"""A model on disk: a directory with `model.safetensors` (the state dict under its plain parameter names,
see model.py; no tied or shared tensors, so every name is stored once), `generation_config.json` and
`config.json`, which is at once alloyml's description and a Hugging Face config (format version 2):

    {"architecture": "alloyml.LinearLM", "mixer": "mamba", "ffn": "moe", "num_params": 1234,
     "num_active_params": 1000, "format_version": 2, "config": {...ModelConfig fields...},
     "model_type": "alloyml-linear", "architectures": ["AlloyLinearForCausalLM"],
     ...the ModelConfig fields again, flat (MoE `top_k` as `moe_top_k`)..., "pad_token_id": 0}

So transformers' Auto classes (with `alloyml.models.hf_bridge` imported), mergekit (with
`alloyml.models.mergekit_arch` registered), `alloyml.merging` and `load_model` all read the same folder.
Format version 1 (no `model_type`) still loads here; `hf_bridge.convert_checkpoint` rewrites it. Folders of
versions 1 and 2 with `mixer: "rwkv"` hold the RWKV-5-like mixer, which is `rwkv5` now (`upgrade_fields`).
Derived tensors (RetNet's fixed decays) are not stored: they are rebuilt from the config.
"""

from __future__ import annotations

import json
from pathlib import Path

from alloyml.atomic import atomic_directory
from alloyml.errors import ConfigError, InvalidInputError, NotFoundError

ARCHITECTURE = "alloyml.LinearLM"
FORMAT_VERSION = 3  # 3: mixer "rwkv" is RWKV-6; in versions 1 and 2 it named the RWKV-5-like mixer, now "rwkv5"
GENERATION_CONFIG_FILE = "generation_config.json"
HF_ARCHITECTURE = "AlloyLinearForCausalLM"  # the class in hf_bridge; mergekit looks definitions up by it
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HF_MODEL_TYPE = "alloyml-linear"
# config.json names of the Hugging Face layout that differ from ModelConfig's (transformers reads a
# top-level `top_k` as a sampling setting, so the MoE's experts-per-token is `moe_top_k` there).
HF_RENAMED = {"top_k": "moe_top_k"}


def save_model(model, directory, metadata: dict | None = None) -> Path:
    """Write `model` (a LinearLM) to `directory`, whole or not at all; returns the directory.

    The directory holds one model: an existing one is replaced as a whole (alloyml.atomic), and a failure
    (say, metadata that is not JSON) leaves it as it was. metadata: extra JSON-serialisable fields for
    config.json (e.g. the training step)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg = model.config
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    info = {
        "architecture": ARCHITECTURE,
        "mixer": cfg.mixer,
        "ffn": cfg.ffn,
        "num_params": model.num_params(),
        "num_active_params": model.num_params(active=True),
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        **hf_fields(cfg),
        **(metadata or {}),
    }
    from alloyml.models.conv_mixers import distilled_layers

    distilled = distilled_layers(model)
    if distilled:  # layers replaced after construction (conv_mixers.distill_hyena): the config alone misses them
        info["distilled_hyena"] = {str(i): modes for i, modes in distilled.items()}
    config_json = json.dumps(info, indent=2) + "\n"  # a bad metadata value fails here, before any write
    with atomic_directory(directory, overwrite=True) as staging:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(config_json)
        # Greedy by default; byte 0 pads (there is no end-of-sequence token).
        (staging / GENERATION_CONFIG_FILE).write_text(json.dumps({"do_sample": False, "pad_token_id": 0}) + "\n")
    return directory


def upgrade_fields(fields: dict, format_version) -> dict:
    """ModelConfig fields read from a config.json of `format_version` (None: written by this version) in
    today's names: before version 3, mixer "rwkv" was the RWKV-5-like mixer, registered as "rwkv5" now."""
    if format_version is not None and format_version < 3 and fields.get("mixer") == "rwkv":
        return {**fields, "mixer": "rwkv5"}
    return fields


def load_config(directory):
    """The ModelConfig stored in `directory`/config.json."""
    from alloyml.models.config import ModelConfig

    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise NotFoundError(f"{directory} has no {CONFIG_FILE}; expected a directory written by save_model")
    info = json.loads(path.read_text())
    if info.get("model_type") == HF_MODEL_TYPE:
        return config_from_hf(info)
    if info.get("architecture") != ARCHITECTURE or "config" not in info:
        raise ConfigError(f"{path} does not describe an {ARCHITECTURE} (architecture={info.get('architecture')!r})")
    return ModelConfig.from_dict(upgrade_fields(info["config"], info.get("format_version")))


def hf_fields(cfg) -> dict:
    """The Hugging Face half of config.json for ModelConfig `cfg` (what `AlloyLinearConfig` reads)."""
    return {
        "model_type": HF_MODEL_TYPE,
        "architectures": [HF_ARCHITECTURE],
        **{HF_RENAMED.get(name, name): value for name, value in cfg.to_dict().items()},
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }


def config_from_hf(info: dict):
    """The ModelConfig in a Hugging Face layout config.json (transformers' own keys are ignored)."""
    from alloyml.models.config import ModelConfig

    fields = {}
    for name in ModelConfig.__dataclass_fields__:
        key = HF_RENAMED.get(name, name)
        if key in info:
            fields[name] = info[key]
    return ModelConfig(**upgrade_fields(fields, info.get("format_version")))


def load_model(directory, device="cpu"):
    """The LinearLM saved in `directory`, in eval mode, with exactly the saved tensors."""
    from safetensors.torch import load_file

    from alloyml.models.model import LinearLM

    cfg = load_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise NotFoundError(f"{directory} has no {WEIGHTS_FILE}")
    model = LinearLM(cfg)
    distilled = json.loads((Path(directory) / CONFIG_FILE).read_text()).get("distilled_hyena")
    if distilled:
        from alloyml.models.conv_mixers import restore_distilled

        restore_distilled(model, distilled)
    state = load_file(str(weights))
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise InvalidInputError(
            f"{weights} does not match its config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state)
    return model.to(device).eval()
