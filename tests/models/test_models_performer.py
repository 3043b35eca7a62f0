"""Performer (FAVOR+): the random-feature estimate of the softmax kernel exp(q.k) is unbiased with a mean
squared error that falls as 1/m, lower for orthogonal than for independent features (Choromanski et al.
2021, Lemma 1 and Theorem 2); the causal mixer equals an O(T^2) attention written here over the paper's
unstabilised features; features are fixed in eval, saved with the model, and redrawn in training on a
seeded schedule that a resumed run repeats."""

import math

import pytest
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.data import MQAR, batches
from alloyml.models.model import LinearLM
from alloyml.models.performer import PerformerAttention, gaussian_features, positive_features
from alloyml.models.trainer import Trainer, before_train_step

d = 16


def kernel_mse(m: int, orthogonal: bool, draws: int = 300, seed: int = 0, size: float = 0.15) -> float:
    """Mean over query/key pairs and feature draws of (phi(q).phi(k) - exp(q.k))^2 / exp(q.k)^2."""
    gen = torch.Generator().manual_seed(seed)
    q = size * torch.randn(32, d, generator=gen, dtype=torch.float64)  # |q|, |k| about 0.6
    k = size * torch.randn(32, d, generator=gen, dtype=torch.float64)
    omega = torch.stack([gaussian_features(m, d, orthogonal=orthogonal, generator=gen) for _ in range(draws)])
    phi_q = positive_features(q[:, None].expand(-1, draws, -1), omega.double())  # [pairs, draws, m]
    phi_k = positive_features(k[:, None].expand(-1, draws, -1), omega.double())
    estimate = (phi_q * phi_k).sum(-1)  # [pairs, draws]
    exact = torch.exp((q * k).sum(-1, keepdim=True))
    return ((estimate - exact) / exact).pow(2).mean().item()


def test_orthogonal_rows_are_orthogonal_and_gaussian_in_norm():
    w = gaussian_features(40, d, generator=torch.Generator().manual_seed(0)).double()
    block = w[:d] / w[:d].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(d, dtype=torch.float64), rtol=0, atol=1e-5)
    norms = torch.stack([gaussian_features(64, d, generator=torch.Generator().manual_seed(s)).norm(dim=-1)
                         for s in range(20)]).double()
    assert norms.pow(2).mean().item() == pytest.approx(d, rel=0.05)  # E|w|^2 = d for w ~ N(0, I_d)


def test_kernel_estimate_error_falls_as_one_over_m_and_orthogonal_beats_iid():
    mse = {(m, o): kernel_mse(m, o) for m in (16, 64, 256) for o in (True, False)}
    for orthogonal in (True, False):
        ratio = mse[256, orthogonal] / mse[16, orthogonal]
        assert 1 / 32 <= ratio <= 1 / 8, (orthogonal, ratio)  # 1/16 within a factor 2
    for m in (16, 64, 256):
        assert mse[m, True] < mse[m, False], m


def test_kernel_estimate_is_unbiased():
    gen = torch.Generator().manual_seed(4)
    q = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    k = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    omega = torch.stack([gaussian_features(64, d, generator=gen) for _ in range(2000)]).double()
    estimate = (positive_features(q.expand(2000, d), omega) * positive_features(k.expand(2000, d), omega)).sum(-1)
    sem = estimate.std().item() / math.sqrt(2000)
    assert abs(estimate.mean().item() - math.exp(q @ k)) < 4 * sem


def mixer(seed=0, m=24):
    torch.manual_seed(seed)
    cfg = ModelConfig(mixer="performer", d_model=32, n_heads=2, performer_features=m)
    return PerformerAttention(cfg).double().eval()


def quadratic_performer(layer, x):
    """o_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / sum_{s<=t} phi(q_t).phi(k_s), with the paper's phi."""
    q, k, v = (t.unflatten(-1, (layer.n_heads, -1)) for t in layer.qkv(x).chunk(3, dim=-1))
    scale = q.shape[-1] ** -0.25
    phi_q, phi_k = positive_features(q * scale, layer.omega), positive_features(k * scale, layer.omega)
    scores = torch.einsum("bthm,bshm->bhts", phi_q, phi_k)  # [B, H, T, T]
    T = x.shape[1]
    scores = scores * torch.ones(T, T, dtype=torch.bool).tril()
    o = torch.einsum("bhts,bshd->bthd", scores, v) / scores.sum(-1).transpose(1, 2)[..., None]
    return layer.out(o.flatten(-2))


