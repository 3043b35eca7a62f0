"""One YAML→pydantic loader (alloyml.yaml_config) with one error format, used by merge and tune configs."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, ConfigDict

from alloyml.automl.config import HPOConfig, load_tune_config
from alloyml.errors import ConfigError
from alloyml.merging import load_merge_config
from alloyml.yaml_config import load_yaml_model


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    inner: Inner


def test_sources_and_the_message_format(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  size: 3\n")
    expected = Outer(name="x", inner=Inner(size=3))
    assert load_yaml_model(path, Outer) == expected
    assert load_yaml_model(str(path), Outer) == expected
    assert load_yaml_model(path.read_text(), Outer) == expected
    assert load_yaml_model({"name": "x", "inner": {"size": 3}}, Outer) == expected
    assert load_yaml_model(expected, Outer) is expected

    path.write_text("name: x\ninner:\n  size: big\n  colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_model(path, Outer, what="widget config")
    assert str(err.value) == (
        f"widget config {path} is invalid: inner.size: Input should be a valid integer, unable to parse string "
        "as an integer; inner.colour: unknown key"
    )
    with pytest.raises(ConfigError, match=f"widget config file {re.escape(str(tmp_path / 'no.yaml'))} does not"):
        load_yaml_model(tmp_path / "no.yaml", Outer, what="widget config")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys, got list"):
        load_yaml_model(path, Outer)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml_model(path, Outer)


def test_merge_and_tune_configs_fail_the_same_way(tmp_path):
    merge = tmp_path / "merge.yaml"
    merge.write_text("merge_method: linear\nmodles: []\n")
    tune = tmp_path / "tune.yaml"
    tune.write_text("objectiv: {}\n")
    with pytest.raises(ConfigError) as merge_err:
        load_merge_config(merge)
    with pytest.raises(ConfigError) as tune_err:
        load_tune_config(tune, HPOConfig)
    assert str(merge_err.value).startswith(f"merge config {merge} is invalid: ")
    assert str(tune_err.value).startswith(f"tune config {tune} is invalid: ")
    assert "modles: unknown key" in str(merge_err.value) and "objectiv: unknown key" in str(tune_err.value)
