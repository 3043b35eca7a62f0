"""The long-convolution mixers: H3 (Fu et al. 2023) and Hyena (Poli et al. 2023).

Both gate a sequence multiplicatively around long convolutions. H3's long convolution is a diagonal
state space (the S4D op), so it trains as an FFT convolution and decodes by its recurrence in constant
memory. Hyena's filters are implicit (a small MLP of the lag), as long as the sequence, with no state
space behind them: training is an FFT convolution too, but decoding caches every input of each long
convolution and costs O(T) per token (`kernels.long_conv`). Conventions (forward / step, packed
`cu_seqlens`, tuple states) are those of `alloyml.models.mixers`, where these register.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import Mixer, check_packed, head_split, register_mixer
from alloyml.models.ssm_mixers import S4D_DT_MAX, S4D_DT_MIN, conv_branch

# ----------------------------------------------------------------------------------------------------------
# H3 (Fu et al. 2023, "Hungry Hungry Hippos"): q, k, v = projections of x; k through a shift SSM (A the
# shift matrix: a causal FIR of d_state taps, state = the last d_state - 1 inputs); per head of size
# dh = d_model / n_heads, the outer product shift(k)^T v [dh, dh]; a diagonal SSM (S4D-Lin, ZOH, D skip)
# on each of its dh^2 entries; then q times it, o_j = sum_i q_i s_ij, and an output projection. The
# diagonal SSM runs over d_model * dh channels (d_state / 2 complex modes each): trained as an FFT
# convolution, O(T log T) per channel, decoded by its recurrence with a state of d_model * dh * d_state / 2
# complex numbers plus the shift SSM's d_state - 1 past keys per channel.


@register_mixer("h3")
class H3(Mixer):
    def __init__(self, cfg: ModelConfig):
        from alloyml.kernels.s4d import s4d_init

        super().__init__()
        d, self.n_heads, self.backend = cfg.d_model, cfg.n_heads, cfg.backend
        dh = cfg.head_dim
        channels = d * dh
        self.qkv = nn.Linear(d, 3 * d)
        self.shift = nn.Conv1d(d, d, cfg.d_state, groups=d, bias=False)  # the shift SSM's C, tap 0 its D
        A_real_log, A_imag = s4d_init("lin", channels, cfg.d_state)
        self.A_real_log, self.A_imag = nn.Parameter(A_real_log), nn.Parameter(A_imag)
        self.log_dt = nn.Parameter(torch.empty(channels).uniform_(math.log(S4D_DT_MIN), math.log(S4D_DT_MAX)))
        self.C = nn.Parameter(torch.randn(channels, cfg.d_state // 2, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(channels))
        self.out = nn.Linear(d, d)

    def _kv(self, x, shift_past, cu_seqlens=None):
        """x: [B, T, D] -> (q [B, T, H, dh], kv [B, T, D * dh] (head-major, then i of k, then j of v), the
        shift SSM's next state)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k, shift_state = conv_branch(self.shift, k, shift_past, cu_seqlens)
        k, v = head_split(k, self.n_heads), head_split(v, self.n_heads)
        kv = (k[..., :, None] * v[..., None, :]).flatten(-3)
        return head_split(q, self.n_heads), kv, shift_state

    def _output(self, q, s):  # q: [..., H, dh], s: [..., D * dh] -> [..., D]
        s = s.unflatten(-1, (*q.shape[-2:], q.shape[-1]))  # [..., H, dh (i), dh (j)]
        return self.out((q[..., :, None] * s).sum(-2).flatten(-2))

    def _params(self):
        return self.log_dt, self.A_real_log, self.A_imag, self.C, self.D

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import s4d

        check_packed(x, state, cu_seqlens)
        shift_past, h0 = (None, None) if state is None else state
        q, kv, shift_state = self._kv(x, shift_past, cu_seqlens)
        s, final = s4d(kv, *self._params(), initial_state=h0, cu_seqlens=cu_seqlens, backend=self.backend)
        return self._output(q, s), (shift_state, final)

    def step(self, x, state=None):
        from alloyml.kernels import s4d_step

        shift_past, h0 = (None, None) if state is None else state
        q, kv, shift_state = self._kv(x[:, None], shift_past)
        s, new = s4d_step(kv[:, 0], *self._params(), h0)
        return self._output(q[:, 0], s), (shift_state, new)


# ----------------------------------------------------------------------------------------------------------
# Hyena (Poli et al. 2023), of order N = HYENA_ORDER: in_proj to N + 1 branches (v, x^1 .. x^N) of width
# d_model, a short causal depthwise conv (d_conv taps) over all of them, then the recurrence
#     z^1 = v,   z^(n+1) = x^n * (h^n * z^n + D^n z^n),   y = out_proj(z^(N+1))
# of a long convolution and an elementwise gate. The filters are implicit: h^n_l = window_n(l) FFN(PE(l))
# for lag l, PE(l) = [l / S, cos(2 pi k l / S), sin(2 pi k l / S)] (k = 1 .. HYENA_PE_BANDS, S =
# HYENA_LAG_SCALE), FFN = Linear -> sin(w .) -> Linear -> sin(w .) -> Linear (learned frequencies w),
# window_c(l) = exp(-alpha_c l / S) with decay rates alpha spread over the channels so that the window
# falls to 1e-2 between lag 0.3 S (fast channels) and 1.5 S (slow ones), as the paper's modulation does.
# The filters are functions of the lag alone, so they extend to any length. The state is the short conv's
# last d_conv - 1 inputs and, for each long convolution, every input seen so far: decoding costs O(T) per
# token and channel and the state grows by N * d_model numbers a token (`distill_hyena` below fits each
# filter with a small diagonal state space instead).

HYENA_ORDER = 2
HYENA_PE_BANDS = 8
HYENA_FILTER_WIDTH = 32
HYENA_LAG_SCALE = 512.0
HYENA_FAST_DECAY, HYENA_SLOW_DECAY = 0.3, 1.5  # lags / S at which the windows reach 1e-2


class HyenaFilter(nn.Module):
    """The implicit filters of one Hyena layer: `forward(L) -> [order, L, d]` float32 (float64 in
    a float64 model), taps at lags 0 .. L - 1."""

    # PyTorch's default init for the MLP: its sines need O(1) pre-activations; LinearLM's N(0, 0.02)
    # would leave them linear and the taps near 1e-3, the long convolutions all but off
    keeps_init = True

    def __init__(self, d: int, order: int, bands: int = HYENA_PE_BANDS, width: int = HYENA_FILTER_WIDTH):
        super().__init__()
        self.d, self.order, self.bands = d, order, bands
        self.fc1 = nn.Linear(1 + 2 * bands, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, order * d)
        self.freq = nn.Parameter(torch.ones(width))

    def decay_rates(self, device, dtype=torch.float32) -> torch.Tensor:
        """alpha [order * d], fast to slow across the channels of each filter; made at each call
        (not a buffer, which `model.to(torch.bfloat16)` would round)."""
        low, high = math.log(100) / HYENA_SLOW_DECAY, math.log(100) / HYENA_FAST_DECAY
        return torch.linspace(high, low, self.d, device=device, dtype=dtype).repeat(self.order)

    def positional(self, L: int, device, dtype=torch.float32) -> torch.Tensor:
        lag = torch.arange(L, device=device, dtype=dtype) / HYENA_LAG_SCALE
        angle = 2 * math.pi * lag[:, None] * torch.arange(1, self.bands + 1, device=device, dtype=dtype)
        return torch.cat([lag[:, None], angle.cos(), angle.sin()], dim=-1)  # [L, 1 + 2 bands]

    def forward(self, L: int) -> torch.Tensor:
        # float32 in a half model (bf16 taps would round the long filter); float64 in a float64 one, whose
        # outputs float32 taps of size O(0.1) would put off by ~1e-9
        dtype = torch.promote_types(self.fc1.weight.dtype, torch.float32)
        z = self.positional(L, self.fc1.weight.device, dtype)
        w = self.freq.to(dtype)
        for fc in (self.fc1, self.fc2):
            z = torch.sin(w * F.linear(z, fc.weight.to(dtype), fc.bias.to(dtype)))
        h = F.linear(z, self.fc3.weight.to(dtype), self.fc3.bias.to(dtype))  # [L, order * d]
        lag = torch.arange(L, device=h.device, dtype=dtype)[:, None] / HYENA_LAG_SCALE
        h = h * torch.exp(-self.decay_rates(h.device, dtype) * lag)
        return h.unflatten(-1, (self.order, self.d)).transpose(0, 1)  # [order, L, d]


@register_mixer("hyena")
class Hyena(Mixer):
    order = HYENA_ORDER

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.backend = cfg.d_model, cfg.backend
        width = (self.order + 1) * d
        self.in_proj = nn.Linear(d, width)
        self.conv = nn.Conv1d(width, width, cfg.d_conv, groups=width)
        self.filter = HyenaFilter(d, self.order)
        self.bias = nn.Parameter(torch.randn(self.order, d))  # D^n, the long convolutions' skips
        self.out = nn.Linear(d, d)

    def _branches(self, x, conv_past, cu_seqlens=None):
        u, conv_state = conv_branch(self.conv, self.in_proj(x), conv_past, cu_seqlens)
        return u.chunk(self.order + 1, dim=-1), conv_state  # v, x^1 .. x^N

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels.long_conv import long_conv

        check_packed(x, state, cu_seqlens)
        conv_past, *caches = (None,) * (self.order + 1) if state is None else state
        (z, *gates), conv_state = self._branches(x, conv_past, cu_seqlens)
        past = 0 if caches[0] is None else caches[0].shape[1]
        h = self.filter(past + x.shape[1])
        finals = []
        for n, gate in enumerate(gates):
            z, final = long_conv(z, h[n], self.bias[n], initial_inputs=caches[n], cu_seqlens=cu_seqlens,
                                 backend=self.backend)
            z = gate * z
            finals.append(final)
        return self.out(z), (conv_state, *finals)

    def step(self, x, state=None):
        from alloyml.kernels.long_conv import long_conv_step

        conv_past, *caches = (None,) * (self.order + 1) if state is None else state
        (z, *gates), conv_state = self._branches(x[:, None], conv_past)
        z, gates = z[:, 0], [g[:, 0] for g in gates]
        past = 0 if caches[0] is None else caches[0].shape[1]
        h = self.filter(past + 1)
        finals = []
        for n, gate in enumerate(gates):
            z, cache = long_conv_step(z, h[n], self.bias[n], caches[n])
            z = gate * z
            finals.append(cache)
        return self.out(z), (conv_state, *finals)

    def cat_states(self, states: list):
        """Caches of different lengths are left-padded with zero inputs (which add nothing to a convolution)."""
        longest = max(s[1].shape[1] for s in states)
        padded = [(s[0], *(F.pad(c, (0, 0, longest - c.shape[1], 0)) for c in s[1:])) for s in states]
        return super().cat_states(padded)


# ----------------------------------------------------------------------------------------------------------
# Distilled Hyena: each long convolution of a trained Hyena layer replaced by a diagonal state space of
# `order` complex modes per channel (kernels.long_conv.distill, after LaughingHyena), mapped onto the S4D
# op with dt = 1 (A = log lambda, C = c / (2 B_bar)), which then runs it as an FFT convolution for whole
# sequences and as its recurrence for decoding: constant memory, O(order) per token and channel. The
# projections and short conv are the original layer's modules; the fit is made once, on the filter's
# first `length` taps.


class DistilledHyena(Mixer):
    name = "hyena_distilled"

    def __init__(self, hyena: Hyena, order: int = 16, length: int | None = 1024):
        """length=None builds the layer without fitting (buffers of the fitted shapes, zeros): the shell
        that loading a saved distilled model fills (saving.load_model)."""
        from alloyml.kernels.long_conv.distill import distill_filter
        from alloyml.kernels.s4d import _expm1_complex

        super().__init__()
        self.hyena, self.backend, self.modes = hyena, hyena.backend, order
        if length is None:
            dtype, N, d = hyena.bias.dtype, hyena.order, hyena.bias.shape[-1]
            self.fit_error = None  # not stored: only the fitted state space is
            for name, shape in (("A_real_log", (N, d, order)), ("A_imag", (N, d, order)),
                                ("C", (N, d, order, 2)), ("D", (N, d)), ("log_dt", (N, d))):
                self.register_buffer(name, torch.zeros(shape, dtype=dtype))
            return
        with torch.no_grad():
            h = hyena.filter(length).double()  # [N, L, d]
        fits = [distill_filter(h[n], order) for n in range(hyena.order)]
        self.fit_error = torch.stack([f.error for f in fits])  # [N, d] relative L2 error over `length` taps
        poles = torch.stack([f.poles for f in fits])  # [N, d, r]
        A = torch.log(poles.abs().clamp_min(1e-6).to(poles.dtype) * torch.exp(1j * poles.angle()))  # dt = 1
        B_bar = _expm1_complex(A) / A
        C = torch.stack([f.residues for f in fits]) / (2 * B_bar)
        dtype = hyena.bias.dtype
        self.register_buffer("A_real_log", torch.log(-A.real).to(dtype))
        self.register_buffer("A_imag", A.imag.to(dtype))
        self.register_buffer("C", torch.view_as_real(C).to(dtype))  # [N, d, r, 2]
        D = torch.stack([f.D for f in fits]) + hyena.bias.detach().double()  # tap 0's fit + the layer's skip
        self.register_buffer("D", D.to(dtype))  # [N, d]
        self.register_buffer("log_dt", torch.zeros(hyena.order, A.shape[1], dtype=dtype))

    def _params(self, n):
        return self.log_dt[n], self.A_real_log[n], self.A_imag[n], self.C[n], self.D[n]

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import s4d

        check_packed(x, state, cu_seqlens)
        conv_past, *ssm = (None,) * (self.hyena.order + 1) if state is None else state
        (z, *gates), conv_state = self.hyena._branches(x, conv_past, cu_seqlens)
        finals = []
        for n, gate in enumerate(gates):
            z, final = s4d(z, *self._params(n), initial_state=ssm[n], cu_seqlens=cu_seqlens, backend=self.backend)
            z = gate * z
            finals.append(final)
        return self.hyena.out(z), (conv_state, *finals)

    def step(self, x, state=None):
        from alloyml.kernels import s4d_step

        conv_past, *ssm = (None,) * (self.hyena.order + 1) if state is None else state
        (z, *gates), conv_state = self.hyena._branches(x[:, None], conv_past)
        z, finals = z[:, 0], []
        for n, gate in enumerate(gates):
            z, new = s4d_step(z, *self._params(n), ssm[n])
            z = gate[:, 0] * z
            finals.append(new)
        return self.hyena.out(z), (conv_state, *finals)


def distilled_layers(model) -> dict:
    """{layer index: modes per channel} of the DistilledHyena mixers of `model` (what saving records)."""
    return {i: block.mixer.modes for i, block in enumerate(model.blocks) if isinstance(block.mixer, DistilledHyena)}


def restore_distilled(model, layers: dict):
    """Put DistilledHyena shells (unfitted, length=None) in place of the Hyena mixers of `model` at
    `layers` ({layer index: modes}, as distilled_layers returns): the structure a saved distilled model's
    tensors load into."""
    from alloyml.errors import InvalidInputError

    for i, modes in layers.items():
        i = int(i)
        if not 0 <= i < len(model.blocks) or not isinstance(model.blocks[i].mixer, Hyena):
            raise InvalidInputError(f"distilled_hyena names layer {i}, which is not a Hyena layer of this model")
        model.blocks[i].mixer = DistilledHyena(model.blocks[i].mixer, int(modes), length=None)
    return model


def distill_hyena(model, order: int = 16, length: int = 1024):
    """Replace, in place, every Hyena mixer of `model` (a LinearLM) by its DistilledHyena; returns the
    per-layer fit errors ([N, d] each: relative L2 error of each fitted filter over `length` taps)."""
    errors = []
    for block in model.blocks:
        if isinstance(block.mixer, Hyena):
            block.mixer = DistilledHyena(block.mixer, order, length)
            errors.append(block.mixer.fit_error)
    return errors
