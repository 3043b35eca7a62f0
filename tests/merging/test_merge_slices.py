"""`slices:` configs: layer ranges merged position by position and stacked (passthrough frankenmerges),
checked against mergekit on tiny Llamas, against hand-built state dicts, and through alloyml's model loader."""

from __future__ import annotations

import json

import pytest
import torch
from merge_helpers import perturbed, small_state
from safetensors.torch import load_file

from alloyml.errors import ConfigError, InvalidInputError, NotFoundError
from alloyml.merging import merge


def _llama_configs(p):
    zero_o_proj = [{"filter": "o_proj", "value": 0.0}, {"value": 1.0}]
    return {
        # Embeddings from the first slice's model, final norm and head from the last slice's (as mergekit);
        # `a` layer 2 is used twice (overlapping ranges are how self-merges repeat layers), the second time
        # with its attention output zeroed by mergekit's optional passthrough `scale`.
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": p["a"], "layer_range": [0, 3]}]},
                {"sources": [{"model": p["a"], "layer_range": [2, 3], "parameters": {"scale": zero_o_proj}}]},
                {"sources": [{"model": p["b"], "layer_range": [1, 4]}]},
            ],
        },
        # Different layers of each source at every position, per-slice gradients and slice-level parameters.
        "slerp": {
            "merge_method": "slerp",
            "base_model": p["base"],
            "slices": [
                {"sources": [{"model": p["base"], "layer_range": [0, 2]}, {"model": p["a"], "layer_range": [2, 4]}]},
                {
                    "sources": [{"model": p["base"], "layer_range": [1, 4]}, {"model": p["a"], "layer_range": [0, 3]}],
                    "parameters": {"t": [0.9, 0.1]},
                },
            ],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.1, 0.7]}, {"value": [0.3, 0.6]}]},
        },
        "linear": {
            "merge_method": "linear",
            "slices": [
                {
                    "sources": [
                        {"model": p["a"], "layer_range": [0, 2], "parameters": {"weight": [0.2, 0.9]}},
                        {"model": p["b"], "layer_range": [2, 4], "parameters": {"weight": 0.5}},
                    ]
                },
                {
                    "sources": [
                        {"model": p["b"], "layer_range": [0, 1], "parameters": {"weight": 0.3}},
                        {"model": p["base"], "layer_range": [3, 4], "parameters": {"weight": 0.7}},
                    ]
                },
            ],
        },
    }


@pytest.mark.parametrize("method, layers", [("passthrough", 7), ("slerp", 5), ("linear", 3)])
def test_slices_agree_with_mergekit(four_layer_llamas, tmp_path, method, layers):
    paths = {k: str(v) for k, v in four_layer_llamas.items()}
    config = _llama_configs(paths)[method]
    ours = merge(config, tmp_path / "ours")
    merge({**config, "backend": "mergekit"}, tmp_path / "theirs")

    ours_sd = load_file(tmp_path / "ours" / "model.safetensors")
    theirs_sd = load_file(tmp_path / "theirs" / "model.safetensors")
    assert sorted(ours_sd) == sorted(theirs_sd)
    assert {n for n in ours_sd if n.startswith("model.layers.")} == {
        f"model.layers.{i}.{rest}" for i in range(layers) for rest in ("input_layernorm.weight", "mlp.up_proj.weight",
        "mlp.gate_proj.weight", "mlp.down_proj.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
        "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight")
    }  # fmt: skip
    for name in ours_sd:
        assert ours_sd[name].dtype == theirs_sd[name].dtype
        torch.testing.assert_close(ours_sd[name], theirs_sd[name], rtol=0, atol=1e-6, msg=name)
    for out in ("ours", "theirs"):
        assert json.loads((tmp_path / out / "config.json").read_text())["num_hidden_layers"] == layers
    assert ours.num_tensors == len(ours_sd)


