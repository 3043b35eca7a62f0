"""Prefill (continue the final assistant turn), `logprob` scoring, and sampling that is independent of batching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alloyml.lm import (
    ConstantLM,
    HFCausalLM,
    LiteLLMChat,
    LogprobUnsupportedError,
    RecurrentLM,
    ScriptedLM,
    continues_final_message,
)

from ._tiny_hf import manual_logprob, tiny_llama

# Role names are outside the tiny vocabulary (they encode as <unk>); the layout is what is tested.
TEMPLATE = (
    "{% for m in messages %}{{ m.role }} : {{ m.content }} .{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)



def test_hf_logprob_matches_token_by_token_sum():
    model, tok = tiny_llama(seed=3)
    lm = HFCausalLM(model, tok, batch_size=2)  # 5 pairs: three forward passes, padded differently
    pairs = [("a b c", "d e"), ("x", "y z . a b"), ("e e e e e", "a"), ("c", ""), ("a", "b c d e x y")]
    got = lm.logprobs(pairs)
    for (prompt, cont), value in zip(pairs, got, strict=True):
        head = tok(prompt)["input_ids"]
        tail = tok(cont, add_special_tokens=False)["input_ids"] if cont else []
        assert value == pytest.approx(manual_logprob(model, head, tail), abs=1e-4)
    assert got[3] == 0.0
    assert lm.logprob("a b c", "d e") == pytest.approx(got[0], abs=1e-5)


def test_hf_prefill_continues_the_final_assistant_turn():
    model, tok = tiny_llama(seed=3)
    tok.chat_template = TEMPLATE
    lm = HFCausalLM(model, tok)
    fresh = [{"role": "user", "content": "a b"}]
    prefill = fresh + [{"role": "assistant", "content": "c d"}]
    assert not continues_final_message(fresh) and continues_final_message(prefill)
    assert lm._render(fresh) == "user : a b .assistant :"
    assert lm._render(prefill) == "user : a b .assistant : c d"  # no end-of-turn mark, no new reply opened
    [gen] = lm.generate([prefill], max_tokens=5)
    ids = tok("user : a b .assistant : c d", add_special_tokens=False)["input_ids"]
    assert gen.prompt_tokens == len(ids) == lm.count_tokens(prefill)
    # the same continuation as transformers' own greedy decoding of the rendered prefix
    import torch

    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    expect = ref[0, len(ids):].tolist()
    end = next((k for k, t in enumerate(expect) if t in (0, 1)), None)
    assert gen.text == tok.decode(expect[:end], skip_special_tokens=True)


def test_hf_samples_do_not_depend_on_the_batch():
    model, tok = tiny_llama(seed=2)
    prompts = ["a b", "c", "x y z .", "e"]
    together = HFCausalLM(model, tok, batch_size=4).generate(prompts, n=3, temperature=1.3, top_p=0.9,
                                                             max_tokens=6, seed=11)
    alone = [HFCausalLM(model, tok, batch_size=1).generate([p], n=3, temperature=1.3, top_p=0.9,
                                                           max_tokens=6, seed=11)[0] for p in prompts]
    reordered = HFCausalLM(model, tok, batch_size=3).generate(prompts[::-1], n=3, temperature=1.3, top_p=0.9,
                                                              max_tokens=6, seed=11)[::-1]
    assert [g.texts for g in together] == [g.texts for g in alone] == [g.texts for g in reordered]
    assert [g.completion_tokens for g in together] == [g.completion_tokens for g in alone]
    assert len({t for g in together for t in g.texts}) > 3


def test_hf_first_sampled_token_follows_the_nucleus_distribution():
    """2000 one-token samples against softmax(logits / T) restricted to the top-p nucleus."""
    import torch

    model, tok = tiny_llama(seed=4)
    lm = HFCausalLM(model, tok, batch_size=1)
    temperature, top_p, n = 1.7, 0.8, 2000
    [gen] = lm.generate(["a b"], n=n, temperature=temperature, top_p=top_p, max_tokens=1, seed=0)
    with torch.no_grad():
        logits = model(torch.tensor([tok("a b")["input_ids"]])).logits[0, -1].double()
    p = torch.softmax(logits / temperature, -1).numpy()
    order = np.argsort(-p)
    before = np.cumsum(p[order]) - p[order]
    nucleus = order[before < top_p]
    q = np.zeros_like(p)
    q[nucleus] = p[nucleus] / p[nucleus].sum()
    # pad, eos and unk are special tokens that decode to ""; count them as one outcome
    special = [0, 1, 2]
    counts = np.zeros_like(p)
    for text in gen.texts:
        ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
        counts[ids[0] if ids else 0] += 1
    q[0], q[1:3] = q[special].sum(), 0.0
    assert counts[q == 0].sum() == 0
    se = np.sqrt(q * (1 - q) / n)
    assert np.all(np.abs(counts / n - q) <= 4 * se + 1e-9)


def test_recurrent_lm_logprob_and_batch_free_sampling():
    import torch

    from alloyml.models import LinearLM, ModelConfig
    from alloyml.models.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    model = LinearLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, mixer="linear_attn", ffn="none")).eval()
    lm = RecurrentLM(model)
    bt = ByteTokenizer()
    for prompt, cont in [("abc", "de"), ("x", "hello")]:
        expect = manual_logprob(model, bt.encode(prompt), bt.encode(cont))
        assert lm.logprob(prompt, cont) == pytest.approx(expect, abs=1e-4)
    prompts = ["ab", "cde", "f"]
    together = lm.generate(prompts, n=2, temperature=1.0, max_tokens=5, seed=3)
    alone = [lm.generate([p], n=2, temperature=1.0, max_tokens=5, seed=3)[0] for p in prompts]
    assert [g.texts for g in together] == [g.texts for g in alone]


def test_models_without_logprobs_say_so():
    for lm in [ConstantLM("x"), ScriptedLM(lambda p, s: "y"), LiteLLMChat({"model": "openai/x", "mock_response": "z"})]:
        assert not lm.supports_logprob
        with pytest.raises(LogprobUnsupportedError, match="log-probabilities"):
            lm.logprob("a", "b")
    scored = ScriptedLM(lambda p, s: "y", score=lambda p, c: -float(len(c)))
    assert scored.supports_logprob and scored.logprobs([("a", "bcd"), ("q", "")]) == [-3.0, 0.0]
    assert math.isclose(scored.logprob("a", "bb"), -2.0)


def test_fingerprint_changes_with_the_weights_not_with_the_object():
    import torch

    model, tok = tiny_llama(seed=3)
    a = HFCausalLM(model, tok)
    assert a.fingerprint() == HFCausalLM(*tiny_llama(seed=3)).fingerprint()  # same weights, new objects
    before = a.fingerprint()
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    assert a.fingerprint() != before
    assert ConstantLM("x").fingerprint() != ConstantLM("y").fingerprint()
