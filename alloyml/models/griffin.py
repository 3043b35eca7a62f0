"""Griffin (De et al. 2024): RG-LRU recurrent blocks mixed with local (sliding-window) attention.

- `local_attn`: multi-head softmax attention over the last `window` tokens (ModelConfig.window), rotary
  positions, the blocked band form of `kernels.local_attn` for whole sequences; decoding keeps a ring
  buffer of the last `window` keys and values, so its state has a fixed size (2 * window * d_model
  numbers plus slot positions) and a step costs O(window * d_model), however long the context.
- `griffin`: one block is itself a residual stack of pre-norm temporal layers in the paper's pattern,
  (RG-LRU, RG-LRU, local attention) by default (`ModelConfig.griffin_period` = 3: period - 1 RG-LRU
  layers, then one local attention): h <- h + layer(norm(h)) for each, starting from
  the block's normalised input; the mixer returns the sum of the three updates (summed apart from h, so
  half precision does not lose them to h - x), and the block's
  feed-forward follows (the paper puts an MLP after each temporal layer; here one follows the three).
  The recurrent layer is Hawk's (`ssm_mixers.Hawk`); the local attention is multi-query (one key / value
  head), as in the paper.

States are flat tuples of batch-first tensors (the ring buffer's slot positions and lengths are int64),
so `select_state` / `cat_states` regroup them as for any recurrent mixer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alloyml.models.config import ModelConfig
from alloyml.models.mixers import Mixer, check_packed, head_split, packed_positions, register_mixer, rotary

EMPTY_SLOT = -1  # a ring-buffer slot that holds no token yet


@register_mixer("local_attn")
class LocalAttention(Mixer):
    """State: (keys [B, W, Hkv, Dh], values [B, W, Hkv, Dh], position of each slot's token [B, W]
    (EMPTY_SLOT when none), tokens seen [B]); the token at position p sits in slot p mod W. `kv_heads`:
    n_heads (multi-head, the registered mixer) or 1 (multi-query, as Griffin's local attention: one key and
    value head shared by every query head, an n_heads-times smaller ring buffer)."""

    state_parts = 4

    def __init__(self, cfg: ModelConfig, kv_heads: int | None = None):
        super().__init__()
        self.n_heads, self.rope_base, self.window, self.backend = cfg.n_heads, cfg.rope_base, cfg.window, cfg.backend
        self.kv_heads = cfg.n_heads if kv_heads is None else kv_heads
        self.kv_width = self.kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, cfg.d_model + 2 * self.kv_width, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _empty(self, B, k):
        W = self.window
        slots = torch.full((B, W), EMPTY_SLOT, dtype=torch.long, device=k.device)
        zeros = k.new_zeros(B, W, *k.shape[2:])
        return zeros, zeros, slots, torch.zeros(B, dtype=torch.long, device=k.device)

    def _write(self, state, k, v, positions):
        """The ring buffer after the tokens k, v [B, T, H, Dh] at `positions` [B, T] (consecutive per row):
        the last min(T, W) of them go to slots position mod W (distinct), older slots keep their tokens."""
        keys, values, slot_pos, length = state
        m = min(k.shape[1], self.window)
        k, v, positions = k[:, -m:], v[:, -m:], positions[:, -m:]
        slot = positions.remainder(self.window)  # [B, m]
        index = slot[..., None, None].expand_as(k)
        return (keys.scatter(1, index, k.to(keys.dtype)), values.scatter(1, index, v.to(values.dtype)),
                slot_pos.scatter(1, slot, positions), positions[:, -1] + 1)

    def _packed_state(self, k, v, cu_seqlens):
        """Each packed sequence's ring buffer: its last W tokens (fewer if it is shorter) in slots p mod W."""
        W = self.window
        starts, ends = cu_seqlens[:-1, None], cu_seqlens[1:, None]  # [N, 1]
        index = ends - W + torch.arange(W, device=k.device)  # [N, W], the last W indices
        position = index - starts  # negative where the sequence is shorter than W
        valid = position >= 0
        slot = position.remainder(W)  # W consecutive integers: distinct slots
        gathered_k, gathered_v = (torch.where(valid[..., None, None], t[0, index.clamp(min=0)], 0.0) for t in (k, v))
        spread = slot[..., None, None].expand_as(gathered_k)
        keys = gathered_k.new_zeros(gathered_k.shape).scatter(1, spread, gathered_k)
        values = gathered_v.new_zeros(gathered_v.shape).scatter(1, spread, gathered_v)
        slot_pos = torch.full_like(slot, EMPTY_SLOT).scatter(1, slot, torch.where(valid, position, EMPTY_SLOT))
        return keys, values, slot_pos, (ends - starts)[:, 0]

    def forward(self, x, state=None, cu_seqlens=None):
        from alloyml.kernels.local_attn import band_mask, local_attn

        check_packed(x, state, cu_seqlens)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([x.shape[-1], self.kv_width, self.kv_width], dim=-1)
        q, k, v = head_split(q, self.n_heads), head_split(k, self.kv_heads), head_split(v, self.kv_heads)
        steps = torch.arange(T, device=x.device)
        if cu_seqlens is not None:
            positions = packed_positions(cu_seqlens, T, x.device)[None]
        else:
            positions = steps.expand(B, T) if state is None else state[3][:, None] + steps
        q, k = rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base)
        H = self.n_heads
        if state is None:
            o = local_attn(q, *(t.expand(B, T, H, t.shape[-1]) for t in (k, v)), self.window, cu_seqlens=cu_seqlens,
                           backend=self.backend)
        else:  # continuing: the buffer's tokens, then these, under the band mask by true positions
            keys, values = torch.cat([state[0].to(k.dtype), k], 1), torch.cat([state[1].to(v.dtype), v], 1)
            keys, values = (t.expand(B, t.shape[1], H, t.shape[-1]) for t in (keys, values))
            key_pos = torch.cat([state[2], positions], 1)  # [B, W + T]
            mask = band_mask(positions[:, :, None], key_pos[:, None, :], self.window)  # [B, T, W + T]
            o = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                               attn_mask=mask[:, None]).transpose(1, 2)
        if cu_seqlens is not None:
            new = self._packed_state(k, v, cu_seqlens)
        else:
            new = self._write(self._empty(B, k) if state is None else state, k, v, positions)
        return self.out(o.flatten(-2)), new

    def step(self, x, state=None):
        y, new = self.forward(x[:, None], state)
        return y[:, 0], new


