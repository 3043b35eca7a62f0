"""Mamba-1's selective scan on Triton (kernels/s6/triton_scan.py), run by Triton's CPU interpreter
(TRITON_INTERPRET=1, float32, small odd shapes): outputs, final states and the gradients of x, dt, A, B, C,
D, z and the initial state against the float64 naive loop (relative RMS <= 1e-5, or 1.5x the float32 loop's
own error, as for the CPU scan), over three dt ranges (one odd shape each), with and without gate, skip and
initial state, an unused final state, and half-precision inputs. On a CUDA machine the `gpu` test runs the
same comparison on the device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

# Triton reads TRITON_INTERPRET when a kernel is first defined: the checks run in a child process
CHILD_CODE = """
import sys
sys.path.insert(0, {here!r})
import torch
from ssm_cases import check_forms_against_naive, rel_rms
from test_s6 import DT_RANGES, make, run
from alloyml.kernels import s6
from alloyml.kernels.s6 import triton_scan

calls = []
launch = triton_scan.s6_triton
triton_scan.s6_triton = lambda *a: (calls.append(1), launch(*a))[1]
# one odd shape per dt range (the interpreter is slow): masked channel and state blocks, 1-2 channel blocks
for dt_range, (b, T, D, N, gate) in zip(DT_RANGES, [(2, 13, 5, 7, True), (1, 9, 20, 3, False),
                                                     (3, 6, 17, 16, True)], strict=True):
    inputs = make(b, T, D, N, dt_range, torch.Generator().manual_seed(T * D), gate=gate)
    check_forms_against_naive(run("naive"), [run("triton")], inputs)
    bare = dict(inputs, D=None, initial_state=None)  # no skip, zero initial state
    check_forms_against_naive(run("naive"), [run("triton")], bare)
assert len(calls) >= 6, calls  # the kernels ran, not the CPU scan
# an unused final state (no gradient reaches it) and half inputs
a = make(2, 11, 6, 5, DT_RANGES[1], torch.Generator().manual_seed(3))
args = [a[k] for k in ("x", "dt", "A", "B", "C", "D", "z")]
for backend in ("triton", "naive"):
    y, _ = s6(*args, initial_state=a["initial_state"], backend=backend, output_final_state=False)
    g = torch.autograd.grad(y.square().sum(), args + [a["initial_state"]])
    if backend == "triton":
        got = g
assert all(rel_rms(u, v) <= 1e-5 for u, v in zip(got, g))
half = [t.detach().half() for t in args]
y, s = s6(*half, initial_state=a["initial_state"].detach(), backend="triton")
want, want_s = s6(*[t.double() for t in half], initial_state=a["initial_state"].detach().double(), backend="naive")
assert y.dtype == torch.float16 and s.dtype == torch.float32
assert rel_rms(y, want) <= 2e-3 and rel_rms(s, want_s) <= 1e-5
print("ok", flush=True)
"""


@pytest.mark.triton
def test_s6_triton_interpreter_matches_naive():
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", CHILD_CODE.format(here=str(HERE))], env=env, capture_output=True,
                         text=True, timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout


# RG-LRU's scan on the shared diagonal-scan kernels (common/diagonal_scan_triton.py)
RGLRU_CHILD = """
import sys
sys.path.insert(0, {here!r})
import torch
from ssm_cases import TIMESCALES, check_forms_against_naive
from test_rglru import make, run_scan
from alloyml.kernels.common import diagonal_scan_triton

calls = []
launch = diagonal_scan_triton.diagonal_scan_triton
diagonal_scan_triton.diagonal_scan_triton = lambda *a: (calls.append(1), launch(*a))[1]
for timescale, (b, T, D) in zip(TIMESCALES, [(2, 13, 5), (1, 40, 130), (3, 7, 17)], strict=True):
    inputs = make(b, T, D, timescale, torch.Generator().manual_seed(T * D))
    check_forms_against_naive(run_scan("naive"), [run_scan("triton")], inputs)
assert len(calls) == 3, calls
print("ok", flush=True)
"""


@pytest.mark.triton
def test_rglru_triton_interpreter_matches_naive():
    """Outputs, final states and the gradients of x, r, i, Lambda and the initial state, three timescale
    ranges, odd sizes (130 channels: two blocks of 128, the second masked)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", RGLRU_CHILD.format(here=str(HERE))], env=env, capture_output=True,
                         text=True, timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("b", "T", "D", "N"), [(2, 63, 40, 16), (1, 300, 64, 16)])
def test_s6_triton_on_gpu_matches_naive(b, T, D, N):
    from ssm_cases import check_forms_against_naive
    from test_s6 import DT_RANGES, make, run

    for dt_range in DT_RANGES:
        inputs = make(b, T, D, N, dt_range, torch.Generator().manual_seed(T))
        inputs = {k: None if v is None else v.detach().cuda().requires_grad_() for k, v in inputs.items()}
        check_forms_against_naive(run("naive"), [run("auto")], inputs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("b", "T", "D"), [(2, 63, 40), (1, 300, 130)])
def test_rglru_triton_on_gpu_matches_naive(b, T, D):
    from ssm_cases import TIMESCALES, check_forms_against_naive
    from test_rglru import make, run_scan

    for timescale in TIMESCALES:
        inputs = make(b, T, D, timescale, torch.Generator().manual_seed(T))
        inputs = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
        check_forms_against_naive(run_scan("naive"), [run_scan("auto")], inputs)
