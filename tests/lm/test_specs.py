"""The one spec union: every kind validates and builds the model it names (checked against decoding by hand
or the model's own contract); bad specs are refused naming the kind or the field."""

from __future__ import annotations

import json

import pytest

from alloyml.errors import AlloyError, ConfigError
from alloyml.lm import (
    KINDS,
    AlloySpec,
    ConstantLM,
    ConstantSpec,
    Gemma3Spec,
    HFCausalLM,
    HFSpec,
    LiteLLMChat,
    LiteLLMSpec,
    RecurrentLM,
    SamplingParams,
    ScriptedLM,
    ScriptedSpec,
    SmolLM2Spec,
    as_lm,
    build_lm,
    parse_lm_spec,
)

from ._tiny_alloy import greedy_by_hand, save_tiny_linear_lm
from ._tiny_hf import tiny_llama

RESPOND = "tests.automl._scripted:noisy_echo"


@pytest.fixture(scope="module")
def alloy_checkpoint(tmp_path_factory):
    """A tiny saved LinearLM and the in-memory model it was saved from."""
    path = tmp_path_factory.mktemp("alloy") / "tiny"
    return path, save_tiny_linear_lm(path)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random Llama saved as a local Hugging Face folder, and the in-memory model and tokenizer."""
    model, tokenizer = tiny_llama(seed=3)
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def _specs(alloy_path, hf_path) -> dict[str, dict]:
    return {
        "constant": {"kind": "constant", "text": "42", "tokens": 3},
        "scripted": {"kind": "scripted", "respond": RESPOND},
        "alloyml": {"kind": "alloyml", "path": str(alloy_path)},
        "hf": {"kind": "hf", "path": str(hf_path)},
        "smollm2": {"kind": "smollm2"},
        "gemma3": {"kind": "gemma3"},
        "litellm": {"kind": "litellm", "model": "openai/local", "api_base": "http://127.0.0.1:8000/v1"},
    }


def test_every_kind_validates_into_its_spec_class(alloy_checkpoint, hf_folder):
    classes = {"constant": ConstantSpec, "scripted": ScriptedSpec, "alloyml": AlloySpec, "hf": HFSpec,
               "smollm2": SmolLM2Spec, "gemma3": Gemma3Spec, "litellm": LiteLLMSpec}
    specs = _specs(alloy_checkpoint[0], hf_folder[0])
    assert set(KINDS) == set(specs) == set(classes)
    for kind, spec in specs.items():
        parsed = parse_lm_spec(spec)
        assert type(parsed) is classes[kind] and parsed.kind == kind
        assert parse_lm_spec(parsed) is parsed  # a spec object passes through
        assert parse_lm_spec(json.dumps(spec)) == parsed  # and a JSON string validates the same
    assert parse_lm_spec("smollm2") == SmolLM2Spec()  # a bare kind name


def test_constant_and_scripted_build_their_models():
    constant = build_lm({"kind": "constant", "text": "yes. no", "tokens": 3})
    assert isinstance(constant, ConstantLM)
    [gen] = constant.generate(["anything at all"], n=2, stop=["."])
    assert gen.texts == ["yes", "yes"] and (gen.prompt_tokens, gen.completion_tokens) == (0, 6)

    from tests.automl._scripted import noisy_echo

    scripted = build_lm({"kind": "scripted", "respond": RESPOND})
    assert isinstance(scripted, ScriptedLM) and scripted.respond is noisy_echo
    reference = ScriptedLM(noisy_echo)
    kwargs = dict(n=3, temperature=1.0, max_tokens=5, seed=4)
    assert scripted.generate(["Repeat red"], **kwargs) == reference.generate(["Repeat red"], **kwargs)


def test_alloyml_spec_loads_the_checkpoint_and_decodes_like_the_saved_model(alloy_checkpoint):
    path, model = alloy_checkpoint
    lm = build_lm({"kind": "alloyml", "path": str(path)})
    assert isinstance(lm, RecurrentLM) and lm.name == "tiny"
    [gen] = lm.generate(["2+3="], max_tokens=5)
    assert gen.texts == [greedy_by_hand(model, "2+3=", 5)]
    assert (gen.prompt_tokens, gen.completion_tokens) == (4, 5)


def test_hf_spec_loads_the_folder_and_decodes_like_the_saved_model(hf_folder):
    import torch

    path, model, tokenizer = hf_folder
    lm = build_lm({"kind": "hf", "path": str(path)})
    assert isinstance(lm, HFCausalLM) and lm.name == "tiny-llama"
    ids = tokenizer("a b c")["input_ids"]
    seq, out = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(4):
            nxt = int(model(seq).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    [gen] = lm.generate(["a b c"], max_tokens=4)
    assert gen.texts == [tokenizer.decode(out, skip_special_tokens=True)]
    assert gen.prompt_tokens == len(ids) and gen.completion_tokens == len(out)


def test_smollm2_spec_builds_through_load_smollm2(monkeypatch):
    import alloyml.lm.hf

    sentinel = ConstantLM("smol")
    monkeypatch.setattr(alloyml.lm.hf, "load_smollm2", lambda: sentinel)  # the real one converts a GGUF file
    assert build_lm({"kind": "smollm2"}) is sentinel


def test_litellm_spec_builds_a_chat_model_with_that_config(monkeypatch):
    lm = build_lm({"kind": "litellm", "model": "openai/local", "api_base": "http://127.0.0.1:8000/v1",
                   "api_key_env": "MY_KEY", "num_retries": 0})
    assert isinstance(lm, LiteLLMChat) and lm.name == "openai/local"
    monkeypatch.setenv("MY_KEY", "sk-test")
    request = lm.build_request("hi", SamplingParams(max_tokens=3))
    assert (request["api_base"], request["api_key"], request["num_retries"], request["max_tokens"]) == (
        "http://127.0.0.1:8000/v1", "sk-test", 0, 3)
    assert LiteLLMChat({"model": "openai/local"}).config == LiteLLMSpec(model="openai/local")


def test_relative_paths_are_read_from_base_dir(alloy_checkpoint):
    path, _ = alloy_checkpoint
    spec = parse_lm_spec({"kind": "alloyml", "path": path.name}, base_dir=path.parent)
    assert spec.path == path
    with pytest.raises(ConfigError, match="path"):
        parse_lm_spec({"kind": "alloyml", "path": path.name})  # no base: read from the working folder


def test_unknown_kind_is_refused_naming_it_and_the_known_kinds():
    for bad, says in (({"kind": "onnx"}, "unknown kind 'onnx'"), ("onnx", "unknown kind 'onnx'"),
                      ({"path": "x"}, "missing the key 'kind'")):
        with pytest.raises(ConfigError) as err:
            build_lm(bad)
        assert isinstance(err.value, AlloyError) and says in str(err.value)
        assert all(repr(kind) in str(err.value) for kind in KINDS)
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_lm(3)
    with pytest.raises(ConfigError, match="neither a kind name nor a JSON object"):
        build_lm("{not json")


@pytest.mark.parametrize(("spec", "field"), [
    ({"kind": "constant", "colour": "red"}, "colour: unknown key"),
    ({"kind": "constant", "delay_s": -1.0}, "delay_s"),
    ({"kind": "constant", "tokens": "many"}, "tokens"),
    ({"kind": "scripted"}, "respond: Field required"),
    ({"kind": "scripted", "respond": "tests.automl._scripted:nope"}, "respond"),
    ({"kind": "alloyml", "path": "/no/such/checkpoint"}, "path"),
    ({"kind": "hf", "path": "/no/such/folder"}, "path: /no/such/folder is not a model folder"),
    ({"kind": "smollm2", "home": "/tmp"}, "home: unknown key"),
    ({"kind": "litellm", "model": "gpt4"}, "model: model must look like 'provider/name'"),
    ({"kind": "litellm", "model": "openai/x", "api_key": "sk-literal"}, "api_key: unknown key"),
])
def test_a_bad_field_is_refused_naming_the_kind_and_the_field(spec, field):
    with pytest.raises(ConfigError) as err:
        build_lm(spec, what="model 'm0'")
    message = str(err.value)
    assert message.startswith(f"model 'm0' of kind {spec['kind']!r}: ") and field in message


def test_as_lm_keeps_models_and_builds_specs():
    lm = ScriptedLM(lambda p, s: "x")
    assert as_lm(lm) is lm
    assert isinstance(as_lm({"kind": "constant"}), ConstantLM)
    with pytest.raises(ConfigError, match="target"):
        as_lm({"kind": "nope"}, what="target")
