"""The merge methods: pure tensor functions, registered by name (see `registry.py`).

Every method takes `base` (a tensor, or None for methods that ignore the base) and `tensors` (one per
merged model, in config order, all the same shape as `base`) and returns the merged tensor. Math runs in
float32 (float64 when the inputs are float64). The engine hands methods freshly read tensors it owns, so
methods may overwrite `tensors` in place; that keeps peak memory near the inputs' own size.
"""

from __future__ import annotations

import torch

from alloyml.merging.registry import Parameter, merge_method

_WEIGHT = Parameter("weight", "per_model", None, "scale of this model's contribution")
_DENSITY = Parameter("density", "per_model", 1.0, "fraction of this model's task vector that is kept")
_LAMBDA = Parameter("lambda", "shared", 1.0, "scale of the combined task vector")


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of exactly the `max(1, int(density * numel))` largest-magnitude entries of `delta`.

    Among entries tied at the threshold magnitude (common in large float32 tensors), the first ones in
    flat order are kept.
    """
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    keep = max(1, int(density * delta.numel()))
    scratch = delta.abs().reshape(-1).numpy()
    # numpy's in-place introselect is ~2x faster than torch.kthvalue on CPU and needs no full sort or copy.
    scratch.partition(scratch.size - keep)
    threshold = float(scratch[scratch.size - keep])
    del scratch
    magnitude = delta.abs()
    mask = magnitude >= threshold
    excess = int(mask.sum()) - keep
    if excess > 0:
        tied = (magnitude.reshape(-1) == threshold).nonzero().squeeze(1)
        mask.reshape(-1)[tied[len(tied) - excess :]] = False
    return mask


def random_mask(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask keeping each entry independently with probability `density` (DARE's drop)."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    return torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density


def task_vector_merge(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    *,
    weight: list[float],
    density: list[float],
    lam: float,
    normalize: bool,
    trim: str | None,
    elect_sign: bool,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The generalized task-arithmetic merge that TA, TIES and DARE are instances of.

    Each model's task vector `delta_i = tensor_i - base` is trimmed (`trim`: None, "magnitude" or
    "random"; random trimming divides survivors by the density when `rescale`) and scaled by its weight.
    With `elect_sign`, the sign of the summed deltas is elected per entry and only deltas that agree are
    summed (TIES's disjoint merge). `normalize` divides by the summed weights of contributing deltas.
    Result: `base + lam * merged_delta`, same shape and dtype as `base`.
    """
    dtype = _compute_dtype(base)
    base_c = base.to(dtype)
    deltas = []
    for tensor, w, d in zip(tensors, weight, density, strict=True):
        delta = tensor.to(dtype).sub_(base_c)
        if trim == "magnitude":
            delta.mul_(magnitude_mask(delta, d))
        elif trim == "random" and d < 1:
            delta.mul_(random_mask(delta, d, generator))
            if rescale:
                delta.div_(d)
        deltas.append(delta.mul_(w))
    merged = deltas[0].clone() if elect_sign else deltas[0]
    for delta in deltas[1:]:
        merged.add_(delta)
    if elect_sign:
        positive = merged >= 0  # the elected sign: that of the summed (weighted, trimmed) task vectors
        merged.zero_()
        divisor = torch.zeros_like(base_c)
        for delta, w in zip(deltas, weight, strict=True):
            agrees = torch.where(positive, delta > 0, delta < 0)  # zeros (trimmed entries) never agree
            merged.add_(delta.mul_(agrees))
            divisor.add_(agrees, alpha=w)
        divisor[divisor == 0] = 1
    else:
        divisor = sum(weight)
        divisor = 1.0 if abs(divisor) < 1e-8 else divisor
    if normalize:
        merged.div_(divisor)
    if lam != 1:
        merged.mul_(lam)
    return merged.add_(base_c).to(base.dtype)


@merge_method(
    "linear",
    reference="https://arxiv.org/abs/2203.05482",
    parameters=(
        _WEIGHT,
        Parameter("normalize", "shared", True, "divide by the sum of weights", bool),
    ),
    uses_base=False,
)
def linear(base, tensors, *, weight, normalize=True):
    """Weighted average (model soup): `sum_i w_i x_i / sum_i w_i` (no division if not `normalize`)."""
    dtype = _compute_dtype(tensors[0])
    out = torch.zeros_like(tensors[0], dtype=dtype)
    for tensor, w in zip(tensors, weight, strict=True):
        out.add_(tensor.to(dtype), alpha=w)
    if normalize:
        out.div_(sum(weight))
    return out.to(tensors[0].dtype)


