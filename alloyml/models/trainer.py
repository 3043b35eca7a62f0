"""Training: AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast where the device
allows, periodic checkpoints that record their learning rate, metrics through a callback, and resume.

A checkpoint is a directory `step-{step:06d}/` under `checkpoint_dir`: the model as `save_model` writes it
(model.safetensors + config.json with "step" and "lr"; a model with `save_checkpoint` / `load_checkpoint`
methods, like `hf_training.HFTrainable`, writes and reads its own), `optimizer.safetensors` (AdamW moments, per
parameter index) and `trainer.json` (step, lr, optimizer hyperparameters). No pickle anywhere.
"lr" is the learning rate of the update that produced the checkpoint's weights: TracIn weighs each
checkpoint's gradient products by it (`tracin_checkpoints`).

Batches come from `batch(step)` (see data.py), so resuming at step s replays the uninterrupted run.
A batch is (inputs, targets) of [B, T], or (inputs, targets, cu_seqlens) of documents packed into one
row, as `pack_documents` makes them: no padding, and no document sees another.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.models.saving import save_model

OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class StepMetrics:
    """One optimiser step. loss: cross-entropy + weighted aux loss; expert_load: per MoE layer, the
    fraction of tokens each expert served; dropped: per MoE layer, the fraction of choices over capacity."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    aux_loss: float
    seconds: float
    expert_load: list[list[float]] = field(default_factory=list)
    dropped: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    lr: float
    path: Path

    def state_dict(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "model.safetensors"))


def list_checkpoints(directory) -> list[CheckpointInfo]:
    """The checkpoints under `directory`, by step, each with the learning rate it was written at."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFoundError(f"checkpoint directory {directory} does not exist")
    found = []
    for path in directory.glob("step-*"):
        info_file = path / TRAINER_FILE
        if info_file.is_file():
            info = json.loads(info_file.read_text())
            found.append(CheckpointInfo(int(info["step"]), float(info["lr"]), path))
    return sorted(found, key=lambda c: c.step)


def tracin_checkpoints(directory) -> list[tuple[dict[str, torch.Tensor], float]]:
    """`(state_dict, lr)` for every checkpoint under `directory`, by step: the input TracIn sums over."""
    return [(c.state_dict(), c.lr) for c in list_checkpoints(directory)]


def pack_documents(documents) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token documents (1-D long tensors of any lengths >= 1) -> (inputs [1, T], targets [1, T],
    cu_seqlens [N + 1]) for next-token training on one packed row: each token's target is the next token
    of its own document, and a document's last token has none (IGNORE_INDEX), so nothing is learned
    across a boundary."""
    from alloyml.models.model import IGNORE_INDEX

    lengths = [int(d.numel()) for d in documents]
    if not documents or min(lengths) < 1 or any(d.dim() != 1 for d in documents):
        raise InvalidInputError(f"documents must be non-empty 1-D token tensors, got lengths {lengths}")
    ignore = documents[0].new_full((1,), IGNORE_INDEX)
    inputs = torch.cat(list(documents))[None]
    targets = torch.cat([torch.cat([d[1:], ignore]) for d in documents])[None]
    cu_seqlens = torch.tensor([0, *lengths], dtype=torch.long).cumsum(0)
    return inputs, targets, cu_seqlens


def before_train_step(model, step: int) -> None:
    """Tell every module that has a `before_train_step(step)` (the Performer's feature redraw) that update
    `step` (0-based) comes next; the Trainer calls this before each update, a loop of one's own may too."""
    for module in model.modules():
        hook = getattr(module, "before_train_step", None)
        if hook is not None:
            hook(step)


