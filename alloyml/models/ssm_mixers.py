"""The diagonal state-space mixers: LRU (Orvieto et al. 2023), Hawk's RG-LRU block (De et al. 2024),
S4D (Gu et al. 2022) and Mamba-1's S6 block (Gu & Dao 2023).

Their state is one vector (or [D, N] array) per sequence, complex for the LRU and S4D; whole sequences
run on the ops' fast paths in `alloyml.kernels` (parallel scans, S4D's FFT convolution), decoding on
their steps. Conventions (forward / step,
packed `cu_seqlens`, tuple states) are those of `alloyml.models.mixers`, where these register. The state
math runs in float32 (complex64) whatever the model's dtype; outputs return to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import Mixer, check_packed, register_mixer


def conv_branch(conv: nn.Conv1d, u, past, cu_seqlens):
    """Hawk's and Mamba-1's short causal depthwise conv over u: [B, T, C], continuing from `past` (the
    previous W - 1 inputs, zeros when None), or restarting at each packed start. Returns (out, next past)."""
    from alloyml.models.mixers import causal_conv, causal_conv_packed

    if cu_seqlens is not None:
        return causal_conv_packed(u, conv.weight, conv.bias, cu_seqlens)
    if past is None:
        past = u.new_zeros(u.shape[0], conv.kernel_size[0] - 1, u.shape[-1])
    return causal_conv(u, conv.weight, conv.bias, past)


def gelu_glu(glu: nn.Linear, y):
    """The output of the LRU and S4D layers in their papers: GELU, then a GLU (value * sigmoid(gate))."""
    value, gate = glu(F.gelu(y)).chunk(2, dim=-1)
    return value * torch.sigmoid(gate)


# ----------------------------------------------------------------------------------------------------------
# LRU (Orvieto et al. 2023): u -> x = B u (complex) -> h_t = lambda h_{t-1} + gamma x_t -> y = Re(C h) + D u,
# then the paper's GELU and GLU output. State size N = d_model complex channels. Initialisation as in the
# paper: |lambda| uniform on the ring [r_min, r_max] (by area), phase uniform in [0, max_phase], gamma at
# its normalising value sqrt(1 - |lambda|^2) and trained from there.

LRU_R_MIN, LRU_R_MAX, LRU_MAX_PHASE = 0.9, 0.999, math.pi / 10


@register_mixer("lru")
class LRU(Mixer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = N = cfg.d_model
        self.backend = cfg.backend
        u = torch.rand(N)
        modulus = (u * (LRU_R_MAX**2 - LRU_R_MIN**2) + LRU_R_MIN**2).sqrt()
        self.nu_log = nn.Parameter((-modulus.log()).log())  # |lambda| = exp(-exp(nu_log))
        self.theta_log = nn.Parameter((torch.rand(N) * LRU_MAX_PHASE).clamp_min(1e-4).log())
        self.gamma_log = nn.Parameter(0.5 * (1 - modulus**2).log())
        self.B = nn.Parameter(torch.randn(2, N, D) / math.sqrt(2 * D))  # real and imaginary parts
        self.C = nn.Parameter(torch.randn(2, D, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(D))
        self.glu = nn.Linear(D, 2 * D)

    def _input(self, u):  # u: [..., D] -> B u: [..., N] complex, in float32 or float64
        real = torch.promote_types(u.dtype, torch.float32)
        return torch.complex(F.linear(u, self.B[0]).to(real), F.linear(u, self.B[1]).to(real))

    def _output(self, h, u):  # h: [..., N] complex -> [..., D] in u's dtype
        real = h.real.dtype
        y = F.linear(h.real, self.C[0].to(real)) - F.linear(h.imag, self.C[1].to(real))
        return gelu_glu(self.glu, (y + self.D.to(real) * u.to(real)).to(u.dtype))

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import lru

        check_packed(x, state, cu_seqlens)
        h, final = lru(self._input(x), self.nu_log, self.theta_log, self.gamma_log,
                       initial_state=None if state is None else state[0], cu_seqlens=cu_seqlens,
                       backend=self.backend)
        return self._output(h, x), (final,)

    def step(self, x, state=None):
        from alloyml.kernels import lru_step

        h, _ = lru_step(self._input(x), self.nu_log, self.theta_log, self.gamma_log,
                        None if state is None else state[0])
        return self._output(h, x), (h,)


# ----------------------------------------------------------------------------------------------------------
# Hawk (De et al. 2024): Griffin's recurrent block without its local attention. Two branches of width
# expand * d_model: GeLU(W_g x), and W_x x -> a short causal depthwise conv -> the RG-LRU, whose gates
# r_t = sigmoid(W_a u_t + b_a), i_t = sigmoid(W_i u_t + b_i) read the conv output u_t (dense projections
# here; the paper's are block-diagonal per head); the branches multiply and project back. Lambda is set
# so that a^c = sigmoid(Lambda)^8 is uniform in [0.9, 0.999], as in the paper.

HAWK_A_MIN, HAWK_A_MAX = 0.9, 0.999


@register_mixer("hawk")
class Hawk(Mixer):
    def __init__(self, cfg: ModelConfig):
        from alloyml.kernels.rglru import RGLRU_C

        super().__init__()
        width = self.width = cfg.expand * cfg.d_model
        self.backend = cfg.backend
        self.in_proj = nn.Linear(cfg.d_model, 2 * width, bias=False)  # gate branch, recurrent branch
        self.conv = nn.Conv1d(width, width, cfg.d_conv, groups=width)
        self.gates = nn.Linear(width, 2 * width)  # recurrence gate r, input gate i
        base = (torch.empty(width).uniform_(HAWK_A_MIN, HAWK_A_MAX)) ** (1 / RGLRU_C)
        self.Lambda = nn.Parameter(torch.log(base / (1 - base)))
        self.out = nn.Linear(width, cfg.d_model, bias=False)

    def _branches(self, x, conv_past, cu_seqlens=None):
        """x: [B, T, D] -> (gate branch, conv output u, r, i, next conv state), all [B, T, width]."""
        gate, u = self.in_proj(x).chunk(2, dim=-1)
        u, conv_state = conv_branch(self.conv, u, conv_past, cu_seqlens)
        r, i = torch.sigmoid(self.gates(u)).chunk(2, dim=-1)
        return F.gelu(gate), u, r, i, conv_state

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import rglru

        check_packed(x, state, cu_seqlens)
        conv_past, h0 = (None, None) if state is None else state
        gate, u, r, i, conv_state = self._branches(x, conv_past, cu_seqlens)
        h, final = rglru(u, r, i, self.Lambda, initial_state=h0, cu_seqlens=cu_seqlens, backend=self.backend)
        return self.out(h * gate), (conv_state, final)

    def step(self, x, state=None):
        from alloyml.kernels import rglru_step

        conv_past, h0 = (None, None) if state is None else state
        gate, u, r, i, conv_state = self._branches(x[:, None], conv_past)
        h, new = rglru_step(u[:, 0], r[:, 0], i[:, 0], self.Lambda, h0)
        return self.out(h * gate[:, 0]), (conv_state, new)


# ----------------------------------------------------------------------------------------------------------
# S4D (Gu et al. 2022): one diagonal SSM of N = d_state (N / 2 complex modes) per channel, A trained from
# S4D-Lin (or S4D-Inv, `init`), dt log-uniform in [1e-3, 1e-1], C complex normal, D skip; then the paper's
# GELU and GLU output. Whole sequences run as an FFT convolution, decoding as the recurrence.

S4D_DT_MIN, S4D_DT_MAX = 1e-3, 1e-1


@register_mixer("s4d")
class S4D(Mixer):
    init = "lin"  # S4D-Lin; a subclass may set "inv"

    def __init__(self, cfg: ModelConfig):
        from alloyml.kernels.s4d import s4d_init

        super().__init__()
        H = cfg.d_model
        self.backend = cfg.backend
        A_real_log, A_imag = s4d_init(self.init, H, cfg.d_state)
        self.A_real_log, self.A_imag = nn.Parameter(A_real_log), nn.Parameter(A_imag)
        self.log_dt = nn.Parameter(torch.empty(H).uniform_(math.log(S4D_DT_MIN), math.log(S4D_DT_MAX)))
        self.C = nn.Parameter(torch.randn(H, cfg.d_state // 2, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(H))
        self.glu = nn.Linear(H, 2 * H)

    def _params(self):
        return self.log_dt, self.A_real_log, self.A_imag, self.C, self.D

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import s4d

        check_packed(x, state, cu_seqlens)
        y, final = s4d(x, *self._params(), initial_state=None if state is None else state[0],
                       cu_seqlens=cu_seqlens, backend=self.backend)
        return gelu_glu(self.glu, y), (final,)

    def step(self, x, state=None):
        from alloyml.kernels import s4d_step

        y, new = s4d_step(x, *self._params(), None if state is None else state[0])
        return gelu_glu(self.glu, y), (new,)


# ----------------------------------------------------------------------------------------------------------
# Mamba-1 (Gu & Dao 2023): in_proj to (x, z) of width expand * d_model; a short causal depthwise conv and
# SiLU on x; x_proj to (dt of rank ceil(d_model / 16), B, C); dt_proj back to the width, softplus with
# the dt bias set so that dt starts log-uniform in [1e-3, 1e-1]; the S6 scan with A_d,n = -(n + 1)
# (S4D-Real), D = 1 and the gate silu(z); out_proj. dt, A and the state math stay float32.

MAMBA1_DT_MIN, MAMBA1_DT_MAX = 1e-3, 1e-1


@register_mixer("mamba1")
class Mamba1(Mixer):
    # as mamba_ssm: PyTorch's default init for the projections (dt_proj's weight then uniform in
    # +-dt_rank^-1/2, as mamba_ssm's dt_init="random"), the dt bias as set here
    keeps_init = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = self.width = cfg.expand * cfg.d_model
        self.backend, self.d_state = cfg.backend, cfg.d_state
        self.dt_rank = math.ceil(cfg.d_model / 16)
        self.in_proj = nn.Linear(cfg.d_model, 2 * width, bias=False)
        self.conv = nn.Conv1d(width, width, cfg.d_conv, groups=width)
        self.x_proj = nn.Linear(width, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, width)
        dt = torch.exp(torch.empty(width).uniform_(math.log(MAMBA1_DT_MIN), math.log(MAMBA1_DT_MAX)))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.arange(1, cfg.d_state + 1, dtype=torch.float32).log().repeat(width, 1))
        self.D = nn.Parameter(torch.ones(width))
        self.out = nn.Linear(width, cfg.d_model, bias=False)

    def _scan_inputs(self, x, conv_past, cu_seqlens=None):
        """x: [B, T, D] -> (the scan's x, dt, A, B, C, z, next conv state)."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv_state = conv_branch(self.conv, xs, conv_past, cu_seqlens)
        xs = F.silu(xs)
        dt_in, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt in float32 at least (float64 in a float64 model): exp(dt A) compounds over the sequence
        wide = torch.promote_types(dt_in.dtype, torch.float32)
        dt = F.softplus(F.linear(dt_in.to(wide), self.dt_proj.weight.to(wide), self.dt_proj.bias.to(wide)))
        return xs, dt, -self.A_log.to(wide).exp(), Bm, Cm, z, conv_state

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels import s6

        check_packed(x, state, cu_seqlens)
        conv_past, h0 = (None, None) if state is None else state
        *scan, conv_state = self._scan_inputs(x, conv_past, cu_seqlens)
        xs, dt, A, Bm, Cm, z = scan
        y, final = s6(xs, dt, A, Bm, Cm, self.D, z, initial_state=h0, cu_seqlens=cu_seqlens, backend=self.backend)
        return self.out(y), (conv_state, final)

    def step(self, x, state=None):
        from alloyml.kernels import s6_step

        conv_past, h0 = (None, None) if state is None else state
        xs, dt, A, Bm, Cm, z, conv_state = self._scan_inputs(x[:, None], conv_past)
        y, new = s6_step(xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], self.D, z[:, 0], h0)
        return self.out(y), (conv_state, new)