# ----------------------------------------------------------------------------------------------------------

def griffin_pattern(period: int) -> tuple[str, ...]:
    """The temporal layers of one griffin block: period - 1 RG-LRU (Hawk) layers, then local attention."""
    return ("hawk",) * (period - 1) + ("local_attn",)


@register_mixer("griffin")
class Griffin(Mixer):
    def __init__(self, cfg: ModelConfig):
        from alloyml.models.mixers import MIXERS

        super().__init__()
        self.pattern = griffin_pattern(cfg.griffin_period)
        self.norms = nn.ModuleList(nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) for _ in self.pattern)
        self.layers = nn.ModuleList(LocalAttention(cfg, kv_heads=1) if name == "local_attn" else MIXERS[name](cfg)
                                    for name in self.pattern)

    def _parts(self):
        """How many tensors of the flat state each layer owns (Hawk: conv inputs and RG-LRU state)."""
        return [getattr(layer, "state_parts", 2) for layer in self.layers]

    def _split(self, state):
        if state is None:
            return [None] * len(self.layers)
        out, at = [], 0
        for n in self._parts():
            out.append(tuple(state[at : at + n]))
            at += n
        return out

    def forward(self, x, state=None, cu_seqlens=None):
        check_packed(x, state, cu_seqlens)
        h, total, new = x, 0, []
        for norm, layer, s in zip(self.norms, self.layers, self._split(state), strict=True):
            y, s = layer(norm(h), s, cu_seqlens=cu_seqlens)
            total = total + y  # the updates summed apart: h - x would cancel in half precision
            h = x + total
            new.extend(s)
        return total, tuple(new)

    def step(self, x, state=None):
        h, total, new = x, 0, []
        for norm, layer, s in zip(self.norms, self.layers, self._split(state), strict=True):
            y, s = layer.step(norm(h), s)
            total = total + y
            h = x + total
            new.extend(s)
        return total, tuple(new)
