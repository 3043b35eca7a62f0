"""Whole-or-nothing writes (alloyml.atomic): a failure half-way leaves the destination as it was and no
temporary behind; success replaces the old content entirely and syncs the folder."""

from __future__ import annotations

import os
import stat

import pytest

from alloyml import atomic
from alloyml.atomic import atomic_directory, write_atomic
from alloyml.errors import InvalidInputError


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_file_write_creates_and_overwrites(tmp_path):
    target = tmp_path / "out.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert _listing(tmp_path) == ["out.json"]


def test_file_write_failing_half_way_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def broken_replace(src, dst):  # the data is on disk in the temp file; the rename fails
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.json"]


def test_file_and_folder_are_synced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    write_atomic(tmp_path / "f", b"x")
    assert synced == [False, True]  # the data, then the folder that holds the rename


def test_folder_write_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as staging:
        (staging / "a.bin").write_bytes(b"1")
        (staging / "sub").mkdir()
        (staging / "sub" / "b.bin").write_bytes(b"2")
    assert _listing(tmp_path) == ["model", "model/a.bin", "model/sub", "model/sub/b.bin"]
    with pytest.raises(InvalidInputError, match="not empty"):
        with atomic_directory(out):
            pytest.fail("a non-empty folder is refused before the block runs")
    with atomic_directory(out, overwrite=True) as staging:
        (staging / "c.bin").write_bytes(b"3")
    assert _listing(tmp_path) == ["model", "model/c.bin"]  # old files do not survive an overwrite


def test_folder_write_failing_half_way_leaves_nothing(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="merge failed"):
        with atomic_directory(out) as staging:
            (staging / "half.bin").write_bytes(b"partial")
            raise RuntimeError("merge failed")
    assert _listing(tmp_path) == []


def test_failed_overwrite_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True) as staging:
            (staging / "new.bin").write_bytes(b"new")
            raise RuntimeError
    assert _listing(tmp_path) == ["model", "model/old.bin"]
    # the final rename itself failing: the old folder is put back
    real_rename = os.rename
    calls = []

    def rename_failing_once_staged(self, target):
        calls.append(self.name)
        if self.name.endswith(".partial"):
            raise OSError("rename refused")
        return real_rename(self, target)

    monkeypatch.setattr(atomic.Path, "rename", rename_failing_once_staged)
    with pytest.raises(OSError, match="rename refused"):
        with atomic_directory(out, overwrite=True) as staging:
            (staging / "new.bin").write_bytes(b"new")
    assert _listing(tmp_path) == ["model", "model/old.bin"] and len(calls) == 3


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "model").write_text("x")
    with pytest.raises(InvalidInputError, match="is a file"):
        with atomic_directory(tmp_path / "model", overwrite=True):
            pass
