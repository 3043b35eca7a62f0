"""TracInCP (Pruthi et al. 2020): the influence of training example z on test example z' is

    TracIn(z, z') = sum over checkpoints c of  lr_c * < grad loss(w_c, z), grad loss(w_c, z') >,

the first-order estimate of how much the training steps on z lowered the loss on z'. Positive values mark
proponents (helpful), negative ones opponents. Self-influence, TracIn(z, z), is large for examples the
model finds hard to fit — mislabelled or unusual rows.

Train sets are streamed in chunks: per checkpoint the test gradients are computed once ([m, d]), then
each train chunk's gradients ([c, d]) are multiplied against them, so memory stays at chunk × d.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from alloyml.errors import InvalidInputError
from alloyml.valuation.influence.gradients import GradientFeaturizer
from alloyml.valuation.result import ValuationResult


@dataclass(frozen=True)
class Checkpoint:
    """Weights saved during training and the learning rate in force when they were saved."""

    state_dict: dict
    learning_rate: float


@dataclass
class InfluenceScores:
    """scores: [n_train, n_test] float64 — influence of each training example on each test example
    (positive = helpful: training on it lowers that test loss)."""

    scores: np.ndarray
    method: str
    params: dict = field(default_factory=dict)

    def to_valuation(self) -> ValuationResult:
        """One value per training example: its mean influence over the test set."""
        n_train, n_test = self.scores.shape
        spread = self.scores.std(axis=1, ddof=1) / np.sqrt(n_test) if n_test > 1 else np.zeros(n_train)
        return ValuationResult(values=self.scores.mean(axis=1), stderr=spread,
                               counts=np.full(n_train, n_test), method=self.method, params=self.params)


def _checkpoints(checkpoints) -> list[Checkpoint]:
    out = [c if isinstance(c, Checkpoint) else Checkpoint(*c) for c in checkpoints]
    if not out:
        raise InvalidInputError("checkpoints is empty; pass (state_dict, learning_rate) pairs or Checkpoint objects")
    for i, c in enumerate(out):
        if not np.isfinite(c.learning_rate) or c.learning_rate <= 0:
            raise InvalidInputError(f"checkpoint {i} has learning rate {c.learning_rate!r}; expected a positive number")
    return out


def _pair(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise InvalidInputError(f"{name} must be an (inputs, targets) pair of tensors")
    inputs, targets = (torch.as_tensor(d) for d in data)
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise InvalidInputError(f"{name}: inputs has {len(inputs)} rows and targets {len(targets)}; "
                                "expected the same, non-zero number")
    return inputs, targets


def _tracin_rows(featurizer: GradientFeaturizer, checkpoints: list[Checkpoint], train, test,
                 chunk_size: int) -> np.ndarray:
    train_x, train_y = train
    scores = torch.zeros(len(train_x), len(test[0]), dtype=torch.float64)
    for checkpoint in checkpoints:
        featurizer.load(checkpoint.state_dict)
        test_grads = featurizer(*test).double()
        for start in range(0, len(train_x), chunk_size):
            chunk = featurizer(train_x[start:start + chunk_size], train_y[start:start + chunk_size]).double()
            scores[start:start + chunk_size] += checkpoint.learning_rate * (chunk @ test_grads.T)
    return scores.numpy()


def tracin(model: torch.nn.Module, checkpoints: Sequence, train, test, loss_fn: Callable, *,
           layers: Sequence[str] | None = None, projection_dim: int | None = None, seed: int = 0,
           chunk_size: int = 1024, batch_size: int = 256, n_jobs: int = 1) -> InfluenceScores:
    """TracInCP influence of every training example on every test example.

    model:        a module of the checkpoints' architecture (its weights are overwritten).
    checkpoints:  `Checkpoint`s or (state_dict, learning_rate) pairs, e.g. from alloyml's trainer.
    train, test:  (inputs [n, ...], targets [n, ...]) tensors.
    loss_fn:      (outputs, targets) -> scalar, for a batch of one example.
    layers, projection_dim, seed, batch_size: see `GradientFeaturizer`.
    chunk_size:   training examples per block (memory: chunk_size × gradient dim).
    n_jobs:       > 1 splits the training set over that many Ray tasks.
    Returns `InfluenceScores` with scores [n_train, n_test].
    """
    checkpoints = _checkpoints(checkpoints)
    train, test = _pair(train, "train"), _pair(test, "test")
    params = {"layers": list(layers) if layers else None, "projection_dim": projection_dim, "seed": seed,
              "n_checkpoints": len(checkpoints)}

    def featurizer():
        return GradientFeaturizer(model, loss_fn, layers=layers, projection_dim=projection_dim, seed=seed,
                                  batch_size=batch_size)

    if n_jobs <= 1:
        return InfluenceScores(_tracin_rows(featurizer(), checkpoints, train, test, chunk_size), "tracin", params)
    import ray

    from alloyml.raycluster import ensure_ray

    ensure_ray()
    shared = ray.put((checkpoints, test))
    bounds = np.linspace(0, len(train[0]), n_jobs + 1).astype(int)

    @ray.remote
    def block(lo, hi, shared_refs):
        checkpoints_, test_ = shared_refs
        return _tracin_rows(featurizer(), checkpoints_, (train[0][lo:hi], train[1][lo:hi]), test_, chunk_size)

    parts = ray.get([block.remote(lo, hi, shared) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
                     if hi > lo])
    return InfluenceScores(np.concatenate(parts), "tracin", params)


def self_influence(model: torch.nn.Module, checkpoints: Sequence, train, loss_fn: Callable, *,
                   layers: Sequence[str] | None = None, projection_dim: int | None = None, seed: int = 0,
                   batch_size: int = 512) -> ValuationResult:
    """TracIn self-influence sum_c lr_c * ||grad loss(w_c, z)||^2 of each training example.

    Returned as a `ValuationResult` whose values are the *negated* self-influence, so that — as for every
    other method — the lowest-valued rows are the suspicious ones (likely mislabelled)."""
    checkpoints = _checkpoints(checkpoints)
    inputs, targets = _pair(train, "train")
    featurizer = GradientFeaturizer(model, loss_fn, layers=layers, projection_dim=projection_dim, seed=seed,
                                    batch_size=batch_size)
    total = torch.zeros(len(inputs), dtype=torch.float64)
    for checkpoint in checkpoints:
        featurizer.load(checkpoint.state_dict)
        for start in range(0, len(inputs), batch_size):
            grads = featurizer(inputs[start:start + batch_size], targets[start:start + batch_size]).double()
            total[start:start + batch_size] += checkpoint.learning_rate * grads.pow(2).sum(dim=1)
    n = len(inputs)
    return ValuationResult(values=-total.numpy(), stderr=np.zeros(n), counts=np.full(n, len(checkpoints)),
                           method="tracin_self_influence",
                           params={"layers": list(layers) if layers else None, "projection_dim": projection_dim,
                                   "seed": seed, "n_checkpoints": len(checkpoints)})
