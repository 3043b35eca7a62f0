"""Performer attention (FAVOR+, Choromanski et al. 2021), `mixer="performer"`: causal softmax attention
approximated with positive orthogonal random features, in linear time on `alloyml.kernels.linear_attn`.

The softmax kernel exp(q^T k) (q, k scaled by d^(-1/4) first, so it is exp(q.k / sqrt(d))) is the
expectation over w ~ N(0, I_d) of phi(q)^T phi(k) with the positive features

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),     W: [m, d], rows w_j        (`positive_features`)

FAVOR+ draws W in orthogonal blocks of d rows (QR of a Gaussian d x d matrix, signs fixed so the block is
Haar-distributed), each row rescaled to the norm of an independent Gaussian vector (chi_d), so every row
is still N(0, I_d) while the rows of a block are exactly orthogonal, which lowers the estimator's variance
(`gaussian_features`).

Causal attention o_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / sum_{s<=t} phi(q_t).phi(k_s) runs as linear
attention over the features with one more value column of ones (the normaliser). Numerics: since
w^T x - |x|^2/2 = |w|^2/2 - |x - w|^2/2, the per-feature factor exp(|w_j|^2/2) can move from the key to the
query side, giving

    key feature    exp(-|k - w_j|^2 / 2)                                   in (0, 1]
    query feature  exp(a_j - max_i a_i),  a_j = w_j^T q + |w_j|^2 / 2      in (0, 1], largest exactly 1

Every product phi(q).phi(k) changes only by a factor of the query (exp(-|q|^2/2), the max, 1/m), which
the normalisation cancels; nothing overflows; and unlike a max over the keys (which reference
implementations take over the whole sequence) no feature depends on another token, so prefill + decode
equals the forward. The ratio takes no additive eps (numerator and normaliser carry the same scale); a
normaliser that underflows to 0 (every key far from every w_j) gives o = 0.

Features: `omega` [H, m, Dh] is a buffer, saved with the model, so a loaded model reproduces its outputs.
Training redraws them every `performer_redraw` steps: the Trainer calls each module's
`before_train_step(step)`, which at steps r, 2r, ... sets draw number n = step // r from a generator seeded
by (the layer's `feature_seed`, n); a resumed run therefore redraws as the uninterrupted one did. Nothing
is redrawn inside forward, in eval, or with performer_redraw = 0 (`trainer.before_train_step(model, step)`
does the same for a training loop of one's own).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import Mixer, check_packed, head_split, register_mixer

SEED_RANGE = 2**24  # feature seeds are whole numbers below this, exact in the float buffer that holds them


def gaussian_features(m: int, d: int, *, orthogonal: bool = True, generator=None) -> torch.Tensor:
    """m random feature directions in d dimensions: [m, d], each row distributed N(0, I_d); with
    `orthogonal`, rows within each block of d are orthogonal (FAVOR+), else independent."""
    if not orthogonal:
        return torch.randn(m, d, generator=generator)
    q, r = torch.linalg.qr(torch.randn(math.ceil(m / d), d, d, generator=generator))  # [blocks, d, d]
    rows = (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]).transpose(-2, -1)  # sign fix: Haar
    norms = torch.randn(m, d, generator=generator).norm(dim=-1)  # chi_d: the norms of Gaussian vectors
    return rows.reshape(-1, d)[:m] * norms[:, None]


def positive_features(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """phi(x) = exp(W x - |x|^2 / 2) / sqrt(m), the paper's positive random features, unstabilised (for
    checking the kernel estimate). x: [..., H, d]; omega: [H, m, d] -> [..., H, m]."""
    projection = torch.einsum("...hd,hmd->...hm", x, omega)
    return torch.exp(projection - 0.5 * x.square().sum(-1, keepdim=True)) / math.sqrt(omega.shape[-2])


def stable_features(q: torch.Tensor, k: torch.Tensor, omega: torch.Tensor):
    """The attention's query and key features (see the module docstring): q, k: [..., H, d] (already
    scaled by d^(-1/4)); omega: [H, m, d] -> (query features, key features), each [..., H, m] in (0, 1]."""
    half_norm = 0.5 * omega.square().sum(-1)  # [H, m]
    a = torch.einsum("...hd,hmd->...hm", q, omega) + half_norm
    query = torch.exp(a - a.amax(-1, keepdim=True).detach())  # the max cancels in the ratio
    key = torch.exp(torch.einsum("...hd,hmd->...hm", k, omega) - 0.5 * k.square().sum(-1, keepdim=True) - half_norm)
    return query, key


def normalised(o: torch.Tensor) -> torch.Tensor:
    """o: [..., V + 1] (numerator | normaliser) -> numerator / normaliser, 0 where the normaliser is 0."""
    numerator, normaliser = o[..., :-1], o[..., -1:]
    return numerator / torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))


@register_mixer("performer")
class PerformerAttention(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, Dh, m = cfg.n_heads, cfg.head_dim, cfg.performer_features
        self.n_heads, self.backend, self.redraw_every = H, cfg.backend, cfg.performer_redraw
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.register_buffer("omega", torch.stack([gaussian_features(m, Dh) for _ in range(H)]))  # [H, m, Dh]
        self.register_buffer("feature_seed", torch.randint(0, SEED_RANGE, ()).float())

    @torch.no_grad()
    def redraw(self, draw: int) -> None:
        """Set the features to draw number `draw` of this layer (a function of feature_seed and draw)."""
        H, m, Dh = self.omega.shape
        generator = torch.Generator().manual_seed(int(self.feature_seed) * SEED_RANGE + draw)
        fresh = torch.stack([gaussian_features(m, Dh, generator=generator) for _ in range(H)])
        self.omega.copy_(fresh)

    def before_train_step(self, step: int) -> None:
        """Called by the Trainer before update `step` (0-based): redraw every `performer_redraw` steps."""
        if self.redraw_every and step > 0 and step % self.redraw_every == 0:
            self.redraw(step // self.redraw_every)

    def _features(self, x):  # x: [..., D] -> query / key features [..., H, m], values + ones [..., H, Dh + 1]
        q, k, v = (head_split(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        wide = torch.promote_types(x.dtype, torch.float32)
        scale = q.shape[-1] ** -0.25
        qf, kf = stable_features(q.to(wide) * scale, k.to(wide) * scale, self.omega.to(wide))
        v = v.to(wide)
        return qf, kf, torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import linear_attn

        check_packed(x, state, cu_seqlens)
        qf, kf, values = self._features(x)  # [B, T, H, m], [B, T, H, Dh + 1]
        o, s = linear_attn(qf, kf, values, scale=1.0, initial_state=None if state is None else state[0],
                           cu_seqlens=cu_seqlens, backend=self.backend)
        return self.out(normalised(o).to(x.dtype).flatten(-2)), (s,)

    def step(self, x, state=None):
        from alloyml.kernels import linear_attn_step

        qf, kf, values = self._features(x)  # [B, H, m], [B, H, Dh + 1]
        o, s = linear_attn_step(qf, kf, values, None if state is None else state[0], scale=1.0)
        return self.out(normalised(o).to(x.dtype).flatten(-2)), (s,)

