"""A tiny random Llama and a word-level tokenizer built in memory (no downloads), for adapter tests."""

from __future__ import annotations

WORDS = ["<pad>", "<eos>", "<unk>", "a", "b", "c", "d", "e", "x", "y", "z", ".", "!", "?"]


def tiny_llama(seed: int = 0):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def manual_logprob(model, head: list[int], tail: list[int]) -> float:
    """Token by token on the growing unpadded sequence: the sum of log_softmax of each next true token
    (the oracle that batched, padded `logprob` calls are checked against)."""
    import torch

    total, seq = 0.0, list(head)
    with torch.no_grad():
        for token in tail:
            logits = model(torch.tensor([seq])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, -1)[token])
            seq.append(token)
    return total
