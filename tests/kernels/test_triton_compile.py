"""Every Triton kernel specialisation the backends launch compiles for an H100 (sm_90a), down to a cubin,
on this GPU-less machine: the launches are recorded from real forward + backward calls on CPU tensors
(nothing runs), specialised as a real launch would be (divisibility by 16 included), then compiled ahead
of time and inspected: matrix products on tensor cores (bf16 operands for bf16 inputs, tf32 for
float32), registers and shared memory within an H100's limits. See gpu_compile.py.

`python tests/kernels/test_triton_compile.py` writes the table (kernel x dtype x registers x spills x MMA
kind) to benchmarks/results/kernels.compile.json."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl
from gpu_compile import H100_SHARED_MEMORY, jit_functions, recording, usage

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


H100_REGISTERS = 255  # per thread; more cannot be allocated (ptxas spills instead)
DOT_KIND = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "tf32"}


# Packed sequences (the chunked engine's stream of chunks, whose state passes compile with SEGMENTS):
# the same cases with offsets, B = 1.
PACKED_CASES = [(gate, torch.bfloat16, 128, 128, "packed") for gate in ("none", "scalar", "vector")]


def _run_case(engine: str, case):
    """One forward + backward of `engine` on the inputs of `case` (gate, dtype, K, V[, "packed"])."""
    module, run = ENGINES[engine]
    gate, dtype, K, V = case[:4]
    q, k, v, g, h0 = _inputs(gate, dtype, K, V)
    if case[4:] == ("packed",):
        from alloyml.kernels.common.varlen import stream_layout, to_stream

        layout = stream_layout(torch.tensor([0, 30, 80]), q.shape[1], chunk_triton.CHUNK_SIZE)
        q, k, v = (to_stream(x, layout) for x in (q, k, v))
        g = None if g is None else to_stream(g, layout)
        o, state = run(q, k, v, g, K**-0.5, torch.cat([h0, h0]), chunk_triton.segments_of(layout))
    else:
        o, state = run(q, k, v, g, K**-0.5, h0)
    (o.float().sum() + state.sum()).backward()


def recorded_launches(engine: str, cases) -> list:
    """The distinct launches of one engine over `cases` (gate kind, dtype, K, V[, "packed"]), forward +
    backward, each with the case it came from (launch.case)."""
    module, run = ENGINES[engine]
    distinct = {}
    for case in cases:
        if case[4:] and engine != "triton":
            continue  # packed sequences stream through the chunked engine only
        with recording(*jit_functions(module)) as launches:
            _run_case(engine, case)
        for launch in launches:
            launch.case = case
            distinct.setdefault(launch.key(), launch)
    return list(distinct.values())


def inspect(launch) -> dict:
    """Compile one launch for sm_90a and describe it (see gpu_compile.usage)."""
    import inspect as source

    gate, dtype, K, V = launch.case[:4]
    compiled = launch.compile()
    assert compiled.asm["cubin"], launch.kernel.__name__
    return {"kernel": launch.kernel.__name__, "dtype": str(dtype).removeprefix("torch."), "gate": gate, "K": K,
            "V": V, "packed": launch.case[4:] == ("packed",), "num_warps": launch.args.get("num_warps"),
            "BK": launch.args.get("BK"), "BV": launch.args.get("BV"),
            "has_dot": "_dot(" in source.getsource(launch.kernel.fn), **usage(compiled)}


# The chunked kernels compile without spills in every specialisation (297 in ALL_CASES, both backends,
# measured 2026-12-03; at up to 255 registers); the step-by-step backward spills 12 B a thread at
# K = V = 128 in 16-bit (kernels.compile.json), so spills are asserted for the chunked backend only.
SPILL_FREE = {"triton": True, "triton_recurrent": False}


def assert_all_compile(launches, spill_free: bool = True) -> list[dict]:
    names = {launch.kernel.__name__ for launch in launches}
    assert any("fwd" in name for name in names) and any("bwd" in name for name in names), names
    rows = []
    for launch in launches:
        row = inspect(launch)
        # a block that asks for more shared memory than an SM has compiles but fails at launch
        assert row["shared"] <= H100_SHARED_MEMORY, row
        assert row["registers"] <= H100_REGISTERS, row
        if spill_free:
            assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        if row["has_dot"]:  # every matrix product on tensor cores, with operands of the inputs' type
            want = DOT_KIND[launch.case[1]]
            assert row["mma"] and all(kind.endswith(" " + want) for kind in row["mma"]), row
        rows.append(row)
    return rows


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
        assert_all_compile(recorded_launches(engine, DEFAULT_CASES), SPILL_FREE[engine])


@pytest.mark.slow
@pytest.mark.triton
def test_packed_state_passes_compile_for_an_h100(in_child_without_interpreter):
    """The state passes' SEGMENTS specialisations (packed sequences) compile like the rest."""
    if not in_child_without_interpreter:
        launches = [launch for launch in recorded_launches("triton", PACKED_CASES)
                    if launch.args.get("SEGMENTS")]
        assert {launch.kernel.__name__ for launch in launches} == {"chunk_fwd_h_kernel", "chunk_bwd_dh_kernel"}
        assert_all_compile(launches + recorded_launches("triton", DEFAULT_CASES[:1]))


