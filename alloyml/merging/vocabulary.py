"""`tokenizer_source` and `chat_template`: the merged model's tokenizer, and embedding / LM-head rows
realigned to its vocabulary, with mergekit's rules.

- `tokenizer_source: base` keeps the base model's tokenizer (the reference model's when there is no base),
  a model path takes that model's, and `union` adds to the base tokenizer every token of the other models'
  vocabularies (then their added/special tokens), in config order.
- Every model's vocabulary tensors (`embed_tokens`, `lm_head`, ...; rows indexed by token id) are re-indexed
  to the output vocabulary by token string before the merge. A token a model lacks gets, as in mergekit:
  the row of the one model that has it; else the base model's row when the base (among this tensor's inputs)
  has it; else the mean of the rows of the models that have it; a zero row when no model has it.
- `chat_template`: `auto` takes the most common template among the input models' tokenizers, `chatml` the
  ChatML template, anything else must be the Jinja template itself. It is written into the saved tokenizer
  (the reference model's, when no `tokenizer_source` is given).

Tokenizers are read with `transformers.AutoTokenizer` from each model's directory; a model whose tokenizer
cannot be read is taken to share the base's (as mergekit does). Vocabulary sizes come from each model's
config.json (`vocab_size`).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alloyml.errors import ConfigError, InvalidInputError

# Tensors whose rows are indexed by token id, as Hugging Face architectures name them.
VOCABULARY_SUFFIXES = (
    "embed_tokens.weight",
    "lm_head.weight",
    "embed_out.weight",
    "wte.weight",
    "word_embeddings.weight",
    "tok_embeddings.weight",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# The ChatML template (OpenAI's chat markup: <|im_start|>role\ncontent<|im_end|>), by name as in mergekit.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}


def is_vocabulary_tensor(name: str) -> bool:
    return name.endswith(VOCABULARY_SUFFIXES)


@dataclass
class Vocabulary:
    """The output tokenizer, and for each model the old row of every output token id (-1: missing)."""

    tokenizer: Any
    size: int
    index: dict[str, torch.Tensor] = field(default_factory=dict)

    def align(self, tensors: Mapping[str, torch.Tensor], base: str | None) -> dict[str, torch.Tensor]:
        """Each model's tensor (rows = that model's token ids) re-indexed to the output vocabulary."""
        models = list(tensors)
        dtype = tensors[models[0]].dtype
        for t in tensors.values():
            dtype = torch.promote_types(dtype, t.dtype)
        shape = tensors[models[0]].shape[1:]
        present = torch.stack([self.index[m] >= 0 for m in models])  # (models, size)
        gathered = {
            m: tensors[m].to(dtype)[self.index[m].clamp(min=0)] * present[i].view(-1, *[1] * len(shape)).to(dtype)
            for i, m in enumerate(models)
        }
        count = present.sum(0)
        default = sum(gathered.values()) / count.clamp(min=1).view(-1, *[1] * len(shape)).to(dtype)
        if base in gathered:  # several models have it, the base among them: the base's row
            use_base = (present[models.index(base)] & (count > 1)).view(-1, *[1] * len(shape))
            default = torch.where(use_base, gathered[base], default)
        out = {}
        for i, m in enumerate(models):
            out[m] = torch.where(present[i].view(-1, *[1] * len(shape)), gathered[m], default)
        return out


def _model_vocab_size(directory: Path | None, tokenizer: Any, label: str) -> int:
    path = directory / "config.json" if directory else None
    if path is not None and path.is_file():
        size = json.loads(path.read_text()).get("vocab_size")
        if isinstance(size, int):
            return size
    return len(tokenizer.get_vocab()) if tokenizer is not None else 0


def _load_tokenizer(directory: Path | None):
    if directory is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    except Exception:  # noqa: BLE001 - as mergekit: an unreadable tokenizer is taken to be the base's
        return None


def _copy(tokenizer):
    """A fresh copy of a tokenizer (saved and read back), so adding tokens leaves the original alone."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp, use_fast=True)


