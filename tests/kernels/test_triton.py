"""The Triton kernels, chunked ("triton") and step by step ("triton_recurrent"), run by Triton's CPU
interpreter (TRITON_INTERPRET=1), against the naive recurrence.

The interpreter is slow (a Python call per op per step), so shapes are tiny; block sizes stay >= 16 in
the kernels so the same code compiles on a GPU. On a CUDA machine the `gpu` tests run the same checks
on the device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

# Triton reads TRITON_INTERPRET when a kernel is first defined, so the interpreter tests run in a child
# process that sets it before importing anything; the child runs CHILD_CODE.
CHILD_CODE = """
import sys
sys.path.insert(0, {here!r})
import torch
import alloyml.kernels.common.chunk_triton as chunk_triton
from kernel_cases import OPS, make_case, rel_rms
from test_chunk import assert_matches_naive

backend = {backend!r}
default_block = chunk_triton.MAX_BLOCK
for name in {names!r}:
    case = OPS[name]
    for T, H, K, V, gate_scale, max_block in {shapes!r}:
        chunk_triton.MAX_BLOCK = max_block or default_block
        inputs, h0 = make_case(case, B=2, T=T, H=H, K=K, V=V, scale=gate_scale, seed=1)
        assert_matches_naive(case, inputs, h0, backend=backend)
    chunk_triton.MAX_BLOCK = default_block
    inputs, h0 = make_case(case, B=2, T=13, H=2, K=20, V=12, scale=10.0, seed=1)
    if name == "gla":  # packed sequences, an unused final state and float16 inputs through the kernels
        cu = torch.tensor([0, 5, 6, 13])
        packed = {{n: (x[:1] if n in case.time_args else x).float() for n, x in inputs.items()}}
        h = h0[:1].float().repeat(3, 1, 1, 1)
        o, s = case(packed, initial_state=h, cu_seqlens=cu, backend=backend)
        want_o, want_s = case(packed, initial_state=h, cu_seqlens=cu, backend="naive")
        assert rel_rms(o, want_o) <= 1e-5 and rel_rms(s, want_s) <= 1e-5
        grads = []
        for run in (backend, "naive"):
            leaves = {{n: x.float().requires_grad_() for n, x in inputs.items()}}
            o, _ = case(leaves, backend=run)
            grads.append(torch.autograd.grad(o.square().sum(), list(leaves.values())))
        assert all(rel_rms(a, b) <= 1e-5 for a, b in zip(*grads))
        half = {{n: x.half() for n, x in inputs.items()}}
        o, s = case(half, initial_state=h0.float(), backend=backend)
        want_o, _ = case({{n: x.double() for n, x in half.items()}}, initial_state=h0, backend="naive")
        assert o.dtype == torch.float16 and rel_rms(o, want_o) <= 2e-3
    print("ok", name, flush=True)
