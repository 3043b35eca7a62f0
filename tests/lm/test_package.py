"""The package's promises as a library: importing it loads no heavy library and nothing above it in the
dependency order, and the model cache sits in the one ALLOYML_HOME every part of alloyml reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alloyml.errors import ConfigError

FORBIDDEN = ("alloyml.platform", "alloyml.workflows", "alloyml.ui", "alloyml.routing", "alloyml.automl")
HEAVY = ("torch", "transformers", "litellm", "ray", "dspy")


def test_importing_alloyml_lm_loads_no_heavy_library_and_no_higher_package():
    code = "import sys, json, alloyml.lm; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       cwd=Path(__file__).parents[2]).stdout)
    assert not [m for m in loaded if m.startswith(FORBIDDEN)]
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def test_model_cache_and_platform_settings_read_the_same_home(tmp_path, monkeypatch):
    import alloyml.lm.hf
    from alloyml.home import alloyml_home
    from alloyml.platform.settings import Settings

    monkeypatch.setenv("ALLOYML_HOME", str(tmp_path / "home"))
    assert alloyml_home() == Settings.from_env().home == tmp_path / "home"
    assert alloyml_home(tmp_path / "given") == Settings.from_env(home=tmp_path / "given").home == tmp_path / "given"
    monkeypatch.delenv("ALLOYML_HOME")
    assert alloyml_home() == Settings.from_env().home == Path.home() / ".alloyml"

    # load_smollm2 caches under <home>/models: a folder there without weights is refused by name
    monkeypatch.setenv("ALLOYML_HOME", str(tmp_path / "home"))
    stale = tmp_path / "home" / "models" / alloyml.lm.hf.SMOLLM2_DIR
    stale.mkdir(parents=True)
    with pytest.raises(ConfigError, match=str(stale)):
        alloyml.lm.hf.load_smollm2()
