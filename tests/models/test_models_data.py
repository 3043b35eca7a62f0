import pytest
import torch

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.models.data import MQAR, Arithmetic, SelectiveCopy, TextFile, batches, make_task
from alloyml.models.model import IGNORE_INDEX
from alloyml.models.tokenizer import ByteTokenizer


def test_mqar_answers_are_the_values_bound_to_the_keys():
    task = MQAR(n_pairs=5, n_keys=10, n_values=7)
    inputs, targets = task.sample(20, torch.Generator().manual_seed(0))
    assert inputs.shape == (20, 20) and int(inputs.max()) < task.vocab_size
    for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        pairs = dict(zip(seq[0:10:2], seq[1:10:2], strict=True))
        assert len(pairs) == 5 and all(1 <= k <= 10 for k in pairs) and all(11 <= v <= 17 for v in pairs.values())
        scored = [(t, y) for t, y in enumerate(tgt) if y != IGNORE_INDEX]
        assert [t for t, _ in scored] == [10, 12, 14, 16, 18]
        assert sorted(seq[t] for t, _ in scored) == sorted(pairs)  # every key queried once
        assert all(pairs[seq[t]] == y and seq[t + 1] == y for t, y in scored)


def test_selective_copy_targets_are_the_data_tokens_in_order():
    task = SelectiveCopy(length=12, n_tokens=3, n_symbols=5)
    inputs, targets = task.sample(10, torch.Generator().manual_seed(0))
    for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        data = [t for t in seq[:12] if t != 0]
        assert seq[12] == 1 and seq[13:] == data and len(data) == 3
        assert [y for y in tgt if y != IGNORE_INDEX] == data


def test_arithmetic_problems_are_correct_sums():
    inputs, targets = Arithmetic(digits=3).sample(15, torch.Generator().manual_seed(0))
    tok = ByteTokenizer()
    for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        question, answer = tok.decode(seq).strip().split("=")
        a, b = map(int, question.split("+"))
        assert int(answer) == a + b
        assert tok.decode([y for y in tgt if y != IGNORE_INDEX]) == f"{a + b}\n"


def test_text_file_windows_and_deterministic_batches(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the quick brown fox jumps over the lazy dog " * 5)
    batch = batches(make_task("text_file", path=str(path), seq_len=16), batch_size=4, seed=3)
    inputs, targets = batch(7)
    raw = path.read_bytes()
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        assert bytes(x + y[-1:]) in raw and x[1:] == y[:-1]
    assert torch.equal(batch(7)[0], inputs) and not torch.equal(batch(8)[0], inputs)
    with pytest.raises(NotFoundError):
        TextFile(path=str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidInputError, match="unknown task"):
        make_task("sudoku")


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    text = "naïve café ☕"
    assert tok.encode(text) == list(text.encode()) and tok.decode(tok.encode(text)) == text
    with pytest.raises(InvalidInputError):
        tok.decode([300])
