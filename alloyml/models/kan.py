"""KAN feed-forward (Kolmogorov-Arnold network, Liu et al. 2024), `ffn="kan"`: two KAN layers
d_model -> hidden -> d_model, each edge a learnable function.

One KAN layer, inputs x_i, outputs y_o:

    y_o = sum_i [ w_b[o, i] * silu(x_i) + w_s[o, i] * sum_j c[o, i, j] * B_j(x_i) ]

with B_j the G + k B-splines of order k (degree k) on input i's knot vector (G grid intervals, extended by
k knots on each side; k = `kan_order`, G = `kan_grid`). The efficient form (as in efficient-kan):
evaluate every basis function once, [..., in, G + k] -> [..., in * (G + k)], and do one matmul with the
coefficient matrix (w_s * c) of [out, in * (G + k)], plus one matmul for the SiLU branch.

Grid update from data (`KANLayer.update_grid`, `update_kan_grids` for a model): each input's grid moves
to the quantiles of the activations it sees (blended with the uniform grid over their range, as pykan
does with grid_eps = 0.02), and the spline coefficients are refitted by least squares on those samples,
so the layer computes the same function on the data up to the fit's error (exactly, where the old
spline is a polynomial of degree <= k, which B-splines of order k reproduce on any knots).

Parameters: a layer has in * out * (G + k + 2) (c, w_b, w_s). The hidden width is chosen so the
feed-forward's count is the nearest to the MLP it replaces (2 d h_mlp + h_mlp + d with h_mlp =
ffn_mult * d): h = round((2 d h_mlp + h_mlp + d) / (2 d (G + k + 2))), about ffn_mult * d_model / 10 at the
defaults G = 5, k = 3 (`kan_hidden`). Cost per token: 2 * in * out * (G + k + 1) flops of matmul per layer,
about what the parameter-matched MLP costs, plus the basis recursion, O(in * (G + 2k) * k) elementwise,
which is not small when the hidden width is (G + k + 2 times narrower than the MLP's);
`kan_flops_per_token` gives both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig, register_in
from alloyml.models.moe import FFNS

KAN_GRID_RANGE = (-2.0, 2.0)  # initial grid: RMS-normalised inputs mostly fall inside
KAN_GRID_EPS = 0.02  # weight of the uniform grid in a grid update (pykan's grid_eps)


def bspline_bases(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """Every B-spline of `order` on each input's knots, by the Cox-de Boor recursion (vectorised over the
    basis index). x: [..., n_in]; knots: [n_in, n_knots] ascending -> [..., n_in, n_knots - 1 - order].
    Zero outside [knots[0], knots[-1])."""
    x = x[..., None]  # [..., n_in, 1]
    bases = ((x >= knots[:, :-1]) & (x < knots[:, 1:])).to(x.dtype)  # order 0: [..., n_in, n_knots - 1]
    for p in range(1, order + 1):
        left = (x - knots[:, : -(p + 1)]) / (knots[:, p:-1] - knots[:, : -(p + 1)])
        right = (knots[:, p + 1 :] - x) / (knots[:, p + 1 :] - knots[:, 1:-p])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def uniform_knots(low: float, high: float, grid: int, order: int, n_in: int) -> torch.Tensor:
    """G + 2k + 1 equally spaced knots, G intervals on [low, high] and k more on each side: [n_in, ...]."""
    h = (high - low) / grid
    return (low + h * torch.arange(-order, grid + order + 1, dtype=torch.float32)).repeat(n_in, 1)


class KANLayer(nn.Module):
    """x: [..., n_in] -> [..., n_out]. `grid` [n_in, G + 2k + 1] is a buffer (saved; moved by update_grid)."""

    def __init__(self, n_in: int, n_out: int, grid: int = 5, order: int = 3):
        super().__init__()
        self.order = order
        self.register_buffer("grid", uniform_knots(*KAN_GRID_RANGE, grid, order, n_in))
        self.base_weight = nn.Parameter(torch.randn(n_out, n_in) * n_in**-0.5)  # w_b
        self.spline_scale = nn.Parameter(torch.ones(n_out, n_in))  # w_s
        self.spline_coef = nn.Parameter(torch.randn(n_out, n_in, grid + order) * 0.1 * n_in**-0.5)  # c

    def bases(self, x):  # [..., n_in] -> [..., n_in, G + k]
        return bspline_bases(x, self.grid.to(x.dtype), self.order)

    def forward(self, x):
        splines = self.bases(x).flatten(-2)  # [..., n_in * (G + k)]
        coefficients = (self.spline_scale[..., None] * self.spline_coef).flatten(1)  # [n_out, n_in * (G + k)]
        return F.linear(F.silu(x), self.base_weight) + F.linear(splines, coefficients)

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Move each input's grid to the quantiles of samples x: [n, n_in] (blended with the uniform grid on
        their range) and refit c by least squares on x so the layer's function on x is kept."""
        from alloyml.errors import InvalidInputError

        n_in, n_knots = self.grid.shape
        G = n_knots - 1 - 2 * self.order
        if x.dim() != 2 or x.shape[1] != n_in or x.shape[0] < G + self.order:
            raise InvalidInputError(f"update_grid needs samples [n >= {G + self.order}, {n_in}], got {list(x.shape)}")
        compute = torch.promote_types(x.dtype, torch.float32)
        x = x.to(compute)
        old = torch.einsum("nij,oij->nio", self.bases(x), self.spline_coef.to(compute))  # [n, n_in, n_out]
        ordered = x.sort(dim=0).values  # [n, n_in]
        at = torch.linspace(0, x.shape[0] - 1, G + 1, device=x.device).round().long()
        adaptive = ordered[at].T  # [n_in, G + 1] quantiles
        low, high = ordered[0], ordered[-1]
        h = (high - low).clamp_min(1e-4) / G  # [n_in]
        uniform = low[:, None] + h[:, None] * torch.arange(G + 1, device=x.device, dtype=compute)
        inner = KAN_GRID_EPS * uniform + (1 - KAN_GRID_EPS) * adaptive  # [n_in, G + 1]
        # The last sample sits on the end knot; the extension puts it inside the half-open support.
        steps = torch.arange(1, self.order + 1, device=x.device, dtype=compute) * h[:, None]
        knots = torch.cat([inner[:, :1] - steps.flip(-1), inner, inner[:, -1:] + steps], dim=-1)
        self.grid.copy_(knots.to(self.grid.dtype))
        design = self.bases(x).transpose(0, 1)  # [n_in, n, G + k]
        fitted = torch.linalg.lstsq(design, old.transpose(0, 1)).solution  # [n_in, G + k, n_out]
        self.spline_coef.copy_(fitted.permute(2, 0, 1).to(self.spline_coef.dtype))