@pytest.mark.triton
@pytest.mark.parametrize("case", DEFAULT_CASES + PACKED_CASES + [("vector", torch.bfloat16, 64, 64)])
def test_launches_follow_the_launch_table(case, in_child_without_interpreter):
    """Every chunked kernel launches with the block sizes and warps of chunk_triton.LAUNCH_TABLE for its
    gate kind and sizes (recorded launches, nothing compiles or runs), and every kernel is in the table."""
    if in_child_without_interpreter:
        return
    launches = recorded_launches("triton", [case])
    assert {launch.kernel.__name__ for launch in launches} == set(chunk_triton.LAUNCH_TABLE)
    gate, dtype, K, V = case[:4]
    kind = {"none": 0, "scalar": 1, "vector": 2}[gate]
    for launch in launches:
        base, by_gate = chunk_triton.LAUNCH_TABLE[launch.kernel.__name__]
        want = {**base, **by_gate.get(kind, {})}
        assert launch.args["num_warps"] == want["num_warps"], (launch.kernel.__name__, launch.args["num_warps"])
        for block, dim in (("BK", K), ("BV", V)):
            if block in want:  # capped by the size of the dimension (a power of two, >= 16)
                assert launch.args[block] == max(16, min(want[block], triton.next_power_of_2(dim))), (
                    launch.kernel.__name__, block, launch.args[block])


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_dtype_and_size_compiles_for_an_h100(engine, in_child_without_interpreter):
    if not in_child_without_interpreter:
        assert_all_compile(recorded_launches(engine, ALL_CASES), SPILL_FREE[engine])


CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)  # programs per grid axis


@pytest.mark.triton
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_grids_fit_cuda_limits_with_many_sequences(engine, in_child_without_interpreter):
    """B * H = 70,000 (e.g. 4,375 packed documents x 16 heads) fits a grid: batch * head rides on axis 0,
    the only one that can pass 65,535 (recorded launches, nothing runs)."""
    if in_child_without_interpreter:
        return
    module, run = ENGINES[engine]
    with recording(*jit_functions(module)) as launches:
        q, k, v, g, h0 = _inputs("scalar", torch.float32, 16, 16, T=20, B=4375, H=16)
        o, state = run(q, k, v, g, 0.25, h0)
        (o.sum() + state.sum()).backward()
    assert launches
    for launch in launches:
        assert all(n <= limit for n, limit in zip(launch.grid, CUDA_GRID_LIMITS, strict=False)), (
            launch.kernel.__name__, launch.grid)


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


BF16_CASES = [(gate, torch.bfloat16, K, K) for gate in ("none", "scalar", "vector") for K in (64, 128)]


