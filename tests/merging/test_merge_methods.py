"""Merge methods against closed forms and naive element-by-element references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.merging import get_method, known_methods
from alloyml.merging.parameters import evaluate_setting, layer_index, layer_positions


def _inputs(n_models=2, shape=(7, 9), seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base, [base + 0.3 * torch.randn(shape, generator=gen) for _ in range(n_models)]


def _call(name, base, tensors, **params):
    # Methods may work in place on their inputs; pass copies so the test keeps the originals.
    return get_method(name)(None if base is None else base.clone(), [t.clone() for t in tensors], **params)


def naive_ties(base, tensors, weights, densities, lam=1.0, normalize=True):
    """TIES written out entry by entry in float64 numpy: trim, elect, disjoint (weighted) mean."""
    b = base.double().numpy().ravel()
    deltas = []
    for t, w, d in zip(tensors, weights, densities, strict=True):
        delta = t.double().numpy().ravel() - b
        k = max(1, int(d * delta.size))
        keep = set(np.argsort(-np.abs(delta), kind="stable")[:k].tolist())
        deltas.append([w * delta[i] if i in keep else 0.0 for i in range(delta.size)])
    out = np.empty_like(b)
    for i in range(b.size):
        column = [dl[i] for dl in deltas]
        sign = 1.0 if sum(column) >= 0 else -1.0
        agree = [(v, w) for v, w in zip(column, weights, strict=True) if np.sign(v) == sign]
        total = sum(v for v, _ in agree)
        divisor = sum(w for _, w in agree) or 1.0
        out[i] = b[i] + lam * (total / divisor if normalize else total)
    return torch.from_numpy(out.reshape(base.shape))


def test_linear_is_weighted_average():
    _, tensors = _inputs(3)
    w = [0.2, 0.5, 1.3]
    got = _call("linear", None, tensors, weight=w, normalize=True)
    expected = sum(wi * t.double() for wi, t in zip(w, tensors, strict=True)) / sum(w)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    unnormalised = _call("linear", None, tensors, weight=w, normalize=False)
    torch.testing.assert_close(unnormalised.double(), expected * sum(w), rtol=1e-6, atol=1e-6)


def test_task_arithmetic_closed_form():
    base, tensors = _inputs(2)
    got = _call("task_arithmetic", base, tensors, weight=[0.7, -0.4], **{"lambda": 1.5})
    expected = base.double() + 1.5 * (0.7 * (tensors[0] - base).double() - 0.4 * (tensors[1] - base).double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("densities", [(1.0, 1.0), (0.5, 0.3), (0.1, 0.9)])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_naive_reference(densities, normalize):
    base, tensors = _inputs(3, shape=(6, 5), seed=3)
    weights = [0.6, 1.0, 0.3]
    dens = [*densities, 0.7]
    got = _call("ties", base, tensors, weight=weights, density=dens, normalize=normalize, **{"lambda": 0.8})
    expected = naive_ties(base, tensors, weights, dens, lam=0.8, normalize=normalize)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_dare_is_seeded_unbiased_and_reduces_to_task_arithmetic():
    base, tensors = _inputs(2, shape=(100, 100), seed=1)
    w = [0.5, 0.5]

    def dare(name, density, seed):
        gen = torch.Generator().manual_seed(seed)
        return _call(name, base, tensors, weight=w, density=density, generator=gen)

    ta = _call("task_arithmetic", base, tensors, weight=w)
    torch.testing.assert_close(dare("dare_linear", [1.0, 1.0], 0), ta)
    first, again, other = (
        dare("dare_linear", [0.3, 0.3], 7),
        dare("dare_linear", [0.3, 0.3], 7),
        dare("dare_linear", [0.3, 0.3], 8),
    )
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    # Each task vector keeps ~30% of entries, so a merged entry is unchanged from base with prob 0.7^2.
    unchanged = (first == base).double().mean().item()
    assert abs(unchanged - 0.49) < 0.02
    # Rescaling by 1/density keeps the merge unbiased: the mean over seeds approaches task arithmetic.
    # One draw's noise is ~1.5x the delta per model (sqrt((1-p)/p)); 400 draws bring the mean error to
    # ~0.08x the task vector, while a missing rescale would leave it at 0.7x.
    mean = sum(dare("dare_linear", [0.3, 0.3], s) for s in range(400)) / 400
    err = ((mean - ta).abs().mean() / (ta - base).abs().mean()).item()
    assert err < 0.1
    # dare_ties with density 1 is TIES without trimming.
    ties_full = _call("ties", base, tensors, weight=w, density=[1.0, 1.0], normalize=False)
    torch.testing.assert_close(dare("dare_ties", [1.0, 1.0], 0), ties_full)


def test_slerp_closed_forms():
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([0.0, 2.0, 0.0])
    slerp = get_method("slerp")
    torch.testing.assert_close(slerp(a, [b], t=0.0), a)
    torch.testing.assert_close(slerp(a, [b], t=1.0), b)
    # Orthogonal inputs: theta = pi/2, coefficients sin((1-t)pi/2) and sin(t pi/2).
    t = 0.3
    expected = math.sin((1 - t) * math.pi / 2) * a + math.sin(t * math.pi / 2) * b
    torch.testing.assert_close(slerp(a, [b], t=t), expected)
    # Nearly parallel inputs fall back to linear interpolation.
    c = a * 3
    torch.testing.assert_close(slerp(a, [c], t=0.25), 0.75 * a + 0.25 * c)


def test_registry_names_methods_and_rejects_unknown():
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"} <= set(known_methods())
    for name in known_methods():
        assert get_method(name).reference.startswith("https://")
    with pytest.raises(InvalidInputError, match="known methods: .*task_arithmetic.*ties"):
        get_method("tie")
    with pytest.raises(InvalidInputError, match="no parameter 'densty'; known: weight, density"):
        get_method("ties").parameter("densty")


def test_parameter_settings_follow_mergekit_rules():
    # Gradient: linear interpolation of the anchors over t in [0, 1].
    assert evaluate_setting([0.0, 1.0, 0.5], "x", 0.25) == pytest.approx(0.5)
    assert evaluate_setting([0.0, 1.0, 0.5], "x", 0.75) == pytest.approx(0.75)
    assert evaluate_setting([0.0, 1.0, 0.5], "x", 1.0) == pytest.approx(0.5)
    conditional = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.9}, {"value": 0.5}]
    assert evaluate_setting(conditional, "model.layers.1.self_attn.q_proj.weight", 0.5) == pytest.approx(0.5)
    assert evaluate_setting(conditional, "model.layers.1.self_attn.q_proj.weight", 1.0) == pytest.approx(1.0)
    assert evaluate_setting(conditional, "model.layers.0.mlp.up_proj.weight", 0.0) == 0.9
    assert evaluate_setting(conditional, "lm_head.weight", 0.0) == 0.5
    assert evaluate_setting([{"filter": "mlp", "value": 1}], "lm_head.weight", 0.0) is None
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_index("model.embed_tokens.weight") is None
    names = [f"model.layers.{i}.w" for i in range(5)] + ["model.norm.weight"]
    assert layer_positions(names) == {**{f"model.layers.{i}.w": i / 4 for i in range(5)}, "model.norm.weight": 0}


def test_magnitude_trim_keeps_exactly_k_when_magnitudes_tie():
    from alloyml.merging.methods import magnitude_mask

    delta = torch.tensor([0.5, -0.5, 0.5, 0.1, -0.5, 0.9, 0.5, -0.2])
    for density in (0.25, 0.5, 0.75):
        k = max(1, int(density * delta.numel()))
        expected = torch.zeros_like(delta, dtype=torch.bool)
        expected[np.argsort(-delta.abs().numpy(), kind="stable")[:k]] = True  # earliest ties first
        assert torch.equal(magnitude_mask(delta, density), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_blockwise_magnitude_trim_equals_the_mask(seed):
    """The radix-select trim (no full-size temporaries) keeps exactly what `magnitude_mask` keeps, ties
    (first in flat order) across block boundaries included; zeros, negatives and -0.0 mixed in."""
    from alloyml.merging.methods import magnitude_mask, trim_magnitude_

    gen = torch.Generator().manual_seed(seed)
    delta = (torch.randint(-6, 7, (37, 29), generator=gen).float() / 4)  # many exact ties
    delta[0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    smooth = torch.randn(4096, generator=gen)
    for tensor in (delta, smooth):
        for density in (0.01, 0.3, 0.5, 0.77, 0.999):
            expected = tensor * magnitude_mask(tensor, density)
            got = trim_magnitude_(tensor.clone(), density, chunk=64)
            assert torch.equal(got, expected), density
            assert int((got != 0).sum()) <= max(1, int(density * tensor.numel()))
