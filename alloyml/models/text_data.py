"""Training examples from local files: plain text, JSON Lines, Parquet, or a `datasets` dataset saved to disk.

A file gives documents: a `.txt` file is one document; a `.jsonl` / `.parquet` row, or a row of a saved
`datasets` dataset (a folder written by `save_to_disk`), is one document, read from its `text` column, or
a (prompt, completion) pair from two columns, where only the completion is trained on.

`tokenize_examples` turns documents into token examples of at most `seq_len + 1` tokens (a long text
document becomes several windows); `example_batches` returns `batch(step)` for `Trainer.fit`, a pure
function of (seed, step) like `data.batches`: step s takes examples s·B … s·B + B - 1 of a sequence of
epochs, each a seeded permutation of all examples, so a resumed run sees the batches of an uninterrupted
one. Batches are packed rows with `cu_seqlens` (`pack_documents`, for alloyml's models) or right-padded
rows (for Hugging Face models, whose attention then never sees a pad: pads come after every real token).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from alloyml.errors import InvalidInputError, NotFoundError

FORMATS = ("text", "jsonl", "parquet", "datasets")
_SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Document:
    """A training document: `prompt` is context that is not trained on ("" for plain text)."""

    text: str
    prompt: str = ""


@dataclass(frozen=True)
class Example:
    """Token ids [n] and how many leading ids are prompt (their next tokens carry no loss)."""

    ids: torch.Tensor
    n_prompt: int = 0


def file_format(path: Path) -> str:
    """The format of `path` by its suffix, or "datasets" for a folder written by `datasets.save_to_disk`."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "datasets"
        raise InvalidInputError(f"data folder {path} is not a `datasets` dataset saved with save_to_disk")
    if path.suffix.lower() not in _SUFFIXES:
        raise InvalidInputError(f"data file {path}: unknown suffix {path.suffix!r}; expected one of "
                                f"{sorted(_SUFFIXES)} or a saved `datasets` folder")
    return _SUFFIXES[path.suffix.lower()]


def read_documents(paths: Sequence[str | Path], text_field: str = "text", prompt_field: str | None = None,
                   completion_field: str | None = None, split: str = "train") -> list[Document]:
    """Every document of `paths`, in order. With `prompt_field` and `completion_field`, rows are
    (prompt, completion) pairs; otherwise each row's `text_field` is a document."""
    documents: list[Document] = []
    for path in map(Path, paths):
        if not path.exists():
            raise NotFoundError(f"data file {path} does not exist")
        kind = file_format(path)
        if kind == "text":
            text = path.read_text(encoding="utf-8")
            if text.strip():
                documents.append(Document(text))
            continue
        for i, row in enumerate(_rows(path, kind, split)):
            documents.append(_document(row, path, i, text_field, prompt_field, completion_field))
    if not documents:
        raise InvalidInputError(f"the data files {[str(p) for p in paths]} hold no documents")
    return documents


def _rows(path: Path, kind: str, split: str):
    if kind == "jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise InvalidInputError(f"{path} line {number} is not JSON: {err}") from None
    elif kind == "parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    else:
        try:
            import datasets
        except ImportError:
            raise InvalidInputError(f"{path} is a `datasets` folder; reading it needs `pip install datasets`") from None
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InvalidInputError(f"{path} has splits {sorted(loaded)}, not {split!r}")
            loaded = loaded[split]
        yield from loaded


def _document(row, path: Path, index: int, text_field: str, prompt_field: str | None,
              completion_field: str | None) -> Document:
    fields = [prompt_field, completion_field] if prompt_field else [text_field]
    if not isinstance(row, dict):
        raise InvalidInputError(f"{path} row {index}: expected an object with {fields}, got {type(row).__name__}")
    for name in fields:
        if not isinstance(row.get(name), str):
            raise InvalidInputError(f"{path} row {index}: field {name!r} must be a string; the row has "
                                    f"{sorted(row)}")
    if prompt_field:
        return Document(row[completion_field], prompt=row[prompt_field])
    return Document(row[text_field])


def fingerprint(paths: Sequence[str | Path]) -> str:
    """sha256 over the names and bytes of the files (a `datasets` folder: its files, in sorted order)."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def tokenize_examples(documents: Sequence[Document], encode: Callable[[str], list[int]], seq_len: int,
                      encode_prompt: Callable[[str], list[int]] | None = None,
                      end_ids: Sequence[int] = ()) -> list[Example]:
    """Token examples of at most `seq_len + 1` ids (seq_len predictions each).

    A plain document is cut into consecutive windows that overlap by one token, so every next-token
    pair is trained on exactly once. A prompt document is prompt + completion + `end_ids`, cut at the end
    if too long (the completion must keep at least one token). `encode_prompt` renders prompts (a chat
    template, say); default `encode`."""
    if seq_len < 1:
        raise InvalidInputError(f"seq_len must be >= 1, got {seq_len}")
    encode_prompt = encode_prompt or encode
    examples = []
    for i, doc in enumerate(documents):
        if doc.prompt:
            head, tail = list(encode_prompt(doc.prompt)), list(encode(doc.text)) + list(end_ids)
            if not tail or len(head) >= seq_len + 1:
                raise InvalidInputError(f"document {i}: its prompt has {len(head)} tokens, more than seq_len "
                                        f"{seq_len} leaves room for, or its completion is empty")
            ids = (head + tail)[: seq_len + 1]
            examples.append(Example(torch.tensor(ids, dtype=torch.long), len(head)))
            continue
        ids = list(encode(doc.text)) + list(end_ids)
        for start in range(0, max(1, len(ids) - 1), seq_len):
            window = ids[start : start + seq_len + 1]
            if len(window) >= 2:
                examples.append(Example(torch.tensor(window, dtype=torch.long)))
    if not examples:
        raise InvalidInputError("no document is long enough to train on (each needs at least 2 tokens)")
    return examples


def example_batches(examples: Sequence[Example], batch_size: int, seed: int = 0, packed: bool = True,
                    pad_id: int = 0) -> Callable[[int], tuple[torch.Tensor, ...]]:
    """`batch(step)`: (inputs, targets, cu_seqlens) packed, or (inputs [B, T], targets [B, T]) padded.
    Targets are IGNORE_INDEX after each example's last token, on padding and before the completion."""
    from alloyml.models.model import IGNORE_INDEX
    from alloyml.models.trainer import pack_documents

    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    n = len(examples)

    @lru_cache(maxsize=4)
    def epoch_order(epoch: int) -> list[int]:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()

    def targets_of(example: Example) -> torch.Tensor:
        targets = torch.cat([example.ids[1:], example.ids.new_full((1,), IGNORE_INDEX)])
        targets[: max(0, example.n_prompt - 1)] = IGNORE_INDEX  # prompt tokens predicting prompt tokens
        return targets

    def batch(step: int):
        chosen = [examples[epoch_order(p // n)[p % n]] for p in range(step * batch_size, (step + 1) * batch_size)]
        if packed:
            inputs, _, cu_seqlens = pack_documents([e.ids for e in chosen])
            return inputs, torch.cat([targets_of(e) for e in chosen])[None], cu_seqlens
        width = max(len(e.ids) for e in chosen)
        inputs = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        targets = torch.full((len(chosen), width), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(chosen):
            inputs[row, : len(e.ids)] = e.ids
            targets[row, : len(e.ids)] = targets_of(e)
        return inputs, targets

    return batch
