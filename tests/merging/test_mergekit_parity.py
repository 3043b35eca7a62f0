"""The same YAML through `alloyml merge` and through mergekit agrees to 1e-6 on tiny Llama checkpoints.

mergekit's import costs ~6-9 s once per session; each merge of the tiny models takes well under a second.
"""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alloyml.commands import merge as merge_command
from alloyml.errors import InvalidInputError
from alloyml.merging import merge


def _configs(p):
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": p["base"], "parameters": {"weight": 0.2}},
                {"model": p["a"], "parameters": {"weight": 0.3}},
                {"model": p["b"], "parameters": {"weight": [0.5, 1.0]}},
            ],
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": p["base"],
            "models": [{"model": p["base"]}, {"model": p["a"]}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0.1, 0.7]},
                    {"filter": "mlp", "value": [0.8, 0.3]},
                    {"value": 0.45},
                ]
            },
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": p["base"],
            "models": [
                {"model": p["a"], "parameters": {"weight": 0.7}},
                {"model": p["b"], "parameters": {"weight": [0.3, -0.2]}},
            ],
            "parameters": {"lambda": 0.9},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": p["base"],
            "models": [
                {"model": p["a"], "parameters": {"weight": 0.6, "density": 0.4}},
                {"model": p["b"], "parameters": {"weight": [0.2, 0.8], "density": 0.6}},
            ],
            "dtype": "float32",
        },
    }


def _run_cli(argv):
    parser = argparse.ArgumentParser()
    merge_command.register(parser.add_subparsers())
    args = parser.parse_args(["merge", *argv])
    return args.func(args)


@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic", "ties"])
def test_alloyml_and_mergekit_agree(tiny_llamas, tmp_path, method):
    paths = {k: str(v) for k, v in tiny_llamas.items()}
    config = _configs(paths)[method]
    config_path = tmp_path / "merge.yaml"
    config_path.write_text(yaml.safe_dump(config))

    assert _run_cli([str(config_path), str(tmp_path / "ours")]) == 0
    theirs = merge({**config, "backend": "mergekit"}, tmp_path / "theirs")
    assert theirs.backend == "mergekit"

    ours_sd = load_file(tmp_path / "ours" / "model.safetensors")
    theirs_sd = load_file(tmp_path / "theirs" / "model.safetensors")
    base_sd = load_file(tiny_llamas["base"] / "model.safetensors")
    assert sorted(ours_sd) == sorted(theirs_sd) == sorted(base_sd)
    for name in base_sd:
        assert ours_sd[name].dtype == theirs_sd[name].dtype
        torch.testing.assert_close(ours_sd[name], theirs_sd[name], rtol=0, atol=1e-6, msg=name)
    # Not a vacuous agreement: the merge moved the weights away from the base model.
    moved = max((ours_sd[n] - base_sd[n]).abs().max().item() for n in base_sd)
    assert moved > 1e-3
    assert (tmp_path / "ours" / "config.json").exists()


def test_mergekit_backend_needs_hf_directories(tmp_path, tiny_llamas):
    config = {
        "merge_method": "linear",
        "models": [{"model": str(tmp_path), "parameters": {"weight": 1.0}}],
        "backend": "mergekit",
    }
    with pytest.raises(InvalidInputError, match="has no config.json"):
        merge(config, tmp_path / "out")
    with pytest.raises(InvalidInputError, match="writes to disk"):
        merge({**config, "models": [{"model": str(tiny_llamas["a"]), "parameters": {"weight": 1.0}}]})
