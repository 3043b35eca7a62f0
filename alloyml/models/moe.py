"""Feed-forward layers: an MLP, and a Mixture-of-Experts of MLPs (the KAN feed-forward is in kan.py).

MoE routing (x flattened to N tokens, E experts, router probabilities p = softmax(router(x)): [N, E]):

- "token_choice" (Switch Transformer, Fedus et al. 2022; top-k as in GShard): each token goes to its
  top-k experts, weighted by their probabilities (renormalised over the k when k > 1). Each expert takes
  at most `capacity = ceil(capacity_factor * N * k / E)` tokens; first choices are served before second
  choices, then tokens in order. A token an expert cannot take is dropped by it: it contributes nothing
  and the block's residual carries the token through unchanged. The Switch load-balancing loss is
  `E * sum_e f_e * P_e`, with f_e the fraction of the N * k choices that went to expert e (before
  capacity) and P_e the mean router probability of e. Capacity applies while training; in eval mode
  every choice is served, so a token's output never depends on the other tokens of the batch (that is
  what makes decoding one token at a time equal the parallel forward).
- "expert_choice" (Zhou et al. 2022): each expert picks its `ceil(capacity_factor * N / E)` highest-
  probability tokens, weighted by those probabilities; balanced by construction (no auxiliary loss), but
  a token's output depends on the other tokens in the batch, so it is not causal across positions:
  use it for encoders or experiments, not for decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig


class MLP(nn.Module):
    """x: [..., D] -> [..., D] through a GELU hidden layer of width `ffn_mult * D`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model)
        self.fc_out = nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model)

    def forward(self, x):
        return self.fc_out(F.gelu(self.fc_in(x)))


@dataclass
class RoutingStats:
    """How the last forward routed its tokens. load: [E] fraction of the served (token, expert) pairs each
    expert took; dropped: fraction of the token-choice pairs dropped for capacity (expert choice: of the
    tokens no expert picked); aux_loss: the load-balancing loss (0 for expert choice)."""

    load: torch.Tensor
    dropped: float
    aux_loss: torch.Tensor

    @property
    def load_cv(self) -> float:
        """Coefficient of variation of the expert load (0 = perfectly balanced)."""
        return float(self.load.std(unbiased=False) / self.load.mean())


def switch_aux_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """probs: [N, E] router probabilities; experts: [N, k] chosen experts -> E * sum_e f_e * P_e."""
    E = probs.shape[-1]
    f = F.one_hot(experts, E).to(probs.dtype).mean((0, 1))  # [E] fraction of choices per expert
    return E * (f * probs.mean(0)).sum()


def token_choice(probs: torch.Tensor, top_k: int, capacity: int | None):
    """probs: [N, E] -> (gates [N, k], experts [N, k], served [N, k] bool) under the capacity (None: no
    limit). Priority: all first choices before any second choice, then token order."""
    gates, experts = probs.topk(top_k, dim=-1)  # [N, k]
    if top_k > 1:
        gates = gates / gates.sum(-1, keepdim=True)
    if capacity is None:
        return gates, experts, torch.ones_like(experts, dtype=torch.bool)
    by_priority = experts.T.reshape(-1)  # [k * N]: choice rank major, token minor
    onehot = F.one_hot(by_priority, probs.shape[-1])  # [k * N, E]
    slot = (onehot.cumsum(0) * onehot).sum(-1) - 1  # [k * N]: place in its expert's queue
    served = (slot < capacity).view(top_k, -1).T  # [N, k]
    return gates, experts, served


class MoE(nn.Module):
    """x: [..., D] -> (y: [..., D], aux_loss: scalar). `last_stats_` holds the last forward's RoutingStats."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.capacity_factor, self.routing = cfg.top_k, cfg.capacity_factor, cfg.routing
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        self.last_stats_: RoutingStats | None = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, D]
        N, E = x.shape[0], len(self.experts)
        probs = F.softmax(self.router(x).to(torch.promote_types(x.dtype, torch.float32)), dim=-1)  # [N, E]
        y = torch.zeros_like(x)
        load = torch.zeros(E, device=x.device)
        if self.routing == "token_choice":
            capacity = math.ceil(self.capacity_factor * N * self.top_k / E) if self.training else None
            gates, experts, served = token_choice(probs, self.top_k, capacity)
            aux = switch_aux_loss(probs, experts)
            for e, expert in enumerate(self.experts):
                tokens, rank = ((experts == e) & served).nonzero(as_tuple=True)
                if len(tokens):
                    y.index_add_(0, tokens, (gates[tokens, rank, None] * expert(x[tokens])).to(y.dtype))
                load[e] = len(tokens)
            dropped = 1.0 - served.float().mean().item()
        else:
            capacity = min(N, math.ceil(self.capacity_factor * N / E))
            gates, tokens = probs.topk(capacity, dim=0)  # [C, E]: each expert's picks
            for e, expert in enumerate(self.experts):
                y.index_add_(0, tokens[:, e], (gates[:, e, None] * expert(x[tokens[:, e]])).to(y.dtype))
                load[e] = capacity
            aux = probs.new_zeros(())
            dropped = 1.0 - tokens.unique().numel() / N
        self.last_stats_ = RoutingStats(load / load.sum().clamp(min=1), dropped, aux.detach())
        return y.view(shape), aux


FFNS = {"mlp": MLP, "moe": MoE}  # the one list of feed-forwards (with "none"): ModelConfig checks `ffn`

# The KAN feed-forward registers here on import (RWKV's channel mix registers with the RWKV mixer, rwkv.py).
from alloyml.models import kan  # noqa: E402, F401
