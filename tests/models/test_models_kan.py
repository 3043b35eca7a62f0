"""The KAN feed-forward: the batched B-spline evaluation against the Cox-de Boor recursion written here as
plain scalar recursion, the layer against the spline sum evaluated edge by edge, gradients against finite
differences, the parameter count against the MLP's, and the grid update keeping the function on the data."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alloyml.errors import InvalidInputError
from alloyml.models.config import ModelConfig
from alloyml.models.kan import (
    KANFeedForward,
    KANLayer,
    bspline_bases,
    kan_flops_per_token,
    kan_hidden,
    update_kan_grids,
)
from alloyml.models.model import LinearLM


def cox_de_boor(j: int, p: int, x: float, t: list[float]) -> float:
    """B_{j,p}(x) on knots t, by the textbook recursion (0/0 terms are 0)."""
    if p == 0:
        return 1.0 if t[j] <= x < t[j + 1] else 0.0
    left = 0.0 if t[j + p] == t[j] else (x - t[j]) / (t[j + p] - t[j]) * cox_de_boor(j, p - 1, x, t)
    if t[j + p + 1] == t[j + 1]:
        right = 0.0
    else:
        right = (t[j + p + 1] - x) / (t[j + p + 1] - t[j + 1]) * cox_de_boor(j + 1, p - 1, x, t)
    return left + right


def random_knots(n_in, n_knots, gen):
    return torch.sort(torch.rand(n_in, n_knots, generator=gen, dtype=torch.float64) * 4 - 2, dim=-1).values


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bases_equal_the_cox_de_boor_recursion(order):
    gen = torch.Generator().manual_seed(order)
    knots = random_knots(3, 10, gen)  # non-uniform, as after a grid update
    x = torch.rand(7, 3, generator=gen, dtype=torch.float64) * 5 - 2.5  # some outside the knots
    got = bspline_bases(x, knots, order)
    n_bases = 10 - 1 - order
    want = torch.tensor([[[cox_de_boor(j, order, x[n, i].item(), knots[i].tolist()) for j in range(n_bases)]
                          for i in range(3)] for n in range(7)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bases_sum_to_one_inside_the_grid():
    layer = KANLayer(4, 2).double()
    x = torch.linspace(-1.999, 1.999, 50, dtype=torch.float64)[:, None].expand(50, 4)
    torch.testing.assert_close(layer.bases(x).sum(-1), torch.ones(50, 4, dtype=torch.float64), rtol=0, atol=1e-12)


def randomised(layer, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def test_layer_equals_the_spline_sum_edge_by_edge():
    layer = randomised(KANLayer(3, 2, grid=4, order=3).double(), 0)
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4.4 - 2.2
    t = layer.grid.tolist()
    want = torch.zeros(5, 2, dtype=torch.float64)
    for n in range(5):
        for o in range(2):
            for i in range(3):
                xi = x[n, i].item()
                spline = sum(layer.spline_coef[o, i, j].item() * cox_de_boor(j, 3, xi, t[i]) for j in range(7))
                want[n, o] += layer.base_weight[o, i].item() * xi / (1 + math.exp(-xi))
                want[n, o] += layer.spline_scale[o, i].item() * spline
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)


def test_gradients_match_finite_differences():
    layer = randomised(KANLayer(3, 2, grid=3, order=3).double(), 2)
    # away from knots, where the order-3 spline is smooth enough for central differences
    x = torch.tensor([[-0.7, 0.33, 1.21], [0.05, -1.62, 0.9]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: torch.func.functional_call(
        layer, dict(zip([n for n, _ in layer.named_parameters()], p, strict=True)), (x,)),
        (x, *[p.detach().requires_grad_() for p in layer.parameters()]))


@pytest.mark.parametrize("d_model, ffn_mult, grid, order",
                         [(32, 4, 5, 3), (64, 4, 5, 3), (128, 2, 8, 3), (64, 4, 3, 2)])
def test_parameter_count_matches_the_mlp(d_model, ffn_mult, grid, order):
    cfg = ModelConfig(d_model=d_model, ffn_mult=ffn_mult, kan_grid=grid, kan_order=order, n_heads=2)
    kan = sum(p.numel() for p in KANFeedForward(cfg).parameters())
    hidden = ffn_mult * d_model
    mlp = 2 * d_model * hidden + hidden + d_model
    per_unit = 2 * d_model * (grid + order + 2)  # what one more hidden unit adds
    assert abs(kan - mlp) <= per_unit / 2
    assert kan == 2 * d_model * kan_hidden(cfg) * (grid + order + 2)


def test_matmul_flops_per_token_equal_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(d_model=64, n_heads=2)
    ffn = KANFeedForward(cfg)
    with FlopCounterMode(display=False) as counter:
        ffn(torch.randn(10, 64))
    matmul, elementwise = kan_flops_per_token(cfg)
    assert counter.get_total_flops() == 10 * matmul
    mlp = 2 * 2 * 64 * 256  # the parameter-matched MLP's matmul flops per token
    assert abs(matmul - mlp) <= 0.1 * mlp and 0 < elementwise < matmul


def test_grid_update_keeps_a_polynomial_spline_exactly():
    """B-splines of order 3 reproduce cubics on any knots: a layer whose splines are cubics on the old grid
    computes the same outputs on the data after the grid moves to the data's quantiles."""
    layer = randomised(KANLayer(3, 2).double(), 3)
    dense = torch.linspace(-1.99, 1.99, 200, dtype=torch.float64)[:, None].expand(200, 3)
    cubic = torch.stack([dense**p for p in range(4)], -1) @ torch.randn(4, 6, dtype=torch.float64,
                                                                          generator=torch.Generator().manual_seed(0))
    cubic = cubic.view(200, 3, 2, 3)[..., 0]  # [n, in, out]: one cubic per edge
    fit = torch.linalg.lstsq(layer.bases(dense).transpose(0, 1), cubic.transpose(0, 1)).solution  # [in, G+k, out]
    with torch.no_grad():
        layer.spline_coef.copy_(fit.permute(2, 0, 1))
    data = torch.randn(300, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).clamp(-1.9, 1.9)
    before = layer(data)
    old_grid = layer.grid.clone()
    layer.update_grid(data)
    assert not torch.allclose(layer.grid, old_grid)
    torch.testing.assert_close(layer(data), before, rtol=1e-9, atol=1e-9)


