"""Inputs for the state-space ops' fast-vs-naive rows of kernels_conv.py (S6, S4D, LRU, RG-LRU), sized as
one layer of a small model: B=1 and 64 channels (S6: N=16 state entries per channel, as Mamba's default;
S4D: N=64, 32 complex modes; LRU: 64 complex modes). Each case is a function of the backend that runs
forward + backward on fixed inputs, the loss touching the outputs and the final states."""

from __future__ import annotations

SHAPES = {
    "s6": "B=1 D=64 N=16",
    "s4d": "B=1 H=64 N=64",
    "lru": "B=1 N=64",
    "rglru": "B=1 D=64",
}


def ssm_case(op: str, T: int):
    import math

    import torch

    from alloyml.kernels import lru, rglru, s4d, s6
    from alloyml.kernels.s4d import s4d_init

    gen = torch.Generator().manual_seed(0)

    def leaf(t):
        return t.requires_grad_()

    if op == "s6":
        D, N = 64, 16
        args = [leaf(torch.randn(1, T, D, generator=gen)),
                leaf((math.log(1e-3) + math.log(1e2) * torch.rand(1, T, D, generator=gen)).exp()),  # dt in [1e-3, 0.1]
                leaf(-torch.arange(1, N + 1, dtype=torch.float32).expand(D, N).clone()),
                leaf(torch.randn(1, T, N, generator=gen)), leaf(torch.randn(1, T, N, generator=gen)),
                leaf(torch.randn(D, generator=gen)), leaf(torch.randn(1, T, D, generator=gen))]

        def fn(backend):
            return s6(*args, backend=backend)
    elif op == "s4d":
        H, N = 64, 64
        ar, ai = s4d_init("lin", H, N)
        args = [leaf(torch.randn(1, T, H, generator=gen)),
                leaf(math.log(1e-3) + math.log(1e2) * torch.rand(H, generator=gen)),
                leaf(ar.clone()), leaf(ai.clone()), leaf(torch.randn(H, N // 2, 2, generator=gen) / math.sqrt(N)),
                leaf(torch.randn(H, generator=gen))]

        def fn(backend):
            return s4d(*args, backend=backend)
    elif op == "lru":
        N = 64
        modulus = 0.9 + 0.099 * torch.rand(N, generator=gen)  # |lambda| in [0.9, 0.999], as the paper's init
        args = [leaf(torch.randn(1, T, N, generator=gen)), leaf((-modulus.log()).log()),
                leaf((2 * math.pi * torch.rand(N, generator=gen) / 10).log()), None]

        def fn(backend):
            return lru(*args, backend=backend)
    elif op == "rglru":
        D = 64
        base = 0.9 + 0.099 * torch.rand(D, generator=gen)
        args = [leaf(torch.randn(1, T, D, generator=gen)), leaf(torch.rand(1, T, D, generator=gen)),
                leaf(torch.rand(1, T, D, generator=gen)), leaf(torch.log(base / (1 - base)))]

        def fn(backend):
            return rglru(*args, backend=backend)
    else:
        raise ValueError(f"unknown op {op!r}")

    def run(backend):
        y, final = fn(backend)
        loss = y.real.sum() + y.imag.sum() if y.is_complex() else y.sum()
        final = torch.view_as_real(final) if final.is_complex() else final
        (loss + final.sum()).backward()

    return run