def kan_hidden(cfg: ModelConfig) -> int:
    """The hidden width whose KAN feed-forward has the nearest parameter count to the MLP's."""
    d, h_mlp = cfg.d_model, cfg.ffn_mult * cfg.d_model
    mlp = 2 * d * h_mlp + h_mlp + d
    return max(1, round(mlp / (2 * d * (cfg.kan_grid + cfg.kan_order + 2))))


def kan_flops_per_token(cfg: ModelConfig) -> tuple[int, int]:
    """(matmul flops, elementwise flops) per token of the KAN feed-forward, a multiply-add counted as 2.
    Matmuls: per layer, the bases' in * (G + k) columns and the SiLU branch's in columns, times out.
    Elementwise (an estimate of the arithmetic, not of memory traffic): the order-0 comparisons (2 per
    interval), per recursion level p 2 differences, 2 divisions... about 9 operations for each of the
    G + 2k - p bases, and ~4 for the SiLU, per input."""
    G, k, d, h = cfg.kan_grid, cfg.kan_order, cfg.d_model, kan_hidden(cfg)
    matmul = elementwise = 0
    for n_in, n_out in ((d, h), (h, d)):
        matmul += 2 * n_in * n_out * (G + k + 1)
        elementwise += n_in * (2 * (G + 2 * k) + sum(9 * (G + 2 * k - p) for p in range(1, k + 1)) + 4)
    return matmul, elementwise


@register_in(FFNS, "kan")
class KANFeedForward(nn.Module):
    """x: [..., D] -> [..., D] through KAN layers D -> kan_hidden(cfg) -> D."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = kan_hidden(cfg)
        self.fc_in = KANLayer(cfg.d_model, hidden, cfg.kan_grid, cfg.kan_order)
        self.fc_out = KANLayer(hidden, cfg.d_model, cfg.kan_grid, cfg.kan_order)

    def forward(self, x):
        return self.fc_out(self.fc_in(x))

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Both layers' grids from samples x: [n, D] (the second from the first's updated outputs)."""
        self.fc_in.update_grid(x)
        self.fc_out.update_grid(self.fc_in(x))


@torch.no_grad()
def update_kan_grids(model, ids: torch.Tensor, cu_seqlens=None) -> None:
    """Update every KAN feed-forward's grids of `model` (a LinearLM) from the activations that the tokens
    ids: [B, T] give it, block by block (each block's inputs are taken after the blocks before it moved)."""
    for block in model.blocks:
        if not isinstance(block.ffn, KANFeedForward):
            continue
        seen = []
        handle = block.ffn.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        try:
            model(ids, cu_seqlens=cu_seqlens)
        finally:
            handle.remove()
        block.ffn.update_grid(seen[0].reshape(-1, seen[0].shape[-1]))
