"""Per-example loss gradients, batched and optionally projected.

`GradientFeaturizer(model, loss_fn)(inputs, targets)` returns one flattened gradient per example: `[n, P]`
for the selected parameters, or `[n, d]` after a random projection. Gradients come from
`torch.func.vmap(torch.func.grad(...))` over `functional_call`, so a batch costs about one backward pass;
models whose forward vmap cannot trace (data-dependent control flow, in-place ops on inputs) fall back to an
explicit per-example loop with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alloyml.errors import InvalidInputError
from alloyml.valuation.influence.reduction import per_example_sum

# A projection matrix larger than this (elements) is refused rather than silently eating memory.
MAX_PROJECTION_ELEMENTS = 400_000_000


def select_parameters(model: torch.nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters whose gradients count: all of them, or those whose name starts
    with one of `layers` (e.g. ["head."] for the last layer only)."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if layers is None:
        return names
    chosen = [name for name in names if any(name == prefix or name.startswith(prefix) for prefix in layers)]
    if not chosen:
        raise InvalidInputError(f"layers={list(layers)!r} match no trainable parameter; names are {names[:20]}")
    return chosen


class GradientFeaturizer:
    """Flattened per-example gradients of `loss_fn(model(x[None]), y[None])` w.r.t. selected parameters.

    model:          any `torch.nn.Module`; its current parameters are used unless `load` swaps them.
    loss_fn:        (outputs, targets) -> loss, reduced by mean or sum or not at all (reduction="none");
                    called on one example at a time, so the reduction does not matter.
    layers:         parameter-name prefixes to keep (None = all trainable parameters).
    projection_dim: if set, gradients are multiplied by a fixed Gaussian matrix [P, d] / sqrt(d) drawn
                    from `seed` (Johnson–Lindenstrauss: inner products are preserved in expectation).
    batch_size:     examples per vmap call (bounds memory at batch_size × P floats).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, layers: Sequence[str] | None = None,
                 projection_dim: int | None = None, seed: int = 0, batch_size: int = 256):
        self.model = model
        self.loss_fn = loss_fn
        self.names = select_parameters(model, layers)
        self.batch_size = int(batch_size)
        parameters = dict(model.named_parameters())
        self.n_params = int(sum(parameters[n].numel() for n in self.names))
        self.projection = None
        if projection_dim is not None:
            if projection_dim < 1:
                raise InvalidInputError(f"projection_dim must be >= 1, got {projection_dim}")
            if self.n_params * projection_dim > MAX_PROJECTION_ELEMENTS:
                raise InvalidInputError(
                    f"a projection of {self.n_params:,} gradient entries to {projection_dim} dimensions needs "
                    f"{self.n_params * projection_dim * 4 / 1e9:.1f} GB; choose fewer layers or a smaller dim")
            generator = torch.Generator().manual_seed(seed)
            self.projection = torch.randn(self.n_params, projection_dim, generator=generator) / projection_dim**0.5
        self._vectorized = True

    @property
    def dim(self) -> int:
        return self.n_params if self.projection is None else self.projection.shape[1]

    def load(self, state_dict: dict) -> None:
        """Use the weights of a checkpoint (same architecture)."""
        self.model.load_state_dict(state_dict)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """inputs: [n, ...], targets: [n, ...] -> gradients [n, dim] in the parameters' dtype."""
        if len(inputs) != len(targets):
            raise InvalidInputError(f"inputs has {len(inputs)} examples but targets has {len(targets)}")
        chunks = [self._batch(inputs[i:i + self.batch_size], targets[i:i + self.batch_size])
                  for i in range(0, len(inputs), self.batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def _batch(self, inputs, targets) -> torch.Tensor:
        flat = None
        if self._vectorized:
            try:
                flat = self._vmap_gradients(inputs, targets)
            except (RuntimeError, NotImplementedError, ValueError):
                # Some ops have no batching rule; the loop below is exact, only slower.
                self._vectorized = False
        if flat is None:
            flat = self._loop_gradients(inputs, targets)
        return flat if self.projection is None else flat @ self.projection.to(flat.dtype)

    def _split(self):
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        chosen = {n: params.pop(n) for n in self.names}
        buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        return chosen, {**params, **buffers}

    def _vmap_gradients(self, inputs, targets) -> torch.Tensor:
        from torch.func import functional_call, grad, vmap

        chosen, frozen = self._split()

        def example_loss(selected, x, y):
            outputs = functional_call(self.model, {**frozen, **selected}, (x.unsqueeze(0),))
            return per_example_sum(self.loss_fn(outputs, y.unsqueeze(0)))

        grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(chosen, inputs, targets)
        return torch.cat([grads[n].reshape(len(inputs), -1) for n in self.names], dim=1)

    def _loop_gradients(self, inputs, targets) -> torch.Tensor:
        parameters = dict(self.model.named_parameters())
        selected = [parameters[n] for n in self.names]
        rows = []
        for x, y in zip(inputs, targets, strict=True):
            loss = per_example_sum(self.loss_fn(self.model(x.unsqueeze(0)), y.unsqueeze(0)))
            grads = torch.autograd.grad(loss, selected, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, selected, strict=True)]))
        return torch.stack(rows)
