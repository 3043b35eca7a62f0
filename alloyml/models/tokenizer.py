"""Byte-level tokenizer: a token is one byte of the UTF-8 text (vocabulary 256, nothing to train)."""

from __future__ import annotations

from collections.abc import Sequence

from alloyml.errors import InvalidInputError


class ByteTokenizer:
    """`encode(text) -> [byte values]`; `decode(ids) -> text` (an incomplete or invalid UTF-8 sequence
    decodes to U+FFFD, so any id list decodes)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInputError(f"token ids must be bytes in [0, 256), got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")
