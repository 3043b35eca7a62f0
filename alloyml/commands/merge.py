"""`alloyml merge CONFIG.yaml OUT_DIR`: run a mergekit-style merge config (alloyml or mergekit backend)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge models from a mergekit-style YAML config",
        description="Merge models described by a mergekit-style YAML config into OUT_DIR (safetensors shards).",
    )
    parser.add_argument("config", nargs="?", help="YAML config: merge_method, base_model, models or slices, parameters")
    parser.add_argument("out_dir", nargs="?", help="output directory (written atomically)")
    parser.add_argument("--backend", choices=["alloyml", "mergekit"], help="override the config's backend")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--shard-size", type=float, default=2.0, help="largest output shard in GiB (default 2)")
    parser.add_argument("--methods", action="store_true", help="list the merge methods and exit")
    parser.add_argument("--extract-lora", nargs=3, metavar=("BASE", "FINETUNED", "OUT_DIR"),
                        help="write the rank --rank LoRA adapter (PEFT folder) that turns BASE into FINETUNED")
    parser.add_argument("--rank", type=int, default=16, help="rank of the extracted LoRA (default 16)")
    # Every output is closed and synced when `_run` returns: `alloyml merge` skips interpreter teardown.
    parser.set_defaults(func=_run, exit_without_teardown=True)


def _run(args: argparse.Namespace) -> int:
    import os

    # Back torch's large CPU buffers with transparent huge pages: a merge allocates and frees a few
    # tensor-sized buffers per tensor, and first-touch page faults otherwise cost ~3x the arithmetic.
    # torch and OpenMP read these once, so they must be set before torch is imported.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    # Merging is memory-bound, so extra threads gain little; spinning OpenMP workers, though, burn the
    # CPU that other processes on a shared machine need (measured: 4x wall time under load).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from alloyml.merging import get_method, known_methods, load_merge_config, merge

    if args.methods:
        for name in known_methods():
            method = get_method(name)
            params = ", ".join(p.name for p in method.parameters)
            print(f"{name:16s} {params:45s} {method.reference}")
        return 0
    if args.extract_lora:
        from alloyml.merging.lora_extract import extract_lora

        base, finetuned, out = args.extract_lora
        extracted = extract_lora(base, finetuned, out, rank=args.rank, overwrite=args.overwrite)
        worst = max(extracted.tail_norms.values(), default=0.0)
        print(f"LoRA rank {args.rank}: {len(extracted.modules)} weights, {len(extracted.copied)} tensors copied "
              f"whole -> {extracted.path} (largest Frobenius error {worst:.3g}); apply it as {base}+{out}")
        return 0
    if not (args.config and args.out_dir):
        from alloyml.errors import InvalidInputError

        raise InvalidInputError("usage: alloyml merge CONFIG.yaml OUT_DIR (or --methods)")
    config = load_merge_config(args.config)
    if args.backend:
        # Validated again: some keys are valid for one backend only (e.g. tokenizer_source for mergekit's).
        config = load_merge_config({**config.model_dump(mode="json", exclude_none=True), "backend": args.backend})
    result = merge(
        config, args.out_dir, overwrite=args.overwrite, max_shard_bytes=int(args.shard_size * 1024**3), progress=True
    )
    print(
        f"{result.method} ({result.backend}): {result.num_tensors} tensors, {result.num_parameters:,} parameters "
        f"-> {result.output_path} in {result.timings['total_s']:.1f} s"
    )
    return 0
