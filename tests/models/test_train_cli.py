"""`alloyml train CONFIG.yaml`: a config validated whole, training recorded in the store, and a resumed run
that ends exactly where an uninterrupted one does — for alloyml's own models and a tiny Hugging Face Llama
built here (full fine-tune and LoRA, the code path SmolLM2 fine-tuning takes)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alloyml.cli import main
from alloyml.commands.train import run_training
from alloyml.errors import ConfigError
from alloyml.models.train_config import load_train_config

TINY = {"vocab_size": 256, "d_model": 16, "n_layers": 1, "n_heads": 2, "mixer": "gla", "ffn": "mlp", "ffn_mult": 2}


def _write(tmp_path, name: str, config: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _text_data(tmp_path) -> str:
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 6)
    return "corpus.txt"


def _pairs(tmp_path, n: int = 24) -> str:
    rows = [{"input": f"{a}+{b}=", "target": str(a + b)} for a in range(5) for b in range(5)][:n]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "pairs.jsonl"


def _alloy_config(tmp_path, output: str, **overrides) -> dict:
    return {"model": {"kind": "alloyml", "config": TINY}, "data": {"files": _text_data(tmp_path), "seq_len": 32,
            "batch_size": 2}, "steps": 8, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 4, "output": output,
            **overrides}


class _Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    def on_step(m):
        if m.step == step:  # the checkpoint of step - 1 ... is on disk; this step's update is lost
            raise _Interrupt

    return on_step


@pytest.mark.parametrize("bad, field", [
    ({"stpes": 3}, "stpes: unknown key"),
    ({"steps": 0}, "steps:"),
    ({"model": {"kind": "alloyml", "config": {"mixer": "nope"}}}, "mixer must be one of"),
    ({"model": {"kind": "gpt"}}, "model"),
    ({"data": {"files": ["missing.jsonl"]}}, "no such file"),
    ({"data": {"files": ["corpus.txt"], "prompt_field": "input"}}, "prompt_field and completion_field"),
    ({"warmup_steps": 8}, "warmup_steps (8) must be less than steps (8)"),
])
def test_a_bad_config_fails_naming_the_field_with_exit_2(tmp_path, alloy_home, capsys, bad, field):
    config = {**_alloy_config(tmp_path, "out"), **bad}
    path = _write(tmp_path, "train.yaml", config)
    with pytest.raises(ConfigError, match="train config"):
        load_train_config(path)
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert not (alloy_home / "alloyml.db").exists()  # refused before any work


def test_training_is_recorded_and_a_resumed_run_ends_bit_identical(tmp_path, alloy_home):
    from alloyml.models.config import ModelConfig
    from alloyml.models.model import LinearLM
    from alloyml.models.text_data import example_batches, read_documents, tokenize_examples
    from alloyml.models.tokenizer import ByteTokenizer
    from alloyml.platform.client import Platform

    straight = load_train_config(_write(tmp_path, "a.yaml", _alloy_config(tmp_path, "straight")))
    full = run_training(straight)
    resumed_path = _write(tmp_path, "b.yaml", _alloy_config(tmp_path, "resumed"))
    with pytest.raises(_Interrupt):
        run_training(load_train_config(resumed_path), on_step=_interrupt_at(6))
    assert main(["train", resumed_path]) == 2  # checkpoints exist: refuses to start over silently
    assert main(["train", resumed_path, "--resume"]) == 0

    a = load_file(str(tmp_path / "straight/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The first recorded loss is the untrained model's loss on the first batch, computed here.
    torch.manual_seed(0)
    model = LinearLM(ModelConfig(**TINY))
    examples = tokenize_examples(read_documents([tmp_path / "corpus.txt"]), ByteTokenizer().encode, 32)
    inputs, targets, cu = example_batches(examples, 2, 0)(0)
    with torch.no_grad():
        first = model(inputs, targets=targets, cu_seqlens=cu).loss.item()
    assert full.losses[0] == pytest.approx(first, rel=1e-6)

    with Platform() as platform:
        runs = {r.params["output"]: r for r in sorted(platform.store.list_runs(kind="train"), key=lambda r: r.id)}
        done = runs[str(tmp_path / "resumed")]  # the latest run of that output: the resumed one
        interrupted = platform.store.get_run(done.params["resumed_from_run"])
        assert interrupted.status == "failed" and interrupted.params["output"] == done.params["output"]
        history = platform.store.metric_history(done.id, "loss")
        straight_history = platform.store.metric_history(runs[str(tmp_path / "straight")].id, "loss")
        assert done.status == "done" and done.params["resumed_at_step"] == 4
        assert history.steps.tolist() == list(range(1, 9)) == straight_history.steps.tolist()
        assert history.values.tolist() == straight_history.values.tolist() == full.losses
        assert done.params["config"]["steps"] == 8 and done.metrics["final_loss"] == full.losses[-1]
        [dataset] = platform.store.list_datasets()  # the same file content: one dataset row
        assert done.dataset_id == dataset.id and dataset.n_rows == 1
        output = next(m for m in platform.store.list_models() if m.artifact == str(tmp_path / "resumed"))
        assert output.n_params == model.num_params()


def test_fine_tuning_a_saved_alloyml_model_records_its_lineage(tmp_path, alloy_home):
    from alloyml.models.saving import load_model
    from alloyml.platform.client import Platform

    base = run_training(load_train_config(_write(tmp_path, "base.yaml", _alloy_config(tmp_path, "base",
                                                                                    checkpoint_every=0))))
    tuned = run_training(load_train_config(_write(tmp_path, "tune.yaml", {
        "model": {"kind": "alloyml", "path": "base"}, "data": {"files": _pairs(tmp_path), "prompt_field": "input",
        "completion_field": "target", "seq_len": 16, "batch_size": 4}, "steps": 4, "output": "tuned"})))
    assert load_model(tuned.output).config == load_model(base.output).config
    with Platform() as platform:
        edges = platform.store.lineage_edges(tuned.model_id)
        assert {(e.child_id, e.parent_id, e.role) for e in edges} >= {(tuned.model_id, base.model_id, "fine-tune")}


def _tiny_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from alloyml.models.hf_bridge import AlloyByteTokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=10, bos_token_id=None, tie_word_embeddings=True)
    folder = tmp_path / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    AlloyByteTokenizer(eos_token="<0x0A>").save_pretrained(folder)  # newline ends an answer
    return folder


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}])
def test_a_hugging_face_llama_fine_tunes_resumes_and_loads_back(tmp_path, alloy_home, lora):
    from alloyml.lm.hf import HFCausalLM
    from alloyml.platform.client import Platform

    base = _tiny_llama(tmp_path)

    def config(output):
        model = {"kind": "hf", "path": str(base), **({"lora": lora} if lora else {})}
        return {"model": model, "data": {"files": _pairs(tmp_path), "prompt_field": "input",
                "completion_field": "target", "seq_len": 16, "batch_size": 8},
                "steps": 12, "lr": 1e-2, "checkpoint_every": 6, "output": output}

    straight = run_training(load_train_config(_write(tmp_path, "a.yaml", config("straight"))))
    path = _write(tmp_path, "b.yaml", config("resumed"))
    with pytest.raises(_Interrupt):
        run_training(load_train_config(path), on_step=_interrupt_at(8))
    assert main(["train", path, "--resume"]) == 0
    a = load_file(str(tmp_path / "straight/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(straight.losses[-3:]) < sum(straight.losses[:3])

    if lora:  # peft's merged weights equal alloyml's own base+adapter reading of the adapter folder
        from alloyml.merging.checkpoints import open_checkpoint

        folded = open_checkpoint(f"{base}+{tmp_path / 'straight' / 'adapter'}")
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"):
            assert torch.allclose(folded.read(name), a[name], atol=1e-6)
        untouched = load_file(str(base / "model.safetensors"))
        k_proj = "model.layers.0.self_attn.k_proj.weight"
        assert torch.equal(a[k_proj], untouched[k_proj])

    lm = HFCausalLM.from_pretrained(tmp_path / "straight", chat=False)
    [generation] = lm.generate(["1+2="], max_tokens=4)
    assert generation.completion_tokens >= 1
    with Platform() as platform:
        tuned = platform.store.get_model(straight.model_id)
        [edge] = [e for e in platform.store.lineage_edges(tuned.id) if e.child_id == tuned.id]
        assert edge.role == "fine-tune" and platform.store.get_model(edge.parent_id).artifact == str(base)
        assert tuned.architecture.startswith("LlamaForCausalLM")
