"""Config validation: every bad config fails up front with a message naming the problem."""

from __future__ import annotations

import pytest
import yaml

from alloyml.errors import ConfigError
from alloyml.merging import load_merge_config


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
    config = load_merge_config(_cfg())
    assert [m.model for m in config.merged_models()] == ["a", "b"]
    path = tmp_path / "merge.yaml"
    path.write_text(config.to_yaml())
    assert load_merge_config(path) == config
    assert load_merge_config(config.to_yaml()) == config
    assert yaml.safe_load(config.to_yaml())["models"][2]["parameters"]["weight"] == [0.2, 0.8]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"merge_method": "tiez"}, "unknown merge method 'tiez'; known methods: .*dare_linear, dare_ties, della"),
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
        ({"modles": []}, "modles: unknown key"),
    ],
)  # fmt: skip
def test_bad_configs_fail_with_clear_messages(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_merge_config(_cfg(**overrides))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_merge_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_merge_config("- a\n- b\n")


def _slices_cfg(**overrides):
    cfg = {
        "merge_method": "slerp",
        "base_model": "base",
        "slices": [
            {"sources": [{"model": "base", "layer_range": [0, 4]}, {"model": "a", "layer_range": [2, 6]}]},
            {"sources": [{"model": "base", "layer_range": [2, 8]}, {"model": "a", "layer_range": [0, 6]}],
             "parameters": {"t": [0.9, 0.1]}},
        ],
        "parameters": {"t": 0.5},
    }  # fmt: skip
    cfg.update(overrides)
    return cfg


def test_slices_config_round_trips_and_allows_overlapping_ranges():
    # Overlapping ranges (base layers 2-3 in both slices) are how self-merges repeat layers, as in mergekit.
    config = load_merge_config(_slices_cfg())
    assert config.output_layers() == 10 and config.reference_model() == "base"
    assert [s.model for s in config.merged_sources(config.slices[1])] == ["a"]
    assert load_merge_config(config.to_yaml()) == config
    assert yaml.safe_load(config.to_yaml())["slices"][1]["sources"][0]["layer_range"] == [2, 8]
    frankenmerge = load_merge_config(
        "merge_method: passthrough\n"
        "slices:\n"
        "  - sources: [{model: a, layer_range: [0, 3]}]\n"
        "  - sources: [{model: a, layer_range: [1, 4]}]\n"
    )
    assert frankenmerge.output_layers() == 6 and frankenmerge.referenced_models() == ["a"]


def _source(model, start, end, **parameters):
    return {"model": model, "layer_range": [start, end], **({"parameters": parameters} if parameters else {})}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"models": [{"model": "a"}]}, "give either `models` \\(whole models\\) or `slices`.*not both"),
        ({"slices": None}, "list the models to merge under `models`, or their layer ranges under `slices`"),
        ({"slices": []}, "`slices` is empty"),
        ({"slices": [{"sources": [_source("base", 3, 1), _source("a", 0, 2)]}]},
         "slices.0.sources.0: layer_range \\[3, 1\\] of model 'base' is empty or reversed"),
        ({"slices": [{"sources": [_source("base", 0, 2), _source("a", -1, 1)]}]},
         "slices.0.sources.1: layer_range \\[-1, 1\\] of model 'a' is empty or reversed"),
        ({"slices": [{"sources": [_source("base", 0, 2), _source("a", 0, 3)]}]},
         "`slices\\[0\\]`: every source must give the same number of layers.*got 'base' \\[0, 2\\], 'a' \\[0, 3\\]"),
        ({"slices": [{"sources": [_source("a", 0, 2), _source("b", 0, 2)]}]},
         "`slices\\[0\\]`: base model 'base' is not among its sources"),
        ({"base_model": None}, "'slerp' needs `base_model` \\(top level or in `slices\\[0\\]`\\)"),
        ({"slices": [{"sources": [_source("base", 0, 2), _source("a", 0, 2), _source("base", 2, 4)]}]},
         "`slices\\[0\\].sources`: models listed more than once: \\['base'\\]"),
        ({"slices": [{"sources": [_source("base", 0, 2), _source("a", 0, 2), _source("b", 0, 2)]}]},
         "'slerp' merges exactly 1 model\\(s\\) besides the base; `slices\\[0\\].sources` gives 2 \\('a', 'b'\\)"),
        ({"slices": [{"sources": [_source("base", 0, 2), _source("a", 0, 2)], "parameters": {"tt": 1}}]},
         "no parameter 'tt'; known: t"),
        ({"slices": [{"sources": [_source("base", 0, 2), _source("a", 0, 2, t=0.3)]}]}, "'t' of slerp is shared"),
        ({"parameters": {}}, "'slerp' needs parameter 't'"),
        ({"merge_method": "passthrough", "base_model": None, "parameters": {}},
         "'passthrough' merges exactly 1 model\\(s\\); `slices\\[0\\].sources` gives 2 \\('base', 'a'\\)"),
        ({"merge_method": "linear", "base_model": None, "parameters": {},
          "slices": [{"sources": [_source("a", 0, 2, weight=1), _source("b", 0, 2)]}]},
         "'linear' needs parameter 'weight' for models \\['b'\\]"),
        ({"layer_pattern": "model.layers."}, "layer_pattern 'model.layers.' must contain `{layer}` exactly once"),
        ({"slices": [{"sources": [_source("a", 0, 2)], "residual_weight": 0.5}]},
         "slices.0.residual_weight: unknown key"),
    ],
)  # fmt: skip
def test_bad_slice_configs_fail_with_clear_messages(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_merge_config(_slices_cfg(**overrides))
