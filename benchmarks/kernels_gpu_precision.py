"""Precision of the Triton kernels on a CUDA GPU, per op, input dtype and backend, against float64.

    python benchmarks/kernels_gpu_precision.py   # needs CUDA; writes results/kernels_gpu_precision.json

For each op of the kernel tests (tests/kernels/kernel_cases.py) and each input dtype (float32 with the
default TF32 dots, float32 with exact "ieee" dots, float16, bfloat16), the inputs are rounded to the dtype,
the float64 recurrence runs on those rounded values (on the CPU), and the GPU kernel's outputs, final state
and every input gradient are compared to it by relative RMS. The worst over three shapes (a short partial
chunk, several chunks at a weak and at a strong gate) is reported per key. This measures: it asserts
nothing, so a run always writes its table; tests/kernels/test_triton.py holds the GPU assertions."""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "kernels"))  # the shared op cases of the kernel tests
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # alloyml itself, when run from a checkout without an install

from _common import row, write_results  # noqa: E402

SHAPES = [(63, 1.0), (200, 0.1), (200, 10.0)]  # (T, gate scale); B=2 H=2 K=64 V=64
BACKENDS = ("triton", "triton_recurrent")


def measure(case, dtype, backend, fp32_dot):
    import torch
    from kernel_cases import make_case, rel_rms, run_with_grads

    from alloyml.kernels.common import chunk_triton

    chunk_triton.FP32_DOT = fp32_dot
    worst = {}
    for seed, (T, scale) in enumerate(SHAPES):
        inputs, h0 = make_case(case, B=2, T=T, H=2, K=64, V=64, scale=scale, seed=seed)
        rounded = {n: x.to(dtype).double() for n, x in inputs.items()}
        h0 = h0.float().double()
        want = run_with_grads(case, rounded, h0, torch.float64, "naive")
        got = run_with_grads(case, rounded, h0, dtype, backend, device="cuda")
        for key in want:
            err = rel_rms(got[key], want[key]) if torch.isfinite(got[key]).all() else float("inf")
            worst[key] = max(worst.get(key, 0.0), err)
    return worst


def main():
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("kernels_gpu_precision.py needs a CUDA GPU")
    from kernel_cases import OPS

    dtypes = [("float32 (tf32 dots)", torch.float32, "tf32"), ("float32 (ieee dots)", torch.float32, "ieee"),
              ("float16", torch.float16, "tf32"), ("bfloat16", torch.bfloat16, "tf32")]
    rows = []
    for name, case in sorted(OPS.items()):
        for backend in BACKENDS:
            for label, dtype, fp32_dot in dtypes:
                start = time.perf_counter()
                try:
                    worst, note = measure(case, dtype, backend, fp32_dot), ""
                except Exception as exc:  # a failing combination is reported, the others still run
                    worst, note = {}, f"failed: {type(exc).__name__}: {exc}"[:300]
                top = max(worst.values()) if worst else None
                rows.append(row(
                    f"{name} {label} (GPU, {backend})", "worst relative RMS vs float64",
                    None if top is None else float(f"{top:.3g}"),
                    notes=(note + " " if note else "") + "worst over outputs, final state and every input "
                    f"gradient; shapes B=2 H=2 K=V=64, (T, gate scale) {SHAPES}; {time.perf_counter() - start:.1f}s",
                    per_key={k: float(f"{v:.3g}") for k, v in worst.items()},
                ))
                print(rows[-1]["case"], rows[-1]["alloyml"], note, flush=True)
                write_results("kernels_gpu_precision", rows)  # after every row: a cut-short run keeps them


if __name__ == "__main__":
    main()
