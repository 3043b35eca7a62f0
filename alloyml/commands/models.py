"""`alloyml models ...`: alloyml models in the Hugging Face layout.

`convert SRC DST` rewrites a folder saved by an alloyml before the Hugging Face bridge (config.json without
`model_type`) into the layout transformers and mergekit read; `mergekit-yaml CONFIG OUT [options]` runs
mergekit's own command line with alloyml's architecture registered.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="alloyml models in the Hugging Face layout")
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    convert = sub.add_parser("convert", help="rewrite an older alloyml checkpoint in the Hugging Face layout")
    convert.add_argument("src", help="folder written by alloyml.models.save_model")
    convert.add_argument("dst", help="output folder (config.json, model.safetensors, generation_config.json)")
    convert.set_defaults(func=_convert)
    mk = sub.add_parser("mergekit-yaml", help="mergekit-yaml, knowing alloyml models (same arguments)")
    mk.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG.yaml OUT_PATH [mergekit-yaml options]")
    mk.set_defaults(func=_mergekit_yaml)


def _convert(args) -> int:
    from pathlib import Path

    from alloyml.errors import NotFoundError
    from alloyml.models.hf_bridge import convert_checkpoint

    if not Path(args.src, "config.json").is_file():
        raise NotFoundError(f"{args.src} has no config.json; expected a folder written by alloyml save_model")
    out = convert_checkpoint(args.src, args.dst)
    print(f"converted {args.src} -> {out} (model_type alloyml-linear)")
    return 0


def _mergekit_yaml(args) -> int:
    from alloyml.models.mergekit_arch import main

    try:
        main(args.args)
    except SystemExit as done:  # click exits when it is finished
        return int(done.code or 0)
    return 0
