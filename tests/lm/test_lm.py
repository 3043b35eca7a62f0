"""The shared LM interface: scripted, constant, Hugging Face (tiny random Llama; SmolLM2 is `slow`) and litellm."""

from __future__ import annotations

import pytest

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.lm import (
    HFCausalLM,
    LiteLLMChat,
    LiteLLMSpec,
    SamplingParams,
    ScriptedLM,
    as_messages,
    as_text,
    cut_at_stop,
)

from ._tiny_hf import tiny_llama


def test_scripted_truncates_then_stops_and_counts_words():
    lm = ScriptedLM(lambda prompt, s: "alpha beta gamma delta epsilon")
    [full] = lm.generate(["one two three"], max_tokens=10)
    assert full.texts == ["alpha beta gamma delta epsilon"]
    assert (full.prompt_tokens, full.completion_tokens) == (3, 5)
    [cut] = lm.generate(["one two three"], max_tokens=3)
    assert cut.texts == ["alpha beta gamma"] and cut.completion_tokens == 3
    assert cut.finish_reasons == ["length"]
    [stopped] = lm.generate(["x"], max_tokens=10, stop=[" delta", "zeta"])
    assert stopped.texts == ["alpha beta gamma"] and stopped.finish_reasons == ["stop"]
    # a stop string beyond max_tokens is never reached
    [late] = lm.generate(["x"], max_tokens=2, stop=["gamma"])
    assert late.texts == ["alpha beta"]


def test_scripted_samples_are_reproducible_and_differ_across_samples():
    lm = ScriptedLM(lambda prompt, s: " ".join(["w"] * int(s.rng.integers(1, 50))))
    a = lm.generate(["p", "q"], n=4, temperature=1.0, seed=3)
    b = lm.generate(["q", "p"], n=4, temperature=1.0, seed=3)
    assert a[0].texts == b[1].texts and a[1].texts == b[0].texts
    assert len(set(a[0].texts)) > 1
    assert a[0].completion_tokens == sum(len(t.split()) for t in a[0].texts)


def test_sampling_params_reject_bad_values():
    for bad in [dict(n=0), dict(temperature=-1.0), dict(top_p=0.0), dict(max_tokens=0), dict(stop=("",))]:
        with pytest.raises(InvalidInputError):
            SamplingParams(**bad)
    lm = ScriptedLM(lambda p, s: "")
    with pytest.raises(InvalidInputError, match="prompts"):
        lm.generate("not a list")
    with pytest.raises(InvalidInputError, match="role"):
        lm.generate([[{"role": "wizard", "content": "hi"}]])


def test_prompt_helpers():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert as_messages("Hi") == [{"role": "user", "content": "Hi"}]
    assert as_text(msgs) == "Be brief.\n\nHi"
    assert cut_at_stop("abc;def.ghi", [".", ";"]) == ("abc", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def _manual_greedy(model, ids, max_new, eos):
    """Token-by-token argmax on one unpadded prompt: the reference for batched generate."""
    import torch

    out = []
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(seq).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == eos:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out


def test_hf_greedy_batch_matches_manual_decode():
    model, tok = tiny_llama(seed=1)
    lm = HFCausalLM(model, tok, batch_size=2)
    prompts = ["a b c d", "x", "e e y z ."]
    gens = lm.generate(prompts, max_tokens=7)
    for prompt, gen in zip(prompts, gens, strict=True):
        ids = tok(prompt)["input_ids"]
        ref = _manual_greedy(model, ids, 7, tok.eos_token_id)
        assert gen.prompt_tokens == len(ids) == lm.count_tokens(prompt)
        assert gen.completion_tokens == len(ref)
        assert gen.texts == [tok.decode(ref, skip_special_tokens=True)]


def test_hf_stop_strings_and_n_copies():
    model, tok = tiny_llama(seed=1)
    lm = HFCausalLM(model, tok)
    [free] = lm.generate(["a b c d"], max_tokens=7)
    ref = _manual_greedy(model, tok("a b c d")["input_ids"], 7, tok.eos_token_id)
    words = [tok.decode([t], skip_special_tokens=True) for t in ref]
    stop_word = next(w for w in words[1:] if w)
    k = words.index(stop_word)  # the generated token that completes the stop string
    [stopped] = lm.generate(["a b c d"], max_tokens=7, stop=[stop_word])
    assert stopped.texts[0] == free.texts[0][: free.texts[0].find(stop_word)]
    assert stopped.completion_tokens == k + 1
    [three] = lm.generate(["a b c d"], max_tokens=7, n=3)
    assert three.texts == free.texts * 3 and three.completion_tokens == 3 * free.completion_tokens


def test_hf_sampling_is_seeded():
    model, tok = tiny_llama(seed=2)
    lm = HFCausalLM(model, tok)
    a = lm.generate(["a b", "c"], n=3, temperature=1.5, max_tokens=8, seed=7)
    b = lm.generate(["a b", "c"], n=3, temperature=1.5, max_tokens=8, seed=7)
    assert [g.texts for g in a] == [g.texts for g in b]
    assert len({t for g in a for t in g.texts}) > 1


def test_litellm_config_validates():
    with pytest.raises(ValueError, match="provider/name"):
        LiteLLMSpec(model="gpt4")
    with pytest.raises(ValueError, match="http"):
        LiteLLMSpec(model="openai/x", api_base="ftp://h")
    with pytest.raises(ValueError):
        LiteLLMSpec(model="openai/x", api_key="sk-literal")  # keys never live in configs


def test_litellm_request_is_built_from_config_and_params(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    lm = LiteLLMChat({"model": "openai/local", "api_base": "http://127.0.0.1:8000/v1", "api_key_env": "MY_KEY"})
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_tokens=12, stop=("\n",), seed=5)
    req = lm.build_request([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], params)
    assert req == {
        "model": "openai/local",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 12,
        "stop": ["\n"],
        "seed": 5,
        "api_base": "http://127.0.0.1:8000/v1",
        "api_key": "sk-test",
        "timeout": 60.0,
        "num_retries": 2,
    }
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigError, match="MY_KEY"):
        lm.build_request("u", params)


@pytest.mark.slow  # importing litellm alone takes 10-20 s here
def test_litellm_mock_response_round_trip():
    lm = LiteLLMChat(LiteLLMSpec(model="openai/gpt-4o-mini", mock_response="Paris"))
    [gen] = lm.generate(["Capital of France?"], max_tokens=5)
    assert gen.texts == ["Paris"]
    assert gen.prompt_tokens > 0 and gen.completion_tokens > 0


@pytest.mark.slow
def test_smollm2_converts_once_and_answers(tmp_path):
    import time

    from alloyml.lm import load_smollm2

    lm = load_smollm2(home=tmp_path)
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    start = time.perf_counter()
    again = load_smollm2(home=tmp_path)
    assert time.perf_counter() - start < 20
    [gen] = again.generate(["What is the capital of France? Answer in one word."], max_tokens=8)
    assert "paris" in gen.text.lower()
    ids = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert lm.count_tokens("hi") == len(ids)
