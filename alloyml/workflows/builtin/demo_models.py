"""The model half of the demo: a small linear-architecture LM trained on two byte-level tasks, two
specialists fine-tuned from it, their merge, and a larger model — every one registered with lineage."""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import torch

from alloyml.workflows.recording import model_folder, open_platform, register_model_dir, save_model_artifact
from alloyml.workflows.steps import step

IGNORE_INDEX = -100


SPLITS = ("train", "validation", "held_out")


def prompt_split(prompt: str) -> str:
    """Which split a prompt belongs to, fixed by its text: 20% held out (the reported accuracies), 10%
    validation (what picks the merge), the rest for training. No prompt is in two splits, so a score on
    the held-out split is a score on prompts no model ever trained on (each task has 1,000 prompts)."""
    bucket = zlib.crc32(prompt.encode()) % 10
    return "held_out" if bucket < 2 else "validation" if bucket == 2 else "train"


@dataclass(frozen=True)
class PromptTask:
    """Byte-level prompt → answer pairs: "increment" adds one to each of three digits ("348>" → "459", 9
    wraps to 0) and "reverse" reverses three letters from a–j ("abc|" → "cba"), drawn from one split of
    the prompts (`prompt_split`); the answer and its newline are scored, like
    `alloyml.models.data.Arithmetic`. Both are rules applied symbol by symbol, 1,000 prompts each, so a
    model that learned the rule answers prompts it never saw: the held-out split measures that, not
    memory (single-digit sums, 100 facts, would only be memorised)."""

    name: str
    split: str = "train"

    def pair(self, generator: torch.Generator) -> tuple[str, str]:
        while True:  # rejection: a draw from the whole prompt space, kept when it lies in this split
            prompt, answer = self._draw(generator)
            if prompt_split(prompt) == self.split:
                return prompt, answer

    def _draw(self, generator: torch.Generator) -> tuple[str, str]:
        if self.name == "increment":
            digits = torch.randint(10, (3,), generator=generator).tolist()
            return "".join(map(str, digits)) + ">", "".join(str((d + 1) % 10) for d in digits)
        letters = "".join(chr(97 + i) for i in torch.randint(10, (3,), generator=generator).tolist())
        return f"{letters}|", letters[::-1]

    def examples(self, n: int | None, seed: int) -> list[tuple[str, str]]:
        """`n` random draws (with repeats) from this split, or, for n None, every prompt of the split once
        in a fixed order."""
        if n is None:
            return self.every_prompt()
        generator = torch.Generator().manual_seed(seed)
        return [self.pair(generator) for _ in range(n)]

    def every_prompt(self) -> list[tuple[str, str]]:
        """All prompts of this split (about 100 of the task's 1,000 for validation), each once."""
        symbols = "0123456789" if self.name == "increment" else "abcdefghij"
        out = []
        for a, b, c in itertools.product(symbols, repeat=3):
            if self.name == "increment":
                prompt, answer = f"{a}{b}{c}>", "".join(str((int(d) + 1) % 10) for d in (a, b, c))
            else:
                prompt, answer = f"{a}{b}{c}|", f"{c}{b}{a}"
            if prompt_split(prompt) == self.split:
                out.append((prompt, answer))
        return out

    def sample(self, n: int, generator: torch.Generator):
        width = 8  # every text is 8 bytes: "348>459\n", "abc|cba\n"
        inputs = torch.full((n, width), ord(" "), dtype=torch.long)
        targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i in range(n):
            prompt, answer = self.pair(generator)
            text = torch.tensor(list((prompt + answer + "\n").encode()))
            inputs[i, : len(text)] = text
            targets[i, len(prompt) - 1 : len(text) - 1] = text[len(prompt):]
        return inputs, targets


DEMO_TASKS = ("increment", "reverse")
MAX_ANSWER = 4  # tokens: three letters and the newline


