"""Which tensors belong to which transformer layer, from tensor names alone.

A layer naming is a tensor-name prefix with one `{layer}` placeholder: `model.layers.{layer}.` (Hugging
Face Llama, Mistral, Qwen, Gemma) or `blocks.{layer}.` (alloyml's `LinearLM`, see `alloyml.models`). It is
detected from a checkpoint's tensor names, or given as `layer_pattern:` in the merge config. Tensors
outside the layer stack are split into those before it (embeddings) and those after it (final norm,
head), because a `slices:` merge takes them from its first and last slice respectively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from alloyml.errors import ConfigError
from alloyml.merging.checkpoints import TensorInfo

KNOWN_LAYER_PATTERNS = (
    "model.layers.{layer}.",  # Hugging Face Llama, Mistral, Qwen2, Gemma, Phi-3
    "blocks.{layer}.",  # alloyml LinearLM
    "transformer.h.{layer}.",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers.{layer}.",  # GPT-NeoX, Pythia
    "model.decoder.layers.{layer}.",  # OPT
)
# A name part containing "embed" (embed_tokens, wte-style word_embeddings, alloyml's `embed`), except
# GPT-NeoX's output head `embed_out`.
_BEFORE_LAYERS = re.compile(r"(?:^|\.)(?:(?!embed_out(?:\.|$))\w*embed\w*|wte|wpe)(?:\.|$)")
PLACEHOLDER = "{layer}"


@dataclass(frozen=True)
class LayerNaming:
    """Tensor names `<before>{layer}<after><rest>`, from a `pattern` such as `model.layers.{layer}.`."""

    pattern: str

    def __post_init__(self):
        if self.pattern.count(PLACEHOLDER) != 1 or self.pattern.replace(PLACEHOLDER, "").count("{"):
            raise ConfigError(
                f"layer_pattern {self.pattern!r} must contain `{PLACEHOLDER}` exactly once and no other "
                "braces, e.g. 'model.layers.{layer}.'"
            )

    def split(self, name: str) -> tuple[int, str] | None:
        """(layer index, the rest of the name) for a layer tensor, None for any other tensor."""
        match = _compiled(self.pattern).match(name)
        return (int(match.group(1)), name[match.end() :]) if match else None

    def name(self, layer: int, rest: str) -> str:
        """The full name of tensor `rest` in layer `layer`."""
        return self.pattern.replace(PLACEHOLDER, str(layer)) + rest


@dataclass
class LayerStack:
    """A checkpoint's tensors, split: `layers[i]` maps the names within layer i (the part after the
    pattern) to their infos; `before` and `after` hold the full-named tensors outside the stack."""

    layers: list[dict[str, TensorInfo]]
    before: dict[str, TensorInfo]
    after: dict[str, TensorInfo]


@lru_cache
def _compiled(pattern: str) -> re.Pattern:
    before, after = pattern.split(PLACEHOLDER)
    return re.compile(f"^{re.escape(before)}(\\d+){re.escape(after)}")


def detect_layer_naming(names: Iterable[str], label: str, pattern: str | None = None) -> LayerNaming:
    """The layer naming of a checkpoint whose tensors are `names`: `pattern` if given, else the one
    known pattern that some names fit. Raises ConfigError naming the checkpoint when it cannot tell."""
    names = list(names)
    candidates = [LayerNaming(pattern)] if pattern else [LayerNaming(p) for p in KNOWN_LAYER_PATTERNS]
    fitting = {n.pattern: hit for n in candidates if (hit := next((x for x in names if n.split(x)), None))}
    hint = "set `layer_pattern:` in the merge config to the prefix of its layer tensors, e.g. 'model.layers.{layer}.'"
    example = f" (it has e.g. {names[0]!r})" if names else ""
    if pattern and not fitting:
        raise ConfigError(f"no tensor of model {label!r} is named like layer_pattern {pattern!r}{example}")
    if not fitting:
        known = ", ".join(repr(p) for p in KNOWN_LAYER_PATTERNS)
        raise ConfigError(
            f"cannot tell which tensors of model {label!r} belong to which layer: no tensor name{example} "
            f"starts with a known layer pattern ({known}); {hint}"
        )
    if len(fitting) > 1:
        found = ", ".join(f"{p!r} (e.g. {hit!r})" for p, hit in fitting.items())
        raise ConfigError(f"tensor names of model {label!r} fit several layer patterns: {found}; {hint}")
    return LayerNaming(next(iter(fitting)))


def split_layers(infos: Mapping[str, TensorInfo], naming: LayerNaming, label: str) -> LayerStack:
    """Group a checkpoint's tensors by layer; the layer indices must run 0, 1, ..., n-1."""
    by_layer: dict[int, dict[str, TensorInfo]] = {}
    before, after = {}, {}
    for name, info in infos.items():
        split = naming.split(name)
        if split is not None:
            by_layer.setdefault(split[0], {})[split[1]] = info
        elif _BEFORE_LAYERS.search(name):
            before[name] = info
        else:
            after[name] = info
    if not by_layer:
        raise ConfigError(f"model {label!r} has no tensors named like {naming.pattern!r}")
    missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
    if missing:
        raise ConfigError(
            f"model {label!r}: layers named like {naming.pattern!r} go up to {max(by_layer)} but layers "
            f"{missing[:10]} have no tensors"
        )
    return LayerStack([by_layer[i] for i in range(len(by_layer))], before, after)
