"""The model half of the demo: a small linear-architecture LM trained on two byte-level tasks, two
specialists fine-tuned from it, their merge, and a larger model — every one registered with lineage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alloyml.workflows.recording import model_folder, open_platform, register_model_dir, save_model_artifact
from alloyml.workflows.steps import step

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptTask:
    """Byte-level prompt → answer pairs ("7+8=" → "15", "abc|" → "cba"); the answer and its newline
    are scored, like `alloyml.models.data.Arithmetic`."""

    name: str

    def pair(self, generator: torch.Generator) -> tuple[str, str]:
        if self.name == "add":
            a, b = torch.randint(10, (2,), generator=generator).tolist()
            return f"{a}+{b}=", str(a + b)
        letters = "".join(chr(97 + i) for i in torch.randint(10, (3,), generator=generator).tolist())
        return f"{letters}|", letters[::-1]

    def examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        generator = torch.Generator().manual_seed(seed)
        return [self.pair(generator) for _ in range(n)]

    def sample(self, n: int, generator: torch.Generator):
        width = 8  # the longest text, "abc|cba\n"
        inputs = torch.full((n, width), ord(" "), dtype=torch.long)
        targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i in range(n):
            prompt, answer = self.pair(generator)
            text = torch.tensor(list((prompt + answer + "\n").encode()))
            inputs[i, : len(text)] = text
            targets[i, len(prompt) - 1 : len(text) - 1] = text[len(prompt):]
        return inputs, targets


DEMO_TASKS = ("add", "reverse")
MAX_ANSWER = 4  # tokens: three letters (or digits) and the newline


def _mixed_batches(task_names, batch_size: int, seed: int):
    tasks = [PromptTask(t) for t in task_names]

    def batch(step: int):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        parts = [t.sample(batch_size // len(tasks), generator) for t in tasks]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return batch


def task_accuracy(model, task: str, n: int, seed: int = 10_000) -> float:
    """Exact-match accuracy of greedy answers on `n` fresh prompts of `task`."""
    from alloyml.lm import RecurrentLM

    examples = PromptTask(task).examples(n, seed)
    generations = RecurrentLM(model).generate([p for p, _ in examples], max_tokens=MAX_ANSWER, stop=["\n"])
    return sum(g.text.strip() == answer for g, (_, answer) in zip(generations, examples, strict=True)) / n


def _scores(model, n: int) -> dict:
    return {task: task_accuracy(model, task, n) for task in DEMO_TASKS}


def _train(model, tasks, steps: int, lr: float, seed: int, checkpoint_dir=None):
    from alloyml.models.trainer import Trainer

    torch.manual_seed(seed)
    trainer = Trainer(steps=steps, lr=lr, warmup_steps=max(1, steps // 10), precision="fp32",
                      checkpoint_every=steps if checkpoint_dir else 0, checkpoint_dir=checkpoint_dir)
    trainer.fit(model, _mixed_batches(tasks, 32, seed))
    return [h.loss for h in trainer.history_]


@step(num_cpus=1)
def train_lm(store: dict, config: dict, size: str) -> dict:
    """Train a GLA language model of `size` ("small" or "large") on both tasks; register it."""
    from alloyml.models.config import ModelConfig
    from alloyml.models.model import LinearLM

    shape = config["lm_sizes"][size]
    torch.manual_seed(config["seed"])
    model = LinearLM(ModelConfig(vocab_size=256, mixer="gla", ffn="mlp", ffn_mult=2, **shape["config"]))
    losses = _train(model, DEMO_TASKS, shape["steps"], 3e-3, config["seed"])
    scores = _scores(model, config["eval_n"])
    with open_platform(store) as platform, platform.run("train", name=f"train {size} LM",
                                                        params={"size": size, **shape}) as run:
        run.log_metrics(loss_curve=losses[:: max(1, len(losses) // 100)], final_loss=losses[-1], **scores)
        key = save_model_artifact(platform, model, metadata={"tasks": list(DEMO_TASKS)})
        model_id = register_model_dir(platform, f"demo-{size}", platform.artifacts.get_directory(key),
                                      metrics=scores, artifact=key)
    return {"model": key, "model_id": model_id, "scores": scores}


@step(num_cpus=1)
def finetune(store: dict, base: dict, task: str, config: dict) -> dict:
    """Fine-tune the small base LM on one task: a specialist."""
    from alloyml.models.saving import load_model

    model = load_model(model_folder(store, base["model"])).train()
    losses = _train(model, (task,), config["finetune_steps"], 1e-3, config["seed"] + 1)
    scores = _scores(model, config["eval_n"])
    with open_platform(store) as platform, platform.run("train", name=f"fine-tune on {task}",
                                                        params={"task": task, "base": base["model_id"]}) as run:
        run.log_metrics(loss_curve=losses, final_loss=losses[-1], **scores)
        key = save_model_artifact(platform, model, metadata={"tasks": [task]})
        model_id = register_model_dir(platform, f"demo-{task}-specialist", platform.artifacts.get_directory(key),
                                      metrics=scores, parents=[(base["model_id"], "fine-tune")], artifact=key)
    return {"model": key, "model_id": model_id, "scores": scores}


@step(num_cpus=1)
def merge_specialists(store: dict, base: dict, first: dict, second: dict, config: dict) -> dict:
    """Merge the two specialists with each method; keep the best on the mean of both tasks."""
    from safetensors.torch import load_file

    from alloyml.merging import merge
    from alloyml.models.saving import load_model
    from alloyml.platform import entities as e

    sources = {name: load_file(str(model_folder(store, info["model"]) / "model.safetensors"))
               for name, info in (("base", base), ("first", first), ("second", second))}
    candidates = {}
    for method, parameters in config["merge_methods"].items():
        spec = {"merge_method": method, "models": [{"model": "first", "parameters": parameters},
                                                   {"model": "second", "parameters": parameters}]}
        if method in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
            spec["base_model"] = "base"  # these merge the specialists' deltas from the shared base
        elif method == "slerp":
            spec = {"merge_method": "slerp", "base_model": "first",
                    "models": [{"model": "first"}, {"model": "second"}], "parameters": {"t": 0.5}}
        result = merge(spec, sources=sources)
        model = load_model(model_folder(store, base["model"]))
        model.load_state_dict(result.state_dict)
        candidates[method] = (spec, model, _scores(model, config["eval_n"]))
    best = max(candidates, key=lambda m: sum(candidates[m][2].values()))
    spec, model, scores = candidates[best]
    all_scores = {m: s for m, (_, _, s) in candidates.items()}
    with open_platform(store) as platform, platform.run("merge", name=f"merge specialists ({best})",
                                                        params={"methods": list(candidates)}) as run:
        run.log_metrics(scores_by_method=all_scores, chosen=best)
        weight = spec["models"][0].get("parameters", {}).get("weight")
        key = save_model_artifact(platform, model, metadata={"merge_method": best})
        model_id = register_model_dir(platform, "demo-merged", platform.artifacts.get_directory(key), metrics=scores,
                                      parents=[(first["model_id"], "merge input", weight),
                                               (second["model_id"], "merge input", weight)], artifact=key)
        platform.store.record_merge(best, spec, [e.MergeInput(first["model_id"], weight),
                                                 e.MergeInput(second["model_id"], weight)], model_id, run.id)
    return {"model": key, "model_id": model_id, "scores": scores, "method": best,
            "scores_by_method": all_scores}
