"""Random inputs for each op, a generic way to call it, its one-token step, and the error measure.

Shared by the kernel tests (imported as a plain module: pytest puts this folder on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from alloyml.kernels import gla, gla_step, linear_attn, linear_attn_step, selective_scan, selective_scan_step


def rel_rms(got, want) -> float:
    """Relative RMS error of `got` against `want`, computed in float64."""
    got, want = got.double(), want.double()
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-300)).item()


@dataclass
class OpCase:
    """An op under test: `make(B, T, H, K, V, gate_scale, gen)` returns float64 inputs by name."""

    name: str
    op: callable
    step: callable
    make: callable
    time_args: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)
    state_extra: int = 0  # extra value columns in the state (the normaliser of linear_attn)

    def __call__(self, inputs: dict, **kw):
        return self.op(**inputs, **self.kwargs, **kw)

    def decode(self, inputs: dict, state, t0: int):
        """Token-by-token steps from position t0 on, starting from `state`: (o: [B, T - t0, H, V], state)."""
        outs = []
        T = inputs[self.time_args[0]].shape[1]
        for t in range(t0, T):
            token = {n: (x[:, t] if n in self.time_args else x) for n, x in inputs.items()}
            o, state = self.step(**token, state=state, **self.kwargs)
            outs.append(o)
        return torch.stack(outs, dim=1), state


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def make_linear_attn(B, T, H, K, V, scale, gen, decay=True, positive=False):
    q, k = _randn(gen, B, T, H, K), _randn(gen, B, T, H, K)
    if positive:  # the feature map of "Transformers are RNNs": elu(x) + 1 > 0
        q, k = F.elu(q) + 1, F.elu(k) + 1
    inputs = {"q": q, "k": k, "v": _randn(gen, B, T, H, V)}
    if decay:  # gamma = exp(-scale * u), u in [0.05, 1]
        inputs["decay"] = torch.exp(-scale * (0.05 + 0.95 * torch.rand(H, generator=gen, dtype=torch.float64)))
    return inputs


def make_gla(B, T, H, K, V, scale, gen):
    return {
        "q": _randn(gen, B, T, H, K),
        "k": _randn(gen, B, T, H, K),
        "v": _randn(gen, B, T, H, V),
        "g": F.logsigmoid(_randn(gen, B, T, H, K)) * scale,
    }


def make_selective_scan(B, T, H, K, V, scale, gen):
    return {
        "x": _randn(gen, B, T, H, V),
        "dt": F.softplus(_randn(gen, B, T, H)) * scale,
        "A": -torch.exp(0.5 * _randn(gen, H)),
        "B": _randn(gen, B, T, H, K),
        "C": _randn(gen, B, T, H, K),
        "D": _randn(gen, H),
    }


OPS = {
    "linear_attn": OpCase("linear_attn", linear_attn, linear_attn_step, make_linear_attn, ("q", "k", "v")),
    "linear_attn_nodecay_norm": OpCase(
        "linear_attn_nodecay_norm", linear_attn, linear_attn_step,
        lambda *a: make_linear_attn(*a, decay=False, positive=True), ("q", "k", "v"),
        kwargs={"normalize": True}, state_extra=1,
    ),
    "linear_attn_decay_norm": OpCase(
        "linear_attn_decay_norm", linear_attn, linear_attn_step,
        lambda *a: make_linear_attn(*a, positive=True), ("q", "k", "v"), kwargs={"normalize": True},
        state_extra=1,
    ),
    "gla": OpCase("gla", gla, gla_step, make_gla, ("q", "k", "v", "g")),
    "selective_scan": OpCase(
        "selective_scan", selective_scan, selective_scan_step, make_selective_scan, ("x", "dt", "B", "C")
    ),
}


def make_case(case: OpCase, B, T, H, K, V, scale=1.0, seed=0):
    """Inputs (float64) and a random initial state [B, H, K, V (+1)]."""
    gen = torch.Generator().manual_seed(seed)
    inputs = case.make(B, T, H, K, V, scale, gen)
    h0 = _randn(gen, B, H, K, V + case.state_extra)
    if case.state_extra:  # a key-sum column must stay positive, like one built from positive keys
        h0[..., -1] = h0[..., -1].abs() + 1
    return inputs, h0


def run_with_grads(case: OpCase, inputs: dict, h0, dtype, backend, device="cpu", **kw):
    """Forward + backward of a fixed random projection of (o, final_state) on `device`.

    Returns {"o", "final_state", "d<name>" for each input, "dinitial_state"} as float64 on the CPU."""
    leaves = {n: x.detach().to(device, dtype).requires_grad_() for n, x in inputs.items()}
    h0_leaf = h0.detach().to(device, dtype).requires_grad_()
    o, state = case(leaves, initial_state=h0_leaf, backend=backend, **kw)
    gen = torch.Generator().manual_seed(123)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(device)
    w_s = torch.randn(state.shape, generator=gen, dtype=torch.float64).to(device)
    ((o.double() * w_o).sum() + (state.double() * w_s).sum()).backward()
    out = {"o": o, "final_state": state, **{f"d{n}": x.grad for n, x in leaves.items()}}
    out["dinitial_state"] = h0_leaf.grad
    return {key: x.detach().double().cpu() for key, x in out.items()}
