"""Data-parallel training on Ray Train (`TorchTrainer`, CPU workers over gloo), for runs that outgrow one
process.

Every worker builds the same model (same seed), takes its slice `[rank::world]` of each batch(step) and
runs the ordinary `Trainer`; after each backward the gradients are averaged over workers, so all replicas
take identical steps. Equal slices with equally many scored targets (true for the synthetic tasks) make
the average equal the full batch's gradient. Rank 0 writes checkpoints and the final model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alloyml.errors import InvalidInputError


def average_gradients(model) -> None:
    """All-reduce every gradient to its mean over the workers (a parameter without a gradient, e.g. an
    expert that got no tokens on this worker, counts as zero)."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


@dataclass(frozen=True)
class DistributedResult:
    """model_dir: the trained model (save_model layout); losses: rank 0's loss per step."""

    model_dir: Path
    losses: list[float]


def _train_worker(config: dict) -> None:
    import ray.train
    import torch

    from alloyml.models.config import ModelConfig
    from alloyml.models.data import batches, make_task
    from alloyml.models.model import LinearLM
    from alloyml.models.saving import save_model
    from alloyml.models.trainer import Trainer

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])
    torch.set_num_threads(1)
    model = LinearLM(ModelConfig.from_dict(config["model"]))
    full = batches(make_task(config["task"], **config["task_kwargs"]), config["batch_size"], config["seed"])

    def shard(step):
        return tuple(t[rank::world] for t in full(step))

    trainer_kwargs = dict(config["trainer"])
    if rank != 0:
        trainer_kwargs.pop("checkpoint_every", None)
        trainer_kwargs.pop("checkpoint_dir", None)
    trainer = Trainer(**trainer_kwargs, grad_sync=average_gradients).fit(model, shard)
    checkpoint = None
    if rank == 0:
        checkpoint = ray.train.Checkpoint.from_directory(str(save_model(model, config["output_dir"])))
    # Ray Train keeps the metrics that come with a checkpoint: rank 0's, here.
    ray.train.report({"losses": [m.loss for m in trainer.history_]}, checkpoint=checkpoint)


def train_data_parallel(model_config, task: str, task_kwargs: dict, batch_size: int, output_dir,
                        num_workers: int = 2, seed: int = 0, **trainer_kwargs) -> DistributedResult:
    """Train a LinearLM of `model_config` on the task `task` (see data.TRAINING_TASKS) with `num_workers` CPU
    workers; `trainer_kwargs` go to `Trainer` (steps, lr, checkpoint_every, checkpoint_dir, ...).
    `batch_size` is the global batch, split evenly over the workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from alloyml.raycluster import ensure_ray

    if num_workers < 1 or batch_size % num_workers:
        raise InvalidInputError(
            f"batch_size ({batch_size}) must split evenly over num_workers ({num_workers}) >= 1"
        )
    if "callback" in trainer_kwargs or "grad_sync" in trainer_kwargs:
        raise InvalidInputError("callback and grad_sync cannot cross to Ray workers; read the returned losses")
    output_dir = Path(output_dir).resolve()
    if trainer_kwargs.get("checkpoint_dir") is not None:
        trainer_kwargs["checkpoint_dir"] = str(Path(trainer_kwargs["checkpoint_dir"]).resolve())
    ensure_ray()
    config = {"model": model_config.to_dict(), "task": task, "task_kwargs": task_kwargs,
              "batch_size": batch_size, "seed": seed, "trainer": trainer_kwargs, "output_dir": str(output_dir)}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="alloyml-train", storage_path=str(output_dir.parent / "ray-train")),
    )
    result = trainer.fit()
    return DistributedResult(output_dir, list(result.metrics["losses"]))
