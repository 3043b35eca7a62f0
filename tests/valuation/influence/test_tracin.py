"""TracIn, self-influence and influence functions against explicit per-example autograd loops and an
explicitly inverted Hessian on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr

from alloyml.errors import InvalidInputError
from alloyml.valuation import flip_labels, noisy_label_detection
from alloyml.valuation.influence import TrainingCheckpoint, influence_functions, self_influence, tracin


def _mlp(d_in=6, hidden=8, d_out=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, d_out)).double()


def _data(n, d_in=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _checkpoints(model, n=3):
    out = []
    for i in range(n):
        state = {k: v + 0.05 * i * torch.sin(torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape) + i)
                 for k, v in model.state_dict().items()}
        out.append(TrainingCheckpoint(state, learning_rate=0.1 / (i + 1)))
    return out


def _explicit_grads(model, state, x, y, names=None):
    """One backward pass per example: the oracle."""
    model.load_state_dict(state)
    params = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    rows = []
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1).clone() for _, p in params]))
    return torch.stack(rows)


def _explicit_tracin(model, checkpoints, train, test, names=None):
    total = 0
    for c in checkpoints:
        total = total + c.learning_rate * _explicit_grads(model, c.state_dict, *train, names) @ \
            _explicit_grads(model, c.state_dict, *test, names).T
    return total.numpy()


def test_tracin_matches_explicit_per_example_loop():
    model = _mlp()
    train, test = _data(13, seed=1), _data(5, seed=2)
    checkpoints = _checkpoints(model)
    expected = _explicit_tracin(model, checkpoints, train, test)
    got = tracin(model, checkpoints, train, test, F.cross_entropy, chunk_size=4, batch_size=3)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-9, atol=1e-12)
    assert got.scores.shape == (13, 5)
    valuation = got.to_valuation()
    np.testing.assert_allclose(valuation.values, expected.mean(axis=1), rtol=1e-9)


def test_layer_selection_uses_only_those_parameters():
    model = _mlp()
    train, test = _data(7, seed=3), _data(4, seed=4)
    checkpoints = _checkpoints(model, 2)
    expected = _explicit_tracin(model, checkpoints, train, test, names={"2.weight", "2.bias"})
    got = tracin(model, checkpoints, train, test, F.cross_entropy, layers=["2."])
    np.testing.assert_allclose(got.scores, expected, rtol=1e-9, atol=1e-12)


def test_self_influence_is_the_diagonal():
    model = _mlp()
    train = _data(9, seed=5)
    checkpoints = _checkpoints(model)
    expected = np.diag(_explicit_tracin(model, checkpoints, train, train))
    result = self_influence(model, checkpoints, train, F.cross_entropy, batch_size=4)
    np.testing.assert_allclose(-result.values, expected, rtol=1e-9)
    assert result.method == "tracin_self_influence" and (result.counts == 3).all()


def test_loop_fallback_when_vmap_cannot_trace():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(6, 3).double()
            self.gain = torch.nn.Parameter(torch.tensor(1.5, dtype=torch.float64))  # not a linear layer

        def forward(self, x):
            out = self.linear(x) * self.gain
            return out * 2 if out.sum().item() > 0 else out  # data-dependent: vmap refuses .item()

    torch.manual_seed(0)
    model = Branchy()
    train, test = _data(6, seed=6), _data(3, seed=7)
    checkpoints = [TrainingCheckpoint(model.state_dict(), 0.5)]
    expected = _explicit_tracin(model, checkpoints, train, test)
    np.testing.assert_allclose(tracin(model, checkpoints, train, test, F.cross_entropy).scores, expected, rtol=1e-9)


def test_projection_correlation_rises_with_dimension():
    model = _mlp(d_in=10, hidden=32, d_out=5)  # 517 parameters
    train, test = _data(40, d_in=10, classes=5, seed=8), _data(10, d_in=10, classes=5, seed=9)
    checkpoints = _checkpoints(model, 2)
    exact = tracin(model, checkpoints, train, test, F.cross_entropy).scores.ravel()
    correlations = []
    for dim in (4, 32, 512):
        runs = [pearsonr(exact, tracin(model, checkpoints, train, test, F.cross_entropy, projection_dim=dim,
                                       seed=s).scores.ravel())[0] for s in range(3)]
        correlations.append(np.mean(runs))
    assert correlations[0] < correlations[1] < correlations[2]
    assert correlations[2] > 0.95


def _explicit_influence(model, train, test, damping):
    """Dense Hessian of the mean training loss by torch.autograd.functional.hessian, then a solve."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = vector[offset:offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (train[0],)), train[1])

    hessian = torch.autograd.functional.hessian(mean_loss, flat)
    state = model.state_dict()
    g_train, g_test = _explicit_grads(model, state, *train), _explicit_grads(model, state, *test)
    solved = torch.linalg.solve(hessian + damping * torch.eye(len(flat), dtype=flat.dtype), g_test.T)
    return (g_train @ solved).numpy()


