"""`base+adapter` inputs: a PEFT LoRA adapter folded into its base, W + scale · B @ A per adapted tensor,
checked against a hand computation and against peft's own `merge_and_unload` on a tiny Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch
from merge_helpers import tiny_llama
from safetensors.torch import load_file, save_file

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.merging import merge, open_checkpoint


def _adapter(folder, tensors: dict, **config):
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    return folder


def _base(folder, state):
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_adapter_weights_are_w_plus_scaled_b_a(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = {"layers.0.proj.weight": torch.randn(5, 3, generator=gen), "embed.weight": torch.randn(7, 3, generator=gen),
            "norm.weight": torch.randn(3, generator=gen), "head.weight": torch.randn(4, 3, generator=gen)}
    a, b = torch.randn(2, 3, generator=gen), torch.randn(5, 2, generator=gen)
    ea, eb = torch.randn(2, 7, generator=gen), torch.randn(3, 2, generator=gen)
    head = torch.randn(4, 3, generator=gen)
    _base(tmp_path / "base", base)
    _adapter(tmp_path / "lora", {"base_model.model.layers.0.proj.lora_A.weight": a,
                                 "base_model.model.layers.0.proj.lora_B.weight": b,
                                 "base_model.model.embed.lora_embedding_A": ea,
                                 "base_model.model.embed.lora_embedding_B": eb,
                                 "base_model.model.head.weight": head})  # a modules_to_save copy
    checkpoint = open_checkpoint(f"{tmp_path / 'base'}+{tmp_path / 'lora'}")
    scale = 4 / 2
    for i in range(5):  # hand computation of (B @ A)[i, j] = Σ_k B[i, k] A[k, j]
        for j in range(3):
            expected = base["layers.0.proj.weight"][i, j] + scale * sum(b[i, k] * a[k, j] for k in range(2))
            assert checkpoint.read("layers.0.proj.weight")[i, j] == pytest.approx(float(expected), abs=1e-5)
    embed = base["embed.weight"] + scale * torch.einsum("dk,kv->vd", eb, ea)
    torch.testing.assert_close(checkpoint.read("embed.weight"), embed)
    assert torch.equal(checkpoint.read("head.weight"), head) and torch.equal(checkpoint.read("norm.weight"),
                                                                              base["norm.weight"])

    # rsLoRA scales by alpha / sqrt(r); the merged model is written like any other merge.
    _adapter(tmp_path / "rs", {"base_model.model.layers.0.proj.lora_A.weight": a,
                               "base_model.model.layers.0.proj.lora_B.weight": b}, use_rslora=True)
    config = {"merge_method": "linear",
              "models": [{"model": f"{tmp_path / 'base'}+{tmp_path / 'rs'}", "parameters": {"weight": 1.0}}]}
    merge(config, tmp_path / "out")
    written = {k: v for f in (tmp_path / "out").glob("*.safetensors") for k, v in load_file(str(f)).items()}
    torch.testing.assert_close(written["layers.0.proj.weight"], base["layers.0.proj.weight"] + 4 / math.sqrt(2) * b @ a)


def test_bad_adapters_are_refused_when_opened(tmp_path):
    _base(tmp_path / "base", {"w.weight": torch.zeros(4, 3)})
    a, b = torch.zeros(2, 3), torch.zeros(4, 2)
    cases = {
        "dora": ({"base_model.model.w.lora_A.weight": a, "base_model.model.w.lora_B.weight": b}, {"use_dora": True},
                 "DoRA"),
        "lonely": ({"base_model.model.w.lora_A.weight": a}, {}, "not both"),
        "elsewhere": ({"base_model.model.v.lora_A.weight": a, "base_model.model.v.lora_B.weight": b}, {},
                      "'v.weight', which the base model"),
        "shape": ({"base_model.model.w.lora_A.weight": torch.zeros(2, 5), "base_model.model.w.lora_B.weight": b}, {},
                  "has shape"),
        "rank": ({"base_model.model.w.lora_A.weight": a, "base_model.model.w.lora_B.weight": b}, {"r": 8},
                 "has rank 2, its config says 8"),
        "resized": ({"base_model.model.w.weight": torch.zeros(5, 3)}, {}, "resized vocabularies"),
        "alpha": ({"base_model.model.w.lora_A.weight": a, "base_model.model.w.lora_B.weight": b},
                  {"lora_alpha": "big"}, "lora_alpha"),
    }
    for name, (tensors, config, message) in cases.items():
        _adapter(tmp_path / name, tensors, **config)
        with pytest.raises(InvalidInputError, match=message):
            open_checkpoint(f"{tmp_path / 'base'}+{tmp_path / name}")
    with pytest.raises(NotFoundError, match="no adapter_config.json"):
        open_checkpoint(f"{tmp_path / 'base'}+{tmp_path / 'base'}")
    with pytest.raises(InvalidInputError, match="is \\(or contains\\) input model"):
        merge({"merge_method": "linear", "models": [{"model": f"{tmp_path / 'base'}+{tmp_path / 'dora'}",
                                                     "parameters": {"weight": 1.0}}]},
              tmp_path / "base", overwrite=True)


def test_matches_peft_merge_and_unload_on_a_tiny_llama(tmp_path):
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    base = tiny_llama(tmp_path / "base")
    lora = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                           rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, init_lora_weights=False)
    adapted = peft.get_peft_model(base, lora)
    adapted.save_pretrained(tmp_path / "lora")
    expected = adapted.merge_and_unload().state_dict()

    checkpoint = open_checkpoint(f"{tmp_path / 'base'}+{tmp_path / 'lora'}")
    assert sum(1 for name in checkpoint.infos if name in checkpoint.updates) == 2 * 3 + 1
    for name, tensor in expected.items():
        if name in checkpoint.infos:
            torch.testing.assert_close(checkpoint.read(name), tensor, rtol=1e-5, atol=1e-6)
