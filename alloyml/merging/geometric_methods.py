"""Merge methods that work on the geometry of the weights (angles, spheres, distances) rather than on
trimmed task vectors: NuSLERP, Multi-SLERP, the Karcher mean, Model Stock and NearSwap.

Each follows mergekit's definition (and its defaults), so the same YAML gives the same weights; math runs
in float32 (float64 for float64 inputs) and the result has the inputs' dtype.
"""

from __future__ import annotations

import torch

from alloyml.errors import InvalidInputError
from alloyml.merging.methods import WEIGHT as _WEIGHT
from alloyml.merging.methods import compute_dtype
from alloyml.merging.registry import Parameter, merge_method


def _compute(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(compute_dtype(tensor))


def _unit(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


def nuslerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, row_wise: bool, flatten: bool, eps: float = 1e-8
) -> torch.Tensor:
    """SLERP from `v0` (t=0) to `v1` (t=1), over the whole tensor (`flatten`), or else over each row
    (`row_wise`: along dim 0) or each last-dim vector; colinear pairs are interpolated linearly."""
    shape = v0.shape
    a, b = _compute(v0), _compute(v1)
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    cos = (_unit(a) * _unit(b)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    spherical = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * a + t * b, spherical)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape).to(v0.dtype)


@merge_method(
    "nuslerp",
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md#nuslerp-nuslerp",
    parameters=(
        _WEIGHT,
        Parameter("nuslerp_flatten", "shared", True, "treat each tensor as one vector", bool),
        Parameter("nuslerp_row_wise", "shared", False, "without flattening: interpolate rows, not columns", bool),
    ),
    uses_base=True,
    base_optional=True,
    min_models=2,
    max_models=2,
)
def nuslerp(base, tensors, *, weight, nuslerp_flatten=True, nuslerp_row_wise=False):
    """SLERP between two models at `t = w_2 / (w_1 + w_2)`; with a base model, between their task
    vectors, added back to the base."""
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    options = dict(row_wise=nuslerp_row_wise, flatten=nuslerp_flatten)
    if base is None:
        return nuslerp_tensors(t, tensors[0], tensors[1], **options)
    b = _compute(base)
    merged = nuslerp_tensors(t, _compute(tensors[0]) - b, _compute(tensors[1]) - b, **options)
    return (b + merged).to(base.dtype)


@merge_method(
    "multislerp",
    reference="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    parameters=(
        _WEIGHT,
        Parameter("normalize_weights", "shared", True, "divide the weights by their sum", bool),
        Parameter("eps", "shared", 1e-8, "guard against division by zero norms", bounds=(0.0, 1.0)),
    ),
    uses_base=True,
    base_optional=True,
    min_models=1,
)
def multislerp(base, tensors, *, weight, normalize_weights=True, eps=1e-8):
    """Weighted barycentre of several models on the hypersphere: the models (or, with a base, their task
    vectors) are projected onto the tangent space at their weighted mean direction, averaged there, mapped
    back with the exponential map and scaled to the weighted mean norm."""
    if len(tensors) == 1:
        return tensors[0]  # as mergekit: nothing to interpolate, the one model as it is
    dtype = tensors[0].dtype
    points = torch.stack([_compute(t).reshape(-1) for t in tensors])
    if base is not None:
        points -= _compute(base).reshape(-1)
    w = torch.tensor(weight, dtype=points.dtype)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(points, dim=-1, keepdim=True)
    units = points / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise InvalidInputError(
                "multislerp: the weighted mean direction of the models is zero (antipodal models whose weights "
                "cancel); change the weights"
            )
        result = points[0] * w[0] + points[1] * w[1]  # antipodal pair: linear interpolation, as mergekit
    else:
        mean = mean / mean_norm
        tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * w[:, None]).sum(0)
        length = torch.linalg.vector_norm(tangent) + eps
        result = (mean * torch.cos(length) + tangent * (torch.sin(length) / length)) * (norms.squeeze(-1) * w).sum()
    if base is not None:
        result = result + _compute(base).reshape(-1)
    return result.reshape(tensors[0].shape).to(dtype)


