"""The artifact store on object storage, against a real S3 server (moto in server mode on 127.0.0.1): the same
keys as the local store, refusal of keys that leave the root, no pickle, whole-or-nothing writes, checked
reads, and the bounded local read cache."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from alloyml.errors import ConfigError, InvalidInputError, NotFoundError
from alloyml.platform.artifacts import ArtifactStore, CorruptArtifactError, open_artifact_store
from alloyml.platform.client import Platform
from alloyml.platform.object_artifacts import ObjectArtifactStore


@pytest.fixture
def store(s3_artifacts, tmp_path):
    return open_artifact_store(s3_artifacts, tmp_path / "cache")


def _bucket_fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _object(url: str, key: str) -> str:
    return f"{url.removeprefix('s3://')}/{key}"


def test_round_trips_with_the_keys_the_local_store_gives(store, s3_artifacts, tmp_path):
    local = ArtifactStore(tmp_path / "local")
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensors = {"w": torch.randn(3, 5), "b": torch.zeros(2, dtype=torch.float16)}
    keys = {"array": store.put_array(array), "json": store.put_json({"a": [1, 2.5, None]}),
            "tensors": store.put_tensors(tensors), "bytes": store.put_bytes(b"\x00raw", kind="blob", ext="bin")}
    assert keys == {"array": local.put_array(array), "json": local.put_json({"a": [1, 2.5, None]}),
                    "tensors": local.put_tensors(tensors), "bytes": local.put_bytes(b"\x00raw", kind="blob", ext="bin")}
    npy = io.BytesIO()
    np.save(npy, array, allow_pickle=False)
    assert keys["array"] == f"array/{hashlib.sha256(npy.getvalue()).hexdigest()}.npy"
    fresh = open_artifact_store(s3_artifacts, tmp_path / "other-cache")  # nothing cached: read from the bucket
    np.testing.assert_array_equal(fresh.get_array(keys["array"]), array)
    assert fresh.get_json(keys["json"]) == {"a": [1, 2.5, None]}
    for name, tensor in fresh.get_tensors(keys["tensors"]).items():
        torch.testing.assert_close(tensor, tensors[name])
    assert fresh.get_bytes(keys["bytes"]) == b"\x00raw"
    # the objects sit at <prefix>/<key>, and no temporary of the uploads is left
    listed = sorted(_bucket_fs().find(s3_artifacts.removeprefix("s3://")))
    assert listed == sorted(_object(s3_artifacts, k) for k in keys.values())
    assert fresh.keys() == sorted(keys.values()) and store.exists(keys["json"])
    fresh.verify(keys["tensors"])


@pytest.mark.parametrize("key", ["../array/" + "a" * 64 + ".npy", "array/../../" + "a" * 60 + ".npy",
                                 "array/" + "a" * 64 + ".pkl", "/etc/passwd", "a/b/" + "0" * 64 + ".json"])
def test_keys_that_leave_the_root_or_break_the_pattern_are_refused(store, key):
    with pytest.raises(InvalidInputError, match="malformed"):
        store.get_bytes(key)
    with pytest.raises(InvalidInputError):
        store.put_bytes(b"x", kind="../up", ext="bin")


def test_pickled_and_object_arrays_are_refused(store, s3_artifacts):
    with pytest.raises(InvalidInputError, match="object"):
        store.put_array(np.array([{"a": 1}], dtype=object))
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    data = buffer.getvalue()
    key = f"array/{hashlib.sha256(data).hexdigest()}.npy"  # a well-formed key over pickled bytes
    _bucket_fs().pipe_file(_object(s3_artifacts, key), data)
    with pytest.raises(InvalidInputError, match="pickle"):
        store.get_array(key)


def test_a_failed_upload_leaves_no_object_under_any_key(store, s3_artifacts):
    fs, _ = store._open()

    def broken_publish(*args, **kwargs):
        raise ConnectionError("network dropped between upload and publish")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fs, "cp_file", broken_publish)
        with pytest.raises(ConnectionError):
            store.put_json({"half": "written"})
    assert _bucket_fs().find(s3_artifacts.removeprefix("s3://")) == []  # neither the key nor the temporary
    assert store.keys() == []


def test_damaged_objects_are_caught_on_read_and_repaired_by_a_rewrite(store, s3_artifacts, tmp_path):
    array = np.arange(1000, dtype=np.int64)
    key = store.put_array(array)
    whole = _bucket_fs().cat_file(_object(s3_artifacts, key))
    _bucket_fs().pipe_file(_object(s3_artifacts, key), whole[: len(whole) // 2])
    reader = open_artifact_store(s3_artifacts, tmp_path / "reader-cache")
    with pytest.raises(CorruptArtifactError, match="header says"):
        reader.get_array(key)
    flipped = bytearray(whole)
    flipped[-1] ^= 0xFF  # same size, other bytes: only the hash shows it
    _bucket_fs().pipe_file(_object(s3_artifacts, key), bytes(flipped))
    with pytest.raises(CorruptArtifactError, match="hash"):
        reader.get_array(key)
    _bucket_fs().pipe_file(_object(s3_artifacts, key), whole[:100])
    assert store.put_array(array) == key  # writing the content again replaces the truncated object
    np.testing.assert_array_equal(reader.get_array(key), array)
    with pytest.raises(NotFoundError):
        reader.get_bytes("array/" + "0" * 64 + ".npy")


def test_reads_are_cached_locally_within_a_bound(s3_artifacts, tmp_path):
    writer = open_artifact_store(s3_artifacts, tmp_path / "writer-cache")
    arrays = [np.full(2000, i, dtype=np.float64) for i in range(3)]  # 16 000 bytes of data each
    keys = [writer.put_array(a) for a in arrays]
    reader = ObjectArtifactStore(s3_artifacts, tmp_path / "reader-cache", cache_bytes=40_000)
    np.testing.assert_array_equal(reader.get_array(keys[0]), arrays[0])
    _bucket_fs().rm_file(_object(s3_artifacts, keys[0]))  # gone from the bucket: only the cache has it
    np.testing.assert_array_equal(reader.get_array(keys[0]), arrays[0])
    mapped = reader.get_array(keys[0], mmap=True)
    assert isinstance(mapped, np.memmap) and float(mapped[5]) == 0.0
    for key, array in zip(keys[1:], arrays[1:], strict=True):
        np.testing.assert_array_equal(reader.get_array(key), array)
    cached = {f"{p.parent.name}/{p.name}": p.stat().st_size
              for p in (tmp_path / "reader-cache" / "objects").glob("*/*")}
    assert sum(cached.values()) <= 40_000 and keys[2] in cached
    assert keys[0] not in cached  # least recently used went first
    with pytest.raises(NotFoundError):
        reader.get_array(keys[0])


def test_folders_travel_as_a_manifest_and_come_back_whole(store, tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"d": 4}))
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    key = store.put_directory(folder)
    copy = store.get_directory(key)
    assert copy != folder and json.loads((copy / "config.json").read_text()) == {"d": 4}
    assert (copy / "sub" / "weights.bin").read_bytes() == bytes(range(256))
    evil = store.put_json({"directory": {"../escaped.txt": store.put_bytes(b"x", kind="model", ext="bin")}},
                          kind="model")
    with pytest.raises(InvalidInputError, match="plain relative"):
        store.get_directory(evil)
    assert not (tmp_path / "cache" / "dirs" / "escaped.txt").exists()


def test_credentials_come_from_the_environment_only(s3_artifacts, tmp_path, monkeypatch):
    from tests.conftest import S3_TEST_SECRET

    bucket = s3_artifacts.removeprefix("s3://").split("/")[0]
    with pytest.raises(ConfigError, match="credentials"):
        Platform(db_url=f"sqlite:///{tmp_path / 'a.db'}", home=tmp_path / "h",
                 artifacts=f"s3://key:{S3_TEST_SECRET}@{bucket}/x")
    monkeypatch.setenv("ALLOYML_ARTIFACTS", s3_artifacts)
    with Platform(db_url=f"sqlite:///{tmp_path / 'store.db'}", home=tmp_path / "home", upgrade=True) as platform:
        x = np.arange(20, dtype=np.float64).reshape(10, 2)
        dataset = platform.register_dataset("d", x, np.arange(10) % 2)
        assert S3_TEST_SECRET not in repr(platform.artifacts) + repr(platform.settings)
        loaded_x, loaded_y = platform.load_dataset(dataset.id)
    np.testing.assert_array_equal(loaded_x, x)
    np.testing.assert_array_equal(loaded_y, np.arange(10) % 2)
    assert (tmp_path / "home" / "artifacts").exists() is False  # nothing went to the local folder
    assert S3_TEST_SECRET.encode() not in (tmp_path / "store.db").read_bytes()
