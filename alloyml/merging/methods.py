"""The merge methods: pure tensor functions, registered by name (see `registry.py`).

Every method takes `base` (a tensor, or None for methods that ignore the base) and `tensors` (one per
merged model, in config order, all the same shape as `base`) and returns the merged tensor. Math runs in
float32 (float64 when the inputs are float64). The engine hands methods freshly read tensors it owns, so
methods may overwrite `tensors` in place; that keeps peak memory near the inputs' own size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch

from alloyml.merging.registry import Parameter, merge_method

WEIGHT = Parameter("weight", "per_model", None, "scale of this model's contribution")
_WEIGHT = WEIGHT
_DENSITY = Parameter(
    "density", "per_model", 1.0, "fraction of this model's task vector that is kept", bounds=(0.0, 1.0)
)
_LAMBDA = Parameter("lambda", "shared", 1.0, "scale of the combined task vector")


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
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
    buffer = delta.abs().reshape(-1)
    scratch = buffer.numpy()
    # numpy's in-place introselect is ~2x faster than torch.kthvalue on CPU and needs no full sort or copy.
    scratch.partition(scratch.size - keep)
    threshold = float(scratch[scratch.size - keep])
    del scratch
    magnitude = torch.abs(delta.reshape(-1), out=buffer).reshape(delta.shape)  # the scratch buffer, reused
    mask = magnitude >= threshold
    excess = int(mask.sum()) - keep
    if excess > 0:
        tied = (magnitude.reshape(-1) == threshold).nonzero().squeeze(1)
        mask.reshape(-1)[tied[len(tied) - excess :]] = False
    return mask


def trim_magnitude_(delta: torch.Tensor, density: float, chunk: int = 1 << 20) -> torch.Tensor:
    """`delta * magnitude_mask(delta, density)`, in place and without full-size temporaries (float32).

    The threshold and its ties come from `magnitude_threshold` over the flattened tensor's blocks; the
    blockwise merge (`task_vector_merge_blocks`) calls the same two functions on row blocks read from disk,
    so both give the same bits. Memory: one block."""
    if delta.dtype != torch.float32 or not delta.is_contiguous() or not 0 < density < 1 or delta.numel() == 0:
        return delta.mul_(magnitude_mask(delta, density))
    flat = delta.reshape(-1)
    blocks = flat.split(chunk)
    threshold, tied_kept = magnitude_threshold(lambda: blocks, max(1, int(density * flat.numel())), flat.numel())
    for block in blocks:
        tied_kept = apply_threshold_(block, threshold, tied_kept)
    return delta


_SAMPLE = 1 << 16  # entries sampled to bracket the threshold; smaller tensors select among all entries


def magnitude_threshold(blocks: Callable[[], Iterable[torch.Tensor]], keep: int, numel: int) -> tuple[float, int]:
    """The `keep`-th largest |entry| over the `numel` float32 entries that `blocks()` yields (flat order, called
    twice), and how many entries equal to it are kept (the first ones in flat order, as `magnitude_mask`
    keeps them).

    The first pass takes a strided sample of the magnitudes; its order statistics around rank
    `keep / numel` bracket the threshold with a margin of several standard deviations. The second pass
    counts the entries above the bracket and gathers those inside it (a few percent of the tensor), and the
    threshold is selected exactly among them. Both are cheap vectorised compares, ~4x faster than a radix
    select; where the bracket misses (not seen in practice, but possible), the exact radix select runs.
    The threshold is the tensor's k-th largest magnitude whichever way it is found, so whole tensors and
    row blocks give the same bits. Memory: one block, the sample and the bracketed entries."""
    if numel <= _SAMPLE:  # small: select among all magnitudes directly (the sample would be the tensor)
        candidates = torch.cat([b.reshape(-1).abs() for b in blocks()] or [torch.zeros(0)])
        if candidates.numel() != numel or not 0 < keep <= numel:
            return _radix_threshold(blocks, keep)
        (threshold,) = _largest(candidates, [keep])
        return threshold, keep - int(torch.count_nonzero(candidates > threshold))
    stride = numel // _SAMPLE
    sample = torch.cat([b.reshape(-1)[::stride].abs() for b in blocks()] or [torch.zeros(0)])
    n = sample.numel()
    rank = keep * n / numel  # the threshold's expected rank (from the top) in the sample
    margin = 6 * (rank * (1 - rank / n)) ** 0.5 + 16  # binomial standard deviations, and a floor
    top, bottom = int(rank - margin), int(rank + margin)
    # The top-th and bottom-th largest sample entries bound the bracket (inf / 0 where the rank falls off).
    ranks = [r for r in (top, bottom) if 1 <= r <= n]
    found = dict(zip(ranks, _largest(sample, ranks), strict=True))
    high, low = found.get(top, float("inf")), found.get(bottom, 0.0)
    above, inside, scratch = 0, [], None
    for block in blocks():
        flat = block.reshape(-1)
        if scratch is None or scratch.numel() < flat.numel():
            scratch = torch.empty(flat.numel(), dtype=flat.dtype)  # reused: fresh buffers cost page faults
        magnitude = torch.abs(flat, out=scratch[: flat.numel()])
        over = magnitude > high
        above += int(torch.count_nonzero(over))  # counting by a bool tensor's sum is ~5x slower
        inside.append(magnitude[(magnitude >= low) & over.logical_not_()])  # not-over: one compare fewer
    candidates = torch.cat(inside)
    need = keep - above  # the threshold's rank among the bracketed entries
    if not 0 < need <= candidates.numel():
        return _radix_threshold(blocks, keep)
    (threshold,) = _largest(candidates, [need])
    return threshold, keep - above - int(torch.count_nonzero(candidates > threshold))


def _largest(values: torch.Tensor, ranks: list[int]) -> list[float]:
    """The `r`-th largest of `values` (1-based) for each r in `ranks`, reordering `values` in place: one
    numpy introselect for all ranks, ~2x faster than a `torch.kthvalue` per rank."""
    scratch = values.numpy()
    positions = [scratch.size - r for r in ranks]
    if positions:
        scratch.partition(positions)
    return [float(scratch[i]) for i in positions]


def _radix_threshold(blocks: Callable[[], Iterable[torch.Tensor]], keep: int) -> tuple[float, int]:
    """`magnitude_threshold` without a sample: exact, by a two-pass radix select on bit patterns
    (non-negative float32s order like their int32 bits): a histogram of the high 16 bits finds the
    threshold's bucket, one of the low 16 bits within it the threshold itself. Memory: one block and two
    histograms, whatever the tensor's size."""

    def bits(block):
        return block.abs().view(torch.int32)

    high = torch.zeros(1 << 15, dtype=torch.int64)
    for block in blocks():
        high += torch.bincount(bits(block).reshape(-1) >> 16, minlength=1 << 15)[: 1 << 15]
    from_top = high.flip(0).cumsum(0)
    i = int(torch.searchsorted(from_top, keep))  # first bucket (from the top) reaching `keep`
    bucket = (1 << 15) - 1 - i
    need = keep - (int(from_top[i]) - int(high[bucket]))  # rank of the threshold within its bucket
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for block in blocks():
        b = bits(block).reshape(-1)
        low += torch.bincount(b[(b >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    j = int(torch.searchsorted(low.flip(0).cumsum(0), need))
    threshold_bits = (bucket << 16) | ((1 << 16) - 1 - j)
    threshold = float(torch.tensor([threshold_bits], dtype=torch.int32).view(torch.float32))
    above = keep - need + int(low[(1 << 16) - 1 - j + 1 :].sum())  # entries strictly above the threshold
    return threshold, keep - above


def apply_threshold_(block: torch.Tensor, threshold: float, tied_kept: int) -> int:
    """Zero the entries of `block` below `threshold`, and those equal to it beyond the first `tied_kept`;
    returns how many tied entries later blocks may still keep."""
    flat = block.reshape(-1)
    magnitude = flat.abs()
    tied = magnitude == threshold  # common: task vectors of float32 weights take few distinct values
    n_tied = int(torch.count_nonzero(tied))
    if n_tied > tied_kept:  # drop this block's ties after its first `tied_kept`
        flat[tied.nonzero().squeeze(1)[tied_kept:]] = 0
        tied_kept = 0
    else:
        tied_kept -= n_tied
    # A float 0/1 mask, computed in place: masked_fill_ and multiplying by a bool tensor are ~5x slower.
    # Dropped entries become -0.0 where negative (+0.0 with masked_fill_); sums over them are the same.
    flat.mul_(magnitude.ge_(threshold))
    return tied_kept


def random_mask(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask keeping each entry independently with probability `density` (DARE's drop)."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    return torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density


def outlier_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs' mask: drop the `gamma` fraction of largest-magnitude entries (outliers), then the
    smallest, keeping `int(density * numel)` entries (fewer outliers dropped when both cannot be met)."""
    count = delta.numel()
    keep = int(density * count)
    drop_low = max(0, count - keep - int(gamma * count))
    order = torch.argsort(delta.abs().reshape(-1).float(), stable=True)
    mask = torch.zeros(count, dtype=torch.bool)
    mask[order[drop_low : drop_low + keep]] = True
    return mask.reshape(delta.shape)


def rank_mask(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """DELLA's MagPrune mask: within each row, entry of magnitude rank r (0 smallest) is kept with
    probability `density - epsilon + 2 * epsilon * r / (n - 1)`, so larger entries survive more often."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1).to(torch.float32)
    spread = ranks.max(dim=1, keepdim=True).values.clamp(min=1)
    probs = (density - epsilon) + (ranks / spread).clamp(0, 1) * 2 * epsilon
    return (torch.rand(probs.shape, generator=generator) < probs).reshape(delta.shape)


def _l1_rescale(masked: torch.Tensor, l1_before: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale the trimmed task vector back to the untrimmed one's L1 norm (mergekit's `rescale`)."""
    l1_after = masked.abs().sum()
    if l1_before < eps or l1_after < eps:
        return masked
    return masked.mul_(l1_before / l1_after)


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
    rescale: str | None = None,
    generator: torch.Generator | None = None,
    gamma: list[float] | None = None,
    epsilon: list[float] | None = None,
) -> torch.Tensor:
    """The generalized task-arithmetic merge that TA, TIES, DARE, Breadcrumbs and DELLA are instances of.

    Each model's task vector `delta_i = tensor_i - base` is trimmed (`trim`: None, "magnitude", "random",
    "outliers" or "rank") to its `density`, rescaled (`rescale`: None; "density", dividing survivors by the
    density; or "l1", restoring the untrimmed L1 norm as mergekit does) and scaled by its weight. A density
    of 0 keeps nothing, so that model's task vector is zero (never divided by 0). With `elect_sign`, the
    sign of the summed deltas is elected per entry and only deltas that agree are summed (TIES's disjoint
    merge). `normalize` divides by the summed weights of contributing deltas.
    Result: `base + lam * merged_delta`, same shape and dtype as `base`.
    """
    dtype = compute_dtype(base)
    base_c = base.to(dtype)
    deltas = []
    for i, (tensor, w, d) in enumerate(zip(tensors, weight, density, strict=True)):
        delta = tensor.to(dtype).sub_(base_c)
        if trim is not None and d < 1:
            l1_before = delta.abs().sum() if rescale == "l1" else None
            if d <= 0:
                delta.zero_()
            elif trim == "magnitude":
                trim_magnitude_(delta, d)
            elif trim == "random":
                delta.mul_(random_mask(delta, d, generator))
            elif trim == "outliers":
                delta.mul_(outlier_mask(delta, d, gamma[i]))
            elif trim == "rank":
                delta.mul_(rank_mask(delta, d, epsilon[i], generator))
            if rescale == "density" and d > 0:
                delta.div_(d)
            elif rescale == "l1":
                _l1_rescale(delta, l1_before)
        deltas.append(delta.mul_(w))
    if elect_sign:
        return _disjoint_merge(base_c, deltas, weight, lam, normalize).to(base.dtype)
    return _sum_deltas(base_c, deltas, weight, lam, normalize).to(base.dtype)


_CHUNK = 1 << 20  # entries per block of the disjoint merge: its temporaries stay ~10 MB for any tensor


def _disjoint_merge(base_c, deltas, weight, lam, normalize) -> torch.Tensor:
    """TIES's sign election and disjoint mean, block by block over the flattened tensors, written into the
    first delta's storage (so no full-size temporaries: elected signs, sums and divisors are per block).
    Same operations in the same order as whole-tensor code, so the same bits.

    The masks are float 0/1 tensors: on CPU, `torch.where` and arithmetic with bool tensors run ~5-10x
    slower than float arithmetic, and multiplying by an exact 1 or 0 changes no value that is kept."""
    flats = [d.reshape(-1) for d in deltas]
    flat_base = base_c.reshape(-1)
    for start in range(0, flat_base.numel(), _CHUNK):
        parts = [f[start : start + _CHUNK] for f in flats]
        summed = parts[0].clone()
        for part in parts[1:]:
            summed.add_(part)
        # The elected sign, that of the summed (weighted, trimmed) task vectors, as +-1: `copysign` makes a
        # summed -0.0 negative where `>= 0` counts it positive, but a -0.0 sum means every delta is zero,
        # and zeros (trimmed entries) agree with neither sign.
        elected = torch.copysign(torch.ones(()), summed)
        summed.zero_()
        divisor = torch.zeros_like(summed) if normalize else None
        for part, w in zip(parts, weight, strict=True):
            agrees = torch.mul(part, elected).gt_(0)  # 1 where the delta is non-zero with the elected sign
            if divisor is not None:
                divisor.add_(agrees, alpha=w)
            summed.add_(agrees.mul_(part))  # the mask's buffer, reused for the agreeing deltas
        if divisor is not None:
            divisor.add_(divisor.eq(0).to(divisor.dtype))  # no agreeing delta: divide by 1
            summed.div_(divisor)
        if lam != 1:
            summed.mul_(lam)
        torch.add(summed, flat_base[start : start + _CHUNK], out=parts[0])
    return deltas[0]


RowReader = Callable[[int, int], torch.Tensor]  # (start, stop) -> a fresh tensor of those rows


def row_ranges(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


def task_vector_merge_blocks(
    read_base: RowReader,
    reads: list[RowReader],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    block_rows: int,
    *,
    weight: list[float],
    density: list[float],
    lam: float,
    normalize: bool,
    trim: str | None,
    elect_sign: bool,
    rescale: str | None = None,
    **_unused,
) -> Iterator[torch.Tensor] | None:
    """`task_vector_merge` over row blocks read lazily, for tensors too large to hold n_models + 1 times:
    the merged rows, block after block (None where these parameters need the whole tensor at once).

    Magnitude trimming needs each task vector's whole-tensor threshold: a first pass over the blocks
    finds it (`magnitude_threshold`, exact), the merge pass then trims each block with it. Every other
    step is elementwise, so the blocks hold the same bits as the whole-tensor merge. Only float32 math,
    no trimming or magnitude trimming, and no L1 rescale (its norms would take one more pass) go blockwise.
    """
    if trim not in (None, "magnitude") or rescale is not None or dtype != torch.float32 or not shape:
        return None
    ranges = row_ranges(shape[0], block_rows)
    numel = 1
    for size in shape:
        numel *= size

    def delta_blocks(i):
        for start, stop in ranges:
            yield reads[i](start, stop).to(dtype).sub_(read_base(start, stop).to(dtype))

    cuts = []  # per model: None (keep all), "zero", or [threshold, ties still kept]
    for i, d in enumerate(density):
        if trim is None or d >= 1 or numel == 0:
            cuts.append(None)
        elif d <= 0:
            cuts.append("zero")
        else:
            cuts.append(list(magnitude_threshold(lambda i=i: delta_blocks(i), max(1, int(d * numel)), numel)))

    def merged_blocks():
        for start, stop in ranges:
            base = read_base(start, stop)
            base_c = base.to(dtype)
            deltas = []
            for read, cut, w in zip(reads, cuts, weight, strict=True):
                delta = read(start, stop).to(dtype).sub_(base_c)
                if cut == "zero":
                    delta.zero_()
                elif cut is not None:
                    cut[1] = apply_threshold_(delta, cut[0], cut[1])
                deltas.append(delta.mul_(w))
            if elect_sign:
                yield _disjoint_merge(base_c, deltas, weight, lam, normalize).to(base.dtype)
                continue
            yield _sum_deltas(base_c, deltas, weight, lam, normalize).to(base.dtype)

    return merged_blocks()


def _sum_deltas(base_c, deltas, weight, lam, normalize) -> torch.Tensor:
    """Task arithmetic's `base + lam * sum(deltas) [/ sum(weights)]`, in the first delta's storage."""
    merged = deltas[0]
    for delta in deltas[1:]:
        merged.add_(delta)
    divisor = sum(weight)
    divisor = 1.0 if abs(divisor) < 1e-8 else divisor
    if normalize:
        merged.div_(divisor)
    if lam != 1:
        merged.mul_(lam)
    return merged.add_(base_c)


def _weights_sum_nonzero(parameters: dict) -> str | None:
    if parameters.get("normalize", True) and abs(sum(parameters["weight"])) < 1e-8:
        return (
            f"`normalize` divides by the sum of the weights, which is 0 here (weights {parameters['weight']}); "
            "change the weights or set `normalize: false`"
        )
    return None


@merge_method(
    "linear",
    reference="https://arxiv.org/abs/2203.05482",
    parameters=(
        _WEIGHT,
        Parameter("normalize", "shared", True, "divide by the sum of weights", bool),
    ),
    uses_base=False,
    check=_weights_sum_nonzero,
)
def linear(base, tensors, *, weight, normalize=True):
    """Weighted average (model soup): `sum_i w_i x_i / sum_i w_i` (no division if not `normalize`)."""
    dtype = compute_dtype(tensors[0])
    out = torch.zeros_like(tensors[0], dtype=dtype)
    for tensor, w in zip(tensors, weight, strict=True):
        out.add_(tensor.to(dtype), alpha=w)
    if normalize:
        out.div_(sum(weight))
    return out.to(tensors[0].dtype)


def _normalize(default: bool, help: str) -> Parameter:
    return Parameter("normalize", "shared", default, help, bool)


def _rescale(default: bool, help: str) -> Parameter:
    return Parameter("rescale", "shared", default, help, bool)


_L1_RESCALE = "scale each trimmed task vector back to its untrimmed L1 norm (mergekit's rescale)"
_DARE_RESCALE = _rescale(True, "rescale the surviving entries (how: `rescale_mode`)")
_RESCALE_MODE = Parameter(
    "rescale_mode",
    "shared",
    "density",
    "alloyml only: `density` divides survivors by the density (DARE's paper; unbiased), `l1` restores the "
    "task vector's L1 norm per tensor (what mergekit does)",
    Literal["density", "l1"],
)
_INT8_MASK = Parameter(
    "int8_mask", "shared", False, "accepted for mergekit configs; alloyml's masks are always 1-byte booleans", bool
)
_GAMMA = Parameter(
    "gamma", "per_model", 0.01, "fraction of largest-magnitude entries dropped as outliers", bounds=(0.0, 1.0)
)
_EPSILON = Parameter(
    "epsilon", "per_model", 0.15, "keep probabilities run from density - epsilon to density + epsilon by rank",
    bounds=(0.0, 1.0),
)  # fmt: skip


def _della_range(parameters: dict) -> str | None:
    for density, epsilon in zip(parameters["density"], parameters["epsilon"], strict=True):
        if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            return f"density {density} +/- epsilon {epsilon} must lie inside (0, 1), since they are keep probabilities"
    return None


# TA, TIES, DARE, Breadcrumbs and DELLA are one merge (task_vector_merge) with different trimming, sign
# election and defaults (those of mergekit's registry).
_TIES_PARAMS = (_WEIGHT, _DENSITY, _LAMBDA, _INT8_MASK)
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
        parameters=(
            _WEIGHT, _DENSITY, _LAMBDA, _normalize(True, "divide by the summed weights of agreeing deltas"),
            _rescale(False, _L1_RESCALE), _INT8_MASK,
        ),
        trim="magnitude",
        elect_sign=True,
        doc="TIES: trim each task vector to its largest-magnitude `density`, elect signs, disjoint mean.",
    ),
    "dare_linear": dict(
        reference="https://arxiv.org/abs/2311.03099",
        parameters=(
            _WEIGHT, _DENSITY, _LAMBDA, _normalize(False, "divide by the summed weights"), _DARE_RESCALE, _RESCALE_MODE
        ),
        trim="random",
        elect_sign=False,
        doc="DARE: drop each task-vector entry with probability `1 - density`, rescale, then task arithmetic.",
    ),
    "dare_ties": dict(
        reference="https://arxiv.org/abs/2311.03099",
        parameters=(
            *_TIES_PARAMS, _normalize(False, "divide by the summed weights"), _DARE_RESCALE, _RESCALE_MODE
        ),
        trim="random",
        elect_sign=True,
        doc="DARE's random drop-and-rescale followed by TIES's sign election and disjoint merge.",
    ),
    "breadcrumbs": dict(
        reference="https://arxiv.org/abs/2312.06795",
        parameters=(
            _WEIGHT, _DENSITY, _GAMMA, _LAMBDA, _normalize(False, "divide by the summed weights"),
            _rescale(False, _L1_RESCALE),
        ),
        trim="outliers",
        elect_sign=False,
        doc="Model Breadcrumbs: drop each task vector's outliers and smallest entries, then task arithmetic.",
    ),
    "breadcrumbs_ties": dict(
        reference="https://arxiv.org/abs/2312.06795",
        parameters=(
            *_TIES_PARAMS, _GAMMA, _normalize(False, "divide by the summed weights of agreeing deltas"),
            _rescale(False, _L1_RESCALE),
        ),
        trim="outliers",
        elect_sign=True,
        doc="Breadcrumbs trimming followed by TIES's sign election and disjoint merge.",
    ),
    "della": dict(
        reference="https://arxiv.org/abs/2406.11617",
        parameters=(
            *_TIES_PARAMS, _EPSILON, _normalize(True, "divide by the summed weights of agreeing deltas"),
            _rescale(True, _L1_RESCALE),
        ),
        trim="rank",
        elect_sign=True,
        doc="DELLA: drop entries with magnitude-ranked probabilities (MagPrune), elect signs, disjoint mean.",
    ),
    "della_linear": dict(
        reference="https://arxiv.org/abs/2406.11617",
        parameters=(
            _WEIGHT, _DENSITY, _EPSILON, _LAMBDA, _normalize(False, "divide by the summed weights"),
            _rescale(True, _L1_RESCALE),
        ),
        trim="rank",
        elect_sign=False,
        doc="DELLA's MagPrune drop followed by task arithmetic.",
    ),
}  # fmt: skip


def _register_task_vector_method(name: str, reference, parameters, trim, elect_sign, doc) -> None:
    def options(count, weight, normalize, density, shared):
        """The keyword arguments the whole-tensor and the row-block paths share."""
        return dict(weight=weight, density=density or [1.0] * count, lam=shared.get("lambda", 1.0),
                    normalize=normalize, trim=trim, elect_sign=elect_sign)

    def method(
        base, tensors, *, weight, normalize, density=None, rescale=False, rescale_mode="l1", generator=None, **shared
    ):
        return task_vector_merge(
            base,
            tensors,
            **options(len(tensors), weight, normalize, density, shared),
            rescale=(rescale_mode if trim == "random" else "l1") if rescale else None,
            generator=generator,
            gamma=shared.get("gamma"),
            epsilon=shared.get("epsilon"),
        )

    def blocks(
        read_base, reads, shape, dtype, block_rows, *, weight, normalize, density=None, rescale=False, **shared
    ):
        return task_vector_merge_blocks(
            read_base,
            reads,
            shape,
            dtype,
            block_rows,
            **options(len(reads), weight, normalize, density, shared),
            rescale="l1" if rescale else None,
        )

    method.__name__, method.__doc__ = name, doc
    merge_method(
        name,
        blocks=blocks if trim in (None, "magnitude") else None,
        reference=reference,
        parameters=parameters,
        uses_base=True,
        stochastic=trim in ("random", "rank"),
        check=_della_range if trim == "rank" else None,
    )(method)


for _name, _spec in _TASK_VECTOR_METHODS.items():
    _register_task_vector_method(_name, **_spec)


def slerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8
) -> torch.Tensor:
    """Spherical interpolation between `v0` (t=0) and `v1` (t=1), treating each tensor as one vector.

    The angle comes from the normalised tensors; the coefficients apply to the originals. Nearly
    colinear pairs (|cos| > `dot_threshold`) fall back to linear interpolation.
    """
    dtype = compute_dtype(v0)
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
    parameters=(Parameter("t", "shared", None, "0 gives the base model, 1 the other model", bounds=(0.0, 1.0)),),
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


@merge_method(
    "sce",
    reference="https://arxiv.org/abs/2408.07990",
    parameters=(
        Parameter(
            "select_topk", "shared", 1.0, "fraction of entries kept, those whose task vectors vary most across models",
            bounds=(0.0, 1.0),
        ),
        _INT8_MASK,
    ),
    uses_base=True,
)  # fmt: skip
def sce(base, tensors, *, select_topk=1.0, int8_mask=False):
    """SCE: Select the entries where the task vectors vary most, Calculate each model's weight from its
    task vector's mean square, Erase the deltas whose sign disagrees with the elected one, then take the
    weighted mean of the rest."""
    dtype = compute_dtype(base)
    base_c = base.to(dtype)
    deltas = torch.stack([t.to(dtype).sub_(base_c) for t in tensors])
    if select_topk < 1:
        select = torch.zeros(base.shape, dtype=torch.bool)
        variance = deltas.var(dim=0, unbiased=False)
        keep = int(torch.count_nonzero(variance) * select_topk) if select_topk > 0 else 0
        if keep:
            select.view(-1)[variance.abs().reshape(-1).topk(keep).indices] = True
        deltas.mul_(select)
    positive = deltas.sum(dim=0) >= 0
    agrees = torch.where(positive, deltas > 0, deltas < 0)
    power = deltas.square().reshape(len(tensors), -1).mean(dim=1)
    total = float(power.sum())
    weights = torch.full_like(power, 1 / len(tensors)) if abs(total) < 1e-6 else power / total
    kept = agrees * weights.reshape(-1, *[1] * base.dim())
    merged = (deltas * kept).sum(dim=0) / kept.sum(dim=0).clamp(min=1e-6)
    return merged.add_(base_c).to(base.dtype)