def write_table(path=None, quick: bool = False) -> None:
    """Every launched specialisation of both backends over ALL_CASES (and the packed cases), compiled and
    inspected, as benchmarks/results/kernels.compile.json (rows: kernel, dtype, gate, K, V, block sizes,
    warps, registers, spills, shared, MMA kinds).

    quick (`--bf16`): the chunked engine over BF16_CASES + PACKED_CASES only (about 25 s a
    specialisation on a loaded 2-core machine, so the full matrix takes hours there); the step-by-step
    engine's and the S6 kernels' rows, whose kernels that change does not touch, are carried over from
    the previous table (marked "carried_from"). `--s6` recompiles only the S6 rows (write_s6_rows)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    from _common import machine

    out = Path(path) if path else root / "benchmarks" / "results" / "kernels.compile.json"
    rows = []
    if quick:
        previous = json.loads(out.read_text())
        rows += [{**row, "carried_from": row.get("carried_from", previous["when"])} for row in previous["rows"]
                 if row["backend"] in ("triton_recurrent", "s6_triton")]
        launches = recorded_launches("triton", BF16_CASES + PACKED_CASES)
        rows += [{"backend": "triton", **row} for row in assert_all_compile(launches, SPILL_FREE["triton"])]
        cases = ("triton: bf16, K = V in {64, 128}, every gate kind, unpacked and packed; triton_recurrent: "
                 "carried over")
        command = "python tests/kernels/test_triton_compile.py --bf16"
    else:
        for engine in sorted(ENGINES):
            launches = recorded_launches(engine, ALL_CASES + PACKED_CASES)
            rows += [{"backend": engine, **row} for row in assert_all_compile(launches, SPILL_FREE[engine])]
        rows += s6_rows(s6_launches())
        cases = "ALL_CASES (every gate kind x float32 / bf16 / fp16 x K, V in {64, 128, (60, 20)}) + packed"
        command = "python tests/kernels/test_triton_compile.py"
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    summary = {
        "cases": cases,
        "specialisations": len(rows),
        "max_registers": max(r["registers"] for r in rows),
        "with_spills": sum(r["spill_stores"] > 0 for r in rows),
        "bf16_with_spills": sum(r["spill_stores"] > 0 for r in bf16),
        "bf16_chunked_max_registers": max(r["registers"] for r in bf16 if r["backend"] == "triton"),
        "bf16_dot_kernels_on_bf16_mma": sum(bool(r["mma"]) for r in bf16 if r["has_dot"]),
        "bf16_dot_kernels": sum(r["has_dot"] for r in bf16),
    }
    import datetime

    out.write_text(json.dumps({
        "topic": "kernels.compile",
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(), "command": command,
        "target": "sm_90a (H100), compiled ahead of time; nothing ran on a GPU", "summary": summary,
        "rows": rows,
    }, indent=1) + "\n")
    print(json.dumps(summary))


# Mamba-1's selective scan (kernels/s6/triton_scan.py) and the diagonal scan RG-LRU runs on
# (common/diagonal_scan_triton.py): (dtype, D, N, gate and skip), the block's usual
# state size N = 16 at D = 64, and odd sizes that mask part of both blocks.
S6_CASES = [(torch.float32, 64, 16, True), (torch.bfloat16, 64, 16, True), (torch.float32, 20, 7, False)]


def s6_launches(cases=S6_CASES) -> list:
    """The distinct launches of the S6 kernels over `cases`, forward + backward (recorded: nothing runs, so
    the backward sees unwritten outputs, which only the values, not the launch, depend on)."""
    from alloyml.kernels.s6 import triton_scan

    distinct = {}
    for case in cases:
        dtype, D, N, full = case
        gen = torch.Generator().manual_seed(0)
        x, dt, z = (torch.rand(2, 40, D, generator=gen).to(dtype).requires_grad_() for _ in range(3))
        A = (-torch.rand(D, N, generator=gen)).requires_grad_()
        B, C = (torch.randn(2, 40, N, generator=gen).to(dtype).requires_grad_() for _ in range(2))
        skip = torch.randn(D, generator=gen).requires_grad_() if full else None
        h0 = torch.randn(2, D, N, generator=gen).requires_grad_() if full else None
        with recording(*jit_functions(triton_scan)) as launches:
            y, state = triton_scan.s6_triton(x, dt, A, B, C, skip, z if full else None, h0)
            (y.float().sum() + state.sum()).backward()
        for launch in launches:
            launch.case = case
            distinct.setdefault(launch.key(), launch)
    from alloyml.kernels.common import diagonal_scan_triton

    for M in (64, 130):  # RG-LRU's scan on the shared diagonal-scan kernels: one block, and a masked second
        case = (torch.float32, M, 1, False)
        gen = torch.Generator().manual_seed(0)
        log_a = (-torch.rand(2, 40, M, generator=gen)).requires_grad_()
        b = torch.randn(2, 40, M, generator=gen).requires_grad_()
        with recording(*jit_functions(diagonal_scan_triton)) as launches:
            diagonal_scan_triton.diagonal_scan_triton(log_a, b).sum().backward()
        for launch in launches:
            launch.case = case
            distinct.setdefault(launch.key(), launch)
    return list(distinct.values())


def s6_rows(launches) -> list[dict]:
    rows = []
    for launch in launches:
        dtype, D, N, full = launch.case
        compiled = launch.compile()
        assert compiled.asm["cubin"], launch.kernel.__name__
        row = {"backend": "s6_triton", "kernel": launch.kernel.__name__, "dtype": str(dtype).removeprefix("torch."),
               "D": D, "N": N, "gate_skip_h0": full, "BD": launch.args.get("BD", launch.args.get("BM")),
               "BN": launch.args.get("BN"),
               "has_dot": False, **usage(compiled)}
        assert row["shared"] <= H100_SHARED_MEMORY and row["registers"] <= H100_REGISTERS, row
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        rows.append(row)
    assert {r["kernel"] for r in rows} == {"s6_fwd_kernel", "s6_bwd_kernel", "diagonal_scan_fwd_kernel",
                                           "diagonal_scan_bwd_kernel"}
    return rows


@pytest.mark.triton
def test_s6_kernels_compile_for_an_h100_without_spills(in_child_without_interpreter):
    if not in_child_without_interpreter:
        s6_rows(s6_launches())


def write_s6_rows(path=None) -> None:
    """The S6 kernels' rows (backend "s6_triton") written into kernels.compile.json, the other rows kept."""
    import datetime
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    out = Path(path) if path else results / "kernels.compile.json"
    table = json.loads(out.read_text())
    rows = s6_rows(s6_launches())
    table["rows"] = [r for r in table["rows"] if r.get("backend") != "s6_triton"] + rows
    table["summary"]["s6_triton"] = {
        "cases": "S6: float32 and bf16 at D=64 N=16 (gate, skip, initial state), float32 D=20 N=7 (none); "
                 "diagonal scan (RG-LRU): float32 M=64 and M=130 (rows with N=1)",
        "specialisations": len(rows), "max_registers": max(r["registers"] for r in rows),
        "with_spills": sum(r["spill_stores"] > 0 for r in rows),
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python tests/kernels/test_triton_compile.py --s6"}
    out.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["summary"]["s6_triton"]))


if __name__ == "__main__":
    if "--s6" in sys.argv[1:]:
        write_s6_rows()
    else:
        write_table(quick="--bf16" in sys.argv[1:])
