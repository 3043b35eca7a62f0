"""Content-addressed artifact store under `ALLOYML_HOME/artifacts`.

Keys look like `<kind>/<sha256>.<ext>`: the name is the hash of the bytes, so the same payload is stored
once and a key always means the same content. Only safe formats: `.npy` (read with allow_pickle=False),
`.safetensors` for tensors, `.json` for configs and tables. Writes go to a temp file in the same folder and
are renamed into place, so a reader never sees a half-written file. Keys that would leave the root are
refused.

Reads are checked: every read compares the file's size with the size its own header promises (`.npy`,
`.safetensors`) or parses it whole (`.json`), so a truncated file raises `CorruptArtifactError` rather
than a numpy or JSON error; `verify(key)` (and `alloyml db check`) also recomputes the hash the key
names. Writing the same content again repairs a damaged file instead of keeping it.

`ALLOYML_ARTIFACTS` moves the store onto object storage (`s3://bucket/prefix`, `gs://...`, any fsspec URL):
see `alloyml.platform.object_artifacts`, which keeps every rule above. `open_artifact_store` picks the
backend from the URL; a plain path or `file://` URL is this local store.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from alloyml.atomic import atomic_directory, write_atomic
from alloyml.errors import InvalidInputError, NotFoundError, StoreError

_KEY_PATTERN = re.compile(r"^[a-z0-9_\-]+/[0-9a-f]{64}\.(npy|json|safetensors|bin)$")
_HASH_CHUNK = 1 << 20


class CorruptArtifactError(StoreError):
    """An artifact's file does not hold what its key promises (truncated, or other bytes); writing the
    same content again repairs it."""


class ArtifactStore:
    """Reads and writes artifacts below `root`; every public method takes or returns a key."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None):
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root.parent / "cache"

    # -- paths -------------------------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        """The file behind `key`; refuses keys that are malformed or would escape the root."""
        check_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        if root not in path.parents:
            raise InvalidInputError(f"artifact key {key!r} would escape the artifact root {root}")
        return path

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # -- bytes -------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, *, kind: str, ext: str) -> str:
        key = content_key(data, kind=kind, ext=ext)
        digest = _digest_of(key)
        path = self.path_of(key)
        if path.is_file() and path.stat().st_size == len(data) and _file_sha256(path) == digest:
            return key  # already stored intact; a damaged copy is rewritten below
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)  # fsyncs the file and the folder after the rename
        return key

    def get_bytes(self, key: str, *, verify: bool = False) -> bytes:
        """The artifact's bytes, size-checked against its header; `verify=True` also checks the hash."""
        path = self.path_of(key)
        if not path.is_file():
            raise NotFoundError(f"artifact {key!r} does not exist under {self.root}")
        return check_bytes(key, path.read_bytes(), verify=verify)

    def local_file(self, key: str) -> Path:
        """A file on this machine holding the artifact (for memory-mapping); here, the artifact itself."""
        path = self.path_of(key)
        if not path.is_file():
            raise NotFoundError(f"artifact {key!r} does not exist under {self.root}")
        return path

    def verify(self, key: str) -> None:
        """Raise NotFoundError or CorruptArtifactError unless the file is whole and matches its hash."""
        data = self.get_bytes(key, verify=True)
        if key.endswith(".json"):
            self._parse_json(key, data)

    def keys(self) -> list[str]:
        """Every artifact key under the root (temp files of interrupted writes aside)."""
        if not self.root.is_dir():
            return []
        return sorted(f"{p.parent.name}/{p.name}" for p in self.root.glob("*/*") if _KEY_PATTERN.match(
            f"{p.parent.name}/{p.name}"))

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
        few rows of a million-row dataset), after the same size check a read makes."""
        try:
            if not mmap:
                return np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False)
            path = self.local_file(key)
            with path.open("rb") as handle:  # the header alone says how long the file must be
                expected = _expected_size(key, handle.read(_HASH_CHUNK))
            if expected is not None and expected != path.stat().st_size:
                raise CorruptArtifactError(f"artifact {key!r} is {path.stat().st_size} bytes but its header says "
                                           f"{expected} (truncated or overwritten); store the same content again")
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise InvalidInputError(f"artifact {key!r} holds pickled objects (allow_pickle=False): "
                                        "alloyml never loads them") from err
            raise CorruptArtifactError(f"artifact {key!r} is not a readable .npy file: {err}") from err

    def put_json(self, obj, kind: str = "json") -> str:
        data = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
        return self.put_bytes(data, kind=kind, ext="json")

    def get_json(self, key: str):
        return self._parse_json(key, self.get_bytes(key))

    @staticmethod
    def _parse_json(key: str, data: bytes):
        try:
            return json.loads(data)
        except ValueError as err:  # a truncated JSON file has no header to check its size against
            raise CorruptArtifactError(f"artifact {key!r} is not valid JSON ({err}); store it again") from err

    def put_tensors(self, tensors: dict, kind: str = "tensors", metadata: dict | None = None) -> str:
        """A dict of torch tensors as safetensors."""
        from safetensors.torch import save

        contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        return self.put_bytes(save(contiguous, metadata=metadata), kind=kind, ext="safetensors")

    def get_tensors(self, key: str) -> dict:
        from safetensors.torch import load

        return load(self.get_bytes(key))

    # -- folders (a saved model) ------------------------------------------------------------------------------
    def put_directory(self, directory: str | Path, kind: str = "model") -> str:
        """Every file below `directory` as an artifact, plus a JSON manifest {relative name: key}; returns the
        manifest's key. How a folder (a saved model) travels between nodes that share no disk."""
        directory = Path(directory)
        if not directory.is_dir():
            raise InvalidInputError(f"{directory} is not a folder to store")
        files = {}
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            name = _checked_member(path.relative_to(directory).as_posix())
            ext = path.suffix.lstrip(".") if path.suffix in (".npy", ".json", ".safetensors") else "bin"
            files[name] = self.put_bytes(path.read_bytes(), kind=kind, ext=ext)
        return self.put_json({"directory": files}, kind=kind)

    def get_directory(self, key: str) -> Path:
        """A folder on this machine with the files of manifest `key`, written once (whole or not at all) under
        the cache and reused: the key names the content, so a folder made earlier is still right."""
        manifest = self.get_json(key)
        if not (isinstance(manifest, dict) and isinstance(manifest.get("directory"), dict)):
            raise InvalidInputError(f"artifact {key!r} is not a folder manifest (made by put_directory)")
        out = self.cache_dir / "dirs" / _digest_of(key)
        if out.is_dir():
            return out
        with atomic_directory(out, overwrite=True) as staging:
            for name, member in manifest["directory"].items():
                target = staging / _checked_member(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.get_bytes(member))
        return out


