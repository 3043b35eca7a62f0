"""LoRA extraction (mergekit-extract-lora): the extracted adapter's error is the SVD tail bound computed
here with numpy, several adapters merge as task vectors by closed form, and peft reads what is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from merge_helpers import tiny_llama
from safetensors.torch import save_file

from alloyml.errors import InvalidInputError
from alloyml.merging import merge, open_checkpoint
from alloyml.merging.lora_extract import extract_lora


def _save(folder, state):
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    return folder


def _states(seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = {"a.weight": torch.randn(12, 8, generator=gen, dtype=torch.float64),
            "b.weight": torch.randn(6, 8, generator=gen, dtype=torch.float64),
            "norm.weight": torch.ones(8, dtype=torch.float64), "ids": torch.arange(4)}
    tuned = dict(base)
    tuned["a.weight"] = base["a.weight"] + torch.randn(12, 8, generator=gen, dtype=torch.float64) * 0.1
    low = torch.randn(6, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 8, generator=gen, dtype=torch.float64)
    tuned["b.weight"] = base["b.weight"] + low  # exactly rank 2
    tuned["norm.weight"] = base["norm.weight"] * 1.5
    return base, tuned


def test_extracted_adapter_error_is_the_svd_tail(tmp_path):
    base, tuned = _states()
    _save(tmp_path / "base", base), _save(tmp_path / "tuned", tuned)
    extracted = extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "lora", rank=3)
    assert sorted(extracted.modules) == ["a", "b"] and extracted.copied == ["norm.weight"]
    applied = open_checkpoint(f"{tmp_path / 'base'}+{tmp_path / 'lora'}")
    for name in ("a.weight", "b.weight"):
        delta = (tuned[name] - base[name]).numpy()
        tail = np.sqrt((np.linalg.svd(delta, compute_uv=False)[3:] ** 2).sum())  # Eckart–Young
        error = float(torch.linalg.norm(applied.read(name) - tuned[name]))
        assert error == pytest.approx(tail, rel=1e-9, abs=1e-12)
        assert extracted.tail_norms[name] == pytest.approx(tail, rel=1e-9, abs=1e-12)
    assert extracted.tail_norms["b.weight"] < 1e-12 < extracted.tail_norms["a.weight"]  # rank 2 < 3 is exact
    assert torch.equal(applied.read("norm.weight"), tuned["norm.weight"])
    assert torch.equal(applied.read("ids"), base["ids"])

    with pytest.raises(InvalidInputError, match="rank must be a positive integer"):
        extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "x", rank=0)
    with pytest.raises(InvalidInputError, match="does not differ"):
        extract_lora(tmp_path / "base", tmp_path / "base", tmp_path / "x", rank=2)


def test_extract_lora_command(tmp_path, capsys):
    from alloyml.cli import main

    base, tuned = _states()
    _save(tmp_path / "base", base), _save(tmp_path / "tuned", tuned)
    out = tmp_path / "lora"
    command = ["merge", "--extract-lora", str(tmp_path / "base"), str(tmp_path / "tuned"), str(out)]
    assert main([*command, "--rank", "8"]) == 0
    assert "2 weights, 1 tensors copied" in capsys.readouterr().out
    applied = open_checkpoint(f"{tmp_path / 'base'}+{out}")
    torch.testing.assert_close(applied.read("a.weight"), tuned["a.weight"], rtol=1e-9, atol=1e-9)  # rank 8 = full
    assert main(command) == 2
    assert "not empty" in capsys.readouterr().err


def test_several_adapters_merge_as_task_vectors(tmp_path):
    base, tuned_a = _states(0)
    _, tuned_b = _states(1)
    tuned_b = {k: base[k] + (v - _states(1)[0][k]) if v.is_floating_point() else v for k, v in tuned_b.items()}
    _save(tmp_path / "base", base), _save(tmp_path / "ta", tuned_a), _save(tmp_path / "tb", tuned_b)
    extract_lora(tmp_path / "base", tmp_path / "ta", tmp_path / "la", rank=8)  # full rank: exact deltas
    extract_lora(tmp_path / "base", tmp_path / "tb", tmp_path / "lb", rank=8)
    config = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
              "models": [{"model": f"{tmp_path / 'base'}+{tmp_path / 'la'}", "parameters": {"weight": 0.7}},
                         {"model": f"{tmp_path / 'base'}+{tmp_path / 'lb'}", "parameters": {"weight": -0.4}}]}
    merged = merge(config).state_dict
    for name in ("a.weight", "b.weight", "norm.weight"):
        expected = base[name] + 0.7 * (tuned_a[name] - base[name]) - 0.4 * (tuned_b[name] - base[name])
        torch.testing.assert_close(merged[name], expected, rtol=1e-9, atol=1e-9)


def test_peft_applies_an_extracted_adapter_as_alloyml_does(tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = tiny_llama(tmp_path / "base")
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(("q_proj.weight", "up_proj.weight")):
                p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(tmp_path / "tuned")
    extracted = extract_lora(tmp_path / "base", tmp_path / "tuned", tmp_path / "lora", rank=3)
    assert len(extracted.modules) == 4 and extracted.copied == []

    fresh = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base")
    expected = peft.PeftModel.from_pretrained(fresh, tmp_path / "lora").merge_and_unload().state_dict()
    ours = open_checkpoint(f"{tmp_path / 'base'}+{tmp_path / 'lora'}")
    changed = 0
    for name in ours.infos:
        torch.testing.assert_close(ours.read(name), expected[name], rtol=1e-5, atol=1e-6)
        changed += name in ours.updates
    assert changed == 4
