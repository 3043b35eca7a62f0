"""The mergekit methods added for issue 21, each against `mergekit-yaml` on the same YAML (tiny Llamas),
and, where mergekit draws random masks from a generator alloyml cannot share, against the method's
definition instead."""

from __future__ import annotations

import pytest
import torch
from merge_helpers import assert_same_weights, load_state, mergekit_yaml

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.merging import get_method, merge


def _configs(p):
    two = [{"model": p["a"], "parameters": {"weight": 0.3}}, {"model": p["b"], "parameters": {"weight": [0.7, 0.4]}}]
    plain = [{"model": p["a"]}, {"model": p["b"]}]
    crumbs = [
        {"model": p["a"], "parameters": {"weight": 0.6, "density": 0.7, "gamma": 0.05}},
        {"model": p["b"], "parameters": {"weight": 0.5, "density": [0.5, 0.9]}},
    ]
    return {
        "model_stock": {"base_model": p["base"], "models": plain},
        "model_stock filter_wise": {"merge_method": "model_stock", "base_model": p["base"], "models": plain,
                                    "parameters": {"filter_wise": True}},
        "nuslerp": {"base_model": p["base"], "models": two},
        "nuslerp no base": {"merge_method": "nuslerp", "models": two},
        "nuslerp row_wise": {"merge_method": "nuslerp", "models": two,
                             "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
        "nuslerp column_wise": {"merge_method": "nuslerp", "base_model": p["base"], "models": two,
                                "parameters": {"nuslerp_flatten": False}},
        "multislerp": {"base_model": p["base"], "models": two},
        "multislerp no base": {"merge_method": "multislerp", "models": [*two, {"model": p["base"],
                               "parameters": {"weight": 0.2}}]},
        "karcher": {"models": [{"model": p["base"]}, *plain], "parameters": {"max_iter": 20}},
        "nearswap": {"base_model": p["base"], "models": [{"model": p["a"]}], "parameters": {"t": 0.01}},
        "sce": {"base_model": p["base"], "models": plain},
        "sce select_topk": {"merge_method": "sce", "base_model": p["base"], "models": plain,
                            "parameters": {"select_topk": 0.4, "int8_mask": True}},
        "breadcrumbs": {"base_model": p["base"], "models": crumbs},
        "breadcrumbs_ties": {"base_model": p["base"], "models": crumbs, "parameters": {"rescale": True}},
        "ties rescale int8_mask": {"merge_method": "ties", "base_model": p["base"], "models": crumbs[1:] + [
            {"model": p["a"], "parameters": {"weight": 0.6, "density": 0.3}}],
            "parameters": {"rescale": True, "int8_mask": True}},
        # Density 1 draws no random mask, so DELLA is deterministic and comparable with mergekit.
        "della": {"base_model": p["base"], "models": [
            {"model": p["a"], "parameters": {"weight": 0.6, "density": 1.0}},
            {"model": p["b"], "parameters": {"weight": 0.5, "density": 1.0, "epsilon": 0.1}}]},
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_configs({"base": "", "a": "", "b": ""})))
def test_new_methods_agree_with_mergekit(tiny_llamas, tmp_path, case):
    config = {
        "merge_method": case.split()[0],
        "dtype": "float32",
        **_configs({k: str(v) for k, v in tiny_llamas.items()})[case],
    }
    merge(config, tmp_path / "ours")
    ours = load_state(tmp_path / "ours")
    theirs = mergekit_yaml(config, tmp_path / "theirs")
    assert_same_weights(ours, theirs, atol=2e-6)
    base = load_state(tiny_llamas["base"])
    assert max((ours[n] - base[n]).abs().max().item() for n in base) > 1e-3  # the merge did something


def test_every_method_has_a_reference_and_validated_parameters():
    for name in ("model_stock", "nuslerp", "multislerp", "karcher", "nearswap", "sce", "breadcrumbs",
                 "breadcrumbs_ties", "della", "della_linear"):  # fmt: skip
        assert get_method(name).reference.startswith("https://")
    assert {p.name for p in get_method("ties").parameters} >= {"rescale", "int8_mask"}
    assert get_method("dare_linear").parameter("rescale_mode").default == "density"
    with pytest.raises(ConfigError, match="'model_stock' merges at least 2 model"):
        merge({"merge_method": "model_stock", "base_model": "b", "models": [{"model": "a"}]})
    with pytest.raises(ConfigError, match="parameter 'rescale_mode': expected one of"):
        merge(
            {
                "merge_method": "dare_linear",
                "base_model": "b",
                "models": [{"model": "a", "parameters": {"weight": 1}}],
                "parameters": {"rescale_mode": "l2"},
            }
        )


def _inputs(n=3, shape=(40, 50), seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    return base, [base + 0.1 * torch.randn(shape, generator=gen) for _ in range(n)]


def test_dare_l1_rescale_restores_each_task_vectors_l1_norm():
    # mergekit's DARE rescale: the dropped task vector is scaled back to its own L1 norm, per tensor.
    base, (x,) = _inputs(1)
    base, x = base.double(), x.double()  # float64, so that `out - base` recovers the delta exactly enough
    gen = torch.Generator().manual_seed(3)
    out = get_method("dare_linear")(base.clone(), [x.clone()], weight=[1.0], density=[0.3], rescale_mode="l1",
                                    generator=gen)  # fmt: skip
    delta = out - base
    kept = delta != 0
    assert abs(kept.double().mean().item() - 0.3) < 0.02
    torch.testing.assert_close(delta.abs().sum(), (x - base).abs().sum(), rtol=1e-5, atol=0)
    ratio = delta[kept] / (x - base)[kept]  # one common factor for every survivor
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()), rtol=1e-4, atol=0)


def test_della_keeps_large_entries_more_often_as_its_definition_says():
    # mergekit draws DELLA's masks from torch's global generator, alloyml from one seeded per tensor, so
    # draws differ; the distribution is checked instead: rank r of n is kept with probability
    # density - eps + 2 eps r / (n - 1), and survivors are L1-rescaled.
    from alloyml.merging.methods import rank_mask

    delta = torch.randn(400, 1000, generator=torch.Generator().manual_seed(0))
    mask = rank_mask(delta, 0.5, 0.2, torch.Generator().manual_seed(1))
    ranks = delta.abs().argsort(dim=1).argsort(dim=1)
    smallest, largest = mask[ranks < 100].double().mean().item(), mask[ranks >= 900].double().mean().item()
    assert abs(smallest - (0.3 + 0.4 * 49.5 / 999)) < 0.01 and abs(largest - (0.7 - 0.4 * 49.5 / 999)) < 0.01
    assert abs(mask.double().mean().item() - 0.5) < 0.005
    with pytest.raises(InvalidInputError, match="density 0.9 \\+/- epsilon 0.15 must lie inside \\(0, 1\\)"):
        merge({"merge_method": "della", "base_model": "b", "models": [{"model": "a", "parameters": {"weight": 1,
               "density": 0.9}}]}, sources={"a": {"w": delta}, "b": {"w": delta}})  # fmt: skip
