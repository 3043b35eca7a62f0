"""`ModelConfig`: everything that describes a model, and the named configurations (MoE-Mamba, ...).

A config is plain data: it round-trips through `config.json` (`to_dict` / `from_dict`) and is checked
once, when it is built, so a bad value fails before any weights exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from alloyml.errors import ConfigError

ROUTINGS = ("token_choice", "expert_choice")


@dataclass(frozen=True)
class ModelConfig:
    """One language model: `n_layers` blocks of (token mixer + feed-forward), pre-norm residual.

    mixer: the token mixer of every block (a name in `mixers.MIXERS`); ffn: a name in `moe.FFNS` ("mlp",
    "moe") or "none" (mixer-only blocks, as in vanilla Mamba); n_heads: heads of the mixer (head size
    d_model / n_heads; Mamba's heads split its expand * d_model inner width); d_state: Mamba's state size N
    (K of the scan); d_conv: width of Mamba's short causal convolution; expand: Mamba's inner width factor;
    ffn_mult: hidden width of an MLP or expert, as a multiple of d_model; n_experts, top_k,
    capacity_factor, routing, aux_loss_weight: the MoE layer (capacity applies while training; see moe.py);
    backend: kernel backend of the parallel forward ("auto": Triton on CUDA, chunked PyTorch on CPU);
    kan_grid, kan_order: the KAN feed-forward's B-spline grid intervals G and spline order k (kan.py);
    performer_features, performer_redraw: the Performer's random features per head m, and how many training
    steps apart they are redrawn (0: never; performer.py); window: keys per query of the local
    (sliding-window) attention of the `local_attn` and `griffin` mixers, and the size of their ring-buffer
    KV cache (griffin.py); griffin_period: a `griffin` block stacks griffin_period - 1 RG-LRU layers and
    one local-attention layer (the paper's 3: two recurrent layers to one attention layer).
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mixer: str = "mamba"
    ffn: str = "mlp"
    ffn_mult: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    n_experts: int = 8
    top_k: int = 1
    capacity_factor: float = 1.25
    routing: str = "token_choice"
    aux_loss_weight: float = 0.01
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    backend: str = "auto"
    kan_grid: int = 5
    kan_order: int = 3
    performer_features: int = 64
    performer_redraw: int = 1000
    window: int = 64
    griffin_period: int = 3

    def __post_init__(self):
        mixers, ffns = layer_names()
        if self.mixer not in mixers:
            raise ConfigError(f"mixer must be one of {mixers}, got {self.mixer!r}")
        if self.ffn not in ffns:
            raise ConfigError(f"ffn must be one of {ffns}, got {self.ffn!r}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_mult", "d_state", "d_conv", "expand",
                     "n_experts", "top_k", "kan_grid", "kan_order", "performer_features", "window",
                     "griffin_period"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size"
            )
        redraw = self.performer_redraw
        if not isinstance(redraw, int) or isinstance(redraw, bool) or redraw < 0:
            raise ConfigError(f"performer_redraw must be a non-negative integer, got {self.performer_redraw!r}")
        if self.top_k > self.n_experts:
            raise ConfigError(f"top_k ({self.top_k}) must be <= n_experts ({self.n_experts})")
        if not self.capacity_factor > 0:
            raise ConfigError(f"capacity_factor must be > 0, got {self.capacity_factor!r}")
        if self.aux_loss_weight < 0:
            raise ConfigError(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def named(cls, name: str, **overrides) -> ModelConfig:
        """A named configuration (see `NAMED_CONFIGS`) with some fields overridden."""
        layer_names()  # the mixers' own named configs register with the mixers
        if name not in NAMED_CONFIGS:
            raise ConfigError(f"unknown model config {name!r}; known: {sorted(NAMED_CONFIGS)}")
        return NAMED_CONFIGS[name](**overrides)


def layer_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(mixer names, feed-forward names incl. "none"), read from the registries that define them
    (`mixers.MIXERS`, `moe.FFNS`); imported here, not at the top, because those modules import this one."""
    from alloyml.models.mixers import MIXERS
    from alloyml.models.moe import FFNS

    return tuple(MIXERS), (*FFNS, "none")


def register_in(table: dict, name: str):
    """A decorator that stores its target in `table` under `name` (and, for a class, sets `cls.name`)."""

    def register(obj):
        table[name] = obj
        if isinstance(obj, type):
            obj.name = name
        return obj

    return register


# Filled by @named_config below and, one per mixer (its name, with an MLP feed-forward), by
# `mixers.register_mixer`; `ModelConfig.named` imports the mixers first, so every name is there.
NAMED_CONFIGS: dict[str, Callable[..., ModelConfig]] = {}
named_config = partial(register_in, NAMED_CONFIGS)  # @named_config(name): fn(**overrides) -> ModelConfig


@named_config("moe-mamba")
def moe_mamba(**overrides) -> ModelConfig:
    """MoE-Mamba (Pióro et al. 2024): Mamba layers alternating with Switch (top-1) MoE layers, i.e.
    blocks of (Mamba mixer + MoE feed-forward)."""
    fields = dict(mixer="mamba", ffn="moe", n_experts=8, top_k=1, capacity_factor=1.25)
    return ModelConfig(**{**fields, **overrides})


@named_config("mamba-only")
def mamba_only(**overrides) -> ModelConfig:
    """Vanilla Mamba: Mamba mixers with no feed-forward (the MoE-Mamba paper's baseline, which stacks twice
    the layers of MoE-Mamba to match its active parameters)."""
    return ModelConfig(**{"mixer": "mamba", "ffn": "none", **overrides})
