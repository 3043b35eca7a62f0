"""`tokenizer_source` (`base`, `union`, a model) and `chat_template`: the same tokenizer, the same
realigned embedding / LM-head rows and the same other weights as `mergekit-yaml`, on tiny Hugging Face
Llamas whose tokenizers (built here, word-level) have different vocabularies and token orders.

mergekit's union orders new tokens by hash-set iteration, so rows are compared token by token."""

from __future__ import annotations

import json

import pytest
import torch
from merge_helpers import load_state, mergekit_yaml

from alloyml.errors import ConfigError
from alloyml.merging import merge

SPECIALS = ["<unk>", "<s>", "</s>"]
WORDS = [f"w{i}" for i in range(40)]


def _tokenizer(words, added=()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if added:
        fast.add_special_tokens({"additional_special_tokens": list(added)})
    return fast


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    """base (43 tokens), a (base + 3 words), b (drops w0-w4, adds 2 words and 2 special tokens, another
    order); non-vocabulary weights are the base's plus noise, a token's rows the base's plus noise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("vocab_llamas")
    toks = {
        "base": _tokenizer(WORDS),
        "a": _tokenizer(WORDS + ["alpha", "beta", "gamma"]),
        "b": _tokenizer(["delta"] + WORDS[5:][::-1] + ["alpha"], added=["<|im_start|>", "<|im_end|>"]),
    }
    toks["a"].chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    toks["b"].chat_template = toks["a"].chat_template
    gen = torch.Generator().manual_seed(0)
    base_state, base_vocab, paths = None, toks["base"].get_vocab(), {}
    for name, tok in toks.items():
        config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if base_state is None:
            base_state = state
        else:
            vocab = tok.get_vocab()
            for key, value in state.items():
                if key in ("model.embed_tokens.weight", "lm_head.weight"):
                    value.copy_(torch.randn(value.shape, generator=gen))
                    for text, idx in vocab.items():
                        if text in base_vocab:
                            value[idx] = base_state[key][base_vocab[text]] + 0.05 * torch.randn(16, generator=gen)
                else:
                    value.copy_(base_state[key] + 0.05 * torch.randn(value.shape, generator=gen))
        model.load_state_dict(state)
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return {k: str(v) for k, v in paths.items()}


def _rows(directory, state):
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(directory).get_vocab()
    keys = ("model.embed_tokens.weight", "lm_head.weight")
    return vocab, {k: {t: state[k][i] for t, i in vocab.items()} for k in keys}


def _assert_same_merge(ours_dir, theirs_dir, theirs_state, atol=2e-6):
    ours_state = load_state(ours_dir)
    ours_vocab, ours_rows = _rows(ours_dir, ours_state)
    theirs_vocab, theirs_rows = _rows(theirs_dir, theirs_state)
    assert set(ours_vocab) == set(theirs_vocab)
    assert max(ours_vocab.values()) == len(ours_vocab) - 1  # ids 0..n-1
    for key, rows in theirs_rows.items():
        assert ours_state[key].shape == theirs_state[key].shape == (len(ours_vocab), 16)
        for text, row in rows.items():
            torch.testing.assert_close(ours_rows[key][text], row, rtol=0, atol=atol, msg=f"{key} {text!r}")
    for key, value in theirs_state.items():
        if key not in theirs_rows:
            torch.testing.assert_close(ours_state[key], value, rtol=0, atol=atol, msg=key)
    ours_cfg = json.loads((ours_dir / "config.json").read_text())
    theirs_cfg = json.loads((theirs_dir / "config.json").read_text())
    assert ours_cfg["vocab_size"] == theirs_cfg["vocab_size"] == len(ours_vocab)
    return ours_state, ours_vocab


@pytest.mark.parametrize(
    "source, method, expected_size",
    [("union", "ties", 43 + 3 + 1 + 2), ("base", "linear", 43), ("a", "task_arithmetic", 46)],
)
def test_tokenizer_source_agrees_with_mergekit(llamas, tmp_path, source, method, expected_size):
    params = {"weight": 0.6, "density": 0.7} if method == "ties" else {"weight": 0.6}
    data = {
        "merge_method": method,
        "base_model": llamas["base"],
        "models": [{"model": llamas["a"], "parameters": params}, {"model": llamas["b"], "parameters": params}],
        "tokenizer_source": llamas.get(source, source),
        "dtype": "float32",
    }
    if method == "linear":
        data["models"].append({"model": llamas["base"], "parameters": {"weight": 0.3}})
    merge(data, tmp_path / "ours")
    theirs = mergekit_yaml(data, tmp_path / "theirs")
    state, vocab = _assert_same_merge(tmp_path / "ours", tmp_path / "theirs", theirs)
    assert len(vocab) == expected_size

    if source == "union":
        # Independent check of the row rules on one tensor: "gamma" only in a -> a's row moved by the merge;
        # "<|im_start|>" only in b; "w0" in base and a only -> b gets the base's row (its delta is zero).
        from transformers import LlamaForCausalLM

        assert {"alpha", "gamma", "delta", "<|im_start|>"} <= set(vocab)
        model = LlamaForCausalLM.from_pretrained(tmp_path / "ours")
        assert model.get_input_embeddings().weight.shape[0] == len(vocab)


def test_union_rows_follow_mergekits_rules(llamas):
    """Each model's realigned rows, checked against its own tokenizer and rows."""
    from transformers import AutoTokenizer

    from alloyml.merging.checkpoints import open_checkpoint
    from alloyml.merging.config import load_merge_config
    from alloyml.merging.vocabulary import build_vocabulary

    config = load_merge_config({
        "merge_method": "linear", "base_model": llamas["base"], "tokenizer_source": "union",
        "models": [{"model": llamas[n], "parameters": {"weight": 1.0}} for n in ("base", "a", "b")],
    })
    vocab = build_vocabulary(config, {llamas[n]: open_checkpoint(llamas[n]).directory for n in ("base", "a", "b")})
    emb = {n: open_checkpoint(llamas[n]).read("model.embed_tokens.weight") for n in ("base", "a", "b")}
    toks = {n: AutoTokenizer.from_pretrained(llamas[n]).get_vocab() for n in ("base", "a", "b")}
    aligned = vocab.align({llamas[n]: emb[n] for n in ("base", "a", "b")}, llamas["base"])
    out = vocab.tokenizer.get_vocab()
    b = aligned[llamas["b"]]
    torch.testing.assert_close(b[out["w0"]], emb["base"][toks["base"]["w0"]])  # b lacks w0: the base's row
    torch.testing.assert_close(b[out["gamma"]], emb["a"][toks["a"]["gamma"]])  # only a has it: a's row
    torch.testing.assert_close(aligned[llamas["base"]][out["delta"]], emb["b"][toks["b"]["delta"]])
    both = (emb["a"][toks["a"]["alpha"]] + emb["b"][toks["b"]["alpha"]]) / 2  # a and b, not the base: mean
    torch.testing.assert_close(aligned[llamas["base"]][out["alpha"]], both)
    torch.testing.assert_close(b[out["w7"]], emb["b"][toks["b"]["w7"]])  # its own rows, re-indexed


@pytest.mark.parametrize("template", ["chatml", "auto"])
def test_chat_template_agrees_with_mergekit(llamas, tmp_path, template):
    from transformers import AutoTokenizer

    data = {
        "merge_method": "linear",
        "models": [{"model": llamas["a"], "parameters": {"weight": 1.0}}],  # no tokenizer_source: a's
        "chat_template": template,
    }
    merge(data, tmp_path / "ours")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(data), str(tmp_path / "theirs"),
              MergeOptions(copy_tokenizer=True, write_model_card=False, quiet=True))
    chat = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3"}]
    ours = AutoTokenizer.from_pretrained(tmp_path / "ours")
    theirs = AutoTokenizer.from_pretrained(tmp_path / "theirs")
    expected = theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == expected
    assert ("<|im_start|>user\nw1 w2<|im_end|>" in expected) == (template == "chatml")
    assert ours.get_vocab() == theirs.get_vocab()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"chat_template": "nosuch"}, "`chat_template: nosuch` is neither"),
        ({"tokenizer": {"source": "union", "pad_to_multiple_of": 64}}, "`tokenizer: .*` is not supported"),
    ],
)
def test_tokenizer_settings_alloyml_cannot_honour_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        merge({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}], **extra},
              sources={"a": {"w": torch.ones(2)}})


def test_tokenizer_source_needs_model_directories():
    with pytest.raises(ConfigError, match="`tokenizer_source: union` needs the tokenizer of model 'a'"):
        merge({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}],
               "tokenizer_source": "union"}, sources={"a": {"w": torch.ones(2)}})
