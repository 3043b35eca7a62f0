"""Merging several LoRA adapters: task arithmetic and linear as concatenated factors (exactly the
full-rank merge of `base+adapter` models, checked against mergekit-yaml and against peft loading the
written adapter), other methods through full-rank deltas."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import assert_same_weights, load_state, mergekit_yaml, tiny_llama

from alloyml.errors import InvalidInputError
from alloyml.merging import merge, open_checkpoint
from alloyml.merging.lora_merge import merge_adapters

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_merge")
    base = tiny_llama(root / "base")
    configs = {
        "a": peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        "b": peft.LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "down_proj"], use_rslora=True,
                             init_lora_weights=False),
    }
    paths = {"base": str(root / "base")}
    for i, (name, lora) in enumerate(configs.items()):
        torch.manual_seed(10 + i)
        model = peft.get_peft_model(tiny_llama(root / f"tmp{name}"), lora)
        model.save_pretrained(root / name)
        paths[name] = str(root / name)
    del base
    return paths


@pytest.mark.parametrize(
    "method, weights, parameters",
    [("task_arithmetic", (0.7, -0.3), {"lambda": 0.9}), ("linear", (0.25, 0.5), {})],
)
def test_low_rank_merge_is_the_full_rank_merge(adapters, tmp_path, method, weights, parameters):
    p = adapters
    specs = {p["a"]: {"weight": weights[0]}, p["b"]: {"weight": weights[1]}}
    result = merge_adapters(p["base"], specs, tmp_path / "merged", method=method, parameters=parameters)
    assert result.kind == "adapter" and result.exact
    # rank is the sum of the ranks of the adapters that touch a module; nothing full-rank is stored
    assert result.ranks["model.layers.0.self_attn.q_proj"] == 6
    assert result.ranks["model.layers.1.mlp.down_proj"] == 2 and result.ranks["model.layers.1.self_attn.v_proj"] == 4
    stored = load_state(tmp_path / "merged")
    assert all(min(t.shape) <= 6 for t in stored.values())

    full = {
        "merge_method": method,
        "models": [
            {"model": f"{p['base']}+{p[n]}", "parameters": {"weight": w}} for n, w in zip("ab", weights, strict=True)
        ],
        "parameters": parameters,
        "dtype": "float32",
    }
    if method == "task_arithmetic":
        full["base_model"] = p["base"]
    theirs = mergekit_yaml(full, tmp_path / "mergekit", lora_merge_cache=str(tmp_path / "cache"))
    ckpt = open_checkpoint(f"{p['base']}+{tmp_path / 'merged'}")
    ours = {n: ckpt.read(n) for n in ckpt.infos}
    assert_same_weights(ours, theirs, atol=2e-6)

    # peft reads the written adapter and folds it in to the same weights
    from transformers import LlamaForCausalLM

    loaded = peft.PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(p["base"]), tmp_path / "merged")
    for name, tensor in loaded.merge_and_unload().state_dict().items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=2e-6, msg=name)


def test_full_rank_methods_materialise_the_deltas(adapters, tmp_path):
    p = adapters
    specs = {p["a"]: {"weight": 1.0, "density": 0.5}, p["b"]: {"weight": 0.5, "density": 0.5}}
    result = merge_adapters(p["base"], specs, tmp_path / "ties", method="ties")
    assert result.kind == "model" and result.exact
    expected = merge({"merge_method": "ties", "base_model": p["base"], "dtype": "float32",
                      "models": [{"model": f"{p['base']}+{a}", "parameters": s} for a, s in specs.items()]})
    assert_same_weights(load_state(tmp_path / "ties"), expected.state_dict, atol=0)

    small = merge_adapters(p["base"], specs, tmp_path / "ties-r2", method="ties", rank=2)
    assert small.kind == "adapter" and not small.exact and set(small.ranks.values()) == {2}
    # the truncated SVD's error is what the re-extracted adapter misses, tensor by tensor
    ckpt = open_checkpoint(f"{p['base']}+{tmp_path / 'ties-r2'}")
    for name, tail in small.tail_norms.items():
        err = (ckpt.read(name).double() - expected.state_dict[name].double()).norm().item()
        assert err == pytest.approx(tail, rel=1e-3, abs=1e-5)


def test_low_rank_merge_refuses_what_it_cannot_express(adapters, tmp_path):
    p = adapters
    with pytest.raises(InvalidInputError, match="normalize: false scales the base"):
        merge_adapters(p["base"], {p["a"]: {"weight": 0.5}, p["b"]: {"weight": 0.7}}, tmp_path / "x",
                       method="linear", parameters={"normalize": False})
    with pytest.raises(InvalidInputError, match="only `weight` per adapter"):
        merge_adapters(p["base"], {p["a"]: {"weight": 1, "density": 0.5}}, tmp_path / "x")
    with pytest.raises(InvalidInputError, match="not a PEFT adapter folder"):
        merge_adapters(p["base"], [p["base"]], tmp_path / "x")
