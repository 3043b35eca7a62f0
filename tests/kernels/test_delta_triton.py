"""The delta rule's Triton chunk-to-chunk kernel, run by Triton's CPU interpreter (TRITON_INTERPRET=1, in
a child process that sets it before anything imports Triton), against the float64 naive recurrence:
outputs, final states and every gradient at rel. RMS <= 1e-5, DeltaNet and Gated DeltaNet, odd sizes,
packed sequences."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

CHILD_CODE = """
import sys
sys.path.insert(0, {here!r})
import torch
from ssm_cases import as64, grads
from test_delta import assert_all_within_tol, make, run_op

for gate_shift, T, chunk in [(None, 37, 16), (2.0, 45, 32), (-2.0, 20, 16), (6.0, 70, 64)]:
    inputs = make(2, T, 2, 20, 12, torch.Generator().manual_seed(T), gate_shift=gate_shift)
    want = grads(run_op("naive"), as64(inputs), torch.Generator().manual_seed(1))
    assert_all_within_tol(grads(run_op("triton", chunk), inputs, torch.Generator().manual_seed(1)), want)
cu = torch.tensor([0, 1, 20, 41])
inputs = make(1, 41, 2, 12, 8, torch.Generator().manual_seed(5), gate_shift=2.0, state_rows=3)
want = grads(run_op("naive", cu_seqlens=cu), as64(inputs), torch.Generator().manual_seed(2))
assert_all_within_tol(grads(run_op("triton", 16, cu), inputs, torch.Generator().manual_seed(2)), want)
print("ok")
"""


@pytest.mark.triton
def test_triton_chunk_scan_matches_naive_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", CHILD_CODE.format(here=str(HERE))], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
