"""The artifact store on object storage (`ALLOYML_ARTIFACTS=s3://bucket/prefix`, `gs://...`), through fsspec.

The same store as `ArtifactStore`, with the same keys and formats; only where the bytes live differs:

- An artifact is the object `<prefix>/<kind>/<sha256>.<ext>`. Keys are checked by the same pattern, and the
  joined path must still lie under the prefix, so no key reaches another object.
- A write is whole or nothing: the bytes are uploaded to a temporary object under `<prefix>/.partial/`, then
  copied (a server-side copy) to the content-addressed key and the temporary removed. A reader sees the
  final key only once the whole object is there; an interrupted upload leaves at most a `.partial` object,
  which no key names.
- A read is checked as locally: against the size the format's header promises, and — since all the bytes
  are at hand once downloaded — against the hash the key names. Checked bytes go into a local read cache
  (`<cache_dir>/objects/<key>`, written atomically), which is bounded: after a fill, the least recently
  used files are removed until it holds at most `cache_bytes` (`ALLOYML_ARTIFACT_CACHE_BYTES`, default
  2 GiB). A key names its content, so a cached file never goes stale.
- Credentials come only from the environment or the provider's own configuration (for S3: AWS_ACCESS_KEY_ID
  / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, ~/.aws); a URL carrying them (`s3://key:secret@bucket`) is
  refused, and the store's repr is its URL, so nothing secret is printed, logged or stored.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path

from alloyml.atomic import write_atomic
from alloyml.errors import ConfigError, InvalidInputError, NotFoundError
from alloyml.platform.artifacts import (
    _KEY_PATTERN,
    ArtifactStore,
    check_bytes,
    check_key,
    content_key,
)

DEFAULT_CACHE_BYTES = 2 << 30
PARTIAL = ".partial"


def cache_limit() -> int:
    raw = os.environ.get("ALLOYML_ARTIFACT_CACHE_BYTES")
    if raw is None:
        return DEFAULT_CACHE_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigError(f"ALLOYML_ARTIFACT_CACHE_BYTES={raw!r} is not a byte count (a non-negative integer)")
    return limit


class ObjectArtifactStore(ArtifactStore):
    """Artifacts under the fsspec URL `url`, read through a bounded cache in `cache_dir`."""

    def __init__(self, url: str, cache_dir: str | Path, cache_bytes: int | None = None):
        self.url = url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.cache_bytes = cache_bytes
        self._fs = None
        self._prefix = None

    def __repr__(self) -> str:
        return f"ObjectArtifactStore({self.url!r})"

    @property
    def root(self) -> str:  # what messages name; never holds a credential (see `_open`)
        return self.url

    def _open(self):
        """(filesystem, bucket/prefix), made on first use (no I/O in the constructor)."""
        if self._fs is None:
            import fsspec

            scheme, _, rest = self.url.partition("://")
            if "@" in rest.split("/", 1)[0]:
                raise ConfigError(f"ALLOYML_ARTIFACTS names credentials in its URL ({scheme}://...@...); give them "
                                  "through the environment or the provider's configuration instead")
            try:
                fs, prefix = fsspec.core.url_to_fs(self.url)
            except (ImportError, ValueError) as err:
                raise ConfigError(f"ALLOYML_ARTIFACTS {self.url!r} cannot be opened: {err} (for s3:// install "
                                  "alloyml[s3], for gs:// gcsfs)") from None
            self._fs, self._prefix = fs, prefix.rstrip("/")
        return self._fs, self._prefix

    def object_of(self, key: str) -> str:
        """The object path behind `key`; refuses keys that are malformed or would leave the prefix."""
        check_key(key)
        _, prefix = self._open()
        path = posixpath.normpath(f"{prefix}/{key}")
        if not path.startswith(prefix + "/"):
            raise InvalidInputError(f"artifact key {key!r} would escape the artifact root {self.url}")
        return path

    def path_of(self, key: str) -> Path:
        raise InvalidInputError(f"artifacts in {self.url} are objects, not files; use local_file({key!r}) for a "
                                "cached copy on this machine")

    def exists(self, key: str) -> bool:
        fs, _ = self._open()
        return fs.exists(self.object_of(key))

    def keys(self) -> list[str]:
        fs, prefix = self._open()
        try:
            found = fs.find(prefix)
        except FileNotFoundError:
            return []
        names = (posixpath.relpath(path, prefix) for path in found)
        return sorted(name for name in names if _KEY_PATTERN.match(name))

    # -- bytes -------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, *, kind: str, ext: str) -> str:
        key = content_key(data, kind=kind, ext=ext)
        fs, prefix = self._open()
        target = self.object_of(key)
        try:
            if fs.info(target)["size"] == len(data):
                return key  # stored whole already (objects are written whole, and the key names the content)
        except FileNotFoundError:
            pass
        partial = f"{prefix}/{PARTIAL}/{uuid.uuid4().hex}-{key.replace('/', '-')}"
        try:
            fs.pipe_file(partial, data)
            fs.cp_file(partial, target)
        finally:
            try:
                fs.rm_file(partial)
            except FileNotFoundError:
                pass
        fs.invalidate_cache(posixpath.dirname(target))
        return key

    def get_bytes(self, key: str, *, verify: bool = False) -> bytes:
        """The artifact's bytes: from the local cache when there (size-checked, `verify` also checks the hash),
        else downloaded, checked against its header and its hash, and cached."""
        cached = self._cached(key)
        if cached.is_file():
            data = check_bytes(key, cached.read_bytes(), verify=verify)
            os.utime(cached)  # recently used: kept longest
            return data
        return self._download(key)

    def local_file(self, key: str) -> Path:
        cached = self._cached(key)
        if not cached.is_file():
            self._download(key)
        return cached

    def _cached(self, key: str) -> Path:
        return self.cache_dir / "objects" / check_key(key)

    def _download(self, key: str) -> bytes:
        fs, _ = self._open()
        try:
            data = fs.cat_file(self.object_of(key))
        except FileNotFoundError:
            raise NotFoundError(f"artifact {key!r} does not exist under {self.url}") from None
        check_bytes(key, data, verify=True)
        cached = self._cached(key)
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, data)
        self._trim_cache(keep=cached)
        return data

    def _trim_cache(self, keep: Path) -> None:
        """Remove least recently used cached files until the cache fits its bound (`keep` stays)."""
        limit = cache_limit() if self.cache_bytes is None else self.cache_bytes
        files = []
        for path in (self.cache_dir / "objects").glob("*/*"):
            if not _KEY_PATTERN.match(f"{path.parent.name}/{path.name}"):
                continue  # a cache fill still being written
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= limit:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
