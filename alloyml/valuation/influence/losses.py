"""Loss functions shaped for the influence methods: `(outputs, targets) -> mean loss over the batch`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # the models' convention for positions without a loss


def sequence_loss(outputs, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a language model over the non-ignored target positions.

    outputs: logits [B, T, vocab] or an object with `.logits` (alloyml's `LMOutput`); targets: [B, T].
    Used per example it gives per-sequence influence; to value single tokens, pass targets that ignore
    every position but the token of interest."""
    logits = getattr(outputs, "logits", outputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
