"""Every Triton kernel specialisation the engines launch compiles for an H100 (sm_90), down to a cubin,
on this GPU-less machine: the launches are recorded from real forward + backward calls on CPU tensors
(nothing runs), then compiled ahead of time. See gpu_compile.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl
from gpu_compile import H100_SHARED_MEMORY, jit_functions, recording

from alloyml.kernels.common import chunk_triton, fused_recurrent_triton

ENGINES = {
    "triton": (chunk_triton, chunk_triton.chunk_gated_triton),
    "triton_recurrent": (fused_recurrent_triton, fused_recurrent_triton.fused_recurrent_gated_triton),
}


def _inputs(gate: str, dtype, K: int, V: int, T: int = 80, B: int = 1, H: int = 2):
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to(dtype).requires_grad_()
    shape = {"none": None, "scalar": (B, T, H), "vector": (B, T, H, K)}[gate]
    g = None if shape is None else (-torch.rand(*shape, generator=gen)).to(dtype).requires_grad_()
    h0 = torch.randn(B, H, K, V, generator=gen).requires_grad_()
    return q, k, v, g, h0


# Every gate kind at the benchmark's head size in bfloat16 (the GPU training case), plus float32 at an
# awkward size that masks part of a block; the slow test adds the rest of the matrix.
DEFAULT_CASES = [(gate, torch.bfloat16, 128, 128) for gate in ("none", "scalar", "vector")] + [
    ("vector", torch.float32, 60, 20)
]
ALL_CASES = [
    (gate, dtype, K, V)
    for gate in ("none", "scalar", "vector")
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
    for K, V in ((64, 64), (128, 128), (60, 20))
]


def recorded_launches(engine: str, cases) -> list:
    """The distinct launches of one engine over `cases` (gate kind, dtype, K, V), forward + backward."""
    module, run = ENGINES[engine]
    distinct = {}
    with recording(*jit_functions(module)) as launches:
        for gate, dtype, K, V in cases:
            q, k, v, g, h0 = _inputs(gate, dtype, K, V)
            o, state = run(q, k, v, g, K**-0.5, h0)
            (o.float().sum() + state.sum()).backward()
    for launch in launches:
        distinct.setdefault(launch.key(), launch)
    return list(distinct.values())


def assert_all_compile(launches) -> None:
    names = {launch.kernel.__name__ for launch in launches}
    assert any("fwd" in name for name in names) and any("bwd" in name for name in names), names
    for launch in launches:
        compiled = launch.compile()
        assert compiled.asm["cubin"], launch.kernel.__name__
        # a block that asks for more shared memory than an SM has compiles but fails at launch
        assert compiled.metadata.shared <= H100_SHARED_MEMORY, (launch.kernel.__name__, compiled.metadata.shared)


@pytest.fixture
def in_child_without_interpreter(request):
    """True when the test already ran, in a child process: under TRITON_INTERPRET=1 (which `-m triton`
    may be run with) @triton.jit makes interpreted functions, which cannot be compiled, so the test runs
    again in a Python without it and passes or fails with that run."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        cwd=request.config.rootpath, env=env, capture_output=True, text=True, timeout=3000,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout[-2000:]  # it ran, rather than being deselected
    return True


@pytest.mark.triton
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_launched_kernel_compiles_for_an_h100(engine, in_child_without_interpreter):
    if not in_child_without_interpreter:
        assert_all_compile(recorded_launches(engine, DEFAULT_CASES))


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_dtype_and_size_compiles_for_an_h100(engine, in_child_without_interpreter):
    if not in_child_without_interpreter:
        assert_all_compile(recorded_launches(engine, ALL_CASES))


@triton.jit
def _odd_arange_kernel(x, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(x + offsets, tl.load(x + offsets) * 2)


@pytest.mark.triton
def test_a_kernel_a_gpu_rejects_fails_the_check(in_child_without_interpreter):
    """The check can fail: a block of 20 (not a power of two) is refused by the GPU compiler."""
    if in_child_without_interpreter:
        return
    with recording(_odd_arange_kernel) as launches:
        for n in (16, 20):
            _odd_arange_kernel[(1,)](torch.zeros(n), N=n)
    launches[0].compile()
    with pytest.raises(triton.CompilationError, match="power of 2"):
        launches[1].compile()
