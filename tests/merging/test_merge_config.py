"""Config validation: every bad config fails up front with a message naming the problem."""

from __future__ import annotations

import pytest
import yaml

from alloyml.errors import ConfigError
from alloyml.merging import load_config


def _cfg(**overrides):
    cfg = {
        "merge_method": "ties",
        "base_model": "base",
        "models": [
            {"model": "base"},
            {"model": "a", "parameters": {"weight": 0.5, "density": 0.5}},
            {"model": "b", "parameters": {"weight": [0.2, 0.8]}},
        ],
        "parameters": {"lambda": 1.0},
        "dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def test_valid_config_round_trips_through_yaml(tmp_path):
    config = load_config(_cfg())
    assert [m.model for m in config.merged_models()] == ["a", "b"]
    path = tmp_path / "merge.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
    assert load_config(config.to_yaml()) == config
    assert yaml.safe_load(config.to_yaml())["models"][2]["parameters"]["weight"] == [0.2, 0.8]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"merge_method": "tiez"}, "unknown merge method 'tiez'; known methods: dare_linear, dare_ties, linear"),
        ({"base_model": None}, "'ties' needs `base_model`"),
        ({"parameters": {"lamda": 1}}, "no parameter 'lamda'; known: weight, density, lambda, normalize"),
        ({"models": [{"model": "a", "parameters": {"weight": 1, "lambda": 2}}]}, "'lambda' of ties is shared"),
        ({"models": [{"model": "a"}]}, "needs parameter 'weight' for models \\['a'\\]"),
        ({"models": [{"model": "base", "parameters": {"weight": 1}}, {"model": "a", "parameters": {"weight": 1}}]},
         "parameters given for base model 'base' are not used"),
        ({"models": [{"model": "a", "parameters": {"weight": 1}}] * 2}, "listed more than once: \\['a'\\]"),
        ({"models": []}, "`models` is empty"),
        ({"merge_method": "slerp", "parameters": {"t": 0.5}}, "'slerp' merges exactly 1 model"),
        ({"merge_method": "slerp", "models": [{"model": "base"}, {"model": "a"}], "parameters": {}},
         "needs parameter 't'"),
        ({"merge_method": "linear", "parameters": {}, "models": [{"model": "a", "parameters": {"weight": 1}}]},
         "does not use a base model"),
        ({"dtype": "float8"}, "dtype: Input should be 'float32'"),
        ({"modles": []}, "modles: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_configs_fail_with_clear_messages(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_cfg(**overrides))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config("- a\n- b\n")
