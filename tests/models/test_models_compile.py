"""The mixers' forward reads nothing from device memory back to the host (a sync per layer on a GPU, and
what blocks CUDA-graph capture), and `torch.compile` captures each model whole, forward and backward."""

import pytest
import torch

from alloyml.kernels.common import checks
from alloyml.models.config import ModelConfig
from alloyml.models.mixers import MIXERS
from alloyml.models.model import LinearLM

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def tiny(mixer, ffn="mlp"):
    torch.manual_seed(0)
    return LinearLM(ModelConfig(mixer=mixer, vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_state=8, ffn=ffn))


@pytest.fixture
def no_host_reads(monkeypatch):
    """Any read of a tensor's values into Python raises, and the kernels' value checks behave as they do
    on CUDA (skipped unless ALLOYML_CHECK_VALUES=1)."""
    monkeypatch.delenv(checks.CHECK_VALUES_ENV, raising=False)
    monkeypatch.setattr(checks, "values_readable", lambda x: False)

    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor's value was read on the host")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_the_host_read_guard_catches_reads(no_host_reads):
    x = torch.ones(3)
    with pytest.raises(AssertionError, match="host"):
        bool(x.any())
    with pytest.raises(AssertionError, match="host"):
        x.tolist()


@pytest.mark.parametrize("mixer", [m for m in MIXERS if m != "softmax"])
def test_forward_and_backward_read_no_values_on_the_host(mixer, no_host_reads):
    model = tiny(mixer)
    ids = torch.randint(0, 40, (2, 70), generator=torch.Generator().manual_seed(0))
    out = model(ids)
    out.logits.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _compiled_matches_eager(mixer, backend, dtype, tol, ffn="mlp"):
    model = tiny(mixer, ffn).to(dtype)
    ids = torch.randint(0, 40, (2, 70), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: a graph break fails
    got = compiled(ids).logits
    want = model(ids).logits
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    got_grads = torch.autograd.grad(got.sum(), list(model.parameters()))
    want_grads = torch.autograd.grad(want.sum(), list(model.parameters()))
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=100 * tol, atol=100 * tol)


# griffin stacks hawk and local_attn, both captured in the default run; its own capture takes ~20 s here
@pytest.mark.parametrize("mixer", [pytest.param(m, marks=pytest.mark.slow) if m == "griffin" else m for m in MIXERS])
def test_torch_compile_captures_the_whole_model(mixer):
    """Dynamo captures each model in one graph (the "eager" backend runs that graph as it is, which keeps
    the test fast); the backward runs through the captured forward."""
    _compiled_matches_eager(mixer, "eager", torch.float64, 1e-12)


@pytest.mark.parametrize(("mixer", "ffn"), [("linear_attn", "kan"), ("rwkv", "rwkv_cmix")])
def test_torch_compile_captures_the_feed_forwards(mixer, ffn):
    """The KAN feed-forward (spline bases, the batched spline matmul) and RWKV's channel mix (its token
    shift) compile in the same single graph as the mixers, forward and backward, and match eager."""
    _compiled_matches_eager(mixer, "eager", torch.float64, 1e-12, ffn=ffn)


def test_feed_forwards_read_no_values_on_the_host(no_host_reads):
    for mixer, ffn in (("linear_attn", "kan"), ("rwkv", "rwkv_cmix")):
        model = tiny(mixer, ffn)
        ids = torch.randint(0, 40, (2, 70), generator=torch.Generator().manual_seed(0))
        model(ids).logits.float().sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["linear_attn", "gla"])  # the scalar-gate and per-channel-gate paths
def test_torch_compile_with_inductor(mixer):
    """The default backend (inductor: AOT autograd + generated code), about a minute per model here."""
    _compiled_matches_eager(mixer, "inductor", torch.float32, 1e-5)