def is_key(text) -> bool:
    """Whether `text` is an artifact key (rather than, say, a path)."""
    return isinstance(text, str) and bool(_KEY_PATTERN.match(text))


def check_key(key: str) -> str:
    """`key` if it is well formed; the pattern admits one `<kind>/` folder and no dots outside the
    extension, so no key can name a place outside the root."""
    if not isinstance(key, str) or not _KEY_PATTERN.match(key):
        raise InvalidInputError(
            f"artifact key {key!r} is malformed; expected '<kind>/<64 hex digits>.<npy|json|safetensors|bin>'"
        )
    return key


def _checked_member(name: str) -> str:
    """A folder member's relative name: plain parts only, so a manifest cannot write outside its folder."""
    parts = name.split("/")
    if not name or any(not re.fullmatch(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*", p) or p in (".", "..") for p in parts):
        raise InvalidInputError(f"folder member {name!r} is not a plain relative file name")
    return name


def content_key(data: bytes, *, kind: str, ext: str) -> str:
    """The key that names `data`: `<kind>/<sha256>.<ext>`."""
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z0-9_\-]+", kind):
        raise InvalidInputError(f"artifact kind {kind!r} must be lower-case letters, digits, '-' or '_'")
    return check_key(f"{kind}/{hashlib.sha256(data).hexdigest()}.{ext}")


def check_bytes(key: str, data: bytes, *, verify: bool) -> bytes:
    """`data` if its size matches what its own header promises (and, with `verify`, its hash the key)."""
    expected = _expected_size(key, data)
    if expected is not None and expected != len(data):
        raise CorruptArtifactError(f"artifact {key!r} is {len(data)} bytes but its header says {expected} "
                                   "(truncated or overwritten); store the same content again to repair it")
    if verify and hashlib.sha256(data).hexdigest() != _digest_of(key):
        raise CorruptArtifactError(f"artifact {key!r} does not match its hash; store the content again")
    return data


def open_artifact_store(location: str | Path, cache_dir: str | Path | None = None) -> ArtifactStore:
    """The artifact store at `location`: a folder (or `file://` URL) is the local store, any other fsspec URL
    (`s3://bucket/prefix`, `gs://...`) the object store, reading through a local cache in `cache_dir`."""
    text = str(location)
    if text.startswith("file://"):
        return ArtifactStore(text.removeprefix("file://"))
    if "://" not in text:
        return ArtifactStore(text)
    from alloyml.platform.object_artifacts import ObjectArtifactStore

    if cache_dir is None:
        raise InvalidInputError(f"artifact store {text!r} needs a local cache folder (cache_dir)")
    return ObjectArtifactStore(text, cache_dir)


def _digest_of(key: str) -> str:
    return key.rsplit("/", 1)[1].split(".", 1)[0]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_size(key: str, data: bytes) -> int | None:
    """The file size the format's own header implies (None when it has none or cannot be read: a header
    that does not parse is itself a sign of damage, reported by the loader)."""
    try:
        if key.endswith(".npy"):
            buffer = io.BytesIO(data)
            version = npy_format.read_magic(buffer)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(buffer)
            if dtype.hasobject:
                return None
            return buffer.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if key.endswith(".safetensors"):
            (header_len,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + header_len])
            ends = [info["data_offsets"][1] for name, info in header.items() if name != "__metadata__"]
            return 8 + header_len + max(ends, default=0)
    except (ValueError, struct.error, KeyError, TypeError):
        return -1 if len(data) < 16 else None  # too short to hold any header: certainly truncated
    return None
