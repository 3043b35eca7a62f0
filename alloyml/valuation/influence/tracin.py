"""TracInCP (Pruthi et al. 2020): the influence of training example z on test example z' is

    TracIn(z, z') = sum over checkpoints c of  lr_c * < grad loss(w_c, z), grad loss(w_c, z') >,

the first-order estimate of how much the training steps on z lowered the loss on z'. Positive values mark
proponents (helpful), negative ones opponents. Self-influence, TracIn(z, z), is large for examples the
model finds hard to fit — mislabelled or unusual rows.

Gradients of plain linear layers are used in factored form (`factored.py`), everything else through
batched per-example gradients (`gradients.py`). Train sets are streamed in chunks: per checkpoint the
test gradients are computed once, then each train chunk's gradients are multiplied against them, so
memory stays at chunk × gradient size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from alloyml.errors import InvalidInputError
from alloyml.valuation.influence.factored import factorable_layers, gram, linear_factors, squared_norms
from alloyml.valuation.influence.gradients import GradientFeaturizer
from alloyml.valuation.influence.reduction import detect_reduction
from alloyml.valuation.progress import counted_progress
from alloyml.valuation.result import ValuationResult


@dataclass(frozen=True)
class TrainingCheckpoint:
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


def _checkpoints(checkpoints) -> list[TrainingCheckpoint]:
    out = [c if isinstance(c, TrainingCheckpoint) else TrainingCheckpoint(*c) for c in checkpoints]
    if not out:
        raise InvalidInputError("checkpoints is empty; pass (state_dict, learning_rate) pairs or "
                                "TrainingCheckpoint objects")
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
    for part, tensor in (("inputs", inputs), ("targets", targets)):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InvalidInputError(f"{name} {part} hold {int((~torch.isfinite(tensor)).sum())} non-finite values; "
                                    "gradient-based values need finite data")
    return inputs, targets


class _DenseGradients:
    """Flattened (optionally projected) per-example gradients from `GradientFeaturizer`."""

    def __init__(self, featurizer: GradientFeaturizer):
        self.featurizer = featurizer

    def load(self, state_dict):
        self.featurizer.load(state_dict)

    def features(self, inputs, targets):
        return self.featurizer(inputs, targets).double()

    @staticmethod
    def inner(left, right):
        return left @ right.T

    @staticmethod
    def squared_norms(features):
        return features.pow(2).sum(dim=1)


class _FactoredGradients:
    """Linear layers' per-example gradients kept as (activation, output-gradient) factors."""

    def __init__(self, model, modules, loss_fn, batch_size: int, reduction: str):
        self.model, self.modules, self.loss_fn, self.batch_size = model, modules, loss_fn, batch_size
        self.reduction = reduction

    def load(self, state_dict):
        self.model.load_state_dict(state_dict)

    def features(self, inputs, targets):
        batches = [linear_factors(self.model, self.modules, self.loss_fn, inputs[i:i + self.batch_size],
                                  targets[i:i + self.batch_size], self.reduction)
                   for i in range(0, len(inputs), self.batch_size)]
        return [(torch.cat([b[layer][0] for b in batches]), torch.cat([b[layer][1] for b in batches]))
                for layer in range(len(self.modules))]

    inner = staticmethod(gram)
    squared_norms = staticmethod(squared_norms)


def _gradients(model, loss_fn, layers, projection_dim, seed, batch_size, probe):
    """The factored path when every selected parameter belongs to a linear layer fed one vector per example,
    the loss's batch reduction is known (mean, sum or none) and no projection is asked for; the general
    vmap path, which calls the loss one example at a time, otherwise."""
    modules = None if projection_dim is not None else factorable_layers(model, layers)
    reduction = detect_reduction(model, loss_fn, *probe) if modules else None
    if reduction and linear_factors(model, modules, loss_fn, probe[0][:2], probe[1][:2], reduction) is not None:
        return _FactoredGradients(model, modules, loss_fn, batch_size, reduction)
    return _DenseGradients(GradientFeaturizer(model, loss_fn, layers=layers, projection_dim=projection_dim,
                                              seed=seed, batch_size=batch_size))


def _tracin_rows(gradients, checkpoints: list[TrainingCheckpoint], train, test, chunk_size: int,
                 advance=lambda k=1: None) -> np.ndarray:
    train_x, train_y = train
    scores = torch.zeros(len(train_x), len(test[0]), dtype=torch.float64)
    for checkpoint in checkpoints:
        gradients.load(checkpoint.state_dict)
        test_features = gradients.features(*test)
        for start in range(0, len(train_x), chunk_size):
            chunk = gradients.features(train_x[start:start + chunk_size], train_y[start:start + chunk_size])
            scores[start:start + chunk_size] += checkpoint.learning_rate * gradients.inner(chunk, test_features)
            advance()
    return scores.numpy()


