"""Model quality at small scale, in one run:

1. MQAR accuracy per mixer at matched parameter count (each mixer's width is chosen so the model has about
   as many parameters as the softmax-attention baseline), against softmax attention.
2. MoE-Mamba against Mamba: steps MoE-Mamba needs to reach the loss Mamba ends with (byte-level language
   modelling of a local text: Python's standard-library sources). The MoE-Mamba paper reports ~2.2x fewer.
   Both have about the same active parameters per token: MoE-Mamba's 2 blocks of (Mamba + top-1 of 8 MLP
   experts of width 3 d_model) against vanilla Mamba's 4 Mamba layers, as in the paper.
3. The MoE layers' expert-load coefficient of variation and dropped-token fraction at capacity factor 1.25,
   over the last quarter of that run.

    python benchmarks/models_quality.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ratio, row, timer, write_results  # noqa: E402


def matched_width(mixer: str, target: int, vocab: int, layers: int, heads: int) -> tuple[int, int]:
    """The d_model (a multiple of 4 * heads) whose model's parameter count is closest to `target`."""
    from alloyml.models.config import ModelConfig
    from alloyml.models.model import LinearLM

    best = None
    for width in range(4 * heads, 257, 4 * heads):
        count = LinearLM(ModelConfig(mixer=mixer, vocab_size=vocab, d_model=width, n_layers=layers,
                                     n_heads=heads)).num_params()
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (width, count)
    return best


def mqar_accuracy(model, task, device, n: int = 512) -> float:
    import torch

    from alloyml.models.data import batches
    from alloyml.models.model import IGNORE_INDEX

    inputs, targets = (t.to(device) for t in batches(task, n, seed=12345)(0))
    with torch.no_grad():
        predicted = model.eval()(inputs).logits.argmax(-1)
    scored = targets != IGNORE_INDEX
    return (predicted[scored] == targets[scored]).float().mean().item()


def corpus(path: Path) -> Path:
    """Concatenated standard-library sources: a fixed, offline text."""
    import json

    names = ["json/decoder.py", "json/encoder.py", "argparse.py", "dataclasses.py", "textwrap.py", "csv.py"]
    root = Path(json.__file__).resolve().parent.parent
    path.write_text("\n".join((root / n).read_text() for n in names))
    return path


def smoothed(losses, window: int = 20):
    return [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
            for i in range(len(losses))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import tempfile

    import torch

    from alloyml.models.config import ModelConfig
    from alloyml.models.data import MQAR, TextFile, batches
    from alloyml.models.mixers import MIXERS
    from alloyml.models.model import LinearLM
    from alloyml.models.trainer import Trainer

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: threads cost more than they give
    rows = []

    # 1. MQAR per mixer at matched parameter count
    task = MQAR(n_pairs=8, n_keys=32, n_values=32) if args.quick else MQAR(n_pairs=16, n_keys=64, n_values=64)
    steps, layers, heads = (300, 2, 2) if args.quick else (1500, 2, 2)
    target = LinearLM(ModelConfig(mixer="softmax", vocab_size=task.vocab_size, d_model=64, n_layers=layers,
                                  n_heads=heads)).num_params()
    accuracy, counts = {}, {}
    for mixer in MIXERS:
        width, counts[mixer] = matched_width(mixer, target, task.vocab_size, layers, heads)
        torch.manual_seed(0)
        model = LinearLM(ModelConfig(mixer=mixer, vocab_size=task.vocab_size, d_model=width, n_layers=layers,
                                     n_heads=heads)).to(device)
        with timer() as took:
            Trainer(steps=steps, lr=3e-3, warmup_steps=steps // 10).fit(model, batches(task, 64, seed=0))
        accuracy[mixer] = mqar_accuracy(model, task, device)
        print(f"mqar {mixer}: d_model {width}, params {counts[mixer]}, acc {accuracy[mixer]:.3f}, {took():.0f}s",
              flush=True)
    chance = 1 / task.n_values
    for mixer in MIXERS:
        if mixer == "softmax":
            continue
        rows.append(row(
            f"MQAR accuracy {mixer} ({task.n_pairs} pairs, {steps} steps)", "accuracy", round(accuracy[mixer], 4),
            {"softmax": round(accuracy["softmax"], 4)}, ratio(accuracy[mixer], accuracy["softmax"], True),
            "matched params vs softmax", None,
            f"params {counts[mixer]} vs softmax {counts['softmax']}; chance {chance:.3f}; {layers} layers",
        ))

    # 2./3. MoE-Mamba vs Mamba on byte-level text
    steps, width, seq = (300, 64, 128) if args.quick else (1500, 128, 256)
    with tempfile.TemporaryDirectory() as tmp:
        text = TextFile(path=str(corpus(Path(tmp) / "corpus.txt")), seq_len=seq)
        data = batches(text, 16, seed=0)
        runs, active = {}, {}
        for name, cfg in {
            "mamba": ModelConfig.named("mamba-only", d_model=width, n_layers=4, n_heads=2),
            "moe-mamba": ModelConfig.named("moe-mamba", d_model=width, n_layers=2, n_heads=2, ffn_mult=3),
        }.items():
            torch.manual_seed(0)
            model = LinearLM(cfg).to(device)
            active[name] = (model.num_params(active=True), model.num_params())
            with timer() as took:
                runs[name] = Trainer(steps=steps, lr=3e-3, warmup_steps=steps // 10).fit(model, data).history_
            print(f"{name}: params active/total {active[name]}, final loss {runs[name][-1].loss:.3f}, {took():.0f}s",
                  flush=True)
    mamba_curve, moe_curve = smoothed([m.loss for m in runs["mamba"]]), smoothed([m.loss for m in runs["moe-mamba"]])
    goal = mamba_curve[-1]
    reached = next((i + 1 for i, loss in enumerate(moe_curve) if loss <= goal), None)
    speedup = round(steps / reached, 3) if reached else None
    rows.append(row(
        "MoE-Mamba vs Mamba: steps to Mamba's final loss", "steps", reached, {"mamba": steps}, speedup,
        ">= 2.2x fewer steps (MoE-Mamba paper)", speedup is not None and speedup >= 2.2,
        f"byte LM on stdlib sources, seq {seq}, batch 16, d_model {width}; loss (20-step mean) mamba "
        f"{goal:.3f}, moe-mamba {moe_curve[-1]:.3f}; params active/total {active}",
    ))
    tail = runs["moe-mamba"][-(steps // 4):]
    loads = torch.tensor([m.expert_load for m in tail])  # [steps, layers, experts]
    cv = (loads.std(-1, unbiased=False) / loads.mean(-1)).mean().item()
    dropped = sum(sum(m.dropped) / len(m.dropped) for m in tail) / len(tail)
    rows.append(row("MoE-Mamba expert-load CV, capacity factor 1.25", "coefficient of variation", round(cv, 4),
                    notes="mean over MoE layers and the last quarter of the steps; 0 = perfectly balanced"))
    rows.append(row("MoE-Mamba dropped-token fraction, capacity factor 1.25", "fraction", round(dropped, 4),
                    notes="top-1 choices over capacity (carried by the residual), same steps"))
    write_results("models_quality", rows, suffix=".gpu" if device.type == "cuda" else "", device=str(device),
                  chance_mqar=chance, math_log_chance=math.log(task.n_values))


if __name__ == "__main__":
    main()
