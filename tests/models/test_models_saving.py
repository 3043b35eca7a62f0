import json

import pytest
import torch

from alloyml.errors import ConfigError, NotFoundError
from alloyml.merging.checkpoints import open_checkpoint
from alloyml.models.config import ModelConfig
from alloyml.models.model import LinearLM
from alloyml.models.saving import load_model, save_model


@pytest.mark.parametrize("name", ["moe-mamba", "retnet", "rwkv", "rwkv5", "lru", "hawk", "s4d", "mamba1", "performer",
                                  "gated_deltanet", "ttt_mlp", "h3", "hyena", "local_attn", "griffin"])
def test_save_load_round_trips_exactly(tmp_path, name):
    torch.manual_seed(0)
    cfg = ModelConfig.named(name, vocab_size=50, d_model=32, n_layers=2, n_heads=2, n_experts=4)
    model = LinearLM(cfg).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == cfg
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)

    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["num_params"] == sum(p.numel() for p in model.parameters())
    assert info["mixer"] == cfg.mixer and info["config"]["d_model"] == 32
    if cfg.ffn == "moe":  # one of four experts active per token
        expert = sum(p.numel() for p in model.blocks[0].ffn.experts[0].parameters())
        assert info["num_active_params"] == info["num_params"] - 2 * 3 * expert


def test_layout_is_readable_by_the_merging_code(tmp_path):
    model = LinearLM(ModelConfig(mixer="gla", vocab_size=30, d_model=32, n_layers=1, n_heads=2))
    save_model(model, tmp_path / "m")
    checkpoint = open_checkpoint(tmp_path / "m")
    assert set(checkpoint.infos) == set(model.state_dict())
    assert torch.equal(checkpoint.read("lm_head.weight"), model.lm_head.weight.detach())
    assert "embed.weight" in checkpoint.infos  # untied: the embedding is stored apart from the head


def test_bad_directories_are_refused(tmp_path):
    with pytest.raises(NotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "llama"}))
    with pytest.raises(ConfigError, match="architecture"):
        load_model(tmp_path)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="mixer"):
        ModelConfig(mixer="lstm")
    with pytest.raises(ConfigError, match="top_k"):
        ModelConfig(top_k=9, n_experts=8)
    with pytest.raises(ConfigError, match="unknown model config"):
        ModelConfig.named("gpt5")
    assert ModelConfig.from_dict(ModelConfig.named("moe-mamba").to_dict()).ffn == "moe"


def test_a_save_failing_half_way_leaves_the_previous_model(tmp_path, monkeypatch):
    import safetensors.torch

    first = LinearLM(ModelConfig(mixer="linear_attn", vocab_size=30, d_model=32, n_layers=1, n_heads=2))
    second = LinearLM(ModelConfig(mixer="linear_attn", vocab_size=30, d_model=32, n_layers=2, n_heads=2))
    real_save = safetensors.torch.save_file

    def save_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:  # the disk fills up part-way through the weights
            handle.truncate(100)
        raise OSError("no space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", save_then_fail)
        with pytest.raises(OSError, match="no space"):
            save_model(first, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # no folder, no partial weights, no temp
    save_model(first, tmp_path / "m")
    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", save_then_fail)
        with pytest.raises(OSError):
            save_model(second, tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert load_model(tmp_path / "m").config == first.config  # the old model, whole
    save_model(second, tmp_path / "m")
    assert load_model(tmp_path / "m").config == second.config


def test_config_accepts_exactly_the_registered_layers(monkeypatch):
    """The mixer and feed-forward names come from the registries alone: a layer registered at run time
    is accepted (a mixer also gets its named config), one that is not is refused."""
    from torch import nn

    from alloyml.models.config import NAMED_CONFIGS
    from alloyml.models.mixers import MIXERS, Mixer, register_mixer
    from alloyml.models.moe import FFNS

    assert set(MIXERS) == {"linear_attn", "retnet", "gla", "mamba", "rwkv", "rwkv5", "softmax", "lru", "hawk", "s4d",
                           "mamba1", "performer", "deltanet", "gated_deltanet", "ttt_linear", "ttt_mlp", "h3", "hyena",
                           "local_attn", "griffin"}
    for mixer in MIXERS:
        assert ModelConfig.named(mixer).mixer == mixer
    with pytest.raises(ConfigError, match="mixer must be one of"):
        ModelConfig(mixer="toy")
    with pytest.raises(ConfigError, match="ffn must be one of"):
        ModelConfig(ffn="identity")
    # setitem first, so monkeypatch removes the keys again after the test
    monkeypatch.setitem(MIXERS, "toy", None)
    monkeypatch.setitem(NAMED_CONFIGS, "toy", None)
    monkeypatch.setitem(FFNS, "identity", nn.Identity)
    register_mixer("toy")(type("Toy", (Mixer,), {}))
    assert ModelConfig(mixer="toy").mixer == "toy"
    assert ModelConfig.named("toy", d_model=64).d_model == 64
    assert ModelConfig(ffn="identity").ffn == "identity"