def tracin(model: torch.nn.Module, checkpoints: Sequence, train, test, loss_fn: Callable, *,
           layers: Sequence[str] | None = None, projection_dim: int | None = None, seed: int = 0,
           chunk_size: int = 1024, batch_size: int = 256, n_jobs: int = 1,
           progress: bool = False) -> InfluenceScores:
    """TracInCP influence of every training example on every test example.

    model:        a module of the checkpoints' architecture (its weights are overwritten).
    checkpoints:  `TrainingCheckpoint`s or (state_dict, learning_rate) pairs, e.g. from alloyml's trainer.
    train, test:  (inputs [n, ...], targets [n, ...]) tensors.
    loss_fn:      (outputs, targets) -> loss reduced by mean or sum, or per example (reduction="none");
                  scores do not depend on which, nor on batch_size.
    layers, projection_dim, seed, batch_size: see `GradientFeaturizer`.
    chunk_size:   training examples per block (memory: chunk_size × gradient dim).
    n_jobs:       > 1 splits the training set over that many Ray tasks.
    progress:     a rich progress bar over checkpoints x train chunks (in-process runs).
    Returns `InfluenceScores` with scores [n_train, n_test].
    """
    checkpoints = _checkpoints(checkpoints)
    train, test = _pair(train, "train"), _pair(test, "test")
    params = {"layers": list(layers) if layers else None, "projection_dim": projection_dim, "seed": seed,
              "n_checkpoints": len(checkpoints)}

    def gradients():
        return _gradients(model, loss_fn, layers, projection_dim, seed, batch_size, test)

    if n_jobs <= 1:
        steps = len(checkpoints) * -(-len(train[0]) // chunk_size)
        with counted_progress(progress, "tracin", steps) as advance:
            rows = _tracin_rows(gradients(), checkpoints, train, test, chunk_size, advance)
        return InfluenceScores(rows, "tracin", params)
    import ray

    from alloyml.raycluster import ensure_ray

    ensure_ray()
    shared = ray.put((checkpoints, test))
    bounds = np.linspace(0, len(train[0]), n_jobs + 1).astype(int)

    @ray.remote
    def block(lo, hi, shared_refs):
        checkpoints_, test_ = shared_refs
        return _tracin_rows(gradients(), checkpoints_, (train[0][lo:hi], train[1][lo:hi]), test_, chunk_size)

    parts = ray.get([block.remote(lo, hi, shared) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
                     if hi > lo])
    return InfluenceScores(np.concatenate(parts), "tracin", params)


def self_influence(model: torch.nn.Module, checkpoints: Sequence, train, loss_fn: Callable, *,
                   layers: Sequence[str] | None = None, projection_dim: int | None = None, seed: int = 0,
                   batch_size: int = 512, progress: bool = False) -> ValuationResult:
    """TracIn self-influence sum_c lr_c * ||grad loss(w_c, z)||^2 of each training example.

    Returned as a `ValuationResult` whose values are the *negated* self-influence, so that — as for every
    other method — the lowest-valued rows are the suspicious ones (likely mislabelled)."""
    checkpoints = _checkpoints(checkpoints)
    inputs, targets = _pair(train, "train")
    gradients = _gradients(model, loss_fn, layers, projection_dim, seed, batch_size, (inputs, targets))
    total = torch.zeros(len(inputs), dtype=torch.float64)
    steps = len(checkpoints) * -(-len(inputs) // batch_size)
    with counted_progress(progress, "self_influence", steps) as advance:
        for checkpoint in checkpoints:
            gradients.load(checkpoint.state_dict)
            for start in range(0, len(inputs), batch_size):
                features = gradients.features(inputs[start:start + batch_size], targets[start:start + batch_size])
                total[start:start + batch_size] += checkpoint.learning_rate * gradients.squared_norms(features)
                advance()
    n = len(inputs)
    return ValuationResult(values=-total.numpy(), stderr=np.zeros(n), counts=np.full(n, len(checkpoints)),
                           method="tracin_self_influence",
                           params={"layers": list(layers) if layers else None, "projection_dim": projection_dim,
                                   "seed": seed, "n_checkpoints": len(checkpoints)})
