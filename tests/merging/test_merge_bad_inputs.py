"""Bad inputs reach a CLI user as one line naming the input (exit code 2), never as a traceback, and are
found before merging starts."""

from __future__ import annotations

import pytest
import torch
import yaml
from merge_helpers import small_state
from safetensors.torch import save_file

from alloyml.cli import main
from alloyml.errors import InvalidInputError
from alloyml.merging import open_checkpoint


def _good_model(directory):
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v for k, v in small_state(0).items()}, directory / "model.safetensors")
    return directory


def _corrupt_header(d):
    d.mkdir()
    (d / "model.safetensors").write_bytes((16).to_bytes(8, "little") + b"\xff\xfe" * 8 + b"\0" * 64)
    return d / "model.safetensors", "corrupt safetensors header"


def _truncated(d):
    _good_model(d)
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    return path, "truncated: tensor '.*' ends at byte"


def _index(text):
    def build(d):
        _good_model(d)
        (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
        (d / "model.safetensors.index.json").write_text(text)
        return d / "model.safetensors.index.json", None

    return build


_BROKEN_MODELS = {
    "corrupt header": _corrupt_header,
    "truncated data": _truncated,
    "index not JSON": _index("{not json"),
    "index without weight_map": _index('{"metadata": {}}'),
    "index naming a missing shard": _index('{"weight_map": {"embed.weight": "model-00002-of-00002.safetensors"}}'),
}
_INDEX_MESSAGES = {
    "index not JSON": "not valid JSON",
    "index without weight_map": "expected an object with `weight_map`",
    "index naming a missing shard": "names shard files that do not exist: \\['model-00002-of-00002.safetensors'\\]",
}


def _cli(capsys, config: dict | str, tmp_path, *extra):
    path = tmp_path / "merge.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    code = main(["merge", str(path), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(_BROKEN_MODELS))
def test_broken_checkpoints_are_refused_when_opened(tmp_path, capsys, case):
    named, message = _BROKEN_MODELS[case](tmp_path / "a")
    message = message or _INDEX_MESSAGES[case]
    with pytest.raises(InvalidInputError, match=message):
        open_checkpoint(tmp_path / "a")
    config = {"merge_method": "linear", "models": [{"model": str(tmp_path / "a"), "parameters": {"weight": 1}}]}
    code, err = _cli(capsys, config, tmp_path, str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("alloyml: error: ") and str(named) in err
    assert not (tmp_path / "out").exists()


def test_malformed_yaml_and_bad_values_through_the_cli(tmp_path, capsys):
    code, err = _cli(capsys, "merge_method: linear\nmodels: [\n  - model: a\n", tmp_path, str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err
    assert f"merge config {tmp_path / 'merge.yaml'} is not valid YAML" in err
    good = str(_good_model(tmp_path / "a"))
    config = {"merge_method": "linear", "models": [{"model": good, "parameters": {"weight": "heavy"}}]}
    code, err = _cli(capsys, config, tmp_path, str(tmp_path / "out"))
    assert code == 2 and f"parameter 'weight' of model '{good}': expected a number, got 'heavy'" in err


def test_outputs_that_are_files_or_inputs_are_refused(tmp_path, capsys):
    good = _good_model(tmp_path / "a")
    before = (good / "model.safetensors").read_bytes()
    config = {"merge_method": "linear", "models": [{"model": str(good), "parameters": {"weight": 0.5}}]}
    (tmp_path / "file").write_text("x")
    code, err = _cli(capsys, config, tmp_path, str(tmp_path / "file"))
    assert code == 2 and f"output {tmp_path / 'file'} is a file" in err
    for out in (good, tmp_path):  # the input itself, and a folder holding it
        code, err = _cli(capsys, config, tmp_path, str(out), "--overwrite")
        assert code == 2 and f"is (or contains) input model '{good}'" in err
    assert (good / "model.safetensors").read_bytes() == before
    assert [p.name for p in good.iterdir()] == ["model.safetensors"]


def test_corrupt_torch_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip or a pickle")
    with pytest.raises(InvalidInputError, match="pytorch_model.bin: not a readable PyTorch checkpoint"):
        open_checkpoint(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert open_checkpoint(tmp_path).read("w").tolist() == [1.0, 1.0]


def test_backend_override_revalidates_backend_specific_keys(tmp_path, capsys):
    good = str(_good_model(tmp_path / "a"))
    config = {"merge_method": "linear", "backend": "mergekit", "tokenizer": {"pad_to_multiple_of": 64},
              "models": [{"model": good, "parameters": {"weight": 1}}]}  # fmt: skip
    code, err = _cli(capsys, config, tmp_path, str(tmp_path / "out"), "--backend", "alloyml")
    assert code == 2 and "`tokenizer: {'pad_to_multiple_of': 64}` is not supported by the alloyml backend" in err
    assert not (tmp_path / "out").exists()
