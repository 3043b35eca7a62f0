"""Long-convolution and local-attention benchmarks (CPU, one thread): the fast paths against their naive
references, forward + backward, and decoding throughput and state size of every mixer issue 23 added
(mamba1, s4d, h3, hyena, lru, hawk, local_attn, griffin) against the softmax + KV-cache baseline.
Writes benchmarks/results/kernels_conv.json.

    python benchmarks/kernels_conv.py [--quick] [--only s6,s4d,...]

--only reruns the named groups (ops, or "decode") and keeps the other rows of the existing JSON.

- `long_conv` (Hyena's long convolution, kernels/long_conv): FFT vs the direct sum (naive.py), B=2, C=64,
  filter as long as the sequence, T = 1024 and 4096 (--quick: 1024 and 2048).
- `local_attn` (kernels/local_attn): blocked band attention vs dense masked T x T attention, B=1, H=4,
  Dh=64, window 128.
- `s6`, `s4d`, `lru`, `rglru` (kernels_ssm_cases.py for the shapes): each fast path (S6 / RG-LRU: the
  one-node chunked scan of common/scan_autograd.py; S4D: the FFT convolution; LRU: the chunked
  constant-decay scan) against its naive loop, T = 1024, 4096 and 8192 (--quick: 1024 and 2048); the
  ratio is the median over interleaved rounds, as in kernels.py.
- decoding: a 2-layer d_model=64 model per mixer, prompt of P tokens prefilled, then 64 steps; tokens/s of
  the steps and the bytes of the per-sequence state after them (P = 256 and 1024; --quick: 256).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, ratio, row, write_results  # noqa: E402
from kernels import interleaved  # noqa: E402
from kernels_ssm_cases import SHAPES, ssm_case  # noqa: E402

SSM_OPS = tuple(SHAPES)

DECODE_MIXERS = ("softmax", "mamba1", "s4d", "h3", "hyena", "lru", "hawk", "local_attn", "griffin")


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best CPU seconds, its wall seconds) over `repeats` calls."""
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return round(best[0], 4), round(best[1], 4)


def op_case(op: str, T: int):
    """A function running forward + backward of `op` on fixed inputs for a given backend."""
    import torch

    from alloyml.kernels.local_attn import local_attn
    from alloyml.kernels.long_conv import long_conv

    gen = torch.Generator().manual_seed(0)
    if op == "long_conv":
        lag = torch.arange(T, dtype=torch.float32)[:, None]
        args = [torch.randn(2, T, 64, generator=gen).requires_grad_(),
                (torch.randn(T, 64, generator=gen) * torch.exp(-lag / 300)).requires_grad_(),
                torch.randn(64, generator=gen).requires_grad_()]

        def run(backend):
            y, final = long_conv(*args, backend=backend)
            (y.sum() + final.sum()).backward()
    else:
        args = [torch.randn(1, T, 4, 64, generator=gen).requires_grad_() for _ in range(3)]

        def run(backend):
            local_attn(*args, 128, backend=backend).sum().backward()
    return run


def ssm_rows(quick: bool, ops, rounds: int = 3) -> list[dict]:
    """Fast vs naive fwd+bwd for the state-space ops, interleaved rounds (kernels.interleaved)."""
    rows = []
    for op in ops:
        for T in (1024, 2048) if quick else (1024, 4096, 8192):
            run = ssm_case(op, T)

            def fast(run=run):
                times = sorted(timed(partial(run, "auto"), 1) for _ in range(3))
                return times[1]  # the median of 3

            m = interleaved(fast, partial(timed, partial(run, "naive"), 1), rounds)
            r = m["ratio"]
            at_target = T == 4096
            rows.append(row(
                f"{op} fwd+bwd {SHAPES[op]} T={T} (CPU)", "CPU seconds", m["fast_cpu"],
                peers={"naive": m["naive_cpu"]}, ratio=r, target=">= 20x naive" if at_target else None,
                met=(r >= 20) if at_target else None,
                notes=f"ratio: median over {rounds} interleaved rounds of (naive / fast), rounds {m['round_ratios']};"
                      f" medians: wall seconds fast {m['fast_wall']}, naive {m['naive_wall']}; {os.cpu_count()} "
                      f"cores shared with other jobs, load average {m['load_average']} (before each round, then "
                      f"after); one thread; fast: median of 3 runs per round; naive: one full run",
                wall_seconds={"fast": m["fast_wall"], "naive": m["naive_wall"]}, load_average=m["load_average"],
                round_ratios=m["round_ratios"]))
            print(rows[-1]["case"], m["fast_cpu"], m["naive_cpu"], r, m["round_ratios"], m["load_average"],
                  flush=True)
    return rows


