"""RWKV-6 (`mixer="rwkv"`, `ffn="rwkv_cmix"`) against a token loop of the paper's equations written here
(float64; it shares no code with rwkv.py or the GLA op): outputs, final states and every gradient; then the
model-level contracts with the stateful channel mix (decode == forward, prefill + continue, packed == one
row each with the token shift reset, regrouped states); and folders saved when "rwkv" meant the RWKV-5-like
mixer (now `rwkv5`) still load as that."""

import json

import pytest
import torch
import torch.nn.functional as F

from alloyml.models.config import ModelConfig
from alloyml.models.model import LinearLM
from alloyml.models.rwkv import RWKV6_MIX_RANK, RWKV6TimeMix, RWKVChannelMix

D, H = 24, 3  # head size 8


def randomised(module, seed):
    """Every parameter drawn at random (so the LoRAs, the bonus and the GroupNorm affine all matter), the
    decay base in [-3, 0.5] (per-step decays from about 0.95 down to 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if isinstance(module, RWKV6TimeMix):
            module.decay_base.copy_(torch.rand(D, generator=gen, dtype=torch.float64) * 3.5 - 3)
    return module


def naive_time_mix(m, x):
    """RWKV-6 time mixing token by token. x: [B, T, D] -> (y, last input, S_T [B, H, K, K])."""
    B, T, _ = x.shape
    K = D // H
    W_r, W_k, W_v, W_g = m.rkvg.weight.chunk(4)
    prev = x.new_zeros(B, D)
    S = [x.new_zeros(B, K, K) for _ in range(H)]
    ys = []
    for t in range(T):
        xt = x[:, t]
        d = prev - xt
        low = torch.tanh((xt + d * m.shift_x) @ m.shift_down).view(B, 5, RWKV6_MIX_RANK)
        mixed = [xt + d * (m.shift_mu[b] + low[:, b] @ m.shift_up[b]) for b in range(5)]
        xr, xk, xv, xw, xg = mixed
        r, k, v, g = xr @ W_r.T, xk @ W_k.T, xv @ W_v.T, F.silu(xg @ W_g.T)
        w = torch.exp(-torch.exp(m.decay_base + torch.tanh(xw @ m.decay_down) @ m.decay_up))
        heads = []
        for h in range(H):
            sl = slice(h * K, (h + 1) * K)
            kv = k[:, sl, None] * v[:, None, sl]  # k_t^T v_t: [B, K, K]
            o = torch.einsum("bi,bij->bj", r[:, sl], S[h] + m.bonus[h][None, :, None] * kv)
            S[h] = w[:, sl, None] * S[h] + kv
            mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
            normed = (o - mean) / torch.sqrt(var + m.head_norm.eps)
            heads.append(normed * m.head_norm.weight[sl] + m.head_norm.bias[sl])
        ys.append((torch.cat(heads, -1) * g) @ m.out.weight.T)
        prev = xt
    return torch.stack(ys, 1), prev, torch.stack(S, 1)


def naive_channel_mix(m, x):
    B, T, _ = x.shape
    prev, ys = x.new_zeros(B, D), []
    for t in range(T):
        xt = x[:, t]
        xk = xt + (prev - xt) * m.shift_k
        xr = xt + (prev - xt) * m.shift_r
        ys.append(torch.sigmoid(xr @ m.receptance.weight.T) * (torch.relu(xk @ m.key.weight.T) ** 2 @ m.value.weight.T))
        prev = xt
    return torch.stack(ys, 1), prev


def cfg(**kw):
    return ModelConfig(**{"mixer": "rwkv", "ffn": "rwkv_cmix", "d_model": D, "n_heads": H, "vocab_size": 40,
                          "n_layers": 2, **kw})


@pytest.mark.parametrize("T", [1, 21, 40])  # 40 crosses the GLA op's 16-step chunks twice
def test_time_mix_equals_the_token_loop_outputs_states_and_gradients(T):
    m = randomised(RWKV6TimeMix(cfg()).double(), seed=T)
    x = torch.randn(2, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    probe = torch.randn(2, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, (last, S) = m(x)
    want_y, want_last, want_S = naive_time_mix(m, x)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, want_last, rtol=0, atol=0)
    torch.testing.assert_close(S, want_S, rtol=1e-10, atol=1e-10)
    params = [x, *m.parameters()]
    got = torch.autograd.grad((y * probe).sum() + S.sum(), params)
    want = torch.autograd.grad((want_y * probe).sum() + want_S.sum(), params)
    for (name, _), g, w in zip([("x", x), *m.named_parameters()], got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=name)


def test_time_mix_in_float32_matches_float64_to_single_precision():
    m = randomised(RWKV6TimeMix(cfg()).double(), seed=5)
    x = torch.randn(1, 50, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want, _, _ = naive_time_mix(m, x)
    got, _ = m.float()(x.float())
    rel = ((got.double() - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
    assert rel <= 1e-5


def test_the_decay_reaches_the_state_after_it_is_read():
    """With u = 0 and an input whose decay is ~0 at step 1 (w = exp(-exp(5))), RWKV-6 still reads step 0's
    key at step 1 (the decay applies after the read); a decay-before-read convention would lose it."""
    m = RWKV6TimeMix(cfg()).double()
    with torch.no_grad():
        m.bonus.zero_()
        m.decay_base.fill_(5.0)
    x = torch.randn(1, 2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, _ = m(x)
    want, _, _ = naive_time_mix(m, x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
    assert y[0, 1].abs().max() > 1e-3  # step 0's key, read undecayed


def test_channel_mix_equals_the_token_loop_and_continues_from_its_state():
    m = randomised(RWKVChannelMix(cfg()).double(), seed=7)
    x = torch.randn(2, 13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y, (last,) = m(x)
    want, want_last = naive_channel_mix(m, x)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, want_last, rtol=0, atol=0)
    params = [x, *m.parameters()]
    for g, w in zip(torch.autograd.grad(y.pow(2).sum(), params), torch.autograd.grad(want.pow(2).sum(), params),
                    strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    head, state = m(x[:, :6])
    tail, _ = m(x[:, 6:], state)
    torch.testing.assert_close(torch.cat([head, tail], 1), want, rtol=1e-12, atol=1e-12)


def test_channel_mix_has_the_parameters_of_the_mlp_it_replaces():
    c = cfg(d_model=64, n_heads=4)
    cmix = sum(p.numel() for p in RWKVChannelMix(c).parameters())
    mlp = 2 * 64 * 256 + 256 + 64
    assert abs(cmix - mlp) <= 0.01 * mlp  # hidden 3.5 d plus the d x d receptance, as in the paper


def test_named_rwkv_is_rwkv6_time_and_channel_mix():
    c = ModelConfig.named("rwkv")
    assert (c.mixer, c.ffn) == ("rwkv", "rwkv_cmix")
    model = LinearLM(c.replace(d_model=32, n_layers=1, n_heads=2))
    assert isinstance(model.blocks[0].mixer, RWKV6TimeMix) and isinstance(model.blocks[0].ffn, RWKVChannelMix)


def tiny(seed=0):
    torch.manual_seed(seed)
    model = LinearLM(cfg()).double().eval()
    for block in model.blocks:  # the LoRAs start at zero; make them matter
        randomised(block.mixer, seed)
        with torch.no_grad():
            block.mixer.decay_base.clamp_(max=0.0)
    return model


@torch.no_grad()
def test_model_decode_and_prefill_equal_the_parallel_forward():
    model = tiny()
    ids = torch.randint(0, 40, (2, 35), generator=torch.Generator().manual_seed(1))
    whole = model(ids).logits
    states, stepped = None, []
    for t in range(35):
        logits, states = model.step(ids[:, t], states)
        stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, 1), whole, rtol=0, atol=1e-10)
    head = model(ids[:, :11])
    logits, states = model.step(ids[:, 11], head.states)
    torch.testing.assert_close(logits, whole[:, 11], rtol=0, atol=1e-10)
    torch.testing.assert_close(model(ids[:, 12:], states).logits, whole[:, 12:], rtol=0, atol=1e-10)
    # the block state holds both token shifts: (time-mix (last, S), channel-mix (last,))
    (mixer_last, S), (ffn_last,) = head.states[0]
    assert mixer_last.shape == ffn_last.shape == (2, D) and S.shape == (2, H, D // H, D // H)


@torch.no_grad()
def test_packed_documents_equal_one_row_each_and_the_shifts_reset():
    model = tiny(1)
    gen = torch.Generator().manual_seed(3)
    lengths = [5, 20, 1, 2, 9]
    docs = [torch.randint(0, 40, (1, n), generator=gen) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = model(torch.cat(docs, 1), cu_seqlens=cu)
    alone = [model(doc) for doc in docs]
    torch.testing.assert_close(packed.logits, torch.cat([a.logits for a in alone], 1), rtol=0, atol=1e-10)
    for layer, ((m_last, S), (f_last,)) in enumerate(packed.states):
        torch.testing.assert_close(m_last, torch.cat([a.states[layer][0][0] for a in alone]), rtol=0, atol=1e-12)
        torch.testing.assert_close(S, torch.cat([a.states[layer][0][1] for a in alone]), rtol=0, atol=1e-10)
        torch.testing.assert_close(f_last, torch.cat([a.states[layer][1][0] for a in alone]), rtol=0, atol=1e-12)
    # without the resets the second document would see the first: through both shifts and the state
    joined = model(torch.cat(docs[:2], 1)).logits[:, 5:]
    assert (joined - alone[1].logits).abs().max() > 1e-3


@torch.no_grad()
def test_only_the_channel_mix_shift_resets_too():
    """A model whose only cross-token path is the channel mix's token shift (time mix output zeroed):
    packing must still reset it at each boundary."""
    model = tiny(2)
    for block in model.blocks:
        block.mixer.out.weight.zero_()
    a, b = torch.randint(0, 40, (1, 4)), torch.randint(0, 40, (1, 4))
    joined = model(torch.cat([a, b], 1)).logits[:, 4:]
    packed = model(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 4, 8])).logits[:, 4:]
    torch.testing.assert_close(packed, model(b).logits, rtol=0, atol=1e-12)
    assert (joined[:, 0] - packed[:, 0]).abs().max() > 1e-4  # b's first token saw a's last one
    # each of the 2 layers' shifts reaches one token back: b's third token on sees nothing of a
    torch.testing.assert_close(joined[:, 2:], packed[:, 2:], rtol=0, atol=1e-12)


@torch.no_grad()
def test_regrouped_states_decode_each_sequence_as_alone():
    model = tiny(3)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 40, (1, n), generator=gen) for n in (5, 12, 8)]
    nexts = torch.randint(0, 40, (3, 3), generator=gen)
    alone = [model(torch.cat([p, n[None]], 1)).logits[0, -3:] for p, n in zip(prompts, nexts, strict=True)]
    states = model.select_states(model.cat_states([model(p).states for p in prompts]), torch.tensor([2, 0]))
    for t in range(3):
        logits, states = model.step(nexts[[2, 0], t], states)
        torch.testing.assert_close(logits[0], alone[2][t], rtol=0, atol=1e-10)
        torch.testing.assert_close(logits[1], alone[0][t], rtol=0, atol=1e-10)


def _as_format_2_rwkv(folder):
    """Rewrite a saved rwkv5 folder as alloyml wrote that mixer before RWKV-6: format 2, mixer "rwkv"."""
    info = json.loads((folder / "config.json").read_text())
    info.update(format_version=2, mixer="rwkv")
    info["config"]["mixer"] = "rwkv"
    (folder / "config.json").write_text(json.dumps(info))


def test_folders_saved_when_rwkv_was_the_rwkv5_mixer_still_load(tmp_path):
    from transformers import AutoModelForCausalLM

    import alloyml.models.hf_bridge  # noqa: F401  (registers the Auto classes)
    from alloyml.models.saving import load_model, save_model

    torch.manual_seed(0)
    old = LinearLM(ModelConfig(mixer="rwkv5", vocab_size=40, d_model=32, n_layers=2, n_heads=2)).eval()
    folder = save_model(old, tmp_path / "old")
    _as_format_2_rwkv(folder)
    ids = torch.randint(0, 40, (2, 9))
    loaded = load_model(folder)
    assert loaded.config.mixer == "rwkv5"
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, old(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(hf(ids).logits, old(ids).logits, rtol=0, atol=0)
    new = save_model(LinearLM(cfg()), tmp_path / "new")  # written today: "rwkv" is RWKV-6
    assert json.loads((new / "config.json").read_text())["format_version"] == 3
    assert isinstance(load_model(new).blocks[0].mixer, RWKV6TimeMix)
