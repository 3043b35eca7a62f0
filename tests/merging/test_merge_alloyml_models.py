"""alloyml's own models merge the same through `alloyml merge` and through mergekit (with alloyml's mergekit
architecture definition), for linear, TIES and SLERP, on an MLP family and an MoE family."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
import yaml
from merge_helpers import perturbed
from safetensors.torch import load_file

from alloyml.commands import merge as merge_command
from alloyml.merging import merge

FAMILIES = {
    "gla": dict(mixer="gla", ffn="mlp"),
    "moe-mamba": dict(mixer="mamba", ffn="moe", n_experts=2, top_k=1),
    "ttt_mlp": dict(mixer="ttt_mlp", ffn="mlp"),  # per-head 3-D inner weights
}


def _save_family(root, fields):
    from alloyml.models import LinearLM, ModelConfig
    from alloyml.models.hf_bridge import save_pretrained

    torch.manual_seed(0)
    model = LinearLM(ModelConfig(d_model=32, n_layers=2, n_heads=2, **fields))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = {}
    for name, state in (("base", base), ("a", perturbed(base, 0.02, 1)), ("b", perturbed(base, 0.02, 2))):
        model.load_state_dict(state)
        paths[name] = str(save_pretrained(model, root / name, tokenizer=False))
    return paths


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return {name: _save_family(tmp_path_factory.mktemp(name), fields) for name, fields in FAMILIES.items()}


def _config(method, p):
    if method == "linear":
        return {"merge_method": "linear", "models": [
            {"model": p["base"], "parameters": {"weight": 0.2}},
            {"model": p["a"], "parameters": {"weight": 0.3}},
            {"model": p["b"], "parameters": {"weight": [0.5, 1.0]}},  # a gradient over the layers
        ]}
    if method == "ties":
        return {"merge_method": "ties", "base_model": p["base"], "dtype": "float32", "models": [
            {"model": p["a"], "parameters": {"weight": 0.6, "density": 0.4}},
            {"model": p["b"], "parameters": {"weight": [0.2, 0.8], "density": 0.6}},
        ]}
    return {"merge_method": "slerp", "base_model": p["base"], "models": [{"model": p["base"]}, {"model": p["a"]}],
            "parameters": {"t": [{"filter": "mixer", "value": [0.1, 0.7]}, {"value": 0.45}]}}


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    merge_command.register(parser.add_subparsers())
    args = parser.parse_args(["merge", *argv])
    return args.func(args)


def _assert_same(ours_dir, theirs_dir, base_dir):
    ours, theirs, base = (load_file(f"{d}/model.safetensors") for d in (ours_dir, theirs_dir, base_dir))
    assert sorted(ours) == sorted(theirs) == sorted(base)
    for name in base:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)
    assert max((ours[n] - base[n]).abs().max().item() for n in base) > 1e-3  # the merge did something


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ["linear", "ties", "slerp"])
def test_alloyml_merge_and_mergekit_agree_on_alloyml_models(families, tmp_path, family, method):
    from alloyml.models import load_model

    config = _config(method, families[family])
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    assert _run_cli([str(path), str(tmp_path / "ours")]) == 0
    theirs = merge({**config, "backend": "mergekit"}, tmp_path / "theirs")
    assert theirs.backend == "mergekit"
    _assert_same(tmp_path / "ours", tmp_path / "theirs", families[family]["base"])
    # Both outputs stay loadable models of the family (alloyml's loader and transformers').
    from transformers import AutoModelForCausalLM

    assert load_model(tmp_path / "theirs").config.mixer == FAMILIES[family]["mixer"]
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "ours")).__name__ == "AlloyLinearForCausalLM"


def test_json_definition_is_mergekit_format_and_names_every_tensor(families):
    """The JSON definition loads with mergekit's own JSON loader and lists exactly the saved tensors."""
    from mergekit.architecture import arch_info_for_config
    from mergekit.architecture.json_definitions import _load_architecture_json
    from transformers import AutoConfig

    from alloyml.models import load_config
    from alloyml.models.mergekit_arch import dump, register

    register()
    for paths in families.values():
        hf_config = AutoConfig.from_pretrained(paths["base"])
        saved = set(load_file(f"{paths['base']}/model.safetensors"))
        arch = _load_architecture_json(dump(load_config(paths["base"])))
        assert {w.name for w in arch.all_weights(hf_config)} == saved
        # ...and the entry mergekit picks for these configs (not its name-guessing fallback) says the same.
        registered = arch_info_for_config(hf_config)
        assert registered is not None and registered.expected_model_type == "alloyml-linear"
        assert {w.name for w in registered.all_weights(hf_config)} == saved


def test_mergekit_yaml_command_line_with_alloyml_registered(families, tmp_path):
    """`python -m alloyml.models.mergekit_arch` is mergekit-yaml (its own CLI) knowing alloyml models."""
    config = _config("linear", families["gla"])
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "alloyml.models.mergekit_arch", str(path), str(tmp_path / "cli"),
                          "--no-copy-tokenizer", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model_type"] == "alloyml-linear"
    assert _run_cli([str(path), str(tmp_path / "ours")]) == 0
    _assert_same(tmp_path / "ours", tmp_path / "cli", families["gla"]["base"])


def test_alloyml_models_mergekit_yaml_subcommand(families, tmp_path):
    from alloyml.cli import main

    config = _config("ties", families["moe-mamba"])
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["models", "mergekit-yaml", str(path), str(tmp_path / "mk"), "--no-copy-tokenizer", "--quiet"]) == 0
    assert _run_cli([str(path), str(tmp_path / "ours")]) == 0
    _assert_same(tmp_path / "ours", tmp_path / "mk", families["moe-mamba"]["base"])


@pytest.mark.parametrize("ffn", ["mlp", "moe", "none", "kan", "rwkv_cmix"])
def test_every_family_definition_lists_exactly_the_saved_tensors(ffn, tmp_path):
    """For every mixer with each feed-forward, mergekit's view of a saved model names every saved tensor."""
    from mergekit.architecture import arch_info_for_config
    from transformers import AutoConfig

    from alloyml.models import LinearLM, ModelConfig, save_model
    from alloyml.models.mergekit_arch import register
    from alloyml.models.mixers import MIXERS

    register()
    for mixer in sorted(MIXERS):
        model = LinearLM(ModelConfig(mixer=mixer, ffn=ffn, d_model=16, n_layers=3, n_heads=2, n_experts=3))
        folder = save_model(model, tmp_path / f"{mixer}-{ffn}")
        hf_config = AutoConfig.from_pretrained(folder)
        names = [w.name for w in arch_info_for_config(hf_config).all_weights(hf_config)]
        assert sorted(names) == sorted(load_file(f"{folder}/model.safetensors")), mixer
