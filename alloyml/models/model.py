"""The language model, top to bottom: embedding -> n_layers blocks -> norm -> untied LM head.

A block is `x + mixer(norm(x))` then `x + ffn(norm(x))` (pre-norm residual). The mixer is one of
`mixers.MIXERS`; the feed-forward one of `moe.FFNS` (an MLP, a Mixture-of-Experts, a KAN, RWKV's channel
mix) or nothing (`ffn="none"`).

`forward(ids)` runs whole sequences (training, prompt prefill); `step(ids, states)` one token per
sequence (decoding). Both return the per-layer states that continue the sequences, and for the same
tokens they give the same logits.

Parameter names (the safetensors keys, plain and untied):
`embed.weight`, `blocks.{i}.mixer_norm.weight`, `blocks.{i}.mixer.*`, `blocks.{i}.ffn_norm.weight`,
`blocks.{i}.ffn.fc_in.*` / `fc_out.*` (MLP) or `blocks.{i}.ffn.router.weight` and
`blocks.{i}.ffn.experts.{e}.fc_in.*` / `fc_out.*` (MoE), `norm.weight`, `lm_head.weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import MIXERS
from alloyml.models.moe import FFNS, MoE

IGNORE_INDEX = -100  # target value that does not count in the loss


class Block(nn.Module):
    """Mixer, then feed-forward. A stateful feed-forward (`stateful = True`: RWKV's channel mix, whose token
    shift needs the previous input) follows the mixers' state protocol; the block's state is then the pair
    (mixer state, feed-forward state), and otherwise just the mixer's state."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = MIXERS[cfg.mixer](cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.ffn != "none" else None
        self.ffn = FFNS[cfg.ffn](cfg) if cfg.ffn != "none" else None
        self.ffn_stateful = getattr(self.ffn, "stateful", False)

    def _feed_forward(self, x, state=None, cu_seqlens=None, step=False):
        """x + ffn(norm(x)), the feed-forward's state (None unless it is stateful) and the MoE auxiliary loss
        (0 without MoE)."""
        zero = x.new_zeros((), dtype=torch.float32)
        if self.ffn is None:
            return x, None, zero
        h = self.ffn_norm(x)
        if self.ffn_stateful:
            y, state = self.ffn.step(h, state) if step else self.ffn(h, state, cu_seqlens=cu_seqlens)
            return x + y, state, zero
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(h)
            return x + y, None, aux
        return x + self.ffn(h), None, zero

    def _split(self, state):  # the block's state -> (mixer state, feed-forward state)
        if state is None or not self.ffn_stateful:
            return state, None
        return state

    def _join(self, mixer_state, ffn_state):
        return (mixer_state, ffn_state) if self.ffn_stateful else mixer_state

    def forward(self, x, state=None, cu_seqlens=None):  # x: [B, T, D]
        mixer_state, ffn_state = self._split(state)
        y, mixer_state = self.mixer(self.mixer_norm(x), mixer_state, cu_seqlens=cu_seqlens)
        x, ffn_state, aux = self._feed_forward(x + y, ffn_state, cu_seqlens)
        return x, self._join(mixer_state, ffn_state), aux

    def step(self, x, state=None):  # x: [B, D]
        mixer_state, ffn_state = self._split(state)
        y, mixer_state = self.mixer.step(self.mixer_norm(x), mixer_state)
        x, ffn_state, _ = self._feed_forward(x + y, ffn_state, step=True)
        return x, self._join(mixer_state, ffn_state)

    def select_state(self, state, index):
        """The state of the sequences at `index` ([n] long), in that order."""
        if not self.ffn_stateful:
            return self.mixer.select_state(state, index)
        return self.mixer.select_state(state[0], index), self.ffn.select_state(state[1], index)

    def cat_states(self, states: list):
        """One state for the sequences of several states, concatenated along the batch."""
        if not self.ffn_stateful:
            return self.mixer.cat_states(states)
        return (self.mixer.cat_states([s[0] for s in states]), self.ffn.cat_states([s[1] for s in states]))