def test_passthrough_stacks_the_named_layers(four_layer_llamas, tmp_path):
    paths = {k: str(v) for k, v in four_layer_llamas.items()}
    result = merge(_llama_configs(paths)["passthrough"], tmp_path / "out")
    out = load_file(tmp_path / "out" / "model.safetensors")
    a = load_file(four_layer_llamas["a"] / "model.safetensors")
    b = load_file(four_layer_llamas["b"] / "model.safetensors")
    taken = [(a, 0), (a, 1), (a, 2), (a, 2), (b, 1), (b, 2), (b, 3)]
    for i, (source, layer) in enumerate(taken):
        for rest in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(out[f"model.layers.{i}.{rest}"], source[f"model.layers.{layer}.{rest}"])
    assert torch.equal(
        out["model.layers.3.self_attn.o_proj.weight"], torch.zeros_like(a["model.layers.2.self_attn.o_proj.weight"])
    )
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(out["model.norm.weight"], b["model.norm.weight"])
    assert torch.equal(out["lm_head.weight"], b["lm_head.weight"])
    assert [(i.model, i.layer_ranges) for i in result.inputs] == [
        (paths["a"], [(0, 3), (2, 3)]),
        (paths["b"], [(1, 4)]),
    ]


def test_linear_slices_in_memory_match_closed_form():
    # Two 3-layer state dicts named like HF Llama; one slice averages a's layers 1-2 with b's 0-1.
    a, b = small_state(0), perturbed(small_state(0), 0.5, 3)
    config = {
        "merge_method": "linear",
        "slices": [{"sources": [{"model": "a", "layer_range": [1, 3], "parameters": {"weight": [1.0, 3.0]}},
                                {"model": "b", "layer_range": [0, 2], "parameters": {"weight": 1.0}}]}],
    }  # fmt: skip
    got = merge(config, sources={"a": a, "b": b}).state_dict
    # Outside the stack, gradients take their first value (weight 1 for a); the integer buffer is copied.
    expected = {"embed.weight": (a["embed.weight"] + b["embed.weight"]) / 2}
    for out_layer, (wa, layer_a, layer_b) in enumerate([(1.0, 1, 0), (3.0, 2, 1)]):
        for rest in ("attn.weight", "mlp.weight", "norm.bias"):
            mixed = wa * a[f"model.layers.{layer_a}.{rest}"] + b[f"model.layers.{layer_b}.{rest}"]
            expected[f"model.layers.{out_layer}.{rest}"] = mixed / (wa + 1.0)
    expected["position_ids"] = a["position_ids"]
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_alloyml_model_frankenmerge_loads_and_runs(tmp_path):
    from alloyml.models.config import ModelConfig
    from alloyml.models.model import LinearLM
    from alloyml.models.saving import load_model, save_model

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, mixer="softmax")
    states = {}
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        model = LinearLM(cfg)
        save_model(model, tmp_path / name)
        states[name] = model.state_dict()
    config = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(tmp_path / "a"), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(tmp_path / "b"), "layer_range": [1, 2]}]},
        ],
    }
    merge(config, tmp_path / "merged")
    merged = load_model(tmp_path / "merged")

    # The same model assembled by hand: a's embedding and blocks 0-1, then b's block 1, norm and head.
    expected = LinearLM(cfg.replace(n_layers=3))
    hand = {k: v for k, v in states["a"].items() if k.startswith(("embed.", "blocks.0.", "blocks.1."))}
    hand |= {k.replace("blocks.1.", "blocks.2."): v for k, v in states["b"].items() if k.startswith("blocks.1.")}
    hand |= {k: v for k, v in states["b"].items() if k.startswith(("norm.", "lm_head."))}
    expected.load_state_dict(hand)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected.eval()(ids).logits, rtol=0, atol=0)
    info = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert info["config"]["n_layers"] == info["n_layers"] == 3 and len(merged.blocks) == 3
    assert info["num_params"] == info["num_active_params"] == expected.num_params()


def _passthrough(*sources, **extra):
    return {"merge_method": "passthrough", "slices": [{"sources": [s]} for s in sources], **extra}


