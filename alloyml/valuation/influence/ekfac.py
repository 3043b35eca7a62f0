"""EK-FAC influence (George et al. 2018; Grosse et al. 2023): the inverse curvature of each linear layer in
the eigenbasis of its Kronecker factors, with the eigenvalues refitted to the per-example gradients.

For a linear layer `y = W a + b` the per-example gradient is `∇W = δ aᵀ` (a with a constant 1 appended for the
bias, δ = ∂loss/∂y). The curvature used here is the empirical Fisher of the mean per-example training loss,
F = E[vec(∇W) vec(∇W)ᵀ], block-diagonal over layers. K-FAC approximates a block by A ⊗ G with
A = E[a aᵀ], G = E[δ δᵀ]; EK-FAC keeps the eigenvectors Q_A, Q_G of those factors and replaces the Kronecker
eigenvalues by the best diagonal in that basis,

    Λ[o, k] = E[((Q_Gᵀ δ)[o] (Q_Aᵀ a)[k])²]  = diag((Q_A ⊗ Q_G)ᵀ F (Q_A ⊗ Q_G)),

so (F + λI)⁻¹ v ≈ Q_G ((Q_Gᵀ V Q_A) / (Λ + λ)) Q_Aᵀ for a layer's gradient matrix V. The approximation is
exact when F is diagonal in the Kronecker eigenbasis — e.g. when a and δ are independent over the training
set, since then F = A ⊗ G — and it ignores curvature between layers. Only `nn.Linear` layers that see one
vector per example qualify (the factored path of `factored.py`).

Scores keep the influence-function convention of `ihvp.py`: ∇L_trainᵀ (F + λI)⁻¹ ∇L_test, positive =
helpful (Koh & Liang's −∇L_testᵀ H⁻¹ ∇L_train is the change of the test loss when the example is up-weighted,
the same quantity with the opposite sign). Training gradients are streamed in batches: memory is one batch's
factors plus the [n_test, P] preconditioned test gradients, never [n_train, P].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alloyml.errors import InvalidInputError
from alloyml.valuation.influence.factored import factorable_layers, linear_factors
from alloyml.valuation.influence.reduction import detect_reduction
from alloyml.valuation.influence.tracin import InfluenceScores, _pair
from alloyml.valuation.progress import counted_progress


@dataclass
class LayerEigenbasis:
    """One layer's EK-FAC curvature: eigenvectors q_a [k, k] of A, q_g [o, o] of G, and the refitted
    eigenvalues [o, k] (k = d_in, + 1 with a bias; o = d_out)."""

    name: str
    q_a: torch.Tensor
    q_g: torch.Tensor
    eigenvalues: torch.Tensor


class EKFAC:
    """Fits the per-layer EK-FAC curvature of `loss_fn(model(x), y)` over a training set and scores
    training examples against preconditioned test gradients.

    loss_fn: (outputs, targets) -> loss reduced by mean or sum or per example; each example's own gradient
             is used whatever the reduction.
    layers:  parameter-name prefixes selecting whole `nn.Linear` layers (None = all trainable parameters,
             which must then all belong to such layers).
    batch_size: examples per forward/backward pass (bounds memory).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, layers: Sequence[str] | None = None,
                 batch_size: int = 256):
        self.model, self.loss_fn, self.layers, self.batch_size = model, loss_fn, layers, int(batch_size)
        if self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.modules = factorable_layers(model, layers)
        if self.modules is None:
            raise InvalidInputError(f"EK-FAC needs the selected parameters (layers={layers!r}) to be whole "
                                    "nn.Linear layers; choose them with layers=[...]")
        self.reduction = None

    def _factors(self, inputs, targets) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(a [b, k], δ [b, o]) per layer] of one batch in float64."""
        factors = linear_factors(self.model, self.modules, self.loss_fn, inputs, targets, self.reduction)
        if factors is None:
            raise InvalidInputError("EK-FAC needs every selected linear layer to see one vector per example; "
                                    "a layer saw a sequence (use solver='cg' or 'lissa' for such models)")
        return [(a.double(), d.double()) for a, d in factors]

    def _batches(self, inputs, targets):
        for start in range(0, len(inputs), self.batch_size):
            yield self._factors(inputs[start:start + self.batch_size], targets[start:start + self.batch_size])

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, advance: Callable[[], None] = lambda: None) -> EKFAC:
        """Two passes over the training set: the Kronecker factors, then the eigenvalues in their basis."""
        reduction = detect_reduction(self.model, self.loss_fn, inputs, targets)
        if reduction is None:
            raise InvalidInputError("EK-FAC needs a loss reduced by mean or sum or per example "
                                    "(reduction='none'); this loss is neither")
        self.reduction = reduction
        n = len(inputs)
        covariances = None
        for factors in self._batches(inputs, targets):
            step = [(a.T @ a, d.T @ d) for a, d in factors]
            covariances = step if covariances is None else [(ca + a, cg + g) for (ca, cg), (a, g) in
                                                            zip(covariances, step, strict=True)]
            advance()
        bases = []
        for (name, _), (cov_a, cov_g) in zip(self.modules, covariances, strict=True):
            q_a = torch.linalg.eigh(cov_a / n).eigenvectors
            q_g = torch.linalg.eigh(cov_g / n).eigenvectors
            bases.append(LayerEigenbasis(name, q_a, q_g, torch.zeros(len(q_g), len(q_a), dtype=torch.float64)))
        self.bases_ = bases
        for factors in self._batches(inputs, targets):
            for basis, (a_rot, d_rot) in zip(bases, self._rotate(factors), strict=True):
                basis.eigenvalues += d_rot.pow(2).T @ a_rot.pow(2)  # Σ_i outer(δ̃_i², ã_i²)
            advance()
        for basis in bases:
            basis.eigenvalues /= n
        return self

    def _rotate(self, factors) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (Q_Aᵀ a [b, k], Q_Gᵀ δ [b, o]) for every example of a batch."""
        return [(a @ basis.q_a, d @ basis.q_g) for basis, (a, d) in zip(self.bases_, factors, strict=True)]

    def preconditioned(self, inputs, targets, damping: float, aggregate: bool = False) -> list[torch.Tensor]:
        """Per layer the test gradients in the eigenbasis divided by (Λ + damping): [n, o, k] (n = 1 when
        `aggregate`, the mean test gradient)."""
        out = None
        for factors in self._batches(inputs, targets):
            part = [(d_rot[:, :, None] * a_rot[:, None, :]) / (basis.eigenvalues + damping)
                    for basis, (a_rot, d_rot) in zip(self.bases_, self._rotate(factors), strict=True)]
            if aggregate:
                part = [p.sum(0, keepdim=True) for p in part]
                out = part if out is None else [o + p for o, p in zip(out, part, strict=True)]
            else:
                out = part if out is None else [torch.cat([o, p]) for o, p in zip(out, part, strict=True)]
        return [o / len(inputs) for o in out] if aggregate else out

    def scores(self, inputs, targets, preconditioned: list[torch.Tensor],
               advance: Callable[[], None] = lambda: None) -> torch.Tensor:
        """[n_train, n_test] ∇L_iᵀ (F + λI)⁻¹ ∇L_test, streaming the training examples in batches."""
        rows = []
        for factors in self._batches(inputs, targets):
            total = None
            for m, (a_rot, d_rot) in zip(preconditioned, self._rotate(factors), strict=True):
                term = torch.einsum("io,tok,ik->it", d_rot, m, a_rot)
                total = term if total is None else total + term
            rows.append(total)
            advance()
        return torch.cat(rows)


