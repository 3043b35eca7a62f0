"""alloyml's `LinearLM` as a Hugging Face model: a `PretrainedConfig` (`model_type="alloyml-linear"`), a
`PreTrainedModel` that `generate()` drives with the recurrent state as its cache, and the byte tokenizer as
a `PreTrainedTokenizer`, registered with `AutoConfig`, `AutoModelForCausalLM` and `AutoTokenizer`.

Registration happens when this module is imported (it imports transformers and torch, so `import alloyml`
and `import alloyml.models` never do); `alloyml.models.load_model` and the mergekit bridge import it when
they meet a folder in this layout.

One folder layout serves both worlds (saving.py): `alloyml.models.save_model` writes `config.json` with
`model_type`, `model.safetensors` under alloyml's own parameter names and `generation_config.json`;
`save_pretrained` here adds the tokenizer files, and the wrapper's own `save_pretrained` (transformers')
writes the same tensors and a config that `load_model` reads too. Folders of format version 1 (config.json
without `model_type`) convert with `convert_checkpoint` (`alloyml models convert`).

Generation: greedy, sampling (any of transformers' logits processors), beam search (the cache reorders its
rows with `select_states`), `num_return_sequences`, `use_cache=False` (the whole sequence each step), and
batches of prompts of different lengths given left-padded with an attention mask: a padded prefill runs
each row on its own real tokens (the pads never enter the state), so each row continues exactly as if it
were alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizer,
)
from transformers.utils import ModelOutput

from alloyml.errors import InvalidInputError
from alloyml.models.config import ModelConfig
from alloyml.models.model import LinearLM
from alloyml.models.saving import HF_MODEL_TYPE as MODEL_TYPE
from alloyml.models.saving import HF_RENAMED, upgrade_fields

_FIELDS = tuple(ModelConfig.__dataclass_fields__)
_HF_NAMES = {name: HF_RENAMED.get(name, name) for name in _FIELDS}


class AlloyLinearConfig(PretrainedConfig):
    """The fields of `ModelConfig`, flat in config.json (`top_k` as `moe_top_k`), checked by `ModelConfig`
    when built."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}

    def __init__(self, **kwargs):
        defaults = ModelConfig()
        fields = {name: kwargs.pop(_HF_NAMES[name], getattr(defaults, name)) for name in _FIELDS}
        fields = upgrade_fields(fields, kwargs.get("format_version"))  # older folders' names
        ModelConfig(**fields)  # validate before any weight exists
        for name, value in fields.items():
            setattr(self, _HF_NAMES[name], value)
        # Byte models: no dedicated special tokens; 0 (NUL) pads and never needs to be generated.
        kwargs.setdefault("pad_token_id", 0)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, _HF_NAMES[name]) for name in _FIELDS})

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> AlloyLinearConfig:
        return cls(**{_HF_NAMES[k]: v for k, v in cfg.to_dict().items()}, **kwargs)


class RecurrentCache:
    """The per-layer states of `LinearLM` (fixed-size for the linear mixers, a KV cache for softmax), one
    row per sequence, carried between `generate()` steps."""

    def __init__(self, core: LinearLM, states: list):
        self.core, self.states = core, states

    def reorder_cache(self, beam_idx):
        """Beam search: row i continues the sequence that was row beam_idx[i]."""
        self.states = self.core.select_states(self.states, beam_idx.to(torch.long))


@dataclass
class AlloyCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: RecurrentCache | None = None
    aux_loss: torch.Tensor | None = None


