"""PyTorch `.bin` inputs stream like safetensors: each file is memory-mapped with `weights_only=True`, read one
tensor at a time, and its mapping dropped after `RELEASE_BYTES`, so peak memory does not grow with the
checkpoint. Checked against the tensors saved, a closed-form merge, and the process's own peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from merge_helpers import small_state

from alloyml.errors import InvalidInputError
from alloyml.merging import merge, open_checkpoint
from alloyml.merging.checkpoints import TorchCheckpoint


def _sharded_bin(directory, state: dict[str, torch.Tensor], shards: int = 2):
    """A Hugging Face-style sharded checkpoint: pytorch_model-0000i-of-0000n.bin plus its index."""
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, directory / file)
        weight_map.update(dict.fromkeys(part, file))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def test_sharded_bin_reads_every_saved_tensor_and_merges_by_closed_form(tmp_path):
    states = [small_state(seed) for seed in range(3)]
    for i, state in enumerate(states):
        _sharded_bin(tmp_path / f"m{i}", state)
    checkpoint = open_checkpoint(tmp_path / "m0")
    assert isinstance(checkpoint, TorchCheckpoint) and set(checkpoint.infos) == set(states[0])
    for name, tensor in states[0].items():
        assert checkpoint.infos[name].shape == tuple(tensor.shape) and torch.equal(checkpoint.read(name), tensor)
    checkpoint.close()

    config = {"merge_method": "linear", "models": [{"model": str(tmp_path / f"m{i}"), "parameters": {"weight": w}}
                                                    for i, w in enumerate((1.0, 2.0, 1.0))]}
    merged = merge(config, sources=None).state_dict
    for name in states[0]:
        if not states[0][name].is_floating_point():  # the integer buffer is taken from the first model
            assert torch.equal(merged[name], states[0][name])
            continue
        expected = (states[0][name] + 2 * states[1][name] + states[2][name]) / 4
        torch.testing.assert_close(merged[name], expected, rtol=1e-6, atol=1e-6)


def test_a_mapping_is_dropped_after_release_bytes_and_reads_stay_exact(tmp_path, monkeypatch):
    state = {f"t{i}": torch.full((256,), float(i)) for i in range(6)}  # 1 KiB each
    _sharded_bin(tmp_path / "m", state, shards=1)
    monkeypatch.setattr(TorchCheckpoint, "RELEASE_BYTES", 2048)
    checkpoint = open_checkpoint(tmp_path / "m")
    assert checkpoint._mapped == {}  # opening read only the index
    held = []
    for i in range(6):
        assert torch.equal(checkpoint.read(f"t{i}"), state[f"t{i}"])
        held.append(len(checkpoint._mapped))
    assert held == [1, 0, 1, 0, 1, 0]  # two 1 KiB reads reach 2 KiB: the mapping goes, then is reopened


def test_reads_hopping_between_shards_share_one_budget(tmp_path, monkeypatch):
    state = {f"t{i}": torch.full((256,), float(i)) for i in range(6)}
    _sharded_bin(tmp_path / "m", state, shards=3)  # t0, t3 in shard 1; t1, t4 in 2; t2, t5 in 3
    monkeypatch.setattr(TorchCheckpoint, "RELEASE_BYTES", 3072)
    checkpoint = open_checkpoint(tmp_path / "m")
    held = []
    for i in range(6):
        assert torch.equal(checkpoint.read(f"t{i}"), state[f"t{i}"])
        held.append(len(checkpoint._mapped))
    assert held == [1, 2, 0, 1, 2, 0]


def test_peak_memory_stays_flat_while_reading_a_large_bin(tmp_path):
    total = 256 * 1024**2
    state = {f"layer{i}.weight": torch.full((1024, 2048), float(i)) for i in range(total // (1024 * 2048 * 4))}  # 8 MiB
    _sharded_bin(tmp_path / "big", state, shards=3)
    del state
    script = textwrap.dedent(f"""
        import sys
        from alloyml.merging import open_checkpoint

        def peak_mib():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024

        checkpoint = open_checkpoint({str(tmp_path / "big")!r})
        before = peak_mib()
        total = 0.0
        for name in checkpoint.infos:
            total += float(checkpoint.read(name)[0, 0])  # each tensor dropped before the next is read
        print(peak_mib() - before)
    """)
    # A fixed malloc mmap threshold returns each freed tensor to the OS at once; glibc's adaptive one may
    # keep freed 8 MiB buffers on its heap, which would measure the allocator rather than the checkpoint.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1024**2)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True,
                         env=env)
    growth = float(out.stdout.strip().splitlines()[-1])
    # Holding every mapping would grow by the whole 256 MiB; streaming holds at most RELEASE_BYTES (64 MiB)
    # of mapped pages plus a tensor and its copy.
    assert growth < 64 + 2 * 8 + 24, growth


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_untrusted_and_legacy_pickles_are_refused(tmp_path, capfd):
    evil = tmp_path / "evil.bin"
    torch.save({"w": _Payload()}, evil)
    with pytest.raises(InvalidInputError, match="evil.bin: not a readable PyTorch checkpoint"):
        open_checkpoint(evil)
    assert "unpickled code ran" not in capfd.readouterr().out  # refused without running the payload
    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidInputError, match="legacy .* convert it to safetensors"):
        open_checkpoint(legacy)
