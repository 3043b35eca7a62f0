"""Serving speed: decoding tokens/s and memory at long contexts, a linear-mixer model (Mamba by default)
against the same-size softmax-attention model with a KV cache, in one run.

For each context length L: prefill an L-token prompt once (timed apart), then decode `--tokens` tokens
for `--batch` sequences with the same `decode` loop for both models. Memory is what decoding holds per
call: the recurrent states (constant in L) against the KV cache (linear in L); on CUDA also the peak
allocated memory of prefill + decode. Target (the Mamba paper's headline): flat memory and >= 5x tokens/s
at 8k.

    python benchmarks/generation.py            # contexts 1k, 4k, 8k, 16k
    python benchmarks/generation.py --quick    # contexts 1k, 4k, 8k, fewer tokens
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ratio, row, timer, write_results  # noqa: E402

MiB = 2**20


def state_bytes(states) -> int:
    import torch

    from alloyml.models.mixers import KVCache

    total = 0
    for state in states:
        if isinstance(state, KVCache):  # count the filled part, not spare capacity
            total += 2 * state.k[:, : state.length].numel() * state.k.element_size()
        else:
            total += sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor))
    return total


def measure(model, context: int, batch: int, tokens: int, device) -> dict:
    import torch

    from alloyml.models.generate import decode, prefill

    prompt = torch.randint(0, 256, (context,), generator=torch.Generator().manual_seed(context)).tolist()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with timer() as prefill_time:
        logits, states = prefill(model, [prompt], n=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    decode(model, logits, states, max_tokens=2)  # warm-up (allocator, caches)
    with timer() as decode_time:
        decode(model, logits, states, max_tokens=tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
    out = {
        "prefill_s": prefill_time(),
        "tokens_per_s": batch * tokens / decode_time(),
        "state_mib": state_bytes(states) / MiB,
    }
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / MiB
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="contexts 1k, 4k, 8k and 32 tokens")
    parser.add_argument("--mixer", default="mamba", help="the linear mixer to compare (default mamba)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences decoded together")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per sequence")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (same for both models)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from alloyml.models.config import ModelConfig
    from alloyml.models.model import LinearLM

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    contexts = [1024, 4096, 8192] if args.quick else [1024, 4096, 8192, 16384]
    tokens = 32 if args.quick else args.tokens
    base = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64, ffn="mlp")
    models = {}
    for mixer in (args.mixer, "softmax"):
        torch.manual_seed(0)
        models[mixer] = LinearLM(base.replace(mixer=mixer)).to(device).eval()
    params = {m: model.num_params() for m, model in models.items()}
    print(f"{device}: params {params}", flush=True)

    results = {m: {} for m in models}
    for context in contexts:
        for mixer, model in models.items():
            results[mixer][context] = measure(model, context, args.batch, tokens, device)
            print(context, mixer, {k: round(v, 3) for k, v in results[mixer][context].items()}, flush=True)

    ours, peer = results[args.mixer], results["softmax"]
    flat = len({round(ours[c]["state_mib"], 6) for c in contexts}) == 1
    size = f"d_model {args.d_model}, {args.layers} layers, batch {args.batch}, {tokens} tokens"
    rows = []
    for context in contexts:
        label = f"{context // 1024}k"
        headline = context == 8192
        speedup = ratio(ours[context]["tokens_per_s"], peer[context]["tokens_per_s"], higher_is_better=True)
        prefill_s = (f"prefill s: {args.mixer} {ours[context]['prefill_s']:.2f}, "
                     f"softmax {peer[context]['prefill_s']:.2f}")
        rows.append(row(
            f"decode {args.mixer} vs softmax+KV cache, ctx {label}", "tokens/s",
            round(ours[context]["tokens_per_s"], 1), {"softmax_kv_cache": round(peer[context]["tokens_per_s"], 1)},
            speedup, ">= 5x softmax_kv_cache" if headline else None, (speedup or 0) >= 5 if headline else None,
            f"{size}; {prefill_s}; params {params}; threads {args.threads}",
        ))
        memory_key = "peak_mib" if device.type == "cuda" else "state_mib"
        rows.append(row(
            f"decode memory {args.mixer} vs softmax+KV cache, ctx {label}", "MiB " + memory_key.split("_")[0],
            round(ours[context][memory_key], 3), {"softmax_kv_cache": round(peer[context][memory_key], 3)},
            ratio(ours[context][memory_key], peer[context][memory_key]), "flat in context", flat,
            f"state MiB: {args.mixer} {ours[context]['state_mib']:.3f}, KV cache {peer[context]['state_mib']:.3f}"
            + ("; peak = all CUDA memory allocated in prefill + decode, weights included" if device.type == "cuda"
               else "; CPU: bytes of the per-call decoding state"),
        ))
    write_results("generation", rows, suffix=".gpu" if device.type == "cuda" else "", device=str(device))


if __name__ == "__main__":
    main()