def test_influence_functions_cg_and_lissa_match_the_explicit_inverse():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()  # softmax regression: a convex loss, so H + λI is positive definite
    train, test = _data(30, d_in=4, seed=10), _data(3, d_in=4, seed=11)
    damping = 0.2
    expected = _explicit_influence(model, train, test, damping)
    cg = influence_functions(model, train, test, F.cross_entropy, solver="cg", damping=damping, max_iter=60)
    np.testing.assert_allclose(cg.scores, expected, rtol=1e-6, atol=1e-9)
    aggregated = influence_functions(model, train, test, F.cross_entropy, damping=damping, aggregate_test=True)
    np.testing.assert_allclose(aggregated.scores[:, 0], expected.mean(axis=1), rtol=1e-6, atol=1e-9)
    lissa = influence_functions(model, train, test, F.cross_entropy, solver="lissa", damping=damping,
                                lissa_depth=150, lissa_scale=2.0, lissa_batch=30, aggregate_test=True)
    np.testing.assert_allclose(lissa.scores[:, 0], expected.mean(axis=1), rtol=1e-3, atol=1e-6)


def test_self_influence_flags_flipped_labels():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    clean = (x[:, 0] + x[:, 1] > 0).long()
    noisy, flipped = flip_labels(clean.numpy(), 0.1, seed=0)
    y = torch.as_tensor(noisy)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    checkpoints = []
    for epoch in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if epoch % 10 == 9:
            checkpoints.append(TrainingCheckpoint({k: v.clone() for k, v in model.state_dict().items()}, 0.5))
    result = self_influence(model, checkpoints, (x, y), F.cross_entropy)
    assert noisy_label_detection(result, flipped).auc > 0.9


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoints": []}, "checkpoints is empty"),
    ({"checkpoints": [({}, -1.0)]}, "learning rate -1.0"),
    ({"train": (torch.zeros(3, 6), torch.zeros(2))}, "train: inputs has 3 rows and targets 2"),
    ({"layers": ["nope."]}, "match no trainable parameter"),
])
def test_bad_inputs_fail_before_work(kwargs, message):
    model = _mlp()
    args = {"checkpoints": _checkpoints(model, 1), "train": _data(4), "test": _data(2), "layers": None}
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=message):
        tracin(model, args["checkpoints"], args["train"], args["test"], F.cross_entropy, layers=args["layers"])


@pytest.mark.ray
def test_ray_workers_give_the_same_scores(ray_session):
    model = _mlp()
    train, test = _data(20, seed=12), _data(4, seed=13)
    checkpoints = _checkpoints(model, 2)
    serial = tracin(model, checkpoints, train, test, F.cross_entropy)
    parallel = tracin(model, checkpoints, train, test, F.cross_entropy, n_jobs=3)
    np.testing.assert_allclose(parallel.scores, serial.scores, rtol=1e-12)


def test_factored_and_vmap_paths_agree():
    """The linear-layer factorisation (auto-chosen for this MLP) against the per-example vmap path."""
    from alloyml.valuation.influence.tracin import _DenseGradients, _FactoredGradients, _gradients, _tracin_rows

    model = _mlp(d_in=5, hidden=7, d_out=4)
    train, test = _data(11, d_in=5, classes=4, seed=14), _data(6, d_in=5, classes=4, seed=15)
    checkpoints = _checkpoints(model, 2)
    factored = _gradients(model, F.cross_entropy, None, None, 0, 4, test)
    assert isinstance(factored, _FactoredGradients)
    dense = _DenseGradients(__import__("alloyml.valuation.influence", fromlist=["x"]).GradientFeaturizer(
        model, F.cross_entropy, batch_size=4))
    np.testing.assert_allclose(_tracin_rows(factored, checkpoints, train, test, 5),
                               _tracin_rows(dense, checkpoints, train, test, 5), rtol=1e-10, atol=1e-13)
    only_last = _gradients(model, F.cross_entropy, ["2.weight"], None, 0, 4, test)  # half a layer: not factorable
    assert isinstance(only_last, _DenseGradients)