"""

# (T, H, K, V, gate scale, largest key/value block or None for the default). The chunked kernels (chunks of
# 64 steps) get one chunk cut short by T (13 steps, K = 20 masked in a 32 block), two chunks with a
# partial second one, several key and value blocks (K = V = 20 in blocks of 16), and gate scales 1 and 10.
# Measured in the interpreter: every output, final state and gradient within 5e-7 of the float64
# recurrence (the naive float32 recurrence's own errors are 1e-7 to 4e-7), apart from the normalised
# linear_attn's dq, ill-conditioned in any float32 arithmetic (2.0e-5, the naive float32 recurrence's
# 4.8e-5: see assert_matches_naive), so the CPU tolerance 1e-5 holds as it is. H = 2 at gate scale 10:
# with one head, selective_scan's dA is a single sum that float32 cannot evaluate better than 1e-5 (the
# naive float32 recurrence misses it by 1.0e-5), which would test float32 rather than the kernels.
SHAPES = {
    "triton": [(13, 2, 20, 12, 10.0, None), (70, 1, 20, 20, 1.0, 16), (70, 2, 32, 16, 10.0, None)],
    "triton_recurrent": [(13, 2, 20, 12, 10.0, None)],
}


@pytest.mark.triton
@pytest.mark.parametrize("backend", sorted(SHAPES))
@pytest.mark.parametrize("names", [("gla",), ("linear_attn", "linear_attn_decay_norm"), ("selective_scan",)])
def test_triton_interpreter_matches_naive(backend, names):
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = CHILD_CODE.format(here=str(HERE), backend=backend, names=list(names), shapes=SHAPES[backend])
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == len(names)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", sorted(SHAPES))
@pytest.mark.parametrize("name", ["gla", "linear_attn", "linear_attn_decay_norm", "selective_scan"])
@pytest.mark.parametrize(("T", "K", "V", "scale"), [(63, 60, 20, 1.0), (200, 64, 64, 10.0)])
def test_triton_on_gpu_matches_naive(backend, name, T, K, V, scale, monkeypatch):
    from kernel_cases import OPS, make_case
    from test_chunk import assert_matches_naive

    from alloyml.kernels.common import chunk_triton

    monkeypatch.setattr(chunk_triton, "FP32_DOT", "ieee")  # exact float32: compared at 1e-4 with float64

    case = OPS[name]
    inputs, h0 = make_case(case, B=2, T=T, H=2, K=K, V=V, scale=scale)
    # 1e-4: on the H100 the GPU's summation order gave the recurrent kernels' d(decay) 2.1e-5 at T=200,
    # gate scale 10
    assert_matches_naive(case, inputs, h0, backend=backend, device="cuda", tol=1e-4)


# Packed sequences on the chunked kernels: one stream of chunks, no padding to the longest (the state
# passes restart at each sequence's first chunk), against each sequence run alone through the float64
# recurrence, outputs, final states and every gradient (initial states included). Lengths cross and hit
# the chunk size of 64; the second layout is the one CUDA / torch.compile get (chunk count bounded from
# the shapes, empty chunks at the end, offsets never read), with an empty sequence (keeps its state).
PACKED_CHILD_CODE = """
import sys
sys.path.insert(0, {here!r})
import torch
from alloyml.kernels.common import checks
from alloyml.kernels.common import chunk_triton
from kernel_cases import OPS, make_case, rel_rms

calls = []
run_stream = chunk_triton.chunk_gated_triton
chunk_triton.chunk_gated_triton = lambda *a: (calls.append(a[-1] is not None), run_stream(*a))[1]

def run(case, inputs, h0, cu, backend):
    leaves = {{n: x.detach().clone().requires_grad_() for n, x in inputs.items()}}
    h = h0.detach().clone().requires_grad_()
    if cu is None:  # each sequence alone
        outs, states = [], []
        for i, (a, b) in enumerate(zip(CU[:-1], CU[1:])):
            part = {{n: (x[:, a:b] if n in case.time_args else x) for n, x in leaves.items()}}
            if b > a:
                o, s = case(part, initial_state=h[i:i + 1], backend=backend)
            else:
                o, s = part[case.time_args[0]][..., :0].sum(-1, keepdim=True).expand(1, 0, 2, V), h[i:i + 1]
            outs.append(o)
            states.append(s)
        o, s = torch.cat(outs, dim=1), torch.cat(states)
    else:
        o, s = case(leaves, initial_state=h, cu_seqlens=cu, backend=backend)
    gen = torch.Generator().manual_seed(0)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    w_s = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * w_o).sum() + (s.double() * w_s).sum(), list(leaves.values()) + [h])
    return [o, s, *grads]

V = 16
for name, lengths, readable in {cases!r}:
    CU = [0]
    for n in lengths:
        CU.append(CU[-1] + n)
    checks.values_readable = (lambda x: True) if readable else (lambda x: False)
    case = OPS[name]
    inputs, h0 = make_case(case, B=1, T=CU[-1], H=2, K=16, V=V, scale=2.0, seed=4)
    h0 = torch.cat([h0] * len(lengths)) + torch.arange(len(lengths), dtype=h0.dtype).view(-1, 1, 1, 1)
    calls.clear()
    got = run(case, {{n: x.float() for n, x in inputs.items()}}, h0.float(), torch.tensor(CU), "triton")
    assert calls == [True], calls  # one call, on the stream
    want = run(case, inputs, h0, None, "naive")
    errors = [rel_rms(a.double(), b) for a, b in zip(got, want)]
    assert max(errors) <= 1e-5, (name, lengths, errors)
    print("ok", name, flush=True)
"""
PACKED_CASES = [("gla", [5, 70, 1, 64, 33], True), ("selective_scan", [5, 70, 1, 64, 33], True),
                ("gla", [40, 0, 65, 3], False)]


@pytest.mark.triton
def test_triton_packed_sequences_run_as_one_stream():
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = PACKED_CHILD_CODE.format(here=str(HERE), cases=PACKED_CASES)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == len(PACKED_CASES)