class AlloyLinearForCausalLM(PreTrainedModel, GenerationMixin):
    """`LinearLM` with transformers' loading, saving and generation. Its submodules *are* a `LinearLM`'s
    (`self.core`), so parameter names and numerics are alloyml's own."""

    config_class = AlloyLinearConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_cache_class = False

    def __init__(self, config: AlloyLinearConfig):
        super().__init__(config)
        core = LinearLM(config.model_config())
        # Registered here under the names LinearLM uses, so state_dict keys match alloyml's files; the
        # LinearLM itself is kept outside the module tree (same submodule objects, no second copy).
        self.embed, self.blocks, self.norm, self.lm_head = core.embed, core.blocks, core.norm, core.lm_head
        object.__setattr__(self, "core", core)
        self.post_init()

    @classmethod
    def from_linear_lm(cls, model: LinearLM) -> AlloyLinearForCausalLM:
        """A wrapper around a copy of `model`'s weights (same device and dtype)."""
        hf = cls(AlloyLinearConfig.from_model_config(model.config))
        param = next(model.parameters())
        hf.to(device=param.device, dtype=param.dtype)
        hf.load_state_dict(model.state_dict())
        return hf.eval()

    def _init_weights(self, module):  # LinearLM initialises itself; loaded weights overwrite everything
        pass

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = self.core.embed = value

    def get_output_embeddings(self):
        return self.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state is the cache; generate() must not make a DynamicCache

    def forward(self, input_ids=None, attention_mask=None, cache=None, labels=None, use_cache=None,
                return_dict=None, **kwargs) -> AlloyCausalLMOutput:
        """input_ids [B, T]; cache: continue these sequences (then T == 1 is a decoding step); attention_mask
        [B, T] with zeros only on the left (left padding): each row then runs on its real tokens alone and
        its logits are placed at the right, pads' logits left at zero. labels: next-token targets as in
        transformers (shifted inside, -100 ignored)."""
        if input_ids is None:
            raise InvalidInputError("alloyml models take input_ids (inputs_embeds is not supported)")
        core = self.core
        if cache is not None:
            if input_ids.shape[1] != 1:
                raise InvalidInputError(f"with a cache, input_ids must hold one new token, got {input_ids.shape[1]}")
            logits, states = core.step(input_ids[:, 0], cache.states)
            return AlloyCausalLMOutput(logits=logits[:, None], cache=RecurrentCache(core, states))
        padded = attention_mask is not None and not bool(attention_mask.all())
        if padded:
            logits, states = self._padded_prefill(input_ids, attention_mask)
            aux = None
        else:
            out = core(input_ids)
            logits, states, aux = out.logits, out.states, out.aux_loss
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            if padded:
                targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100
            )
            if aux is not None:
                loss = loss + self.config.aux_loss_weight * aux
        cache = None if use_cache is False else RecurrentCache(core, states)
        return AlloyCausalLMOutput(loss=loss, logits=logits, cache=cache, aux_loss=aux)

    def _padded_prefill(self, input_ids, attention_mask):
        """Each row on its own unpadded tokens (as `generate.prefill` does), states regrouped into one batch."""
        mask = attention_mask.bool()
        if bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
            raise InvalidInputError("attention_mask must be left padding: zeros, then ones, in every row")
        B, T = input_ids.shape
        logits = None
        states = []
        for row in range(B):
            ids = input_ids[row, mask[row]][None]
            if ids.shape[1] == 0:
                raise InvalidInputError(f"row {row} of attention_mask has no real token")
            out = self.core(ids)
            if logits is None:
                logits = out.logits.new_zeros(B, T, out.logits.shape[-1])
            logits[row, T - ids.shape[1]:] = out.logits[0]
            states.append(out.states)
        return logits, self.core.cat_states(states)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, use_cache=None, **kwargs):
        if cache is not None:  # decoding: only the newest token; the state already holds the rest
            return {"input_ids": input_ids[:, -1:], "cache": cache}
        # First step, or every step with use_cache=False (the whole sequence again each time).
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if outputs.cache is not None:
            model_kwargs["cache"] = outputs.cache
        return model_kwargs


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


class AlloyByteTokenizer(PreTrainedTokenizer):
    """`ByteTokenizer` as a `PreTrainedTokenizer`: token i is byte i of the UTF-8 text, spelled `<0xHH>`
    (vocabulary 256, no merges, nothing to save but the config). NUL (`<0x00>`) pads; there is no
    end-of-sequence token, so generation runs to max_new_tokens unless told an eos_token_id."""

    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs):
        self._vocab = {_byte_token(b): b for b in range(256)}
        kwargs.setdefault("pad_token", _byte_token(0))
        kwargs.setdefault("padding_side", "left")  # recurrent models continue from the right end
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return 256

    def get_vocab(self) -> dict:
        return dict(self._vocab)

    def _tokenize(self, text, **kwargs):
        return [_byte_token(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token):
        if token not in self._vocab:
            raise InvalidInputError(f"{token!r} is not a byte token (<0x00>..<0xFF>)")
        return self._vocab[token]

    def _convert_id_to_token(self, index):
        if not 0 <= int(index) < 256:
            raise InvalidInputError(f"token ids must be bytes in [0, 256), got {index}")
        return _byte_token(int(index))

    def convert_tokens_to_string(self, tokens):
        return bytes(self._vocab[t] for t in tokens).decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return ()  # the vocabulary is fixed: nothing to write


def register() -> None:
    """Make `model_type="alloyml-linear"` known to transformers' Auto classes (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, AlloyLinearConfig)
    except ValueError:  # already registered (a reload)
        pass
    try:
        AutoModelForCausalLM.register(AlloyLinearConfig, AlloyLinearForCausalLM)
    except ValueError:
        pass
    try:
        AutoTokenizer.register(AlloyLinearConfig, slow_tokenizer_class=AlloyByteTokenizer)
    except ValueError:
        pass


register()


def save_pretrained(model, directory, tokenizer: bool = True, metadata: dict | None = None) -> Path:
    """Write `model` (a LinearLM or its wrapper) with `alloyml.models.save_model` (whose layout is the
    Hugging Face one) plus, with `tokenizer`, the byte tokenizer's files, so AutoTokenizer loads too."""
    from alloyml.models.saving import save_model

    core = model.core if isinstance(model, AlloyLinearForCausalLM) else model
    directory = save_model(core, directory, metadata=metadata)
    if tokenizer:
        AlloyByteTokenizer().save_pretrained(str(directory))
    return Path(directory)


def convert_checkpoint(src, dst) -> Path:
    """Rewrite a folder written by `alloyml.models.save_model` (any format version) into the Hugging Face
    layout at `dst`; the tensors are copied unchanged. Returns dst."""
    from alloyml.models.saving import load_model

    src = Path(src)
    info = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    if info.get("model_type") == MODEL_TYPE:
        raise InvalidInputError(f"{src} is already in the Hugging Face layout (model_type {MODEL_TYPE!r})")
    # Training metadata (step, ...) travels along; the fields save_model writes itself are rewritten.
    keep = {k: v for k, v in info.items() if k not in {"architecture", "mixer", "ffn", "num_params",
                                                      "num_active_params", "format_version", "config"}}
    return save_pretrained(load_model(src), dst, metadata=keep)