def test_layer_pattern_is_detected_or_configured():
    named = {f"net.stack.{i}.w": torch.full((2,), float(i)) for i in range(3)} | {"net.embed.w": torch.ones(2)}
    with pytest.raises(ConfigError, match=r"model 'm'.*e\.g\. 'net\.stack\.0\.w'.*set `layer_pattern:`"):
        merge(_passthrough({"model": "m", "layer_range": [0, 2]}), sources={"m": named})
    config = _passthrough({"model": "m", "layer_range": [2, 3]}, {"model": "m", "layer_range": [0, 1]},
                          layer_pattern="net.stack.{layer}.")  # fmt: skip
    got = merge(config, sources={"m": named}).state_dict
    assert got.keys() == {"net.embed.w", "net.stack.0.w", "net.stack.1.w"}
    assert got["net.stack.0.w"].tolist() == [2.0, 2.0] and got["net.stack.1.w"].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="no tensor of model 'm' is named like layer_pattern 'model.h.{layer}.'"):
        merge({**config, "layer_pattern": "model.h.{layer}."}, sources={"m": named})
    with pytest.raises(ConfigError, match="must contain `{layer}` exactly once"):
        merge({**config, "layer_pattern": "net.stack."}, sources={"m": named})
    both = {"model.layers.0.w": torch.ones(2), "blocks.0.w": torch.ones(2)}
    ambiguous = r"several layer patterns: 'model.layers.{layer}.' \(e.g. 'model.layers.0.w'\), 'blocks.{layer}.'"
    with pytest.raises(ConfigError, match=ambiguous):
        merge(_passthrough({"model": "m", "layer_range": [0, 1]}), sources={"m": both})


@pytest.mark.parametrize(
    "slices, message, error",
    [
        ([[{"model": "a", "layer_range": [2, 4]}]],
         r"`slices\[0\].sources\[0\]`: layer_range \[2, 4\] of model 'a' is outside its 3 layers", ConfigError),
        ([[{"model": "a", "layer_range": [0, 1]}], [{"model": "gap", "layer_range": [0, 1]}]],
         r"model 'gap': layers named like 'model.layers.{layer}.' go up to 2 but layers \[1\] have no tensors",
         ConfigError),
        ([[{"model": "a", "layer_range": [0, 1]}, {"model": "wide", "layer_range": [2, 3]}]],
         r"tensor 'mlp.weight' has shape \(12, 7\) in layer 2 of 'wide' but \(12, 6\) in layer 0 of 'a'",
         InvalidInputError),
        ([[{"model": "a", "layer_range": [0, 1]}, {"model": "wide", "layer_range": [1, 2]}]],
         r"layer 1 of 'wide' does not have the same tensors as layer 0 of 'a': missing \[\] \(0\), "
         r"unexpected \['extra.weight'\]", InvalidInputError),
        ([[{"model": "a", "layer_range": [0, 1]}], [{"model": "nope", "layer_range": [0, 1]}]],
         r"checkpoint 'nope': nope does not exist", NotFoundError),
    ],
)  # fmt: skip
def test_slices_that_do_not_fit_the_models_fail_before_writing(tmp_path, slices, message, error):
    a = small_state(0)
    gap = {k: v for k, v in a.items() if ".1." not in k}
    wide = {**a, "model.layers.2.mlp.weight": torch.zeros(12, 7), "model.layers.1.extra.weight": torch.zeros(2)}
    weighted = [[{**source, "parameters": {"weight": 1.0}} for source in sources] for sources in slices]
    config = {"merge_method": "linear", "slices": [{"sources": sources} for sources in weighted]}
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        merge(config, out, sources={"a": a, "gap": gap, "wide": wide})
    assert not out.exists() and not list(tmp_path.iterdir())


def test_layer_count_needs_a_config_key(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "m").mkdir()
    save_file(small_state(0), tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text('{"model_type": "toy"}')
    config = _passthrough({"model": str(tmp_path / "m"), "layer_range": [0, 2]})
    with pytest.raises(ConfigError, match=r"config.json has no layer count to set to 2 \(looked for num_hidden_layers"):
        merge(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "toy", "n_layer": 3, "torch_dtype": "float32"}')
    merge({**config, "out_dtype": "float16"}, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {
        "model_type": "toy", "n_layer": 2, "torch_dtype": "float16"}  # fmt: skip


def test_mergekit_backend_checks_layer_ranges_first(four_layer_llamas, tmp_path):
    config = _passthrough({"model": str(four_layer_llamas["a"]), "layer_range": [3, 5]}, backend="mergekit")
    with pytest.raises(ConfigError, match=r"layer_range \[3, 5\] of model .* is outside its 4 layers"):
        merge(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
