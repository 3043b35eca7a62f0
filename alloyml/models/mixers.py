"""Token mixers: the part of a block that moves information along the sequence.

Every mixer maps x: [B, T, D] -> y: [B, T, D] and has two modes that compute the same function:

- `forward(x, state=None) -> (y, state)`: the whole sequence at once (training, prompt prefill), on the
  chunked kernels of `alloyml.kernels`; `state` continues a sequence, the returned state ends it.
- `step(x, state) -> (y, state)`: one token x: [B, D] (decoding), on the kernels' one-token steps.

`forward(x, cu_seqlens=...)` takes packed sequences: x: [1, T, D] holding N documents back to back, at
offsets cu_seqlens [N + 1] (int64, as in flash-attn); nothing crosses a boundary (the recurrences restart,
Mamba's convolution and RWKV's token shift see zeros before each start, softmax attention stays within
its document), and the returned state is one per document (N rows; the softmax mixer returns None).
Packed input starts fresh documents: `state` must be None.

The linear mixers' state has a fixed size per sequence (a [H, K, V] matrix per head plus a few past
inputs), so decoding takes constant memory in the context length; the softmax baseline keeps a KV cache
that grows with it. States are tuples of batch-first tensors (the KV cache is its own class), so a batch
of sequences can be regrouped with `select_state` and `cat_states`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig, named_config, register_in

MIXERS: dict[str, type[Mixer]] = {}  # the one list of mixers: ModelConfig checks `mixer` against it


def register_mixer(name: str):
    """A class decorator: the mixer goes into MIXERS under `name`, and `ModelConfig.named(name)` becomes
    a model of that mixer with an MLP feed-forward."""

    def register(cls):
        register_in(MIXERS, name)(cls)
        named_config(name)(partial(_mixer_config, name))
        return cls

    return register


def _mixer_config(mixer: str, **overrides) -> ModelConfig:
    return ModelConfig(**{"mixer": mixer, "ffn": "mlp", **overrides})


class Mixer(nn.Module):
    """Base class: subclasses implement `forward` and `step`; states here are tuples of tensors [B, ...]."""

    name = "mixer"
    # True: LinearLM leaves this module's parameters as its constructor set them (see model.reinit)
    keeps_init = False

    def select_state(self, state, index: torch.Tensor):
        """The state of the sequences at `index` ([n] long), in that order."""
        return tuple(t.index_select(0, index) for t in state)

    def cat_states(self, states: list):
        """One state for the sequences of several states, concatenated along the batch."""
        return tuple(torch.cat(parts) for parts in zip(*states, strict=True))


def packed_positions(cu_seqlens, T: int, device) -> torch.Tensor:
    """Each position's index within its own packed sequence: [T] long. Built with device ops only (no
    host sync): mark the starts, carry the latest start forward with a running max."""
    steps = torch.arange(T, device=device)
    first = torch.zeros(T, dtype=torch.bool, device=device)
    first[cu_seqlens[:-1]] = True
    return steps - torch.cummax(torch.where(first, steps, 0), 0).values


def token_shift(x: torch.Tensor, last, cu_seqlens) -> torch.Tensor:
    """RWKV's token shift: each position's previous input. x: [B, T, ...]; last: [B, ...], the input before
    x (None: zeros); with cu_seqlens, each packed document's first position sees zeros, not the document
    before it. Returns [B, T, ...]."""
    first_row = x.new_zeros(x[:, :1].shape) if last is None else last[:, None].to(x.dtype)
    previous = torch.cat([first_row, x[:, :-1]], dim=1)
    if cu_seqlens is not None:
        first = packed_positions(cu_seqlens, x.shape[1], x.device) == 0  # [T]
        previous = torch.where(first.view(1, -1, *[1] * (x.dim() - 2)), 0.0, previous)
    return previous


def last_token(x: torch.Tensor, cu_seqlens) -> torch.Tensor:
    """The last position of each sequence: x: [B, T, ...] -> [B, ...], or [N, ...] for N packed documents."""
    return x[:, -1] if cu_seqlens is None else x[0, cu_seqlens[1:] - 1]


def check_packed(x, state, cu_seqlens) -> None:
    from alloyml.errors import InvalidInputError

    if cu_seqlens is not None and (state is not None or x.shape[0] != 1):
        raise InvalidInputError("packed sequences (cu_seqlens) need a batch of one and no state (fresh "
                                f"documents), got batch {x.shape[0]} and state {type(state).__name__}")


def head_split(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[..., H * Dh] -> [..., H, Dh]"""
    return x.unflatten(-1, (n_heads, -1))


