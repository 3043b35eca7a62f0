"""`RecurrentLM`: alloyml's LinearLM behind the `LanguageModel` interface, against decoding by hand."""

import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.lm import RecurrentLM
from alloyml.models.config import ModelConfig
from alloyml.models.model import LinearLM
from alloyml.models.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return RecurrentLM(LinearLM(ModelConfig(mixer="rwkv", d_model=32, n_layers=2, n_heads=2)))


def greedy_by_hand(model, text, steps):
    """Greedy decoding by re-running the whole sequence each step (no states at all)."""
    ids = ByteTokenizer().encode(text)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
    return out


def test_greedy_batched_generation_equals_full_recomputation(lm):
    prompts = ["hello there", "a", "zebra crossing at night"]
    results = lm.generate(prompts, max_tokens=6)
    tok = ByteTokenizer()
    for prompt, result in zip(prompts, results, strict=True):
        want = greedy_by_hand(lm.model, prompt, 6)
        assert result.texts == [tok.decode(want)]
        assert result.prompt_tokens == len(prompt.encode()) == lm.count_tokens(prompt)
        assert result.completion_tokens == 6 and result.finish_reasons == ["length"]


def test_stop_strings_cut_and_end_each_sample(lm):
    tok = ByteTokenizer()
    tokens = greedy_by_hand(lm.model, "abc", 12)
    full = tok.decode(tokens)
    stop = full[4:6]
    result = lm.generate(["abc"], n=2, max_tokens=12, stop=[stop])[0]
    assert result.texts == [full[: full.find(stop)]] * 2 and result.finish_reasons == ["stop", "stop"]
    # decoding ends at the first token after which the stop string has appeared
    used = next(i for i in range(1, 13) if stop in tok.decode(tokens[:i]))
    assert result.completion_tokens == 2 * used


def test_sampling_n_seeded_and_varied(lm):
    a = lm.generate(["x", "yy"], n=3, temperature=1.0, top_p=0.95, max_tokens=8, seed=7)
    b = lm.generate(["x", "yy"], n=3, temperature=1.0, top_p=0.95, max_tokens=8, seed=7)
    assert [g.texts for g in a] == [g.texts for g in b]
    assert all(len(g.texts) == 3 for g in a) and len(set(a[0].texts)) > 1
    assert [g.completion_tokens for g in a] == [24, 24]
    with pytest.raises(InvalidInputError, match="at least one token"):
        lm.generate([""], max_tokens=2)
