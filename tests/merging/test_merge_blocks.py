"""Large tensors merged in row blocks read lazily from safetensors give the same bits as whole tensors.

The block size is shrunk (monkeypatched) so the small test tensors span many blocks, with block edges
inside rows of tied magnitudes: TIES' per-tensor threshold and its first-in-flat-order tie rule must
carry across blocks.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from alloyml.merging import engine, merge
from alloyml.merging.checkpoints import SafetensorsCheckpoint
from alloyml.merging.methods import magnitude_mask

_READ_ROWS = SafetensorsCheckpoint.read_rows


def _checkpoints(folder, dtype=torch.float32):
    """Base and two fine-tunes with a (40, 12) matrix whose deltas tie in magnitude (quantised to 1/8),
    a (30, 7) matrix of plain noise and a small vector (always merged whole)."""
    gen = torch.Generator().manual_seed(0)
    base = {
        "embed.weight": torch.randn(40, 12, generator=gen),
        "mlp.weight": torch.randn(30, 7, generator=gen),
        "norm.weight": torch.randn(7, generator=gen),
    }
    paths = {}
    for i, name in enumerate(("base", "a", "b")):
        state = {}
        for key, value in base.items():
            delta = torch.randint(-3, 4, value.shape, generator=gen) / 8 if i else 0
            noise = 0.01 * torch.randn(value.shape, generator=gen) if key == "mlp.weight" else 0
            state[key] = (value + delta + noise).to(dtype)
        (folder / name).mkdir()
        save_file(state, folder / name / "model.safetensors")
        paths[name] = str(folder / name)
    return paths


def _run(monkeypatch, config, out, blocks: bool):
    entries, threshold = (50, 60) if blocks else (1 << 22, 1 << 62)
    monkeypatch.setattr(engine, "BLOCK_ENTRIES", entries)
    monkeypatch.setattr(engine, "BLOCK_THRESHOLD", threshold)
    calls = []
    # Wrap the unpatched method: a second `_run` in the same test must not feed the first one's list.
    monkeypatch.setattr(SafetensorsCheckpoint, "read_rows", lambda self, *a: calls.append(a) or _READ_ROWS(self, *a))
    merge(config, out)
    return load_file(out / "model.safetensors"), calls


CONFIGS = {
    "task_arithmetic": ({"weight": 0.7}, {"weight": -0.4}, {"lambda": 0.9}),
    "ties": ({"weight": 0.7, "density": 0.3}, {"weight": 0.5, "density": 0.55}, {}),
    "ties-unnormalised": ({"weight": 1.0, "density": 0.0}, {"weight": 0.5, "density": 0.6}, {"normalize": False}),
    "ties-lambda-full": ({"weight": 0.3, "density": 1.0}, {"weight": 0.6, "density": 0.25}, {"lambda": 1.5}),
    "breadcrumbs_ties": ({"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.5}, {"gamma": 0.1}),
    "ties-rescale": ({"weight": 0.7, "density": 0.3}, {"weight": 0.5, "density": 0.5}, {"rescale": True}),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_merge_is_bit_identical_to_whole_tensors(tmp_path, monkeypatch, case, dtype):
    paths = _checkpoints(tmp_path, dtype)
    a, b, shared = CONFIGS[case]
    config = {
        "merge_method": case.split("-")[0],
        "base_model": paths["base"],
        "models": [{"model": paths["a"], "parameters": a}, {"model": paths["b"], "parameters": b}],
        "parameters": shared,
        "dtype": "float32",
        "out_dtype": str(dtype).removeprefix("torch."),
    }
    whole, whole_calls = _run(monkeypatch, config, tmp_path / "whole", blocks=False)
    blocked, block_calls = _run(monkeypatch, config, tmp_path / "blocks", blocks=True)
    assert not whole_calls
    # Methods with a blockwise form read the two matrices in blocks (4 rows of `embed`, 7 of `mlp`);
    # the others (outlier trimming, L1 rescale) need whole tensors and read none.
    if case in ("breadcrumbs_ties", "ties-rescale"):
        assert not block_calls
    else:
        assert {stop - start for _, start, stop in block_calls} >= {4, 7}
        assert max(stop - start for _, start, stop in block_calls) <= 7
    assert sorted(blocked) == sorted(whole)
    for name in whole:
        assert blocked[name].dtype == whole[name].dtype == dtype
        assert torch.equal(blocked[name].view(torch.uint8), whole[name].view(torch.uint8)), name


def test_block_ties_keeps_exactly_the_top_k_with_ties_first_in_order(tmp_path, monkeypatch):
    """Independent check of the blockwise TIES on one model: base + w * (delta masked to its top-k by
    `magnitude_mask`, a numpy-partition selection), since with one model every kept delta agrees."""
    paths = _checkpoints(tmp_path)
    config = {
        "merge_method": "ties",
        "base_model": paths["base"],
        "models": [{"model": paths["a"], "parameters": {"weight": 0.8, "density": 0.4}}],
        "parameters": {"normalize": False},
    }
    merged, calls = _run(monkeypatch, config, tmp_path / "out", blocks=True)
    assert calls
    base, a = load_file(tmp_path / "base" / "model.safetensors"), load_file(tmp_path / "a" / "model.safetensors")
    for name in ("embed.weight", "mlp.weight"):
        delta = a[name] - base[name]
        if name == "embed.weight":  # quantised deltas: the threshold falls among many tied entries
            assert (delta.abs() == 0.25).sum() > 50
        expected = base[name] + 0.8 * (delta * magnitude_mask(delta, 0.4))
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
        assert int((merged[name] != base[name]).sum()) <= int(0.4 * delta.numel())


def test_read_rows_reads_exactly_those_rows(tmp_path):
    tensor = torch.arange(60, dtype=torch.float32).reshape(10, 6)
    save_file({"x": tensor, "y": torch.ones(3)}, tmp_path / "m.safetensors")
    ckpt = SafetensorsCheckpoint([tmp_path / "m.safetensors"], "m", tmp_path)
    assert torch.equal(ckpt.read_rows("x", 3, 7), tensor[3:7])
    assert ckpt.read_rows("x", 5, 5).shape == (0, 6)
    from alloyml.errors import AlloyError

    with pytest.raises(AlloyError, match="no rows 8:11"):
        ckpt.read_rows("x", 8, 11)
    ckpt.close()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_block_merge_matches_mergekit(tiny_llamas, tmp_path, monkeypatch, method):
    """mergekit parity with every matrix of the tiny Llamas merged in blocks of a few rows."""
    from merge_helpers import mergekit_yaml

    paths = {k: str(v) for k, v in tiny_llamas.items()}
    params = ({"weight": 0.7, "density": 0.4}, {"weight": [0.3, -0.2], "density": 0.7})
    if method == "task_arithmetic":
        params = tuple({"weight": p["weight"]} for p in params)
    config = {
        "merge_method": method,
        "base_model": paths["base"],
        "models": [{"model": paths["a"], "parameters": params[0]}, {"model": paths["b"], "parameters": params[1]}],
        "parameters": {"lambda": 0.9},
        "dtype": "float32",
    }
    ours, calls = _run(monkeypatch, config, tmp_path / "ours", blocks=True)
    assert calls
    theirs = mergekit_yaml(config, tmp_path / "theirs")
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("sample", [1 << 16, 64])
@pytest.mark.parametrize("kind", ["normal", "ties", "spiky", "zeros"])
def test_sampled_magnitude_threshold_is_the_exact_kth_largest(monkeypatch, sample, kind):
    """The sample-bracketed threshold (and its radix fallback, reached when a small sample misses) equals the
    k-th largest |entry| from a full sort, and the tie count keeps exactly `keep` entries; blocks of 1000."""
    from alloyml.merging import methods

    monkeypatch.setattr(methods, "_SAMPLE", sample)
    gen = torch.Generator().manual_seed(len(kind) + sample)
    n = 20_000
    x = {
        "normal": torch.randn(n, generator=gen),
        "ties": torch.randint(-5, 6, (n,), generator=gen).float() / 4,
        # one huge run of equal magnitudes among a few outliers: samples see almost only the run
        "spiky": torch.where(torch.rand(n, generator=gen) < 0.995, torch.tensor(0.5), torch.randn(n, generator=gen)),
        "zeros": torch.where(torch.rand(n, generator=gen) < 0.9, torch.tensor(0.0), torch.randn(n, generator=gen)),
    }[kind]
    ordered = x.abs().sort(descending=True).values
    for keep in (1, 7, 2_500, 10_000, 19_999, 20_000):
        threshold, tied_kept = methods.magnitude_threshold(lambda: x.split(1000), keep, n)
        assert threshold == float(ordered[keep - 1]), keep
        assert int((x.abs() > threshold).sum()) + tied_kept == keep
        assert 1 <= tied_kept <= int((x.abs() == threshold).sum())
        assert (threshold, tied_kept) == methods._radix_threshold(lambda: x.split(1000), keep)


def test_magnitude_threshold_falls_back_to_radix_when_the_sample_misleads(monkeypatch):
    """Large entries exactly at the sampled positions (every 48th of each 1000-entry block) put the sample's
    bracket far above the true median magnitude: the exact radix select must take over."""
    from alloyml.merging import methods

    monkeypatch.setattr(methods, "_SAMPLE", 4096)
    n, stride = 200_000, 200_000 // 4096
    x = torch.rand(n, generator=torch.Generator().manual_seed(5))
    x.view(-1, 1000)[:, ::stride] += 10
    fallbacks = []
    radix = methods._radix_threshold
    monkeypatch.setattr(methods, "_radix_threshold", lambda *a: fallbacks.append(1) or radix(*a))
    keep = n // 2
    threshold, tied_kept = methods.magnitude_threshold(lambda: x.split(1000), keep, n)
    assert fallbacks
    assert threshold == float(x.abs().sort(descending=True).values[keep - 1])
    assert int((x > threshold).sum()) + tied_kept == keep
