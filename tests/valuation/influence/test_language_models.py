"""Per-sequence TracIn on alloyml's linear-architecture language models, against an explicit loop."""

import numpy as np
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.model import LinearLM
from alloyml.valuation.influence import TrainingCheckpoint, self_influence, sequence_loss, tracin


def _explicit(model, checkpoints, train, test):
    def grads(x, y):
        rows = []
        for xi, yi in zip(x, y, strict=True):
            model.zero_grad()
            sequence_loss(model(xi[None]), yi[None]).backward()
            rows.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
        return torch.stack(rows).double()

    total = 0
    for c in checkpoints:
        model.load_state_dict(c.state_dict)
        total = total + c.learning_rate * grads(*train) @ grads(*test).T
    return total.numpy()


def test_sequence_influence_of_a_gla_language_model():
    torch.manual_seed(0)
    model = LinearLM(ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, mixer="gla", ffn="mlp",
                                 ffn_mult=2))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 16, (6, 9), generator=g)
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100
    train, test = (ids[:4], targets[:4]), (ids[4:], targets[4:])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoints = [TrainingCheckpoint(state, 0.01),
                   TrainingCheckpoint({k: v * 0.9 for k, v in state.items()}, 0.005)]
    expected = _explicit(model, checkpoints, train, test)
    got = tracin(model, checkpoints, train, test, sequence_loss, batch_size=2)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-8)
    self_values = self_influence(model, checkpoints, train, sequence_loss)
    full = _explicit(model, checkpoints, train, train)
    np.testing.assert_allclose(-self_values.values, np.diag(full), rtol=1e-4)
