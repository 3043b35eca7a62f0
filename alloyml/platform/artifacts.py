"""Content-addressed artifact store under `ALLOYML_HOME/artifacts`.

Keys look like `<kind>/<sha256>.<ext>`: the name is the hash of the bytes, so the same payload is stored
once and a key always means the same content. Only safe formats: `.npy` (read with allow_pickle=False),
`.safetensors` for tensors, `.json` for configs and tables. Writes go to a temp file in the same folder and
are renamed into place, so a reader never sees a half-written file. Keys that would leave the root are
refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

from alloyml.atomic import write_atomic
from alloyml.errors import InvalidInputError, NotFoundError

_KEY_PATTERN = re.compile(r"^[a-z0-9_\-]+/[0-9a-f]{64}\.(npy|json|safetensors|bin)$")


class ArtifactStore:
    """Reads and writes artifacts below `root`; every public method takes or returns a key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        """The file behind `key`; refuses keys that are malformed or would escape the root."""
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise InvalidInputError(
                f"artifact key {key!r} is malformed; expected '<kind>/<64 hex digits>.<npy|json|safetensors|bin>'"
            )
        root = self.root.resolve()
        path = (root / key).resolve()
        if root not in path.parents:
            raise InvalidInputError(f"artifact key {key!r} would escape the artifact root {root}")
        return path

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    # -- bytes -------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, *, kind: str, ext: str) -> str:
        if not re.fullmatch(r"[a-z0-9_\-]+", kind):
            raise InvalidInputError(f"artifact kind {kind!r} must be lower-case letters, digits, '-' or '_'")
        key = f"{kind}/{hashlib.sha256(data).hexdigest()}.{ext}"
        path = self.path_of(key)
        if path.is_file():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return key

    def get_bytes(self, key: str) -> bytes:
        path = self.path_of(key)
        if not path.is_file():
            raise NotFoundError(f"artifact {key!r} does not exist under {self.root}")
        return path.read_bytes()

    # -- typed payloads ------------------------------------------------------------------------------------
    def put_array(self, array: np.ndarray, kind: str = "array") -> str:
        array = np.asarray(array)
        if array.dtype == object:
            raise InvalidInputError("array artifacts must have a numeric or fixed-width dtype, not object")
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self.put_bytes(buffer.getvalue(), kind=kind, ext="npy")

    def get_array(self, key: str, *, mmap: bool = False) -> np.ndarray:
        """The stored array; `mmap=True` maps the file read-only instead of reading it (a page that shows a
        few rows of a million-row dataset)."""
        if not mmap:
            return np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False)
        path = self.path_of(key)
        if not path.is_file():
            raise NotFoundError(f"artifact {key!r} does not exist under {self.root}")
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def put_json(self, obj, kind: str = "json") -> str:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        return self.put_bytes(data, kind=kind, ext="json")

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def put_tensors(self, tensors: dict, kind: str = "tensors", metadata: dict | None = None) -> str:
        """A dict of torch tensors as safetensors."""
        from safetensors.torch import save

        contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        return self.put_bytes(save(contiguous, metadata=metadata), kind=kind, ext="safetensors")

    def get_tensors(self, key: str) -> dict:
        from safetensors.torch import load

        return load(self.get_bytes(key))
