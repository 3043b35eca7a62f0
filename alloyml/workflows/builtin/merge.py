"""Built-in `merge`: run a mergekit-style merge config and record it — the merge entity (method, full
config, inputs with weights), the output model, and lineage edges from every input.

Inputs: store, config (the YAML's content as a dict), out_dir. A model in the config is a checkpoint path
on the node that runs the step, or the artifact key of a stored model folder (`ArtifactStore.put_directory`),
fetched on that node — the form that runs on any node of a cluster. With `out_dir` set the merge is
written there (on that node); with `out_dir=None` it goes to the artifact store and `output_path` is the
key of its folder. Models are matched to registered models by their artifact (path or key); unregistered
ones are registered first. Result: {"merge_id", "model_id", "output_path", "method"}.
"""

from __future__ import annotations

import dataclasses

from alloyml.workflows.builtin import register_builtin
from alloyml.workflows.graph import Input, Workflow
from alloyml.workflows.recording import open_platform
from alloyml.workflows.steps import step


def _model_id(platform, path: str, architecture: str) -> int:
    for model in platform.store.list_models():
        if model.artifact == path:
            return model.id
    return platform.register_model(path.rstrip("/").rsplit("/", 1)[-1], architecture, artifact=path).id


def merge_metrics(result) -> dict:
    """The metrics a merge run records. `total_s` is the wall time; the other timings are parts of it."""
    return {"seconds": result.timings["total_s"], "tensors": result.num_tensors}


@step(num_cpus=1)
def merge_and_record(store: dict, config: dict, out_dir: str) -> dict:
    import tempfile
    from pathlib import Path

    from alloyml.merging import merge
    from alloyml.merging.config import load_merge_config
    from alloyml.platform import entities as e
    from alloyml.platform.artifacts import is_key

    with open_platform(store) as platform:
        sources = {name: str(platform.artifacts.get_directory(name))
                   for name in load_merge_config(config).referenced_models() if is_key(name)}
        if out_dir is None:
            with tempfile.TemporaryDirectory(prefix="alloyml-merge-") as scratch:
                result = merge(config, Path(scratch) / "merged", sources=sources)
                output_artifact = platform.artifacts.put_directory(result.output_path, kind="model")
            result = dataclasses.replace(result, output_path=output_artifact)
        else:
            result = merge(config, out_dir, sources=sources)
    with open_platform(store) as platform, platform.run("merge", name=f"merge ({result.method})",
                                                        params={"config": result.config}) as run:
        architecture = f"merged:{result.method}"
        inputs = [e.MergeInput(_model_id(platform, item.model, architecture), item.parameters.get("weight"))
                  for item in result.inputs if item.role == "merged"]
        output = platform.register_model(f"merged-{result.method}", architecture, artifact=result.output_path,
                                         n_params=result.num_parameters,
                                         parents=[(i.model_id, "merge input", i.weight) for i in inputs])
        record = platform.store.record_merge(result.method, result.config, inputs, output.id, run.id)
        run.log_metrics(**merge_metrics(result))
    return {"merge_id": record.id, "model_id": output.id, "output_path": result.output_path,
            "method": result.method}


@register_builtin("merge", "merge checkpoints from a mergekit-style config and record the merge and its lineage")
def build() -> Workflow:
    wf = Workflow("merge")
    wf.add(merge_and_record, store=Input("store"), config=Input("config"), out_dir=Input("out_dir"))
    return wf
