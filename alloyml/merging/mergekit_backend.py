"""Run a merge config through mergekit itself (`backend: mergekit`), for Hugging Face checkpoints.

mergekit is imported here only (its import costs several seconds). Its output is checked against the
inputs afterwards, because mergekit can exit successfully having written nothing when it misreads an
architecture.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from alloyml.atomic import atomic_directory
from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import open_checkpoint
from alloyml.merging.config import MergeConfig
from alloyml.merging.engine import MergeResult, merge_inputs
from alloyml.merging.plan import plan_merge

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _expected_tensors(config: MergeConfig) -> set[str]:
    """The tensors mergekit must write: the reference model's, or with `slices` the ones alloyml's own
    plan of the merge names (which also checks the layer ranges against the models first)."""
    if config.slices is None:
        return set(open_checkpoint(config.reference_model()).infos)
    checkpoints = {name: open_checkpoint(name) for name in config.referenced_models()}
    try:
        return {task.name for task in plan_merge(config, checkpoints)}
    finally:
        for ckpt in checkpoints.values():
            ckpt.close()


def _register_alloyml_architecture(config: MergeConfig) -> None:
    """alloyml's own models (Hugging Face layout) need alloyml's mergekit definition, registered in-process."""
    import json

    from alloyml.models.saving import HF_MODEL_TYPE

    for name in config.referenced_models():
        if json.loads((Path(name) / "config.json").read_text()).get("model_type") == HF_MODEL_TYPE:
            from alloyml.models.mergekit_arch import register

            register()
            return


def run_mergekit(config: MergeConfig, out_dir: str | os.PathLike | None, overwrite: bool = False) -> MergeResult:
    """Merge with mergekit into `out_dir`; raises if mergekit's output lacks any tensor it should have."""
    if out_dir is None:
        raise InvalidInputError("backend 'mergekit' writes to disk; pass an output directory")
    reference = Path(config.reference_model())
    for name in config.referenced_models():
        if not (Path(name) / "config.json").exists():
            raise InvalidInputError(
                f"backend 'mergekit' needs Hugging Face model directories; {name} has no config.json"
            )
    expected = _expected_tensors(config)
    _register_alloyml_architecture(config)

    start = time.perf_counter()
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    timings = {"import_s": time.perf_counter() - start}
    alloyml_only = ("backend", "seed", "layer_pattern")
    mk_data = {k: v for k, v in yaml.safe_load(config.to_yaml()).items() if k not in alloyml_only}
    mk_config = MergeConfiguration.model_validate(mk_data)
    options = MergeOptions(
        copy_tokenizer=any((reference / f).exists() for f in _TOKENIZER_FILES),
        random_seed=config.seed,
        write_model_card=False,
        quiet=True,
    )
    start = time.perf_counter()
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        run_merge(mk_config, str(staging), options)
        written = open_checkpoint(staging).infos
        missing = sorted(set(expected) - set(written))
        if missing:
            raise InvalidInputError(
                f"mergekit wrote {len(written)} of {len(expected)} tensors; missing {missing[:5]} — "
                "it probably does not know this architecture (use backend: alloyml)"
            )
        (staging / "merge_config.yaml").write_text(config.to_yaml())
    timings["merge_s"] = time.perf_counter() - start
    timings["total_s"] = timings["import_s"] + timings["merge_s"]
    return MergeResult(
        method=config.merge_method,
        backend="mergekit",
        config=config.model_dump(mode="json"),
        inputs=merge_inputs(config),
        output_path=str(out_dir),
        state_dict=None,
        num_tensors=len(written),
        num_parameters=sum(info.numel for info in written.values()),
        timings=timings,
    )