# ----------------------------------------------------------------------------------------------------------
# Linear attention (Katharopoulos et al. 2020): feature map elu + 1, normalised by the running key sum.


@register_mixer("linear_attn")
class LinearAttention(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.backend = cfg.n_heads, cfg.backend
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x):  # x: [..., D] -> q, k, v: [..., H, Dh]
        q, k, v = (head_split(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return F.elu(q) + 1, F.elu(k) + 1, v

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import linear_attn

        check_packed(x, state, cu_seqlens)
        q, k, v = self._qkv(x)  # [B, T, H, Dh]
        o, s = linear_attn(q, k, v, normalize=True, initial_state=None if state is None else state[0],
                           cu_seqlens=cu_seqlens, backend=self.backend)
        return self.out(o.flatten(-2)), (s,)

    def step(self, x, state=None):
        from alloyml.kernels import linear_attn_step

        q, k, v = self._qkv(x)  # [B, H, Dh]
        o, s = linear_attn_step(q, k, v, None if state is None else state[0], normalize=True)
        return self.out(o.flatten(-2)), (s,)


# ----------------------------------------------------------------------------------------------------------
# RetNet retention (Sun et al. 2023): linear attention with a fixed per-head decay gamma_h = 1 - 2^(-5-h),
# a per-head norm and a swish output gate. (RetNet's xPos rotation is left out: the decay already orders
# positions.)


@register_mixer("retnet")
class Retention(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.backend = cfg.n_heads, cfg.backend
        self.qkvg = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.head_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def decays(self, device) -> torch.Tensor:
        """gamma_h = 1 - 2^(-5-h) in float32: [H]. Derived from the config, not learned, and made at each
        call rather than kept as a buffer, which `model.to(torch.bfloat16)` would round: bf16 holds
        1 - 2^-9 and beyond as exactly 1, so every head past the fourth would stop forgetting."""
        return 1 - 2.0 ** (-5 - torch.arange(self.n_heads, device=device, dtype=torch.float32))

    def _project(self, x):
        q, k, v, gate = self.qkvg(x).chunk(4, dim=-1)
        return head_split(q, self.n_heads), head_split(k, self.n_heads), head_split(v, self.n_heads), gate

    def _output(self, o, gate):  # o: [..., H, Dh], gate: [..., D]
        return self.out(F.silu(gate) * self.head_norm(o).flatten(-2))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import linear_attn

        check_packed(x, state, cu_seqlens)
        q, k, v, gate = self._project(x)
        o, s = linear_attn(q, k, v, self.decays(x.device), initial_state=None if state is None else state[0],
                           cu_seqlens=cu_seqlens, backend=self.backend)
        return self._output(o, gate), (s,)

    def step(self, x, state=None):
        from alloyml.kernels import linear_attn_step

        q, k, v, gate = self._project(x)
        o, s = linear_attn_step(q, k, v, None if state is None else state[0], self.decays(x.device))
        return self._output(o, gate), (s,)


# ----------------------------------------------------------------------------------------------------------
# Gated linear attention (Yang et al. 2024): a data-dependent per-channel forget gate from a low-rank
# projection, g = logsigmoid(.) / 16 (the 16 keeps early training from forgetting too fast).

GLA_GATE_RANK = 16
GLA_GATE_NORMALIZER = 16.0


@register_mixer("gla")
class GatedLinearAttention(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.backend = cfg.n_heads, cfg.backend
        self.qkvg = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.gate_down = nn.Linear(cfg.d_model, GLA_GATE_RANK, bias=False)
        self.gate_up = nn.Linear(GLA_GATE_RANK, cfg.d_model)
        self.head_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _project(self, x):
        q, k, v, gate = self.qkvg(x).chunk(4, dim=-1)
        g = F.logsigmoid(self.gate_up(self.gate_down(x))) / GLA_GATE_NORMALIZER  # [..., D], <= 0
        q, k, v, g = (head_split(t, self.n_heads) for t in (q, k, v, g))
        return q, k, v, g, gate

    def _output(self, o, gate):
        return self.out(F.silu(gate) * self.head_norm(o).flatten(-2))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import gla

        check_packed(x, state, cu_seqlens)
        q, k, v, g, gate = self._project(x)
        o, s = gla(q, k, v, g, initial_state=None if state is None else state[0], cu_seqlens=cu_seqlens,
                   backend=self.backend)
        return self._output(o, gate), (s,)

    def step(self, x, state=None):
        from alloyml.kernels import gla_step

        q, k, v, g, gate = self._project(x)
        o, s = gla_step(q, k, v, g, None if state is None else state[0])
        return self._output(o, gate), (s,)


# ----------------------------------------------------------------------------------------------------------
# Mamba, Mamba-2 style (Dao & Gu 2024): one input projection to (z, x, B, C, dt); a short causal depthwise
# convolution over (x, B, C); the selective scan with a scalar decay per head; a gated RMSNorm
# norm(y * silu(z)); an output projection. B and C are shared by all heads (one group).


def causal_conv(x, weight, bias, past):
    """Depthwise causal convolution. x: [B, T, C]; weight: [C, 1, W]; past: [B, W - 1, C], the W - 1 inputs
    before x. Returns (y: [B, T, C], the last W - 1 inputs: the next call's `past`)."""
    window = torch.cat([past.to(x.dtype), x], dim=1)  # [B, W - 1 + T, C]
    y = F.conv1d(window.transpose(1, 2), weight, bias, groups=x.shape[-1]).transpose(1, 2)  # [B, T, C]
    return y, window[:, window.shape[1] - (weight.shape[-1] - 1):]


def causal_conv_packed(x, weight, bias, cu_seqlens):
    """causal_conv over packed sequences x: [1, T, C], each seeing zeros before its start. Returns (y,
    each sequence's last W - 1 inputs [N, W - 1, C], zero-padded in front for shorter sequences)."""
    T, W = x.shape[1], weight.shape[-1]
    position = packed_positions(cu_seqlens, T, x.device)[None, :, None]  # [1, T, 1]
    y = x * weight[:, 0, W - 1] + (0 if bias is None else bias)
    for d in range(1, W):  # x_{t-d}, weighted by tap W - 1 - d, where t - d is in t's sequence
        shifted = F.pad(x, (0, 0, d, 0))[:, :T]
        y = y + torch.where(position >= d, shifted * weight[:, 0, W - 1 - d], 0.0)
    ends = cu_seqlens[1:, None]  # [N, 1]
    index = ends - (W - 1) + torch.arange(W - 1, device=x.device)  # [N, W - 1]
    inside = (index >= cu_seqlens[:-1, None])[..., None]
    return y, torch.where(inside, x[0, index.clamp(min=0)], 0.0)


@register_mixer("mamba")
class Mamba(Mixer):
    keeps_init = True  # as mamba_ssm: PyTorch's default init for the projections, the dt bias as set here

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.backend = cfg.n_heads, cfg.backend
        self.d_inner, self.d_state = cfg.expand * cfg.d_model, cfg.d_state
        conv_dim = self.d_inner + 2 * cfg.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * self.d_inner + 2 * cfg.d_state + cfg.n_heads, bias=False)
        self.conv = nn.Conv1d(conv_dim, conv_dim, cfg.d_conv, groups=conv_dim)
        # Mamba-2's initialisation: dt in [1e-3, 1e-1] log-uniformly (through softplus), A in [1, 16].
        dt = torch.exp(torch.empty(cfg.n_heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(cfg.n_heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(cfg.n_heads))
        self.norm = nn.RMSNorm(self.d_inner, eps=cfg.norm_eps)
        self.out = nn.Linear(self.d_inner, cfg.d_model, bias=False)

    def _scan_inputs(self, x, conv_past, cu_seqlens=None):
        """x: [B, T, D] -> (z, scan inputs (x, dt, A, B, C) with a head axis, next conv state)."""
        Bsz, T, _ = x.shape
        H, N = self.n_heads, self.d_state
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * N, H], dim=-1)
        if cu_seqlens is not None:
            xbc, conv_state = causal_conv_packed(xbc, self.conv.weight, self.conv.bias, cu_seqlens)
        else:
            if conv_past is None:
                conv_past = x.new_zeros(Bsz, self.conv.kernel_size[0] - 1, xbc.shape[-1])
            xbc, conv_state = causal_conv(xbc, self.conv.weight, self.conv.bias, conv_past)
        xs, Bm, Cm = F.silu(xbc).split([self.d_inner, N, N], dim=-1)
        xs = head_split(xs, H)  # [B, T, H, P]
        Bm, Cm = (m[:, :, None, :].expand(Bsz, T, H, N) for m in (Bm, Cm))  # [B, T, H, N], shared by heads
        # dt and A in float32 at least (as mamba_ssm does): the decay exp(dt A) compounds over the sequence,
        # and dt rounded to bfloat16 would put it off by |dt A| * 2^-9 at every step. float64 in a float64
        # model, whose outputs a float32 dt would put off by ~1e-10 (the projections' PyTorch init).
        wide = torch.promote_types(dt.dtype, torch.float32)
        dt = F.softplus(dt.to(wide) + self.dt_bias.to(wide))  # [B, T, H]
        return z, (xs, dt, -self.A_log.to(wide).exp(), Bm, Cm), conv_state

    def _output(self, y, z):  # y: [..., H, P], z: [..., d_inner]
        return self.out(self.norm(y.flatten(-2) * F.silu(z)))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import selective_scan

        check_packed(x, state, cu_seqlens)
        conv_past, ssm = (None, None) if state is None else state
        z, scan, conv_state = self._scan_inputs(x, conv_past, cu_seqlens)
        y, ssm = selective_scan(*scan, self.D, initial_state=ssm, cu_seqlens=cu_seqlens, backend=self.backend)
        return self._output(y, z), (conv_state, ssm)

    def step(self, x, state=None):
        from alloyml.kernels import selective_scan_step

        conv_past, ssm = (None, None) if state is None else state
        z, (xs, dt, A, Bm, Cm), conv_state = self._scan_inputs(x[:, None], conv_past)
        y, ssm = selective_scan_step(xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], ssm, self.D)
        return self._output(y, z[:, 0]), (conv_state, ssm)


# ----------------------------------------------------------------------------------------------------------
# RWKV-5-like time-mix, kept as `rwkv5` (it was `mixer="rwkv"` before RWKV-6 proper took that name, see
# rwkv.py): a static token shift (each projection sees a learned per-channel mix of this token and the previous
# one), a data-dependent per-channel decay w_t = exp(-exp(.)) from a low-rank projection, run as GLA with
# log-gate -exp(.), plus a "bonus" u for the current token. Unlike RWKV-6, the decay of step t also applies
# before step t reads the state (GLA's convention), and there is no channel mix.

RWKV_DECAY_RANK = 16


@register_mixer("rwkv5")
class RWKV5TimeMix(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.d_model
        self.n_heads, self.backend = cfg.n_heads, cfg.backend
        self.shift_mix = nn.Parameter(torch.full((5, D), 0.5))  # r, k, v, w, g mixing coefficients
        self.rkvg = nn.Linear(D, 4 * D, bias=False)
        self.decay_base = nn.Parameter(torch.linspace(-6.0, -1.0, D))  # slow to fast channels
        self.decay_down = nn.Linear(D, RWKV_DECAY_RANK, bias=False)
        self.decay_up = nn.Linear(RWKV_DECAY_RANK, D, bias=False)
        nn.init.zeros_(self.decay_up.weight)  # decays start at decay_base
        self.decay_up.keeps_init = True
        self.bonus = nn.Parameter(torch.zeros(cfg.n_heads, cfg.head_dim))
        self.head_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.out = nn.Linear(D, D, bias=False)

    def _project(self, x, previous):
        """x, previous: [..., D] (the input and the one before it) -> r, k, v, g: [..., H, Dh], gate: [..., D]."""
        mixed = x[..., None, :] + (previous - x)[..., None, :] * self.shift_mix  # [..., 5, D]
        xr, xk, xv, xw, xg = mixed.unbind(-2)
        W = self.rkvg.weight.chunk(4)
        r, k, v, gate = (F.linear(xi, w) for xi, w in zip((xr, xk, xv, xg), W, strict=True))
        g = -torch.exp(self.decay_base + self.decay_up(torch.tanh(self.decay_down(xw))))  # log-decay < 0
        r, k, v, g = (head_split(t, self.n_heads) for t in (r, k, v, g))
        return r, k, v, g, gate

    def _output(self, o, r, k, v, gate):
        # GLA counts the current token once; RWKV weighs it by (1 + bonus) per channel.
        o = o + (r * self.bonus * k).sum(-1, keepdim=True) * v * r.shape[-1] ** -0.5
        return self.out(F.silu(gate) * self.head_norm(o).flatten(-2))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import gla

        check_packed(x, state, cu_seqlens)
        last, s = (None, None) if state is None else state
        r, k, v, g, gate = self._project(x, token_shift(x, last, cu_seqlens))
        o, s = gla(r, k, v, g, initial_state=s, cu_seqlens=cu_seqlens, backend=self.backend)
        return self._output(o, r, k, v, gate), (last_token(x, cu_seqlens), s)

    def step(self, x, state=None):
        from alloyml.kernels import gla_step

        last, s = (torch.zeros_like(x), None) if state is None else state
        r, k, v, g, gate = self._project(x, last.to(x.dtype))
        o, s = gla_step(r, k, v, g, s)
        return self._output(o, r, k, v, gate), (x, s)


# ----------------------------------------------------------------------------------------------------------
# Softmax attention, the baseline: rotary positions, causal scaled dot-product attention, a KV cache.


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, left-padded so all rows end at `length`.

    k, v: [B, capacity, H, Dh], filled in [:, :length]; start: [B] first valid slot of each row (rows of
    different lengths are left-padded). `append` writes into spare capacity in place, doubling it when full,
    so a cache is consumed by the call it is passed to."""

    k: torch.Tensor
    v: torch.Tensor
    length: int
    start: torch.Tensor

    def positions(self, T: int) -> torch.Tensor:
        """Positions [B, T] of the next T tokens within their own sequences."""
        return self.length - self.start[:, None] + torch.arange(T, device=self.start.device)

    def append(self, k, v) -> KVCache:
        """k, v: [B, T, H, Dh] of the next T tokens."""
        T, capacity = k.shape[1], self.k.shape[1]
        keys, values = self.k, self.v
        if self.length + T > capacity:
            grow = max(capacity, self.length + T - capacity)
            keys, values = (F.pad(t, (0, 0, 0, 0, 0, grow)) for t in (keys, values))
        keys[:, self.length : self.length + T] = k
        values[:, self.length : self.length + T] = v
        return KVCache(keys, values, self.length + T, self.start)

    def mask(self, T: int) -> torch.Tensor:
        """[B, 1, T, length] True where the last T tokens may attend: valid slots, causally."""
        slots = torch.arange(self.length, device=self.k.device)
        queries = self.length - T + torch.arange(T, device=self.k.device)
        causal = slots[None, :] <= queries[:, None]  # [T, length]
        valid = slots[None, :] >= self.start[:, None]  # [B, length]
        return (causal[None] & valid[:, None])[:, None]


def rotary(x, positions, base: float):
    """Rotary position embedding. x: [B, T, H, Dh]; positions: [B, T]."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # [Dh / 2]
    angles = positions[..., None, None].float() * freqs  # [B, T, 1, Dh / 2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


@register_mixer("softmax")
class SoftmaxAttention(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.rope_base = cfg.n_heads, cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, state: KVCache | None = None, cu_seqlens=None):
        B, T, _ = x.shape
        q, k, v = (head_split(t, self.n_heads) for t in self.qkv(x).chunk(3, dim=-1))  # [B, T, H, Dh]
        if cu_seqlens is not None:  # packed documents: each attends causally within itself; no cache
            check_packed(x, state, cu_seqlens)
            positions = packed_positions(cu_seqlens, T, x.device)
            q, k = rotary(q, positions[None], self.rope_base), rotary(k, positions[None], self.rope_base)
            steps = torch.arange(T, device=x.device)
            document = steps - positions  # each position's document start
            mask = (document[:, None] == document[None, :]) & (steps[None, :] <= steps[:, None])  # [T, T]
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask)
            return self.out(o.transpose(1, 2).flatten(-2)), None
        if state is None:  # a fresh sequence: plain causal attention, and the cache is just k, v
            positions = torch.arange(T, device=x.device).expand(B, T)
            q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
            cache = KVCache(k, v, T, torch.zeros(B, dtype=torch.long, device=x.device))
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True)
        else:
            positions = state.positions(T)
            q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
            cache = state.append(k, v)
            keys, values = (t[:, : cache.length].transpose(1, 2) for t in (cache.k, cache.v))
            o = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=cache.mask(T))
        return self.out(o.transpose(1, 2).flatten(-2)), cache  # o: [B, H, T, Dh] -> [B, T, D]

    def step(self, x, state: KVCache | None = None):
        y, cache = self.forward(x[:, None], state)
        return y[:, 0], cache

    def select_state(self, state: KVCache, index):
        return KVCache(state.k.index_select(0, index)[:, : state.length],
                       state.v.index_select(0, index)[:, : state.length], state.length,
                       state.start.index_select(0, index))

    def cat_states(self, states: list[KVCache]):
        length = max(s.length for s in states)
        k, v, start = [], [], []
        for s in states:  # left-pad shorter caches so every row ends at `length`
            pad = length - s.length
            k.append(F.pad(s.k[:, : s.length], (0, 0, 0, 0, pad, 0)))
            v.append(F.pad(s.v[:, : s.length], (0, 0, 0, 0, pad, 0)))
            start.append(s.start + pad)
        return KVCache(torch.cat(k), torch.cat(v), length, torch.cat(start))


# The diagonal state-space mixers (LRU, Hawk, S4D, Mamba-1), RWKV-6, the Performer and the delta-rule and
# test-time-training mixers (DeltaNet, Gated DeltaNet, TTT-Linear, TTT-MLP) live in their own modules;
# importing them registers them.
from alloyml.models import conv_mixers, delta_mixers, griffin, performer, rwkv, ssm_mixers  # noqa: E402, F401