def ekfac_influence(model: torch.nn.Module, train, test, loss_fn: Callable, *, layers: Sequence[str] | None = None,
                    damping: float = 1e-3, batch_size: int = 256, aggregate_test: bool = False,
                    progress: bool = False) -> InfluenceScores:
    """Influence of each training example on each test example (or on the mean test loss when
    `aggregate_test`) with the EK-FAC inverse of the damped empirical Fisher; see the module docstring.
    Same inputs and result as `influence_functions` (which calls this for solver="ekfac")."""
    if not damping > 0:
        raise InvalidInputError(f"damping must be > 0 for EK-FAC (eigenvalues can be 0), got {damping}")
    train_x, train_y = _pair(train, "train")
    test_x, test_y = _pair(test, "test")
    curvature = EKFAC(model, loss_fn, layers=layers, batch_size=batch_size)
    steps = 3 * -(-len(train_x) // curvature.batch_size)
    with counted_progress(progress, "ekfac_influence", steps) as advance:
        curvature.fit(train_x, train_y, advance)
        preconditioned = curvature.preconditioned(test_x, test_y, damping, aggregate_test)
        scores = curvature.scores(train_x, train_y, preconditioned, advance)
    return InfluenceScores(scores.numpy(), "influence_ekfac",
                           {"layers": list(layers) if layers else None, "damping": damping, "solver": "ekfac",
                            "aggregate_test": aggregate_test, "curvature": "empirical Fisher, EK-FAC"})
