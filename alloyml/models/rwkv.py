"""RWKV-6 ("Finch", Peng et al. 2024): the time-mix mixer (`mixer="rwkv"`) and the channel-mix feed-forward
(`ffn="rwkv_cmix"`); `ModelConfig.named("rwkv")` stacks the two, as the paper's blocks do.

Time mix, per token t, with x_{t-1} the previous input (zeros before a sequence's start):

    d_t = x_{t-1} - x_t
    m_* = LoRA_*(x_t + d_t * mu_x)            one shared tanh down-projection, an up-projection per branch
    x_* = x_t + d_t * (mu_* + m_*)            for * in r, k, v, w, g  (ddlerp: data-dependent token shift)
    r, k, v = W_r x_r, W_k x_k, W_v x_v;      gate = silu(W_g x_g)
    w_t = exp(-exp(w_0 + LoRA_w(x_w)))        per channel, in (0, 1)
    per head: o_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T),   S_t = diag(w_t) S_{t-1} + k_t v_t^T
    y = W_o (GroupNorm_per_head(o) * gate)

The decay w_t reaches the state after step t has read it; GLA (`alloyml.kernels.gla`) applies its gate before
its read. So the sequence runs on GLA over (k, v, log w) delayed by one token (zeros, i.e. no decay and no
key, at each start): GLA's state at t is then exactly RWKV's S_{t-1} and its output r_t^T S_{t-1}. The
bonus term r_t^T diag(u) k_t v_t^T is added apart, and one last update with the final token turns GLA's last
state into S_T. There is no 1/sqrt(K) scale (RWKV has none).

Channel mix (the feed-forward): x_k, x_r static token-shift mixes of x_t and x_{t-1}; k = relu(W_k x_k)^2;
y = sigmoid(W_r x_r) * W_v k. Its hidden width is ffn_mult * d_model - d_model / 2 (3.5 d_model at the
default ffn_mult 4, the paper's), which gives it the parameters of the MLP it replaces (the receptance
W_r takes the other half width). It carries a state too, the last input, so a block of it has state
(mixer state, feed-forward state) (see model.Block).

Initial values follow the reference implementation's shapes: mu ramps from 1 (mostly the previous token)
to 0 across channels; the LoRA down-projections start at zero and the up-projections small, so the shift
and the decay start static; w_0 ramps from -6 (slow) to -1 (fast); u = 1 (the current token counts like an
undecayed past one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig, named_config, register_in
from alloyml.models.mixers import Mixer, check_packed, head_split, last_token, register_mixer, token_shift
from alloyml.models.moe import FFNS

RWKV6_MIX_RANK = 32  # rank of the token-shift LoRA (the paper's TIME_MIX_EXTRA_DIM)
RWKV6_DECAY_RANK = 64  # rank of the decay LoRA (TIME_DECAY_EXTRA_DIM)
RWKV6_GROUPNORM_EPS = 64e-5  # the reference implementation's head GroupNorm eps (1e-5 * 8 ** 2)
BRANCHES = 5  # r, k, v, w, g


def channel_ramp(D: int) -> torch.Tensor:
    """1 - (i / D) ** 0.5 for channel i: [D], from 1 down towards 0."""
    return 1 - (torch.arange(D, dtype=torch.float32) / D) ** 0.5


@register_mixer("rwkv")
class RWKV6TimeMix(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H = cfg.d_model, cfg.n_heads
        self.n_heads, self.backend = H, cfg.backend
        self.shift_x = nn.Parameter(channel_ramp(D))  # mu_x
        self.shift_mu = nn.Parameter(channel_ramp(D).repeat(BRANCHES, 1))  # mu_r, mu_k, mu_v, mu_w, mu_g: [5, D]
        self.shift_down = nn.Parameter(torch.zeros(D, BRANCHES * RWKV6_MIX_RANK))
        self.shift_up = nn.Parameter(torch.empty(BRANCHES, RWKV6_MIX_RANK, D).uniform_(-0.01, 0.01))
        self.decay_base = nn.Parameter(torch.linspace(-6.0, -1.0, D))  # w_0
        self.decay_down = nn.Parameter(torch.zeros(D, RWKV6_DECAY_RANK))
        self.decay_up = nn.Parameter(torch.empty(RWKV6_DECAY_RANK, D).uniform_(-0.01, 0.01))
        self.bonus = nn.Parameter(torch.ones(H, cfg.head_dim))  # u
        self.rkvg = nn.Linear(D, 4 * D, bias=False)
        self.head_norm = nn.GroupNorm(H, D, eps=RWKV6_GROUPNORM_EPS)
        self.out = nn.Linear(D, D, bias=False)

    def _project(self, x, previous):
        """x, previous: [..., D] -> r, k, v: [..., H, Dh]; log w: [..., H, Dh] (< 0, float32 at least);
        gate: [..., D]."""
        d = previous - x
        low = torch.tanh((x + d * self.shift_x) @ self.shift_down).unflatten(-1, (BRANCHES, -1))  # [..., 5, R]
        lora = torch.einsum("...br,brd->...bd", low, self.shift_up)  # [..., 5, D]
        mixed = x[..., None, :] + d[..., None, :] * (self.shift_mu + lora)  # [..., 5, D]
        xr, xk, xv, xw, xg = mixed.unbind(-2)
        W = self.rkvg.weight.chunk(4)
        r, k, v, gate = (F.linear(xi, w) for xi, w in zip((xr, xk, xv, xg), W, strict=True))
        wide = torch.promote_types(x.dtype, torch.float32)  # the decay compounds over the sequence
        log_w = -torch.exp(self.decay_base.to(wide) + (torch.tanh(xw @ self.decay_down) @ self.decay_up).to(wide))
        r, k, v, log_w = (head_split(t, self.n_heads) for t in (r, k, v, log_w))
        return r, k, v, log_w, gate

    def _bonus(self, r, k, v):  # the current token's term r^T diag(u) k v^T: [..., H, Dh]
        return (r * self.bonus * k).sum(-1, keepdim=True) * v

    def _output(self, o, gate):  # o: [..., H, Dh] -> [..., D]
        o = o.flatten(-2)
        normed = self.head_norm(o.reshape(-1, o.shape[-1])).view(o.shape)  # GroupNorm, one group per head
        return self.out(normed * F.silu(gate))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import gla

        check_packed(x, state, cu_seqlens)
        last, S = (None, None) if state is None else state
        r, k, v, log_w, gate = self._project(x, token_shift(x, last, cu_seqlens))
        # GLA over (k, v, log w) one token late: its state at t is S_{t-1} (see the module docstring)
        late_k, late_v, late_w = (token_shift(t, None, cu_seqlens) for t in (k, v, log_w))
        o, S = gla(r, late_k, late_v, late_w, scale=1.0, initial_state=S, cu_seqlens=cu_seqlens,
                   backend=self.backend)
        o = o + self._bonus(r, k, v)
        k_end, v_end, w_end = (last_token(t, cu_seqlens).to(S.dtype) for t in (k, v, log_w))  # [N, H, Dh]
        S = w_end.exp()[..., None] * S + k_end[..., None] * v_end[..., None, :]  # S_T: [N, H, K, V]
        return self._output(o, gate), (last_token(x, cu_seqlens), S)

    def step(self, x, state=None):
        last, S = (None, None) if state is None else state
        r, k, v, log_w, gate = self._project(x, torch.zeros_like(x) if last is None else last.to(x.dtype))
        wide = log_w.dtype
        r, k, v = (t.to(wide) for t in (r, k, v))
        S = r.new_zeros(*r.shape, v.shape[-1]) if S is None else S.to(wide)  # [B, H, K, V]
        o = (r[..., None, :] @ S).squeeze(-2) + self._bonus(r, k, v)  # read S_{t-1}, then ...
        S = log_w.exp()[..., None] * S + k[..., None] * v[..., None, :]  # ... decay and add
        return self._output(o.to(x.dtype), gate), (x, S)


@register_in(FFNS, "rwkv_cmix")
class RWKVChannelMix(Mixer):
    """RWKV's channel mix as a feed-forward: x: [B, T, D] -> [B, T, D], with a token-shift state (the last
    input); the state protocol (forward with state and cu_seqlens, step, select_state, cat_states) is the
    mixers'."""

    stateful = True  # model.Block passes it a state, packed offsets, and steps it when decoding

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.d_model
        hidden = cfg.ffn_mult * D - D // 2
        self.shift_k = nn.Parameter(channel_ramp(D))
        self.shift_r = nn.Parameter(channel_ramp(D))
        self.key = nn.Linear(D, hidden, bias=False)
        self.value = nn.Linear(hidden, D, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)

    def _mix(self, x, previous):
        d = previous - x
        k = F.relu(self.key(x + d * self.shift_k)).square()
        return torch.sigmoid(self.receptance(x + d * self.shift_r)) * self.value(k)

    def forward(self, x, state=None, cu_seqlens=None):
        check_packed(x, state, cu_seqlens)
        y = self._mix(x, token_shift(x, None if state is None else state[0], cu_seqlens))
        return y, (last_token(x, cu_seqlens),)

    def step(self, x, state=None):
        return self._mix(x, torch.zeros_like(x) if state is None else state[0].to(x.dtype)), (x,)


@named_config("rwkv")
def rwkv6(**overrides) -> ModelConfig:
    """RWKV-6: time-mix mixers with channel-mix feed-forwards."""
    return ModelConfig(**{"mixer": "rwkv", "ffn": "rwkv_cmix", **overrides})
