"""Kernel benchmarks: forward + backward time of each op.

CPU (always): the chunked PyTorch path against the naive recurrence (naive.py), B=2, H=4, D=64,
T in {1k, 2k, 4k, 8k}; target >= 20x at T=4096. Writes benchmarks/results/kernels.json.
GPU (when CUDA is there): both Triton paths, the chunked kernels ("triton") and the step-by-step ones
("triton_recurrent"), against flash-linear-attention's chunked kernels (the same op and inputs), B=8,
H=16, T=4096, D=128, bf16, and the fraction of the memory-bandwidth lower bound (the bytes each pass must
move at the device's measured copy bandwidth). Writes kernels.gpu.json.

    python benchmarks/kernels.py [--quick] [--gpu-only]

--quick: T up to 4096, and the naive recurrence timed over 1024 steps and scaled to T (its cost per step
is constant); without it T=8192 is added and the naive recurrence runs in full (about a minute here).

The naive recurrence is naive.py: the paper's recurrence one token at a time in a Python loop, forward and
backward through autograd, linear in T. (Until 2026-11-25 it indexed x[:, t] at every step, whose backward zero-fills a
[B, T, ...] gradient per step: quadratic in T, about 3x slower at T=1024 and 10x at T=4096, which
inflated the ratios reported before then.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ratio, row, write_results  # noqa: E402

OPS = ("linear_attn", "gla", "selective_scan")
GPU_BACKENDS = ("triton", "triton_recurrent")  # chunked, step by step


def make_inputs(op: str, B: int, T: int, H: int, D: int, device="cpu", dtype=None):
    """Random inputs for `op` as keyword arguments of the public function; gates at a typical scale."""
    import torch
    import torch.nn.functional as F

    dtype = dtype or torch.float32
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    if op == "linear_attn":  # RetNet's decays
        decay = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=device))
        args = {"q": randn(B, T, H, D), "k": randn(B, T, H, D), "v": randn(B, T, H, D), "decay": decay}
    elif op == "gla":
        args = {"q": randn(B, T, H, D), "k": randn(B, T, H, D), "v": randn(B, T, H, D),
                "g": F.logsigmoid(randn(B, T, H, D)) / 16}
    else:
        args = {"x": randn(B, T, H, D), "dt": F.softplus(randn(B, T, H)), "A": -torch.rand(H, device=device) - 0.5,
                "B": randn(B, T, H, D), "C": randn(B, T, H, D)}
    return {n: (x.to(dtype) if x.dim() == 4 else x).requires_grad_() for n, x in args.items()}


def fwd_bwd(fn, args: dict):
    """One forward + backward of sum(o) + sum(final_state)."""
    for x in args.values():
        x.grad = None
    o, state = fn(**args)
    (o.float().sum() + state.sum()).backward()


def cpu_seconds(op: str, backend: str, T: int, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of `repeats` forwards + backwards at B=2, H=4, D=64.

    CPU seconds (process time, all threads) are the metric: the 2 cores are shared with other jobs,
    which stretch wall time by whatever they happen to run."""
    import alloyml.kernels as K

    args = make_inputs(op, 2, T, 4, 64)
    fn = getattr(K, op)
    return _timed(lambda: fwd_bwd(lambda **a: fn(**a, backend=backend), args), repeats)