def _union(base_tok, tokenizers: Mapping[str, Any], sizes: Mapping[str, int]):
    vocab: dict[str, None] = {}
    added: dict[str, Any] = {}
    for model, tok in tokenizers.items():
        special = tok.added_tokens_decoder
        special_text = {info.content for info in special.values()}
        for text, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if idx < sizes[model] and text not in special_text:
                vocab.setdefault(text)
        for idx, info in special.items():
            if idx < sizes[model]:
                added.setdefault(info.content, info)
    out = _copy(base_tok)
    base_vocab = base_tok.get_vocab()
    for text in vocab:
        if text not in added and text not in base_vocab:
            out.add_tokens(text)
    for info in added.values():
        out.add_tokens(info)
    return out


def build_vocabulary(config, directories: Mapping[str, Path | None]) -> Vocabulary | None:
    """The output vocabulary of a config with `tokenizer_source` (None without one). `directories` maps
    every referenced model to its checkpoint directory (None for in-memory or single-file inputs)."""
    source = config.tokenizer_source
    if source is None:
        return None
    base = config.base_model or config.reference_model()
    if directories.get(base) is None:
        raise ConfigError(
            f"`tokenizer_source: {source}` needs the tokenizer of model {base!r}, which is not a Hugging Face "
            "directory"
        )
    tokenizers = {m: _load_tokenizer(directories.get(m)) for m in dict.fromkeys([base, *directories])}
    if tokenizers[base] is None:
        raise InvalidInputError(f"`tokenizer_source: {source}`: no tokenizer could be read from {directories[base]}")
    sizes = {m: _model_vocab_size(directories.get(m), tok or tokenizers[base], m) for m, tok in tokenizers.items()}
    loaded = {m: t for m, t in tokenizers.items() if t is not None}
    if source == "base":
        out = tokenizers[base]
    elif source == "union":
        out = _union(tokenizers[base], loaded, sizes)
    else:
        out = _load_tokenizer(Path(source)) if Path(source).is_dir() else None
        if out is None:
            raise ConfigError(
                f"`tokenizer_source: {source}` is neither `base`, `union` nor a model directory with a tokenizer"
            )
    vocab_out = out.get_vocab()
    vocabulary = Vocabulary(tokenizer=out, size=len(vocab_out))
    for model in directories:
        model_vocab = (tokenizers[model] or tokenizers[base]).get_vocab()
        index = torch.full((len(vocab_out),), -1, dtype=torch.long)
        for text, new_id in vocab_out.items():
            old = model_vocab.get(text)
            if old is not None and old < sizes[model]:
                index[new_id] = old
        vocabulary.index[model] = index
    return vocabulary


def resolve_chat_template(template: str, tokenizers: list[Any]) -> str | None:
    """The Jinja text `chat_template:` names (None for `auto` when no input model has a template)."""
    if template == "auto":
        found = []
        for tok in tokenizers:
            text = getattr(tok, "chat_template", None) if tok is not None else None
            if isinstance(text, dict):
                text = text.get("default")
            if text:
                found.append(text.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    if template in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[template]
    if len(template) < 20 or "{" not in template:
        raise ConfigError(
            f"`chat_template: {template}` is neither `auto`, a known name ({', '.join(NAMED_TEMPLATES)}) nor a "
            "Jinja template"
        )
    return template


def check_chat_template(config) -> None:
    """Refuse a `chat_template` value that cannot be resolved, before any work."""
    if config.chat_template is not None and config.chat_template != "auto":
        resolve_chat_template(config.chat_template, [])


def save_tokenizer(
    config, vocabulary: Vocabulary | None, directories: Mapping[str, Path | None], reference: Path | None, out: Path
) -> bool:
    """Write the merged model's tokenizer into `out` when `tokenizer_source` or `chat_template` is set;
    returns whether it did (else the reference model's tokenizer files are copied unchanged)."""
    if vocabulary is None and config.chat_template is None:
        return False
    tokenizer = vocabulary.tokenizer if vocabulary is not None else _load_tokenizer(reference)
    if tokenizer is None:
        raise InvalidInputError(f"`chat_template` is set but no tokenizer could be read from {reference}")
    tokenizer = _copy(tokenizer)
    if config.chat_template is not None:
        tokens = [_load_tokenizer(directories.get(m)) for m in config.referenced_models()]
        text = resolve_chat_template(config.chat_template, tokens)
        if text is not None:
            tokenizer.chat_template = text
    tokenizer.save_pretrained(str(out))
    return True
