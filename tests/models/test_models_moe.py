"""MoE routing against brute-force references written with plain Python loops and numpy."""

import math

import numpy as np
import pytest
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.model import Block
from alloyml.models.moe import MoE


def moe(routing="token_choice", top_k=1, capacity_factor=1.25, n_experts=4):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, ffn="moe", n_experts=n_experts, top_k=top_k, capacity_factor=capacity_factor,
                      routing=routing, ffn_mult=2, n_heads=2)
    return MoE(cfg).double()


def brute_force_token_choice(layer, x, capacity):
    """Loop over choice ranks then tokens, filling expert queues; returns (y, served mask, queue sizes)."""
    probs = torch.softmax(layer.router(x), -1).detach().numpy()
    N, E = probs.shape
    k = layer.top_k
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    gates = np.take_along_axis(probs, order, 1)
    if k > 1:
        gates = gates / gates.sum(1, keepdims=True)
    queue = [0] * E
    served = np.zeros((N, k), dtype=bool)
    y = torch.zeros_like(x)
    for rank in range(k):
        for n in range(N):
            e = order[n, rank]
            if capacity is None or queue[e] < capacity:
                queue[e] += 1
                served[n, rank] = True
                y[n] += gates[n, rank] * layer.experts[e](x[n : n + 1])[0]
    return y, served, queue, probs, order


@pytest.mark.parametrize("top_k", [1, 2])
@torch.no_grad()
def test_token_choice_respects_capacity_and_matches_brute_force(top_k):
    layer = moe(top_k=top_k, capacity_factor=1.0).train()
    # A biased input crowds most tokens onto one expert, so capacity must bite.
    x = torch.randn(40, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 2.0
    y, _ = layer(x)
    capacity = math.ceil(1.0 * 40 * top_k / 4)
    want, served, queue, _, _ = brute_force_token_choice(layer, x, capacity)
    assert max(queue) <= capacity and not served.all()
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    stats = layer.last_stats_
    assert stats.dropped == pytest.approx(1 - served.mean())
    np.testing.assert_allclose(stats.load.numpy(), np.array(queue) / sum(queue))
    dropped_everywhere = ~served.any(1)
    assert dropped_everywhere.any()
    assert torch.all(y[torch.from_numpy(dropped_everywhere)] == 0)  # the residual alone carries these


@torch.no_grad()
def test_overflow_tokens_pass_through_the_residual_of_the_block():
    cfg = ModelConfig(d_model=16, n_heads=2, mixer="softmax", ffn="moe", n_experts=2, capacity_factor=0.25,
                      ffn_mult=2)
    torch.manual_seed(0)
    block = Block(cfg).double().train()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    out, _, _ = block(x)
    h = x + block.mixer(block.mixer_norm(x))[0]  # after the mixer, before the feed-forward
    _, served, *_ = brute_force_token_choice(block.ffn, block.ffn_norm(h)[0], capacity=math.ceil(0.25 * 12 / 2))
    dropped = torch.from_numpy(~served[:, 0])
    torch.testing.assert_close(out[0, dropped], h[0, dropped], rtol=0, atol=0)
    assert not torch.allclose(out[0, ~dropped], h[0, ~dropped])


@torch.no_grad()
def test_switch_aux_loss_matches_a_hand_computation():
    layer = moe(top_k=2).train()
    x = torch.randn(30, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, aux = layer(x)
    probs = torch.softmax(layer.router(x), -1).numpy()
    top = np.argsort(-probs, axis=1)[:, :2]
    f = np.array([(top == e).sum() for e in range(4)]) / top.size  # fraction of the 60 choices per expert
    P = probs.mean(0)
    assert aux.item() == pytest.approx(4 * float((f * P).sum()), rel=1e-12)
    # uniform routing gives the minimum, 1
    layer.router.weight.zero_()
    assert layer(x)[1].item() == pytest.approx(1.0)


@torch.no_grad()
def test_eval_mode_serves_every_choice():
    layer = moe(capacity_factor=0.5).eval()
    x = torch.randn(20, 16, dtype=torch.float64) + 2.0
    y, _ = layer(x)
    want, served, *_ = brute_force_token_choice(layer, x, capacity=None)
    assert served.all() and layer.last_stats_.dropped == 0.0
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_expert_choice_each_expert_takes_its_top_tokens():
    layer = moe(routing="expert_choice", capacity_factor=1.0)
    x = torch.randn(24, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, aux = layer(x)
    probs = torch.softmax(layer.router(x), -1)
    capacity = 24 // 4
    want = torch.zeros_like(x)
    picked = set()
    for e in range(4):
        for n in torch.argsort(probs[:, e], descending=True)[:capacity].tolist():
            picked.add(n)
            want[n] += probs[n, e] * layer.experts[e](x[n : n + 1])[0]
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    assert aux.item() == 0.0
    assert layer.last_stats_.dropped == pytest.approx(1 - len(picked) / 24)
    assert layer.last_stats_.load_cv == 0.0
