"""The delta-rule and test-time-training mixers: DeltaNet (Yang et al. 2024), Gated DeltaNet (Yang et al.
2025), TTT-Linear and TTT-MLP (Sun et al. 2024).

Whole sequences run on the ops' fast paths in `alloyml.kernels` (the chunked WY / UT form of the delta
rule, TTT's mini-batch dual form), decoding on their steps. Conventions (forward / step, packed
`cu_seqlens`, tuple states) are those of `alloyml.models.mixers`, where these register. The state math
runs in float32 whatever the model's dtype; outputs return to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import Mixer, check_packed, head_split, register_mixer
from alloyml.models.ssm_mixers import conv_branch

# ----------------------------------------------------------------------------------------------------------
# DeltaNet (Yang et al. 2024, the layer of fla's DeltaNet): q, k, v projections through a short causal
# depthwise conv and SiLU; q and k L2-normalised per head; a writing strength beta = sigmoid(W_beta x) per
# head; the delta rule; a per-head RMSNorm gated by silu(W_g x); an output projection.
# Gated DeltaNet adds a per-head decay alpha = exp(g), g = -exp(A_log) softplus(W_a x + dt_bias), with
# Mamba-2's initialisation (A in [1, 16], dt log-uniform in [1e-3, 1e-1]).


@register_mixer("deltanet")
class DeltaNet(Mixer):
    gated = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H = cfg.d_model, cfg.n_heads
        self.n_heads, self.backend = H, cfg.backend
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.conv = nn.Conv1d(3 * D, 3 * D, cfg.d_conv, groups=3 * D)
        self.beta = nn.Linear(D, H)
        self.gate = nn.Linear(D, D, bias=False)
        self.head_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.out = nn.Linear(D, D, bias=False)
        if self.gated:
            self.decay = nn.Linear(D, H, bias=False)
            dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())

    def _project(self, x, conv_past, cu_seqlens=None):
        """x: [B, T, D] -> (q, k, v [B, T, H, Dh], beta [B, T, H], g [B, T, H] or None, next conv state)."""
        qkv, conv_state = conv_branch(self.conv, self.qkv(x), conv_past, cu_seqlens)
        q, k, v = (head_split(t, self.n_heads) for t in F.silu(qkv).chunk(3, dim=-1))
        c = torch.promote_types(x.dtype, torch.float32)
        beta = torch.sigmoid(self.beta(x).to(c))
        g = None
        if self.gated:  # in float32 at least: the decay compounds over the sequence
            g = -self.A_log.to(c).exp() * F.softplus(self.decay(x).to(c) + self.dt_bias.to(c))
        return q, k, v, beta, g, conv_state

    def _output(self, o, x):  # o: [..., H, Dh]
        return self.out(self.head_norm(o).flatten(-2) * F.silu(self.gate(x)))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels.delta import delta_rule, gated_delta_rule

        check_packed(x, state, cu_seqlens)
        conv_past, S = (None, None) if state is None else state
        q, k, v, beta, g, conv_state = self._project(x, conv_past, cu_seqlens)
        kw = dict(initial_state=S, cu_seqlens=cu_seqlens, l2_normalize=True, backend=self.backend)
        o, S = gated_delta_rule(q, k, v, g, beta, **kw) if self.gated else delta_rule(q, k, v, beta, **kw)
        return self._output(o, x), (conv_state, S)

    def step(self, x, state=None):
        from alloyml.kernels.delta import delta_rule_step

        conv_past, S = (None, None) if state is None else state
        q, k, v, beta, g, conv_state = self._project(x[:, None], conv_past)
        o, S = delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], None if g is None else g[:, 0], S,
                               l2_normalize=True)
        return self._output(o, x), (conv_state, S)


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    gated = True


# ----------------------------------------------------------------------------------------------------------
# TTT-Linear and TTT-MLP (Sun et al. 2024): per head, views q = theta_Q x, k = theta_K x, v = theta_V x; an
# inner model f(x) = x + LN(g(x)) (g linear, or a GELU MLP of hidden width 4 d) trained on
# 1/2 ||f(k_t) - v_t||^2 along the sequence with mini-batches of 16 and learning rate
# eta_t = eta_base * sigmoid(theta_lr x_t) / d per head (eta_base 1 for TTT-Linear, 0.1 for TTT-MLP, as in
# the paper's code); z_t = f(q_t; theta_t); a LayerNorm and an output projection. The inner model's initial
# weights and its LayerNorm are outer parameters, trained through the inner steps.

TTT_MINI_BATCH = 16


@register_mixer("ttt_linear")
class TTTLinear(Mixer):
    hidden_mult = None  # TTT-MLP: the inner MLP's hidden width as a multiple of the head size
    eta_base = 1.0

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H, d = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.backend = H, cfg.backend
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.lr = nn.Linear(D, H)
        if self.hidden_mult is None:
            self.W = nn.Parameter(torch.randn(H, d, d) * 0.02)
            self.b = nn.Parameter(torch.zeros(H, d))
        else:
            m = self.hidden_mult * d
            self.W1 = nn.Parameter(torch.randn(H, d, m) * 0.02)
            self.b1 = nn.Parameter(torch.zeros(H, m))
            self.W2 = nn.Parameter(torch.randn(H, m, d) * 0.02)
            self.b2 = nn.Parameter(torch.zeros(H, d))
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, d))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, d))
        self.post_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.out = nn.Linear(D, D, bias=False)

    def _weights(self):
        return (self.W, self.b) if self.hidden_mult is None else (self.W1, self.b1, self.W2, self.b2)

    def _project(self, x):  # x: [..., D] -> q, k, v: [..., H, d], eta: [..., H]
        q, k, v = (head_split(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        eta = self.eta_base * torch.sigmoid(self.lr(x).to(torch.promote_types(x.dtype, torch.float32))) / q.shape[-1]
        return q, k, v, eta

    def _norm(self):
        return self.ttt_norm_weight, self.ttt_norm_bias

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels.ttt import ttt

        check_packed(x, state, cu_seqlens)
        q, k, v, eta = self._project(x)
        z, state = ttt(q, k, v, eta, self._weights(), norm=self._norm(), mini_batch=TTT_MINI_BATCH,
                       initial_state=state, cu_seqlens=cu_seqlens, backend=self.backend)
        return self.out(self.post_norm(z.flatten(-2))), state

    def step(self, x, state=None):
        from alloyml.kernels.ttt import ttt_step

        q, k, v, eta = self._project(x)
        z, state = ttt_step(q, k, v, eta, self._weights(), state, norm=self._norm(), mini_batch=TTT_MINI_BATCH)
        return self.out(self.post_norm(z.flatten(-2))), state


@register_mixer("ttt_mlp")
class TTTMLP(TTTLinear):
    hidden_mult = 4
    eta_base = 0.1
