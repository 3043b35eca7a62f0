"""Influence functions (Koh & Liang 2017) with inverse-Hessian-vector products.

    influence(z, z') = grad L(z')^T (H + damping I)^-1 grad L(z)

where H is the Hessian of the mean training loss w.r.t. the selected parameters. Reported with the sign
that makes positive mean helpful (up-weighting z lowers the loss on z'), the same convention as TracIn.
The inverse is never formed: `conjugate_gradient` solves (H + λI) x = g with exact Hessian-vector
products over the whole training set; `lissa` (Agarwal et al. 2017) uses a stochastic Neumann series over
mini-batches, cheaper per step for large training sets; solver="ekfac" (`ekfac.py`) uses the EK-FAC inverse
of the damped empirical Fisher of linear layers instead of the Hessian.

Training gradients are streamed: the inverse is applied to the test gradients once ([n_test, P]), then each
batch of `batch_size` training examples is featurised and multiplied against them, so memory holds one batch
of per-example gradients, never [n_train, P].
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.valuation.influence.gradients import GradientFeaturizer
from alloyml.valuation.influence.reduction import batch_total, detect_reduction, per_example_sum
from alloyml.valuation.influence.tracin import InfluenceScores, _pair


class _HessianVectorProduct:
    """v -> H v for the mean loss `loss_fn(model(x), y)` over a set of training examples.

    `reduction` is how `loss_fn` reduces a batch ("mean", "sum", "none", or None for neither: then the loss
    is called one example at a time); the product is always with the Hessian of the mean per-example loss.
    `over(x, y)` builds the gradient graph once (double backward) and returns a matvec that reuses it,
    so the many products of a conjugate-gradient solve cost one backward pass each."""

    def __init__(self, model, names: list[str], loss_fn, reduction: str | None, chunk_size: int = 4096):
        self.model, self.names, self.loss_fn, self.chunk_size = model, names, loss_fn, chunk_size
        self.reduction = reduction
        parameters = dict(model.named_parameters())
        self.params = [parameters[n] for n in names]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])

    def over(self, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        flat_grads = []
        for start in range(0, len(inputs), self.chunk_size):
            x, y = inputs[start:start + self.chunk_size], targets[start:start + self.chunk_size]
            loss = self._chunk_total(x, y) / len(inputs)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
            flat_grads.append(torch.cat([g.reshape(-1) for g in grads]))

        def matvec(vector: torch.Tensor) -> torch.Tensor:
            vector = vector.to(self.flat.dtype)
            total = torch.zeros_like(self.flat)
            for flat_grad in flat_grads:
                products = torch.autograd.grad(flat_grad @ vector, self.params, retain_graph=True)
                total += torch.cat([p.reshape(-1) for p in products])
            return total

        return matvec

    def _chunk_total(self, x, y) -> torch.Tensor:
        """The sum of the per-example losses of a chunk."""
        if self.reduction is None:
            return sum(per_example_sum(self.loss_fn(self.model(x[i:i + 1]), y[i:i + 1])) for i in range(len(x)))
        return batch_total(self.loss_fn(self.model(x), y), self.reduction, len(x))


def conjugate_gradient(matvec: Callable, rhs: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-10,
                       return_residual: bool = False):
    """Solve A x = rhs for symmetric positive definite A given only x -> A x.

    With `return_residual`, returns (x, ||rhs - A x|| / ||rhs||), the relative residual recomputed from x."""
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rs_old = residual @ residual
    for _ in range(max_iter):
        a_dir = matvec(direction)
        step = rs_old / (direction @ a_dir)
        x += step * direction
        residual -= step * a_dir
        rs_new = residual @ residual
        if rs_new.sqrt() <= tol * rhs.norm().clamp_min(1e-30):
            break
        direction = residual + (rs_new / rs_old) * direction
        rs_old = rs_new
    if not return_residual:
        return x
    relative = float((rhs - matvec(x)).norm() / rhs.norm().clamp_min(1e-30))
    return x, relative


def lissa(batch_matvec: Callable, rhs: torch.Tensor, n_train: int, *, depth: int = 1000, scale: float = 10.0,
          batch_size: int = 64, repeats: int = 1, seed: int = 0) -> torch.Tensor:
    """LiSSA estimate of A^-1 rhs: h <- rhs + h - (A_batch h) / scale, then h / scale, averaged over
    `repeats`. `batch_matvec(v, batch_indices)` gives the damped Hessian of a mini-batch times v; `scale`
    must exceed A's largest eigenvalue for the series to converge.

    Divergence check: while it converges, ||h_j|| <= (j + 1) ||rhs|| (each term's operator norm is <= 1);
    an estimate that is not finite or grows past 10 (j + 1) ||rhs|| raises ConfigError naming `scale`."""
    generator = np.random.default_rng(seed)
    estimates = []
    rhs_norm = float(rhs.norm())
    for _ in range(repeats):
        h = rhs.clone()
        for step in range(depth):
            batch = generator.choice(n_train, size=min(batch_size, n_train), replace=False)
            h = rhs + h - batch_matvec(h, batch) / scale
            norm = float(h.norm())
            if not np.isfinite(norm) or norm > 10 * (step + 2) * max(rhs_norm, 1e-30):
                raise ConfigError(f"LiSSA diverged at step {step + 1}: ||h|| = {norm:.3g} against ||rhs|| = "
                                  f"{rhs_norm:.3g}; lissa_scale={scale:g} must exceed the largest eigenvalue of "
                                  "the damped Hessian (raise it), or use solver='cg'")
        estimates.append(h / scale)
    return torch.stack(estimates).mean(dim=0)


def streamed_scores(featurizer: GradientFeaturizer, inputs: torch.Tensor, targets: torch.Tensor,
                    inverse_test: torch.Tensor, batch_size: int) -> np.ndarray:
    """[n_train, n_test] gradient(i) · inverse_test[t], featurising `batch_size` training examples at a time."""
    rows = [featurizer(inputs[start:start + batch_size], targets[start:start + batch_size]).to(inverse_test.dtype)
            @ inverse_test.T for start in range(0, len(inputs), batch_size)]
    return torch.cat(rows).double().numpy()


def influence_functions(model: torch.nn.Module, train, test, loss_fn: Callable, *,
                        layers: Sequence[str] | None = None, solver: str = "cg", damping: float = 1e-3,
                        max_iter: int = 100, tol: float = 1e-10, lissa_depth: int = 1000,
                        lissa_scale: float = 10.0, lissa_batch: int = 64, seed: int = 0,
                        aggregate_test: bool = False, batch_size: int = 256) -> InfluenceScores:
    """Influence of each training example on each test example (or on the mean test loss when
    `aggregate_test`: one inverse-HVP instead of one per test example).

    loss_fn: (outputs, targets) -> loss reduced by mean or sum, or per example (reduction="none"); the
             Hessian is always that of the mean per-example training loss, so the reduction does not matter.
    CG reports the largest relative residual ||g - A x|| / ||g|| over the solves in `params["cg_residual"]`
    and warns when it exceeds sqrt(tol) (not converged in max_iter); LiSSA raises when it diverges.
    solver: "cg" (exact HVPs, conjugate gradient), "lissa" (stochastic, mini-batch HVPs) or "ekfac"
            (EK-FAC inverse of the damped empirical Fisher, `nn.Linear` layers only; see `ekfac.py`).
    batch_size: training examples whose per-example gradients are held at once (streamed).
    Returns `InfluenceScores` [n_train, n_test] (n_test = 1 when aggregated)."""
    if solver not in ("cg", "lissa", "ekfac"):
        raise InvalidInputError(f"solver {solver!r} is not one of 'cg', 'lissa', 'ekfac'")
    if damping < 0:
        raise InvalidInputError(f"damping must be >= 0, got {damping}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if solver == "ekfac":
        from alloyml.valuation.influence.ekfac import ekfac_influence

        return ekfac_influence(model, train, test, loss_fn, layers=layers, damping=damping, batch_size=batch_size,
                               aggregate_test=aggregate_test)
    train_x, train_y = _pair(train, "train")
    test_x, test_y = _pair(test, "test")
    featurizer = GradientFeaturizer(model, loss_fn, layers=layers, batch_size=batch_size)
    hvp = _HessianVectorProduct(model, featurizer.names, loss_fn, detect_reduction(model, loss_fn, train_x, train_y))
    test_grads = featurizer(test_x, test_y).to(hvp.flat.dtype)
    if aggregate_test:
        test_grads = test_grads.mean(dim=0, keepdim=True)

    if solver == "cg":
        full = hvp.over(train_x, train_y)
        solves = [conjugate_gradient(lambda v: full(v) + damping * v, g, max_iter=max_iter, tol=tol,
                                     return_residual=True) for g in test_grads]
        solved = [x for x, _ in solves]
        diagnostics = {"cg_residual": max(r for _, r in solves)}
        if diagnostics["cg_residual"] > tol**0.5:
            warnings.warn(f"conjugate gradient did not converge in max_iter={max_iter}: relative residual "
                          f"{diagnostics['cg_residual']:.2e}; raise max_iter or damping", RuntimeWarning,
                          stacklevel=2)
    else:
        def batch_matvec(v, idx):
            return hvp.over(train_x[idx], train_y[idx])(v) + damping * v

        diagnostics = {}
        solved = [lissa(batch_matvec, g, len(train_x), depth=lissa_depth, scale=lissa_scale,
                        batch_size=lissa_batch, seed=seed) for g in test_grads]
    inverse_test = torch.stack(solved)  # [n_test, P]
    scores = streamed_scores(featurizer, train_x, train_y, inverse_test, batch_size)
    return InfluenceScores(scores, f"influence_{solver}",
                           {"layers": list(layers) if layers else None, "damping": damping, "solver": solver,
                            "aggregate_test": aggregate_test, **diagnostics})
