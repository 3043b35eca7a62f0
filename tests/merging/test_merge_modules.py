"""mergekit's `modules:` form (`modules: {default: {models | slices, parameters}}`): the same weights as
`mergekit-yaml` on the same YAML, module parameters taking precedence over the top level's but not over a
slice's or a source's; multi-module configs refused by name."""

from __future__ import annotations

import pytest
import yaml
from merge_helpers import assert_same_weights, load_state, mergekit_yaml

from alloyml.errors import ConfigError
from alloyml.merging import load_merge_config, merge


def _configs(p):
    return {
        "models": {
            "merge_method": "ties",
            "base_model": p["base"],
            "parameters": {"density": 0.9, "weight": 0.1},  # overridden by the module's density
            "modules": {
                "default": {
                    "models": [
                        {"model": p["a"], "parameters": {"weight": 0.6}},
                        {"model": p["b"], "parameters": {"weight": [0.2, 0.8]}},
                    ],
                    "parameters": {
                        "density": [{"filter": "mlp", "value": 0.3}],  # no match elsewhere: falls to top level
                    },
                }
            },
            "dtype": "float32",
        },
        "slices": {
            "merge_method": "task_arithmetic",
            "base_model": p["base"],
            "parameters": {"weight": 0.9, "lambda": 0.5},
            "modules": {
                "default": {
                    "slices": [
                        {"sources": [{"model": p["base"], "layer_range": [0, 2]},
                                     {"model": p["a"], "layer_range": [1, 3]},
                                     {"model": p["b"], "layer_range": [2, 4], "parameters": {"weight": -0.4}}]},
                        {"sources": [{"model": p["base"], "layer_range": [2, 4]},
                                     {"model": p["a"], "layer_range": [2, 4]},
                                     {"model": p["b"], "layer_range": [0, 2]}],
                         "parameters": {"weight": 0.25}},
                    ],
                    "parameters": {"weight": [0.1, 0.7]},
                }
            },
        },
    }


@pytest.mark.parametrize("form", ["models", "slices"])
def test_modules_agree_with_mergekit(four_layer_llamas, tmp_path, form):
    paths = {k: str(v) for k, v in four_layer_llamas.items()}
    data = _configs(paths)[form]
    ours = merge(data, tmp_path / "ours")
    theirs = mergekit_yaml(data, tmp_path / "theirs")
    assert_same_weights(load_state(ours.output_path), theirs, atol=2e-6)
    # The module's parameters decide: without them the top-level ones would give a different merge.
    flat = {k: v for k, v in data.items() if k != "modules"} | {
        k: v for k, v in data["modules"]["default"].items() if k != "parameters"
    }
    plain = load_state(merge(flat, tmp_path / "plain").output_path)
    assert max((plain[n] - theirs[n]).abs().max().item() for n in theirs) > 1e-3


def test_modules_round_trip_to_yaml_and_through_the_mergekit_backend(four_layer_llamas, tmp_path):
    paths = {k: str(v) for k, v in four_layer_llamas.items()}
    data = _configs(paths)["slices"]
    config = load_merge_config(data)
    assert yaml.safe_load(config.to_yaml())["modules"]["default"]["parameters"] == {"weight": [0.1, 0.7]}
    assert load_merge_config(config.to_yaml()).model_dump() == config.model_dump()
    via_backend = merge({**data, "backend": "mergekit"}, tmp_path / "mk")
    assert_same_weights(load_state(via_backend.output_path), mergekit_yaml(data, tmp_path / "direct"), atol=0)


@pytest.mark.parametrize(
    "modules, message",
    [
        ({"text_decoder": {"models": [{"model": "a"}]}, "vision_tower": {"models": [{"model": "a"}]}},
         "single-module"),
        ({"decoder": {"models": [{"model": "a"}]}}, "'default'"),
        ({"default": {"parameters": {"weight": 1.0}}}, "exactly one of `models` or `slices`"),
        ({}, "`modules` must map"),
    ],
)
def test_modules_alloyml_cannot_merge_are_refused_by_name(modules, message):
    with pytest.raises(ConfigError, match=message):
        load_merge_config({"merge_method": "linear", "modules": modules})
    with pytest.raises(ConfigError, match="exactly one of"):
        load_merge_config({"merge_method": "linear", "models": [{"model": "a"}],
                           "modules": {"default": {"models": [{"model": "a"}]}}})
