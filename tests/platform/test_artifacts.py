import numpy as np
import pytest
import torch

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.platform.artifacts import ArtifactStore


def test_round_trips_and_content_addressing(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    array = np.arange(10, dtype=np.float32).reshape(2, 5)
    key = store.put_array(array)
    assert store.put_array(array.copy()) == key  # same bytes, same key
    np.testing.assert_array_equal(store.get_array(key), array)
    assert store.get_json(store.put_json({"a": [1, 2]})) == {"a": [1, 2]}
    tensors = {"w": torch.randn(3, 3), "step": torch.tensor([7], dtype=torch.int64)}
    loaded = store.get_tensors(store.put_tensors(tensors))
    assert torch.equal(loaded["w"], tensors["w"]) and loaded["step"].dtype == torch.int64
    assert not list((tmp_path / "artifacts").rglob(".*"))  # no temp file left beside the artifacts


@pytest.mark.parametrize("key", ["../../etc/passwd", "array/../../x.npy", "/abs/path.npy", "array/abc.npy",
                                 "array/" + "g" * 64 + ".npy", "array/" + "a" * 64 + ".pkl"])
def test_keys_escaping_or_malformed_are_refused(tmp_path, key):
    with pytest.raises(InvalidInputError, match="artifact key"):
        ArtifactStore(tmp_path).get_bytes(key)


def test_object_arrays_refused_and_missing_reported(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(InvalidInputError, match="object"):
        store.put_array(np.array([{"a": 1}], dtype=object))
    with pytest.raises(NotFoundError, match="does not exist"):
        store.get_bytes("array/" + "0" * 64 + ".npy")


def test_pickled_npy_is_never_loaded(tmp_path):
    store = ArtifactStore(tmp_path)
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    key = store.put_bytes(buffer.getvalue(), kind="array", ext="npy")
    with pytest.raises(ValueError, match="allow_pickle"):
        store.get_array(key)


def test_arrays_can_be_memory_mapped(tmp_path):
    store = ArtifactStore(tmp_path)
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    mapped = store.get_array(store.put_array(array), mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, array)
    with pytest.raises(NotFoundError, match="does not exist"):
        store.get_array("array/" + "0" * 64 + ".npy", mmap=True)
    from alloyml.platform.artifacts import CorruptArtifactError

    key = store.put_array(np.arange(1000, dtype=np.float64))
    whole = store.path_of(key).read_bytes()
    store.path_of(key).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptArtifactError, match="header says"):
        store.get_array(key, mmap=True)  # a mapped read is size-checked like a full one


@pytest.mark.parametrize("put", [
    lambda s: s.put_array(np.arange(1000, dtype=np.float64)),
    lambda s: s.put_tensors({"w": torch.arange(500, dtype=torch.float32)}),
    lambda s: s.put_json({"values": list(range(300))}),
], ids=["npy", "safetensors", "json"])
def test_truncated_artifact_is_reported_and_rewriting_repairs_it(tmp_path, put):
    from alloyml.platform.artifacts import CorruptArtifactError

    store = ArtifactStore(tmp_path)
    key = put(store)
    path = store.path_of(key)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a torn write or a truncated copy
    getter = {"npy": store.get_array, "safetensors": store.get_tensors, "json": store.get_json}[key.rsplit(".")[-1]]
    with pytest.raises(CorruptArtifactError, match="store"):
        getter(key)
    with pytest.raises(CorruptArtifactError):
        store.verify(key)
    assert put(store) == key  # the same content again: the damaged file is replaced
    assert path.read_bytes() == whole
    store.verify(key)
    getter(key)


def test_same_size_damage_is_found_by_the_hash(tmp_path):
    from alloyml.platform.artifacts import CorruptArtifactError

    store = ArtifactStore(tmp_path)
    array = np.arange(100, dtype=np.int64)
    key = store.put_array(array)
    path = store.path_of(key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: the size still matches the header
    path.write_bytes(bytes(data))
    assert store.get_array(key)[-1] != array[-1]  # the cheap read does not hash ...
    with pytest.raises(CorruptArtifactError, match="hash"):
        store.get_bytes(key, verify=True)  # ... a verified one does
    assert store.keys() == [key]
    store.put_array(array)
    np.testing.assert_array_equal(store.get_array(key), array)