def _timed(run, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of `repeats` calls of `run`."""
    cpu_s, wall_s = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        cpu_s.append(time.process_time() - cpu)
        wall_s.append(time.perf_counter() - wall)
    return round(statistics.median(cpu_s), 4), round(statistics.median(wall_s), 4)


def interleaved(fast, naive, rounds: int, fast_repeats: int = 3) -> dict:
    """Time `fast` and `naive` (each () -> (cpu, wall) seconds) alternately for `rounds` rounds, so that
    the load of the shared machine falls on both sides alike; the ratio is the median of the per-round
    ratios (naive / fast), the times the medians over rounds. `fast` runs once untimed first (warm-up)."""
    import os

    fast()
    load = [os.getloadavg()[0]]
    fasts, naives, ratios = [], [], []
    for _ in range(rounds):
        f, n = fast(), naive()
        fasts.append(f)
        naives.append(n)
        ratios.append(n[0] / f[0])
        load.append(os.getloadavg()[0])
    med = statistics.median
    return {"fast_cpu": round(med(x[0] for x in fasts), 4), "fast_wall": round(med(x[1] for x in fasts), 4),
            "naive_cpu": round(med(x[0] for x in naives), 4), "naive_wall": round(med(x[1] for x in naives), 4),
            "ratio": round(med(ratios), 3), "round_ratios": [round(r, 2) for r in ratios],
            "load_average": [round(x, 2) for x in load]}


def cpu_rows(quick: bool, ops, rounds: int = 5) -> list[dict]:
    """--quick times the naive recurrence over its first 1024 steps and scales by T / 1024 (its cost per
    step does not depend on T); otherwise the naive recurrence runs over all T steps.

    The machine is shared, so the two sides are timed alternately in `rounds` rounds (the chunked path's
    median of 3 runs, then one naive run, in one process), and the ratio is the median of the rounds'
    ratios: both sides see the same load. The load average before and after each round is recorded."""
    import torch

    # One thread for both: on shared cores an idle OpenMP thread spins, billing CPU time to whichever
    # side runs many tiny ops (the naive recurrence), which would flatter the ratio.
    torch.set_num_threads(1)
    rows = []
    lengths = (1024, 2048, 4096) if quick else (1024, 2048, 4096, 8192)
    for op in ops:
        for T in lengths:
            if quick:
                def naive(op=op, T=T):
                    return tuple(x * T / 1024 for x in cpu_seconds(op, "naive", 1024, repeats=1))
            else:
                def naive(op=op, T=T):
                    return cpu_seconds(op, "naive", T, repeats=1)
            m = interleaved(lambda op=op, T=T: cpu_seconds(op, "chunk", T, repeats=3), naive, rounds)
            how = "naive: 1024 steps timed, scaled by T/1024" if quick else "naive: one full run"
            at_target = T == 4096
            r = m["ratio"]
            rows.append(row(
                f"{op} fwd+bwd B=2 H=4 D=64 T={T} (CPU)", "CPU seconds", m["fast_cpu"],
                peers={"naive recurrence": m["naive_cpu"]}, ratio=r,
                target=">= 20x naive recurrence" if at_target else None,
                met=(r >= 20) if at_target else None,
                notes=f"ratio: median over {rounds} interleaved rounds of (naive / chunk), rounds {m['round_ratios']};"
                      f" medians: wall seconds chunk {m['fast_wall']}, naive {m['naive_wall']}; 2 cores shared with "
                      f"other jobs, load average {m['load_average']} (before each round, then after); one thread; "
                      f"chunk: median of 3 runs per round; {how}",
                wall_seconds={"chunk": m["fast_wall"], "naive": m["naive_wall"]}, load_average=m["load_average"],
                round_ratios=m["round_ratios"],
            ))
            print(rows[-1]["case"], m["fast_cpu"], m["naive_cpu"], r, m["round_ratios"], m["load_average"], flush=True)
    return rows


# --- GPU -----------------------------------------------------------------------------------------------

def fla_call(op: str):
    """flash-linear-attention's chunked kernel for the same op, on our argument names; None if missing."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    if op == "gla":
        return lambda q, k, v, g: chunk_gla(q, k, v, g, output_final_state=True)
    if op == "linear_attn":  # a per-head constant log-decay (g_gamma): what fla's retention runs
        return lambda q, k, v, decay: chunk_simple_gla(q, k, v, g_gamma=decay.log(), output_final_state=True)
    # SSD as a scalar-gated linear attention: q = C, k = dt B, v = x, g = dt A
    return lambda x, dt, A, B, C: chunk_simple_gla(
        C, (dt[..., None] * B).to(B.dtype), x, (dt * A).float(), scale=1.0, output_final_state=True)


def bytes_moved(args: dict, fwd_only: bool) -> int:
    """Least HBM traffic of a pass: every input read once and every output written once (the state,
    K x V per head, is read and written once too). Backward reads the inputs and do, writes a gradient
    per input."""
    import torch

    inputs = sum(x.numel() * x.element_size() for x in args.values())
    first = next(iter(args.values()))
    B, T, H = first.shape[:3]
    D = first.shape[-1]
    out = B * T * H * D * first.element_size()
    state = B * H * D * D * torch.finfo(torch.float32).bits // 8
    fwd = inputs + out + state
    return fwd if fwd_only else fwd + (inputs + out + state) + inputs


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy of 1 GiB (read + write counted)."""
    import torch
    from triton.testing import do_bench

    x = torch.empty(2**28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def one_pass(fn, args: dict, fwd_only: bool):
    """A closure running `fn` once: forward only (without autograd) or forward + backward."""
    import torch

    def run():
        if fwd_only:
            with torch.no_grad():
                fn(**args)
        else:
            fwd_bwd(fn, args)

    return run


def gpu_rows(ops, backends=GPU_BACKENDS) -> list[dict]:
    import torch
    from triton.testing import do_bench

    import alloyml.kernels as K

    bandwidth = copy_bandwidth()
    rows = []
    B, T, H, D = 8, 4096, 16, 128
    for op in ops:
        args = make_inputs(op, B, T, H, D, device="cuda", dtype=torch.bfloat16)
        ours = getattr(K, op)
        peer = fla_call(op)
        for label, fwd_only in (("fwd", True), ("fwd+bwd", False)):
            peer_ms, note = None, ""
            if peer is None:
                note = "flash-linear-attention is not installed"
            else:
                try:
                    peer_ms = do_bench(one_pass(peer, args, fwd_only), warmup=5, rep=50)
                except Exception as exc:  # a peer failure is reported, not fatal
                    note = f"fla failed: {type(exc).__name__}: {exc}"[:300]
            bound_ms = bytes_moved(args, fwd_only) / bandwidth * 1e3
            for backend in backends:
                try:
                    ms = do_bench(one_pass(partial(ours, backend=backend), args, fwd_only), warmup=5, rep=50)
                except Exception as exc:  # recorded as a failed row; the other backends and ops still run
                    rows.append(row(f"{op} {label} B={B} H={H} T={T} D={D} bf16 (GPU, {backend})", "milliseconds",
                                    None, notes=f"failed: {type(exc).__name__}: {exc}"[:300]))
                    print(rows[-1]["case"], rows[-1]["notes"], flush=True)
                    continue
                r = ratio(ms, peer_ms)
                rows.append(row(
                    f"{op} {label} B={B} H={H} T={T} D={D} bf16 (GPU, {backend})", "milliseconds", round(ms, 3),
                    peers={"flash-linear-attention": None if peer_ms is None else round(peer_ms, 3)}, ratio=r,
                    target=">= 1x flash-linear-attention (aim 1.3x)", met=None if r is None else r >= 1.0,
                    notes=(note + " " if note else "")
                    + f"memory-bandwidth bound {bound_ms:.3f} ms at {bandwidth / 1e12:.2f} TB/s measured copy "
                    f"bandwidth: ours reaches {bound_ms / ms:.1%} of it"
                    + ("" if peer_ms is None else f", fla {bound_ms / peer_ms:.1%}"),
                    bandwidth_bound_ms=round(bound_ms, 4), fraction_of_bound=round(bound_ms / ms, 4),
                ))
                print(rows[-1]["case"], ms, peer_ms, flush=True)
                write_results("kernels", rows, suffix=".gpu")  # after every row: a cut-short run keeps them
    return rows


# --- delta rule and TTT (CPU) -----------------------------------------------------------------------------
# DeltaNet, Gated DeltaNet and TTT-Linear: the fast forms (chunked WY / UT transform; TTT's mini-batch dual
# form) against their naive loops, at the shapes of the rows above. Kept apart so it can run alone:
# `--delta` writes benchmarks/results/kernels_delta.json.

DELTA_OPS = ("deltanet", "gated_deltanet", "ttt_linear")


def delta_inputs(op: str, B: int, T: int, H: int, D: int) -> tuple:
    """(function of (backend, **inputs) -> (o, a final-state tensor), inputs): unit keys and
    beta = sigmoid(.) for the delta rule, the gated form's decays log alpha = logsigmoid(.) / 16;
    TTT-Linear with its LayerNorm, mini-batch 16 and eta = sigmoid(.) / D."""
    import torch
    import torch.nn.functional as F

    from alloyml.kernels.delta import delta_rule, gated_delta_rule
    from alloyml.kernels.ttt import ttt

    gen = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).requires_grad_()

    qkv = {"q": randn(B, T, H, D), "k": F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1).requires_grad_(),
           "v": randn(B, T, H, D)}
    if op == "ttt_linear":
        args = {**qkv, "eta": (torch.sigmoid(torch.randn(B, T, H, generator=gen)) / D).requires_grad_(),
                "W": randn(H, D, D, scale=0.02), "b": randn(H, D, scale=0.0),
                "nw": (1 + torch.zeros(H, D)).requires_grad_(), "nb": randn(H, D, scale=0.0)}

        def fn(backend, q, k, v, eta, W, b, nw, nb):
            z, state = ttt(q, k, v, eta, (W, b), norm=(nw, nb), backend=backend)
            return z, state[0]
        return fn, args
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen)).requires_grad_()
    if op == "deltanet":
        return (lambda backend, **a: delta_rule(**a, backend=backend)), {**qkv, "beta": beta}
    g = (F.logsigmoid(torch.randn(B, T, H, generator=gen)) / 16).requires_grad_()
    return (lambda backend, **a: gated_delta_rule(**a, backend=backend)), {**qkv, "g": g, "beta": beta}


def delta_seconds(op: str, backend: str, T: int, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of forward + backward at B=2, H=4, D=64."""
    fn, args = delta_inputs(op, 2, T, 4, 64)
    return _timed(lambda: fwd_bwd(lambda **a: fn(backend, **a), args), repeats)


def delta_rows(rounds: int = 5) -> list[dict]:
    """T = 4096; the naive loops timed over their first 1024 steps and scaled by 4 (their cost per step
    does not depend on T), as --quick does above; one thread for both sides; the two sides alternate
    over `rounds` rounds and the ratio is the median of the rounds' ratios (see `interleaved`)."""
    import os

    import torch

    torch.set_num_threads(1)
    rows, T = [], 4096
    for op in DELTA_OPS:
        m = interleaved(lambda op=op: delta_seconds(op, "chunk", T, repeats=3),
                        lambda op=op: tuple(4 * x for x in delta_seconds(op, "naive", 1024, repeats=1)), rounds)
        r = m["ratio"]
        rows.append(row(
            f"{op} fwd+bwd B=2 H=4 D=64 T={T} (CPU)", "CPU seconds", m["fast_cpu"],
            peers={"naive recurrence": m["naive_cpu"]}, ratio=r, target=">= 20x naive recurrence",
            met=r >= 20,
            notes=f"ratio: median over {rounds} interleaved rounds of (naive / fast), rounds {m['round_ratios']}; "
                  f"medians: wall seconds fast {m['fast_wall']}, naive {m['naive_wall']}; one thread; fast: median "
                  f"of 3 runs per round; naive: 1024 steps timed, scaled by 4; load average {m['load_average']} "
                  f"(before each round, then after) on {os.cpu_count()} cores",
            wall_seconds={"fast": m["fast_wall"], "naive": m["naive_wall"]}, load_average=m["load_average"],
            round_ratios=m["round_ratios"],
        ))
        print(rows[-1]["case"], m["fast_cpu"], m["naive_cpu"], r, m["round_ratios"], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T up to 4096 only")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU part")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    parser.add_argument("--delta", action="store_true", help="only the delta-rule and TTT rows (CPU)")
    parser.add_argument("--backends", default=",".join(GPU_BACKENDS), help="GPU backends to time (comma-separated)")
    args = parser.parse_args()
    import torch

    if args.delta:
        write_results("kernels_delta", delta_rows())
        return

    ops = args.ops.split(",")
    if not args.gpu_only:
        write_results("kernels", cpu_rows(args.quick, ops))
    if torch.cuda.is_available():
        gpu_rows(ops, args.backends.split(","))


if __name__ == "__main__":
    main()