@pytest.mark.parametrize("T", [1, 37, 70])
def test_causal_performer_equals_the_quadratic_form_outputs_and_gradients(T):
    layer = mixer()
    x = torch.randn(2, T, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(T), requires_grad=True)
    y, _ = layer(x)
    want = quadratic_performer(layer, x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
    params = [x, *layer.parameters()]
    for g, w in zip(torch.autograd.grad(y.pow(2).sum(), params), torch.autograd.grad(want.pow(2).sum(), params),
                    strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_large_queries_stay_exact_where_the_plain_features_underflow():
    """Queries 12 times larger: exp(-|q|^2 / 2) underflows in float32, so the plain features give 0 / 0; the stabilised
    query features (largest exactly 1) keep float32 at the float64 answer."""
    layer = mixer(1)
    with torch.no_grad():
        layer.qkv.weight[:32] *= 12  # the query rows
    x = torch.randn(1, 20, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = quadratic_performer(layer, x)
        assert torch.isfinite(want).all()
        layer.float()
        assert torch.isnan(quadratic_performer(layer, x.float())).any()
        got, _ = layer(x.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def tiny_lm(seed=0, redraw=2):
    torch.manual_seed(seed)
    return LinearLM(ModelConfig(mixer="performer", vocab_size=17, d_model=32, n_layers=2, n_heads=2,
                                performer_features=16, performer_redraw=redraw))


def omegas(model):
    return [b.mixer.omega.clone() for b in model.blocks]


def test_features_are_fixed_in_forward_and_redrawn_on_schedule_by_seed():
    model = tiny_lm()
    ids = torch.randint(0, 17, (2, 9))
    first = omegas(model)
    model.train()
    a, b = model(ids).logits, model(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # forward never redraws, not even in training
    before_train_step(model, 1)  # not a multiple of 2: nothing
    assert all(torch.equal(x, y) for x, y in zip(first, omegas(model), strict=True))
    before_train_step(model, 2)
    second = omegas(model)
    assert not any(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    assert not torch.equal(second[0], second[1])  # each layer its own draws
    twin = tiny_lm()
    before_train_step(twin, 2)
    assert all(torch.equal(x, y) for x, y in zip(second, omegas(twin), strict=True))  # seeded
    assert not torch.equal(model(ids).logits, a)
    frozen = tiny_lm(redraw=0)
    before_train_step(frozen, 1000)
    assert all(torch.equal(x, y) for x, y in zip(first, omegas(frozen), strict=True))


def test_save_load_keeps_the_drawn_features(tmp_path):
    from alloyml.models.saving import load_model, save_model

    model = tiny_lm()
    before_train_step(model, 4)  # features differ from the ones a fresh model of this config draws
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "m"))
    ids = torch.randint(0, 17, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_trainer_redraws_and_a_resumed_run_redraws_the_same(tmp_path):
    data = batches(MQAR(n_pairs=2, n_keys=4, n_values=4), batch_size=4, seed=1)
    kw = dict(steps=6, lr=1e-2, warmup_steps=1, checkpoint_every=3)
    full = tiny_lm()
    start = omegas(full)
    straight = Trainer(**kw, checkpoint_dir=tmp_path / "a").fit(full, data)
    assert not torch.equal(start[0], omegas(full)[0])  # redrawn at steps 2 and 4
    Trainer(**kw, checkpoint_dir=tmp_path / "b").fit(tiny_lm(), data)
    resumed = tiny_lm()  # from the step-3 checkpoint: the redraw at step 4 must follow as before
    again = Trainer(**kw, checkpoint_dir=tmp_path / "c").fit(resumed, data, resume_from=tmp_path / "b" / "step-000003")
    assert [m.loss for m in again.history_] == [m.loss for m in straight.history_[3:]]
    assert all(torch.equal(x, y) for x, y in zip(omegas(full), omegas(resumed), strict=True))