def _normalize(default: bool, help: str) -> Parameter:
    return Parameter("normalize", "shared", default, help, bool)


_RESCALE = Parameter("rescale", "shared", True, "divide surviving entries by the density (DARE's rescale)", bool)

# TA, TIES and DARE are one merge (task_vector_merge) with different trimming and sign election.
_TASK_VECTOR_METHODS = {
    "task_arithmetic": dict(
        reference="https://arxiv.org/abs/2212.04089",
        parameters=(_WEIGHT, _LAMBDA, _normalize(False, "divide the summed task vectors by the summed weights")),
        trim=None,
        elect_sign=False,
        doc="`base + lambda * sum_i w_i (x_i - base)`.",
    ),
    "ties": dict(
        reference="https://arxiv.org/abs/2306.01708",
        parameters=(_WEIGHT, _DENSITY, _LAMBDA, _normalize(True, "divide by the summed weights of agreeing deltas")),
        trim="magnitude",
        elect_sign=True,
        doc="TIES: trim each task vector to its largest-magnitude `density`, elect signs, disjoint mean.",
    ),
    "dare_linear": dict(
        reference="https://arxiv.org/abs/2311.03099",
        parameters=(_WEIGHT, _DENSITY, _LAMBDA, _normalize(False, "divide by the summed weights"), _RESCALE),
        trim="random",
        elect_sign=False,
        doc="DARE: drop each task-vector entry with probability `1 - density`, rescale, then task arithmetic.",
    ),
    "dare_ties": dict(
        reference="https://arxiv.org/abs/2311.03099",
        parameters=(_WEIGHT, _DENSITY, _LAMBDA, _normalize(False, "divide by the summed weights"), _RESCALE),
        trim="random",
        elect_sign=True,
        doc="DARE's random drop-and-rescale followed by TIES's sign election and disjoint merge.",
    ),
}


def _register_task_vector_method(name: str, reference, parameters, trim, elect_sign, doc) -> None:
    def method(base, tensors, *, weight, normalize, density=None, rescale=False, generator=None, **shared):
        return task_vector_merge(
            base,
            tensors,
            weight=weight,
            density=density or [1.0] * len(tensors),
            lam=shared.get("lambda", 1.0),
            normalize=normalize,
            trim=trim,
            elect_sign=elect_sign,
            rescale=rescale,
            generator=generator,
        )

    method.__name__, method.__doc__ = name, doc
    merge_method(name, reference=reference, parameters=parameters, uses_base=True, stochastic=trim == "random")(method)


for _name, _spec in _TASK_VECTOR_METHODS.items():
    _register_task_vector_method(_name, **_spec)


def slerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8
) -> torch.Tensor:
    """Spherical interpolation between `v0` (t=0) and `v1` (t=1), treating each tensor as one vector.

    The angle comes from the normalised tensors; the coefficients apply to the originals. Nearly
    colinear pairs (|cos| > `dot_threshold`) fall back to linear interpolation.
    """
    dtype = _compute_dtype(v0)
    a = v0.reshape(-1).to(dtype)
    b = v1.reshape(-1).to(dtype)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = norm_a if norm_a > eps else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > eps else torch.ones_like(norm_b)
    dot = torch.dot(a / norm_a, b / norm_b).clamp(-1, 1)
    if dot.abs() > dot_threshold:
        coef_a, coef_b = 1 - t, t
    else:
        theta = torch.acos(dot)
        coef_a = torch.sin((1 - t) * theta) / torch.sin(theta)
        coef_b = torch.sin(t * theta) / torch.sin(theta)
    return (coef_a * a + coef_b * b).reshape(v0.shape).to(v0.dtype)


@merge_method(
    "slerp",
    reference="https://en.wikipedia.org/wiki/Slerp",
    parameters=(Parameter("t", "shared", None, "0 gives the base model, 1 the other model"),),
    uses_base=True,
    min_models=1,
    max_models=1,
)
def slerp(base, tensors, *, t):
    """SLERP between the base model and the one other model; `t` may follow a per-layer schedule."""
    return slerp_tensors(t, base, tensors[0])


@merge_method(
    "passthrough",
    reference="https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md#passthrough-passthrough",
    parameters=(Parameter("scale", "per_model", 1.0, "factor the copied tensor is multiplied by"),),
    uses_base=False,
    min_models=1,
    max_models=1,
)
def passthrough(base, tensors, *, scale):
    """The one input, unchanged (or times `scale`): with `slices`, this stacks layer ranges of different
    models into one (a "frankenmerge")."""
    return tensors[0] if scale[0] == 1 else tensors[0] * scale[0]
