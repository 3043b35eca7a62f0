"""Merge two fine-tunes of one base from a YAML config, then search per-layer merge weights.

Builds three tiny Llama checkpoints (a base and two perturbed "fine-tunes") in a temp directory, runs
examples/merge_ties.yaml on them, and searches task-arithmetic weights with CMA-ES against a toy
metric. About a minute on 2 cores:  python examples/merge_yaml.py
"""

import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from alloyml.merging import merge
from alloyml.merging.search import search_merge

root = Path(tempfile.mkdtemp())
model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                     num_attention_heads=4, vocab_size=128))  # fmt: skip
base = {k: v.detach().clone() for k, v in model.state_dict().items()}
for i, name in enumerate(["base", "math", "code"]):
    noise = torch.Generator().manual_seed(i)
    model.load_state_dict({k: v + (0.01 * torch.randn(v.shape, generator=noise) if i else 0) for k, v in base.items()})
    model.save_pretrained(root / "checkpoints" / name)

# 1. The YAML config, pointed at our checkpoints: streams tensor by tensor into safetensors shards.
config = yaml.safe_load(Path(__file__).with_name("merge_ties.yaml").read_text())
config["base_model"] = str(root / "checkpoints/base")
for spec in config["models"]:
    spec["model"] = str(root / "checkpoints" / Path(spec["model"]).name)
result = merge(config, root / "merged")
print(f"{result.method}: {result.num_parameters:,} parameters -> {result.output_path} "
      f"in {result.timings['total_s']:.2f} s")  # fmt: skip

# 2. Search per-layer-group weights for task arithmetic. The metric is a stand-in (closeness to
#    base + 0.3 math + 0.7 code task vectors); in practice score the merged model on both tasks' data.
math, code = (load_file(root / "checkpoints" / name / "model.safetensors") for name in ("math", "code"))
target = {k: v + 0.3 * (math[k] - v) + 0.7 * (code[k] - v) for k, v in base.items()}


def metric(state):
    return -sum(float(((state[k] - t) ** 2).sum()) for k, t in target.items())


template = {"merge_method": "task_arithmetic", "base_model": config["base_model"], "models": config["models"]}
for spec in template["models"]:
    spec.pop("parameters", None)
found = search_merge(template, metric, layer_groups=2, n_trials=60, parallel=False, seed=0,
                     on_trial=lambda t: print(f"trial {t.trial_id:>2}: {t.metrics} {t.extra['values']}"))  # fmt: skip
print(f"best score {found.best_score:.4f} after {len(found.trials)} trials; best config:\n{found.best_yaml}")
