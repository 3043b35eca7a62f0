"""Per-example gradients of linear layers without materialising them.

For `y = W a + b` applied to one vector per example, the per-example gradient of the loss is the outer
product `δ aᵀ` (and `δ` for the bias), where `δ = ∂loss/∂y`. Hence for two examples i, j

    <grad_W(i), grad_W(j)> = (a_i · a_j) (δ_i · δ_j)        ||grad_W(i)||² = ||a_i||² ||δ_i||²

and a bias folds in by appending a constant 1 to `a`. One forward and one backward pass over a batch give
every a and δ; TracIn's train × test matrix becomes a sum over layers of elementwise products of two small
Gram matrices, at a cost of (d_in + d_out) instead of d_in × d_out per pair (the "ghost" trick used for
per-example gradient norms). Only layers that see one vector per example qualify; others use the vmap path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alloyml.valuation.influence.gradients import select_parameters
from alloyml.valuation.influence.reduction import batch_total


def factorable_layers(model: torch.nn.Module, layers: Sequence[str] | None) -> list[tuple[str, torch.nn.Linear]] | None:
    """The `nn.Linear` modules that own exactly the selected parameters (weight, and bias if any), or None
    when some selected parameter is not such a layer's — then the general path must be used."""
    selected = set(select_parameters(model, layers))
    found, covered = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        prefix = f"{name}." if name else ""  # the model itself may be the layer
        own = {f"{prefix}weight"} | ({f"{prefix}bias"} if module.bias is not None else set())
        if own <= selected:
            found.append((name, module))
            covered |= own
        elif own & selected:  # only part of a layer chosen: the factorisation would count the rest
            return None
    return found if covered == selected and found else None


def linear_factors(model: torch.nn.Module, modules: list[tuple[str, torch.nn.Linear]], loss_fn: Callable,
                   inputs: torch.Tensor, targets: torch.Tensor,
                   reduction: str = "mean") -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """[(A [n, d_in(+1)], Δ [n, d_out]) per layer] for one batch, or None when a layer saw more than one
    vector per example (e.g. a sequence), which the rank-one factorisation cannot express.

    `reduction` is how `loss_fn` reduces its batch (see `reduction.py`); the backward pass runs on the sum of
    the per-example losses, so each δ is the gradient of that example's own loss (examples do not interact
    in the forward pass) whatever the reduction and the batch length."""
    activations, handles = {}, []

    def keep_input(name):
        def hook(_module, args, output):
            activations[name] = args[0].detach()
            output.retain_grad()
            activations[name + "/out"] = output
        return hook

    for name, module in modules:
        handles.append(module.register_forward_hook(keep_input(name)))
    try:
        outputs = model(inputs)
        loss = batch_total(loss_fn(outputs, targets), reduction, len(inputs))
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    factors = []
    for name, module in modules:
        a, out = activations[name], activations[name + "/out"]
        if a.dim() != 2 or out.grad is None:
            return None
        if module.bias is not None:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
        factors.append((a, out.grad.detach()))
    return factors


def gram(left: list, right: list) -> torch.Tensor:
    """Σ_layers (A_l A_rᵀ) ⊙ (Δ_l Δ_rᵀ): the matrix of gradient inner products [n_left, n_right], computed in
    the model's dtype and returned as float64."""
    total = None
    for (a_l, d_l), (a_r, d_r) in zip(left, right, strict=True):
        term = (a_l @ a_r.T).mul_(d_l @ d_r.T)
        total = term if total is None else total.add_(term)
    return total.double()


def squared_norms(factors: list) -> torch.Tensor:
    """||grad(i)||² for each example of the batch: Σ_layers ||a_i||² ||δ_i||²."""
    return sum(a.pow(2).sum(1) * d.pow(2).sum(1) for a, d in factors).double()