def karcher_mean(tensors: list[torch.Tensor], max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """The equally weighted Karcher (Riemannian) mean of the tensors' directions, found by `max_iter` steps
    of gradient descent on the unit sphere, scaled by the mean of their norms."""
    flat = [_compute(t).reshape(-1) for t in tensors]
    alpha = 1.0 / len(flat)
    norms = [torch.linalg.vector_norm(x) for x in flat]
    live = [(x / n) for x, n in zip(flat, norms, strict=True) if n > tol]
    if not live:
        return torch.zeros_like(tensors[0])
    share = 1.0 / len(live)  # the weights renormalised over the non-zero tensors
    mean = sum(share * u for u in live)
    mean_norm = torch.linalg.vector_norm(mean)
    mean = live[0].clone() if mean_norm < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for u in live:
            dot = torch.dot(mean, u).clamp(-1.0, 1.0)
            theta = torch.arccos(dot)
            if theta < tol:
                continue
            tangent += share * (theta / torch.sin(theta)) * (u - dot * mean)  # the log map of u at the mean
        step = torch.linalg.vector_norm(tangent)
        if step < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)  # the exponential map
        length = torch.linalg.vector_norm(mean)
        if length > tol:
            mean = mean / length
    scale = sum(alpha * n for n in norms)
    return (scale * mean).reshape(tensors[0].shape).to(tensors[0].dtype)


@merge_method(
    "karcher",
    reference="https://en.wikipedia.org/wiki/Fr%C3%A9chet_mean",
    parameters=(
        Parameter("max_iter", "shared", 10, "iterations of the Riemannian gradient descent", int, bounds=(1, 10_000)),
        Parameter("tol", "shared", 1e-5, "stop when the step is shorter than this", bounds=(0.0, 1.0)),
    ),
    uses_base=False,
    min_models=1,
)
def karcher(base, tensors, *, max_iter=10, tol=1e-5):
    """The Karcher mean of all listed models (weightless, like mergekit's)."""
    return tensors[0] if len(tensors) == 1 else karcher_mean(tensors, int(max_iter), tol)


@merge_method(
    "model_stock",
    reference="https://arxiv.org/abs/2403.19522",
    parameters=(Parameter("filter_wise", "shared", False, "one interpolation ratio per row, not per tensor", bool),),
    uses_base=True,
    min_models=2,
)
def model_stock(base, tensors, *, filter_wise=False):
    """Model Stock: move from the base towards the fine-tunes' average by `t = k cos / (1 + (k - 1) cos)`,
    where `cos` is the mean pairwise cosine between the k task vectors (per tensor, or per row)."""
    shape = base.shape
    b = _compute(base)
    points = [_compute(t) for t in tensors]
    if not filter_wise:
        b, points = b.reshape(-1), [p.reshape(-1) for p in points]
    elif b.dim() == 1:
        b, points = b[None], [p[None] for p in points]
    offsets = [p - b for p in points]
    cosines = []
    for i, x in enumerate(offsets):
        for y in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(y, dim=-1)
            cosines.append(((x * y).sum(-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(0).unsqueeze(-1)
    k = len(points)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite ratio: keep the base there, as mergekit does
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, 1, denominator))
    average = sum(points) / k
    return (t * average + (1 - t) * b).reshape(shape).to(base.dtype)


@merge_method(
    "nearswap",
    reference="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    parameters=(
        Parameter("t", "shared", None, "entries closer than t to the base move to the other model", bounds=(0, 1e30)),
    ),
    uses_base=True,
    min_models=1,
    max_models=1,
)
def nearswap(base, tensors, *, t):
    """Per entry, interpolate from the base to the other model by `clamp(t / |base - other|, 0, 1)`: entries
    where the two nearly agree take the other model's value, distant ones stay near the base."""
    a, b = _compute(base), _compute(tensors[0])
    w = (t / (a - b).abs().clamp(min=1e-6)).clamp(0, 1)
    return (w * b + (1 - w) * a).to(base.dtype)
