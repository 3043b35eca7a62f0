"""Merge speed and memory: `alloyml merge` vs `mergekit-yaml` on the same three checkpoints.

The script writes a ~134M-parameter fp32 Llama-shaped base (SmolLM-135M's shapes) and two "fine-tunes"
(the base plus seeded perturbations) to a temporary directory, runs task arithmetic and TIES through both
command lines, each in its own process under `/usr/bin/time` (wall seconds and peak RSS, imports
included), checks that the two outputs agree, and deletes everything afterwards.

    python benchmarks/merging.py            # full size, a few minutes (mergekit TIES is the slow part)
    python benchmarks/merging.py --quick    # ~20M parameters
"""

from __future__ import annotations

import argparse
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
    from transformers import LlamaConfig

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~20M-parameter checkpoints")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a temp dir in /tmp)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="alloyml-merge-bench-", dir=args.workdir))
    rows, extra = [], {}
    try:
        paths, n_params = write_checkpoints(root, QUICK if args.quick else FULL)
        size = f"{n_params / 1e6:.0f}M fp32 x3"
        extra["parameters"] = n_params
        targets = {"task_arithmetic": 10.0, "ties": 30.0}
        mergekit_reported = {"task_arithmetic": "~25 s / 2.2-2.7 GB", "ties": "~150 s / 2.8 GB"}
        for method in ("task_arithmetic", "ties"):
            config_path = root / f"{method}.yaml"
            config_path.write_text(yaml.safe_dump(merge_config(method, paths)))
            ours_dir, theirs_dir = root / f"out-alloyml-{method}", root / f"out-mergekit-{method}"
            ours = timed([str(BIN / "alloyml"), "merge", str(config_path), str(ours_dir)])
            try:
                theirs = timed(
                    [str(BIN / "mergekit-yaml"), str(config_path), str(theirs_dir), "--no-copy-tokenizer", "--quiet"]
                    + ["--no-write-model-card"]
                )
                diff = max_abs_diff(ours_dir, theirs_dir)
                note = f"max |alloyml - mergekit| = {diff:.2e}"
            except RuntimeError as err:
                theirs, note = (None, None, None), f"mergekit failed: {str(err)[-300:]}"
            note += f"; mergekit reported in the issue: {mergekit_reported[method]}"
            note += (
                f"; CPU s (user+sys) alloyml {ours[2]:.1f}, mergekit {theirs[2] or float('nan'):.1f}"
                "; one run each on a shared 2-core machine (other jobs running), imports included"
            )
            rows.append(
                row(
                    f"{method} {size}",
                    "seconds",
                    round(ours[0], 2),
                    {"mergekit": theirs[0]},
                    ratio(ours[0], theirs[0]),
                    f"<= {targets[method]:.0f} s; ratio vs mergekit",
                    ours[0] <= targets[method],
                    note,
                )
            )
            rows.append(
                row(
                    f"{method} {size}",
                    "peak RSS MB",
                    round(ours[1]),
                    {"mergekit": None if theirs[1] is None else round(theirs[1])},
                    ratio(ours[1], theirs[1]),
                    "<= 1024 MB; ratio vs mergekit",
                    ours[1] <= 1024,
                    "peak resident set of the whole process (/usr/bin/time %M)",
                )
            )
            extra.setdefault("cpu_seconds", {})[method] = {"alloyml": ours[2], "mergekit": theirs[2]}
            for out in (ours_dir, theirs_dir):
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results("merging", rows, **extra)


if __name__ == "__main__":
    main()