def lr_at(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning rate of update `step` (0-based): linear warmup over `warmup_steps`, then cosine from lr down
    to min_lr_ratio * lr at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """`Trainer(steps=..., lr=...).fit(model, batch)` trains `model` in place on `batch(step)`.

    precision: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32" or "bf16"; checkpoint_every: write a
    checkpoint every that many steps (and at the end) into checkpoint_dir (0: never); callback: called
    with each StepMetrics; grad_sync: called with the model after backward (data-parallel gradient
    averaging, see distributed.py). After `fit`: `history_` (StepMetrics list), `checkpoints_` (paths).
    """

    def __init__(self, steps: int = 200, lr: float = 3e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 grad_clip: float = 1.0, precision: str = "auto", checkpoint_every: int = 0,
                 checkpoint_dir=None, callback: Callable[[StepMetrics], None] | None = None,
                 grad_sync: Callable | None = None):
        self.steps = steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.betas = betas
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.grad_clip = grad_clip
        self.precision = precision
        self.checkpoint_every = checkpoint_every
        self.checkpoint_dir = checkpoint_dir
        self.callback = callback
        self.grad_sync = grad_sync

    def _validate(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidInputError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise InvalidInputError(
                f"need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0; got {self.lr}, {self.min_lr_ratio}, "
                f"{self.warmup_steps}"
            )
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise InvalidInputError("checkpoint_every > 0 needs a checkpoint_dir")

    def _optimizer(self, model):
        # Decay matrices only (nanoGPT's rule): norms, biases and per-head vectors stay undecayed.
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)

    def fit(self, model, batch: Callable[[int], tuple[torch.Tensor, ...]], resume_from=None):
        """Train for `steps` updates (from the checkpoint `resume_from` if given: a step directory, or a
        checkpoint_dir whose latest checkpoint is used). Returns self."""
        self._validate()
        device = next(model.parameters()).device
        bf16 = self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda")
        optimizer = self._optimizer(model)
        start = self._resume(model, optimizer, resume_from) if resume_from is not None else 0
        self.history_, self.checkpoints_ = [], []
        model.train()
        for step in range(start, self.steps):
            began = time.perf_counter()
            lr = lr_at(step, lr=self.lr, steps=self.steps, warmup_steps=self.warmup_steps,
                       min_lr_ratio=self.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets, *packed = (t.to(device) for t in batch(step))
            before_train_step(model, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(inputs, targets=targets, cu_seqlens=packed[0] if packed else None)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if self.grad_sync is not None:
                self.grad_sync(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            optimizer.step()
            stats = model.moe_stats()
            metrics = StepMetrics(step + 1, out.loss.item(), lr, grad_norm.item(), out.aux_loss.item(),
                                  time.perf_counter() - began, [s.load.tolist() for s in stats],
                                  [s.dropped for s in stats])
            self.history_.append(metrics)
            if self.callback is not None:
                self.callback(metrics)
            done = step + 1
            if self.checkpoint_every and (done % self.checkpoint_every == 0 or done == self.steps):
                self.checkpoints_.append(self._save(model, optimizer, done, lr))
        return self

    def _save(self, model, optimizer, step: int, lr: float) -> Path:
        from safetensors.torch import save_file

        path = Path(self.checkpoint_dir) / f"step-{step:06d}"
        if hasattr(model, "save_checkpoint"):  # a model with its own format (hf_training.HFTrainable)
            model.save_checkpoint(path, {"step": step, "lr": lr})
        else:
            save_model(model, path, metadata={"step": step, "lr": lr})
        state = optimizer.state_dict()
        tensors = {f"{index}.{key}": value.detach().cpu().contiguous()
                   for index, slots in state["state"].items() for key, value in slots.items()}
        save_file(tensors, str(path / OPTIMIZER_FILE))
        info = {"step": step, "lr": lr, "param_groups": state["param_groups"]}
        (path / TRAINER_FILE).write_text(json.dumps(info, indent=2) + "\n")  # written last: marks complete
        return path

    def _resume(self, model, optimizer, resume_from) -> int:
        from safetensors.torch import load_file

        path = Path(resume_from)
        if not (path / TRAINER_FILE).is_file():
            checkpoints = list_checkpoints(path)
            if not checkpoints:
                raise NotFoundError(f"no checkpoint in {path}")
            path = checkpoints[-1].path
        info = json.loads((path / TRAINER_FILE).read_text())
        device = next(model.parameters()).device
        if hasattr(model, "load_checkpoint"):
            model.load_checkpoint(path, device)
        else:
            model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
        slots: dict[int, dict] = {}
        for name, value in load_file(str(path / OPTIMIZER_FILE), device=str(device)).items():
            index, key = name.split(".", 1)
            # AdamW keeps its step counter on the CPU unless capturable/fused.
            slots.setdefault(int(index), {})[key] = value.cpu() if key == "step" else value
        optimizer.load_state_dict({"state": slots, "param_groups": info["param_groups"]})
        return int(info["step"])
