"""How a loss function reduces its batch, found by trying it: "mean", "sum" or "none" (per-example).

Gradient-based values need each example's own loss. Called on one example, every reduction gives it; the
batched paths (factored linear layers, Hessian-vector products) call the loss on many examples and must
undo the reduction — TracIn used to assume the mean, so a sum-reduced loss (captum's convention) gave
scores scaled by the batch length and changing with `batch_size`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PROBE_EXAMPLES = 4


def per_example_sum(loss: torch.Tensor) -> torch.Tensor:
    """A loss called on one example (scalar, or a per-example vector of one) as a scalar."""
    return loss.sum() if loss.dim() else loss


def detect_reduction(model: torch.nn.Module, loss_fn: Callable, inputs: torch.Tensor,
                     targets: torch.Tensor) -> str | None:
    """"none", "sum" or "mean" from a few probe examples, or None when the batched loss is neither the sum
    nor the mean of the per-example losses (e.g. a token-weighted sequence mean): then only per-example
    calls are exact."""
    x, y = inputs[:PROBE_EXAMPLES], targets[:PROBE_EXAMPLES]
    with torch.no_grad():
        batched = loss_fn(model(x), y)
        if batched.dim() and batched.numel() == len(x):
            return "none"
        if batched.dim():
            return None
        each = torch.stack([per_example_sum(loss_fn(model(x[i:i + 1]), y[i:i + 1])) for i in range(len(x))])
    if len(x) == 1:
        return "mean"  # one example: sum and mean agree
    total, mean = each.sum(), each.mean()
    tolerance = 1e-5 * each.abs().sum().clamp_min(1e-30)
    if (batched - mean).abs() <= tolerance and (batched - total).abs() > tolerance:
        return "mean"
    if (batched - total).abs() <= tolerance:
        return "sum"
    return None


def batch_total(loss: torch.Tensor, reduction: str, batch: int) -> torch.Tensor:
    """The sum of the per-example losses of a batch from the loss as reduced."""
    if reduction == "none":
        return loss.sum()
    return loss * batch if reduction == "mean" else loss
