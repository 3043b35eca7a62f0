"""A Mixture-of-Experts model from dense experts that share a base (alloyml `LinearLM`s).

Each dense expert's feed-forward (`blocks.{i}.ffn.*`) becomes expert e of the MoE layer in block i;
every other weight (embedding, token mixers, norms, head) is merged across the experts with any merge
method. The router starts from hidden states (row e of a layer's router: the centred, normalised mean
input that expert e's own feed-forward sees on expert e's data, as mergekit-moe's "hidden" gates do) and
is then *trained* for a few steps on a mixture of the experts' data, with every other weight frozen.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alloyml.errors import InvalidInputError

Batch = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
_FFN = re.compile(r"^blocks\.(\d+)\.ffn\.(.+)$")


@dataclass
class MoEFromExperts:
    """model: the MoE `LinearLM` (eval mode); router_losses: the router-training loss per step (empty
    when `router_steps=0`); shared_merge: the merge config that combined the shared weights."""

    model: Any
    shared_merge: dict[str, Any]
    router_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def mixture_batches(batches: Sequence[Batch]) -> Batch:
    """One batch per step with every source's batch for that step, right-padded to the longest
    sequence (pad inputs 0, targets ignored)."""
    from alloyml.models.model import IGNORE_INDEX

    def batch(step: int):
        pairs = [b(step) for b in batches]
        length = max(inputs.shape[1] for inputs, _ in pairs)
        inputs = torch.cat([F.pad(i, (0, length - i.shape[1]), value=0) for i, _ in pairs])
        targets = torch.cat([F.pad(t, (0, length - t.shape[1]), value=IGNORE_INDEX) for _, t in pairs])
        return inputs, targets

    return batch


def _load(expert):
    from alloyml.models.saving import load_model

    return load_model(expert) if isinstance(expert, str | Path) else expert


@torch.no_grad()
def mean_ffn_inputs(model, batch: Batch, n_batches: int) -> list[torch.Tensor]:
    """Per layer, the mean [D] of what the layer's feed-forward sees (its norm's output) on `batch`."""
    sums = [0.0] * len(model.blocks)
    counts = [0] * len(model.blocks)

    def capture(layer):
        def hook(_module, _inputs, output):  # output: [B, T, D]
            flat = output.reshape(-1, output.shape[-1]).float()
            sums[layer] = sums[layer] + flat.sum(0)
            counts[layer] += flat.shape[0]

        return hook

    handles = [b.ffn_norm.register_forward_hook(capture(i)) for i, b in enumerate(model.blocks)]
    was_training = model.training
    model.eval()
    try:
        for step in range(n_batches):
            model(batch(step)[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [total / count for total, count in zip(sums, counts, strict=True)]


def hidden_state_router(experts: Sequence, data: Sequence[Batch], n_batches: int = 2) -> list[torch.Tensor]:
    """Router weights [E, D] per layer: row e is expert e's mean feed-forward input on its own data,
    centred across experts (the shared part routes nowhere) and scaled to unit norm."""
    means = [mean_ffn_inputs(e, b, n_batches) for e, b in zip(experts, data, strict=True)]  # [E][layer]
    routers = []
    for layer in range(len(experts[0].blocks)):
        rows = torch.stack([m[layer] for m in means])  # [E, D]
        rows = rows - rows.mean(0, keepdim=True)
        routers.append(rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    return routers


def moe_from_experts(
    experts: Sequence,
    data: Sequence[Batch],
    *,
    top_k: int = 1,
    shared_merge: Mapping[str, Any] | None = None,
    base=None,
    router_steps: int = 100,
    router_lr: float = 1e-2,
    hidden_batches: int = 2,
    on_step: Callable | None = None,
) -> MoEFromExperts:
    """Build an MoE `LinearLM` from dense `experts` (models or saved directories) sharing one base.

    data: one `batch(step) -> (inputs, targets)` per expert (its own task), used to initialise the router
    from hidden states and to train it on their mixture for `router_steps` steps (0: no training).
    shared_merge: how to merge the non-FFN weights, e.g. `{"merge_method": "ties", "parameters": {...},
    "weight": 0.5, "density": 0.5}` (default: the plain average); base: the common base model, needed by
    base-using methods. on_step: called with each router-training StepMetrics.
    """
    from alloyml.merging.engine import merge
    from alloyml.models.model import LinearLM
    from alloyml.models.trainer import Trainer

    start = time.perf_counter()
    experts = [_load(e) for e in experts]
    if len(experts) < 2 or len(data) != len(experts):
        raise InvalidInputError(f"need >= 2 experts and one data source each; got {len(experts)} and {len(data)}")
    cfg = experts[0].config
    for i, expert in enumerate(experts[1:], 1):
        if expert.config != cfg:
            raise InvalidInputError(f"expert {i} has a different config from expert 0; experts must share a base")
    if cfg.ffn != "mlp":
        raise InvalidInputError(f"experts must have dense MLP feed-forwards (ffn='mlp'), got ffn={cfg.ffn!r}")
    if not 1 <= top_k <= len(experts):
        raise InvalidInputError(f"top_k must be in [1, {len(experts)}], got {top_k}")

    states = [{k: v.detach() for k, v in e.state_dict().items()} for e in experts]
    shared = [k for k in states[0] if not _FFN.match(k)]
    settings = dict(shared_merge or {"merge_method": "linear"})
    per_model = {k: settings.pop(k) for k in ("weight", "density") if k in settings}
    per_model.setdefault("weight", 1.0 if settings["merge_method"] == "linear" else 1.0 / len(experts))
    names = [f"expert_{e}" for e in range(len(experts))]
    config = {**settings, "models": [{"model": n, "parameters": per_model} for n in names]}
    sources = {n: {k: s[k] for k in shared} for n, s in zip(names, states, strict=True)}
    if base is not None:
        config["base_model"] = "base"
        sources["base"] = {k: v.detach() for k, v in _load(base).state_dict().items() if k in shared}
    merged = merge(config, sources=sources).state_dict

    moe = LinearLM(cfg.replace(ffn="moe", n_experts=len(experts), top_k=top_k))
    moe_state = dict(merged)
    for e, state in enumerate(states):
        for name, tensor in state.items():
            match = _FFN.match(name)
            if match:
                moe_state[f"blocks.{match.group(1)}.ffn.experts.{e}.{match.group(2)}"] = tensor
    for layer, router in enumerate(hidden_state_router(experts, data, hidden_batches)):
        moe_state[f"blocks.{layer}.ffn.router.weight"] = router
    moe.load_state_dict(moe_state)

    losses = []
    if router_steps:
        for name, param in moe.named_parameters():
            param.requires_grad = name.endswith("ffn.router.weight")

        def record(metrics):
            losses.append(metrics.loss)
            if on_step:
                on_step(metrics)

        trainer = Trainer(steps=router_steps, lr=router_lr, weight_decay=0.0, warmup_steps=min(10, router_steps // 5),
                          precision="fp32", callback=record)  # fmt: skip
        trainer.fit(moe, mixture_batches(data))
        for param in moe.parameters():
            param.requires_grad = True
    return MoEFromExperts(moe.eval(), config, losses, time.perf_counter() - start)