def _mixed_batches(task_names, batch_size: int, seed: int):
    tasks = [PromptTask(t) for t in task_names]  # training prompts only

    def batch(step: int):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        parts = [t.sample(batch_size // len(tasks), generator) for t in tasks]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return batch


def task_accuracy(model, task: str, n: int | None, seed: int = 10_000, split: str = "held_out") -> float:
    """Exact-match accuracy of greedy answers on `n` prompts of `task` drawn from `split` (n None: every
    prompt of the split once)."""
    from alloyml.lm import RecurrentLM

    examples = PromptTask(task, split).examples(n, seed)
    generations = RecurrentLM(model).generate([p for p, _ in examples], max_tokens=MAX_ANSWER, stop=["\n"])
    return sum(g.text.strip() == answer for g, (_, answer) in zip(generations, examples, strict=True)) / len(examples)


def _scores(model, n: int, split: str = "held_out") -> dict:
    # The merge is chosen on the whole validation split (each prompt once): 50 random draws with repeats
    # from its ~100 prompts were noisy enough to pick a merge that kept 0.84 of a specialist on validation
    # and 0.62 / 0.82 on the held-out prompts.
    n = None if split == "validation" else n
    return {task: task_accuracy(model, task, n, split=split) for task in DEMO_TASKS}


def _train(model, tasks, steps: int, lr: float, seed: int, checkpoint_dir=None, weight_decay: float = 0.1):
    from alloyml.models.trainer import Trainer

    torch.manual_seed(seed)
    trainer = Trainer(steps=steps, lr=lr, warmup_steps=max(1, steps // 10), precision="fp32",
                      weight_decay=weight_decay, checkpoint_every=steps if checkpoint_dir else 0,
                      checkpoint_dir=checkpoint_dir)
    trainer.fit(model, _mixed_batches(tasks, 32, seed))
    return [h.loss for h in trainer.history_]


@step(num_cpus=1)
def train_lm(store: dict, config: dict, size: str) -> dict:
    """Train a language model of `size` ("small" or "large") on the training prompts of both tasks (the
    base the specialists start from knows both formats); register it with its held-out scores."""
    from alloyml.models.config import ModelConfig
    from alloyml.models.model import LinearLM

    shape = config["lm_sizes"][size]
    torch.manual_seed(config["seed"])
    model = LinearLM(ModelConfig(**{"vocab_size": 256, "mixer": "gla", "ffn": "mlp", "ffn_mult": 2,
                                    **shape["config"]}))
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
    """Fine-tune the small base LM on one task: a specialist. Short, at a low learning rate and without
    weight decay, so the specialist stays close to the base (a small task vector, as in the
    task-arithmetic and TIES papers) — which is what lets two specialists merge."""
    from alloyml.models.saving import load_model

    model = load_model(model_folder(store, base["model"])).train()
    losses = _train(model, (task,), config["finetune_steps"], config["finetune_lr"], config["seed"] + 1,
                    weight_decay=0.0)
    scores = _scores(model, config["eval_n"])
    validation = _scores(model, config["eval_n"], split="validation")
    with open_platform(store) as platform, platform.run("train", name=f"fine-tune on {task}",
                                                        params={"task": task, "base": base["model_id"],
                                                                "steps": config["finetune_steps"],
                                                                "lr": config["finetune_lr"]}) as run:
        run.log_metrics(loss_curve=losses, final_loss=losses[-1], **scores,
                        validation={t: v for t, v in validation.items()})
        key = save_model_artifact(platform, model, metadata={"tasks": [task]})
        model_id = register_model_dir(platform, f"demo-{task}-specialist", platform.artifacts.get_directory(key),
                                      metrics=scores, parents=[(base["model_id"], "fine-tune")], artifact=key)
    return {"model": key, "model_id": model_id, "scores": scores, "validation": validation, "task": task}


def merge_spec(method: str, setting: dict) -> dict:
    """The merge config of the two specialists ("first", "second") for one method and setting.

    Methods that combine task vectors (task arithmetic, TIES, DARE) take both specialists' deltas from the
    shared base: task arithmetic adds them scaled by `weight` (the λ of the task-arithmetic paper); TIES
    averages the sign-agreeing trimmed deltas and scales the result by `lambda` (a per-model `weight`
    cancels in its normalisation). Linear averages the weights with `t` on the second specialist; SLERP
    interpolates from the first to the second by `t`."""
    setting = dict(setting)
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": "first", "models": [{"model": "first"}, {"model": "second"}],
                "parameters": setting}
    if method == "linear":
        t = setting.pop("t", 0.5)
        return {"merge_method": "linear", "models": [{"model": "first", "parameters": {"weight": 1 - t}},
                                                     {"model": "second", "parameters": {"weight": t}}]}
    from alloyml.merging import get_method

    shared = {k: v for k, v in setting.items() if get_method(method).parameter(k).scope == "shared"}
    per_model = {k: v for k, v in setting.items() if k not in shared}
    return {"merge_method": method, "base_model": "base", "parameters": shared,
            "models": [{"model": m, "parameters": per_model} for m in ("first", "second")]}


def merge_settings(grid: dict) -> list[dict]:
    """Every setting of one method's grid: a list value is searched, a scalar is fixed."""

    names = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def worst_fraction(scores: dict, specialist: dict) -> float:
    """The merge's accuracy on each task as a fraction of that task's specialist, on the worse task: the
    number a merge must keep high to be worth having (the target is >= 0.8)."""
    return min(scores[t] / specialist[t] if specialist[t] > 0 else 0.0 for t in specialist)


@step(num_cpus=1)
def merge_specialists(store: dict, base: dict, first: dict, second: dict, config: dict) -> dict:
    """Merge the two specialists with each method, its merge weights searched on the validation prompts;
    choose the method whose worse task keeps the largest fraction of its specialist's validation accuracy;
    report every method's held-out accuracy (prompts neither training nor the choice saw)."""
    from safetensors.torch import load_file

    from alloyml.merging import merge
    from alloyml.models.saving import load_model
    from alloyml.platform import entities as e

    sources = {name: load_file(str(model_folder(store, info["model"]) / "model.safetensors"))
               for name, info in (("base", base), ("first", first), ("second", second))}
    own = {first["task"]: "first", second["task"]: "second"}
    specialist_validation = {t: (first if who == "first" else second)["validation"][t] for t, who in own.items()}
    specialist_held_out = {t: (first if who == "first" else second)["scores"][t] for t, who in own.items()}
    n = config["eval_n"]

    def merged_model(spec):
        model = load_model(model_folder(store, base["model"]))
        model.load_state_dict(merge(spec, sources=sources).state_dict)
        return model

    search, best_by_method = [], {}
    for method, grid in config["merge_methods"].items():
        for setting in merge_settings(grid):
            spec = merge_spec(method, setting)
            validation = _scores(merged_model(spec), n, split="validation")
            trial = {"method": method, "setting": setting, "validation": validation,
                     "worst_fraction": worst_fraction(validation, specialist_validation)}
            search.append(trial)
            kept = best_by_method.get(method)
            if kept is None or (trial["worst_fraction"], sum(validation.values())) > (
                    kept["worst_fraction"], sum(kept["validation"].values())):
                best_by_method[method] = trial
    methods = {}
    for method, trial in best_by_method.items():
        spec = merge_spec(method, trial["setting"])
        model = merged_model(spec)
        held_out = _scores(model, n)
        methods[method] = {"setting": trial["setting"], "validation": trial["validation"],
                           "validation_worst_fraction": trial["worst_fraction"], "held_out": held_out,
                           "held_out_fraction": {t: held_out[t] / specialist_held_out[t]
                                                 if specialist_held_out[t] > 0 else 0.0 for t in held_out},
                           "spec": spec}
    ranked = sorted(methods, key=lambda m: (methods[m]["validation_worst_fraction"],
                                            sum(methods[m]["validation"].values())), reverse=True)
    best = ranked[0]
    chosen = methods[best]
    runner_up = (f"; next best {ranked[1]} at {methods[ranked[1]]['validation_worst_fraction']:.2f}"
                 if len(ranked) > 1 else "")
    reason = (f"{best} {_describe(chosen['setting'])} keeps the largest fraction of each specialist's accuracy "
              f"on the validation prompts, on its worse task: {chosen['validation_worst_fraction']:.2f}{runner_up}")
    spec, scores = chosen["spec"], chosen["held_out"]
    model = merged_model(spec)
    table = {m: {k: v for k, v in info.items() if k != "spec"} for m, info in methods.items()}
    with open_platform(store) as platform, platform.run("merge", name=f"merge specialists ({best})",
                                                        params={"methods": config["merge_methods"],
                                                                "selection": "max over methods of the validation "
                                                                             "worst-task fraction of specialist"}
                                                        ) as run:
        run.log_metrics(methods=table, search=search, chosen=best, reason=reason,
                        scores_by_method={m: info["held_out"] for m, info in methods.items()},
                        specialists_held_out=specialist_held_out, base_held_out=base["scores"])
        weight = spec["models"][0].get("parameters", {}).get("weight")
        key = save_model_artifact(platform, model, metadata={"merge_method": best})
        model_id = register_model_dir(platform, "demo-merged", platform.artifacts.get_directory(key), metrics=scores,
                                      parents=[(first["model_id"], "merge input", weight),
                                               (second["model_id"], "merge input", weight)], artifact=key)
        platform.store.record_merge(best, spec, [e.MergeInput(first["model_id"], weight),
                                                 e.MergeInput(second["model_id"], weight)], model_id, run.id)
    return {"model": key, "model_id": model_id, "scores": scores, "method": best, "setting": chosen["setting"],
            "reason": reason, "methods": table, "trials": len(search), "specialists": specialist_held_out,
            "searched": {m: [k for k, v in grid.items() if isinstance(v, list)]
                         for m, grid in config["merge_methods"].items()},
            "base": base["scores"], "scores_by_method": {m: info["held_out"] for m, info in methods.items()}}


def _describe(setting: dict) -> str:
    return "(" + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items()) + ")"