def op_rows(quick: bool, ops=("long_conv", "local_attn"), rounds: int = 3) -> list[dict]:
    """Fast vs dense naive fwd+bwd, timed like the state-space rows: interleaved rounds (fast: median of 3
    runs per round; naive: one run), the ratio the median of the rounds' ratios. Both sides run once
    untimed first: the dense naive's first call pays for page-faulting its T x T buffers, which is not
    the cost of the computation (it made single-run ratios swing from 18x to 48x between sessions)."""
    rows = []
    for op in ops:
        for T in (1024, 2048) if quick else (1024, 4096):
            run = op_case(op, T)

            def fast(run=run):
                return sorted(timed(partial(run, "auto"), 1) for _ in range(3))[1]

            run("naive")
            m = interleaved(fast, partial(timed, partial(run, "naive"), 1), rounds)
            r = m["ratio"]
            shape = "B=2 C=64" if op == "long_conv" else "B=1 H=4 Dh=64 window=128"
            target = T == 4096
            rows.append(row(f"{op} fwd+bwd {shape} T={T} (CPU)", "CPU seconds", m["fast_cpu"],
                            peers={"naive": m["naive_cpu"]}, ratio=r, target=">= 20x naive" if target else None,
                            met=(r >= 20) if target else None,
                            notes=f"ratio: median over {rounds} interleaved rounds of (naive / fast), rounds "
                                  f"{m['round_ratios']}; wall seconds fast {m['fast_wall']}, naive "
                                  f"{m['naive_wall']}; one thread; both sides warmed up once; load average "
                                  f"{m['load_average']} on {os.cpu_count()} cores",
                            wall_seconds={"fast": m["fast_wall"], "naive": m["naive_wall"]},
                            load_average=m["load_average"], round_ratios=m["round_ratios"]))
            print(rows[-1]["case"], m["fast_cpu"], m["naive_cpu"], r, m["round_ratios"], flush=True)
    return rows


def state_bytes(state) -> int:
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if hasattr(state, "k"):  # the softmax KV cache: the filled part
        return 2 * state.k[:, : state.length].numel() * state.k.element_size()
    return sum(state_bytes(s) for s in state)


def decode_rows(quick: bool) -> list[dict]:
    import torch

    from alloyml.models import LinearLM, ModelConfig

    rows = []
    for P in (256,) if quick else (256, 1024):
        results = {}
        for mixer in DECODE_MIXERS:
            torch.manual_seed(0)
            model = LinearLM(ModelConfig(mixer=mixer, vocab_size=256, d_model=64, n_layers=2, n_heads=4)).eval()
            ids = torch.randint(0, 256, (1, P))
            with torch.no_grad():
                states = model(ids).states
                token = ids[:, -1]
                for _ in range(8):  # untimed warm-up on a copy: the first steps pay for allocation, not decoding
                    model.step(token, copy.deepcopy(states))
                start = time.perf_counter()
                for _ in range(64):
                    logits, states = model.step(token, states)
                    token = logits.argmax(-1)
                seconds = time.perf_counter() - start
            results[mixer] = (round(64 / seconds, 1), state_bytes(states))
        base_tps, base_bytes = results["softmax"]
        load = os.getloadavg()
        for mixer, (tps, nbytes) in results.items():
            if mixer == "softmax":
                continue
            rows.append(row(f"decode {mixer} 2x d64 after {P} tokens (CPU)", "tokens/s", tps,
                            peers={"softmax + KV cache": base_tps}, ratio=ratio(tps, base_tps, higher_is_better=True),
                            notes=f"state bytes per sequence after {P + 64} tokens: {nbytes} (softmax KV cache "
                                  f"{base_bytes}); one thread; load average {tuple(round(x, 2) for x in load)}",
                            state_bytes=nbytes, baseline_state_bytes=base_bytes))
            print(rows[-1]["case"], tps, base_tps, nbytes, base_bytes, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller T and one prompt length")
    parser.add_argument("--only", default="", help="comma-separated groups to rerun: long_conv, local_attn, "
                        + ", ".join(SSM_OPS) + ", decode (default: all)")
    args = parser.parse_args()
    import json

    import torch

    torch.set_num_threads(1)
    groups = [g for g in args.only.split(",") if g] or ["long_conv", "local_attn", *SSM_OPS, "decode"]
    rows = (op_rows(args.quick, [g for g in groups if g in ("long_conv", "local_attn")])
            + ssm_rows(args.quick, [g for g in groups if g in SSM_OPS])
            + (decode_rows(args.quick) if "decode" in groups else []))
    path = RESULTS_DIR / "kernels_conv.json"
    if args.only and path.exists():  # keep the rows not rerun, in their order, new cases appended
        new = {r["case"]: r for r in rows}
        old = json.loads(path.read_text())["rows"]
        rows = [new.pop(r["case"], r) for r in old] + list(new.values())
    write_results("kernels_conv", rows)


if __name__ == "__main__":
    main()
