"""Run a merge config through mergekit itself (`backend: mergekit`), for Hugging Face checkpoints.

mergekit is imported here only (its import costs several seconds). Its output is checked against the
inputs afterwards, because mergekit can exit successfully having written nothing when it misreads an
architecture.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import open_checkpoint
from alloyml.merging.config import MergeConfig
from alloyml.merging.engine import MergeResult, merge_inputs
from alloyml.merging.writer import staged_directory

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def run_mergekit(config: MergeConfig, out_dir: str | os.PathLike | None, overwrite: bool = False) -> MergeResult:
    """Merge with mergekit into `out_dir`; raises if mergekit's output lacks any input tensor."""
    if out_dir is None:
        raise InvalidInputError("backend 'mergekit' writes to disk; pass an output directory")
    reference = Path(config.base_model or config.models[0].model)
    for name in {config.base_model, *(m.model for m in config.models)} - {None}:
        if not (Path(name) / "config.json").exists():
            raise InvalidInputError(
                f"backend 'mergekit' needs Hugging Face model directories; {name} has no config.json"
            )
    expected = open_checkpoint(reference).infos

    start = time.perf_counter()
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    timings = {"import_s": time.perf_counter() - start}
    mk_config = MergeConfiguration.model_validate(
        config.model_dump(mode="json", exclude={"backend", "seed"}, exclude_none=True)
    )
    options = MergeOptions(
        copy_tokenizer=any((reference / f).exists() for f in _TOKENIZER_FILES),
        random_seed=config.seed,
        write_model_card=False,
        quiet=True,
    )
    start = time.perf_counter()
    with staged_directory(out_dir, overwrite) as staging:
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