def test_grid_update_moves_to_the_quantiles_and_keeps_the_function_up_to_the_fit():
    layer = randomised(KANLayer(2, 3).double(), 4)
    with torch.no_grad():
        layer.spline_coef.mul_(0.3)
    data = 0.7 * torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = layer(data)
    layer.update_grid(data)
    x = np.sort(data.numpy(), axis=0)
    for i in range(2):
        quantiles = x[np.round(np.linspace(0, 499, 6)).astype(int), i]
        uniform = np.linspace(x[0, i], x[-1, i], 6)
        np.testing.assert_allclose(layer.grid[i, 3:-3].numpy(), 0.98 * quantiles + 0.02 * uniform, rtol=0, atol=1e-12)
    change = ((layer(data) - before).pow(2).mean() / before.pow(2).mean()).sqrt().item()
    assert change < 0.05  # the old spline, refitted by least squares on the new grid


def test_grid_update_refuses_too_few_samples():
    with pytest.raises(InvalidInputError, match="samples"):
        KANLayer(2, 2).update_grid(torch.randn(4, 2))


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer="gla", ffn="kan", vocab_size=40, d_model=32, n_layers=2, n_heads=2)
    return LinearLM(cfg).double().eval()


@torch.no_grad()
def test_model_decodes_as_its_forward_and_updates_its_grids_in_place():
    model = tiny()
    ids = torch.randint(0, 40, (2, 30), generator=torch.Generator().manual_seed(1))
    whole = model(ids).logits
    states, stepped = None, []
    for t in range(30):
        logits, states = model.step(ids[:, t], states)
        stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), whole, rtol=0, atol=1e-10)
    grids = [b.ffn.fc_in.grid.clone() for b in model.blocks]
    update_kan_grids(model, ids)
    assert all(not torch.allclose(b.ffn.fc_in.grid, g) for b, g in zip(model.blocks, grids, strict=True))
    after = model(ids).logits
    assert ((after - whole).pow(2).mean() / whole.pow(2).mean()).sqrt().item() < 0.02


def test_updated_grids_save_and_load(tmp_path):
    from alloyml.models.saving import load_model, save_model

    model = tiny(1).float()
    ids = torch.randint(0, 40, (2, 12))
    update_kan_grids(model, ids)
    loaded = load_model(save_model(model, tmp_path / "m"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_kan_model_trains_down():
    from alloyml.models.data import MQAR, batches
    from alloyml.models.trainer import Trainer

    torch.manual_seed(0)
    task = MQAR(n_pairs=2, n_keys=4, n_values=4)
    model = LinearLM(ModelConfig(mixer="gla", ffn="kan", vocab_size=task.vocab_size, d_model=32, n_layers=1, n_heads=2))
    trainer = Trainer(steps=30, lr=1e-2, warmup_steps=2).fit(model, batches(task, batch_size=16, seed=0))
    first, last = trainer.history_[0].loss, trainer.history_[-1].loss
    assert last < 0.8 * first and F.softplus(torch.tensor(last)).isfinite()