@dataclass
class LMOutput:
    """logits: [B, T, vocab]; states: one per block, continuing each sequence; aux_loss: the summed MoE
    load-balancing losses (unweighted); loss: mean cross-entropy over non-ignored targets plus
    `aux_loss_weight * aux_loss`, when targets were given."""

    logits: torch.Tensor
    states: list
    aux_loss: torch.Tensor
    loss: torch.Tensor | None = None


class LinearLM(nn.Module):
    """A causal language model over `cfg.vocab_size` tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        reinit(self)

    def forward(self, ids, states=None, targets=None, cu_seqlens=None) -> LMOutput:
        """ids: [B, T] token ids; states: from a previous call (None: new sequences); targets: [B, T]
        next-token ids, IGNORE_INDEX where no loss is wanted; cu_seqlens: int64 offsets [N + 1] of N
        documents packed into ids [1, T] (see mixers.py): each is modelled on its own, as if it had its
        own row, and the states returned are one per document."""
        x = self.embed(ids)  # [B, T, D]
        states = states or [None] * len(self.blocks)
        new_states, aux = [], x.new_zeros((), dtype=torch.float32)
        for block, state in zip(self.blocks, states, strict=True):
            x, state, block_aux = block(x, state, cu_seqlens)
            new_states.append(state)
            aux = aux + block_aux
        logits = self.lm_head(self.norm(x))  # [B, T, vocab]
        loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
            loss = ce + self.config.aux_loss_weight * aux
        return LMOutput(logits, new_states, aux, loss)

    def step(self, ids, states=None):
        """ids: [B] one token per sequence -> (logits [B, vocab], states)."""
        x = self.embed(ids)  # [B, D]
        states = states or [None] * len(self.blocks)
        new_states = []
        for block, state in zip(self.blocks, states, strict=True):
            x, state = block.step(x, state)
            new_states.append(state)
        return self.lm_head(self.norm(x)), new_states

    def select_states(self, states, index):
        """Keep the sequences at `index` ([n] long) of every block's state."""
        return [b.select_state(s, index) for b, s in zip(self.blocks, states, strict=True)]

    def cat_states(self, states_list):
        """Concatenate the states of several batches of sequences into one batch."""
        per_block = zip(*states_list, strict=True)  # [batch][block] -> [block][batch]
        return [b.cat_states(list(group)) for b, group in zip(self.blocks, per_block, strict=True)]

    def moe_stats(self):
        """RoutingStats of each MoE layer's last forward (empty without MoE)."""
        return [b.ffn.last_stats_ for b in self.blocks if isinstance(b.ffn, MoE) and b.ffn.last_stats_]

    def num_params(self, active: bool = False) -> int:
        """Parameter count; `active`: only what one token uses (top_k of the experts in each MoE layer)."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            for b in self.blocks:
                if isinstance(b.ffn, MoE):
                    per_expert = sum(p.numel() for p in b.ffn.experts[0].parameters())
                    total -= per_expert * (len(b.ffn.experts) - b.ffn.top_k)
        return total


def _init_weights(module):
    """GPT-2's initialisation of one module (not its children): linear and embedding weights N(0, 0.02),
    linear biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def reinit(module: nn.Module):
    """`_init_weights` over `module` and its descendants, except below a module whose `keeps_init` is
    True: a mixer (or part of one) whose own initialisation is part of its method, such as Mamba's dt
    bias (softplus^-1 of a log-uniform dt, held by an nn.Linear in Mamba-1) or an implicit filter's
    MLP, would otherwise be overwritten by the N(0, 0.02) / zero-bias rule."""
    if getattr(module, "keeps_init", False):
        return
    for child in module.children():  # children first, as nn.Module.apply: the same random draws in the
        reinit(child)                # same order as before for every model without a keeps_init part
    _init_weights(module)
