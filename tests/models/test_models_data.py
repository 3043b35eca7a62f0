import pytest
import torch

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.models.data import MQAR, Arithmetic, InductionHeads, Mixture, SelectiveCopy, TextFile, batches, make_task
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


def _zoology_reference_check(seq, tgt, task):
    """An independent reading of one Zoology-layout MQAR example: the bindings come from the context, every
    scored position holds a key, each key is queried exactly once at an even offset of the query region, and
    the target is the value bound to the key by a plain dictionary lookup."""
    P = task.n_pairs
    bound = {}
    for i in range(P):
        key, value = seq[2 * i], seq[2 * i + 1]
        assert 1 <= key <= task.n_keys and task.n_keys < value <= task.n_keys + task.n_values
        assert key not in bound
        bound[key] = value
    scored = [(t, y) for t, y in enumerate(tgt) if y != IGNORE_INDEX]
    assert len(scored) == P
    assert all(t >= 2 * P and (t - 2 * P) % 2 == 0 for t, _ in scored)
    assert sorted(seq[t] for t, _ in scored) == sorted(bound)
    for t, y in scored:
        assert y == bound[seq[t]]
    assert all(1 <= x <= task.n_keys + task.n_values for x in seq[2 * P:])


def test_zoology_mqar_targets_are_the_bound_values_at_a_fixed_length():
    for pairs in (1, 4, 8, 16):
        task = MQAR(n_pairs=pairs, n_keys=20, n_values=20, seq_len=64)
        inputs, targets = task.sample(30, torch.Generator().manual_seed(pairs))
        assert inputs.shape == (30, 64) == targets.shape and task.length == 64
        for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
            _zoology_reference_check(seq, tgt, task)
    with pytest.raises(InvalidInputError, match="seq_len"):
        MQAR(n_pairs=16, n_keys=20, n_values=20, seq_len=63)
    with pytest.raises(InvalidInputError, match="power_a"):
        MQAR(seq_len=64, power_a=0.0)


def test_zoology_mqar_query_slots_follow_the_power_law():
    """First-draw slot frequencies against the normalised weights slot ** (a - 1), computed directly; with
    one pair the query's slot is exactly one draw, so the empirical distribution must match."""
    a, slots = 0.3, 8
    task = MQAR(n_pairs=1, n_keys=4, n_values=4, seq_len=2 + 2 * slots, power_a=a)
    _, targets = task.sample(20000, torch.Generator().manual_seed(0))
    position = (targets != IGNORE_INDEX).float().argmax(1)
    slot = ((position - 2) // 2).long()
    observed = torch.bincount(slot, minlength=slots).double() / len(slot)
    weights = [(s + 1) ** (a - 1) for s in range(slots)]
    expected = torch.tensor([w / sum(weights) for w in weights], dtype=torch.float64)
    assert torch.allclose(observed, expected, atol=0.015)
    assert observed[0] > observed[-1]  # short gaps more likely


def test_mixture_draws_each_task_and_keeps_its_targets():
    tasks = tuple(MQAR(n_pairs=p, n_keys=20, n_values=20, seq_len=48) for p in (2, 5, 12))
    mix = Mixture(tasks=tasks)
    inputs, targets = mix.sample(300, torch.Generator().manual_seed(1))
    counts = {}
    for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        pairs = sum(y != IGNORE_INDEX for y in tgt)
        counts[pairs] = counts.get(pairs, 0) + 1
        _zoology_reference_check(seq, tgt, tasks[[2, 5, 12].index(pairs)])
    assert set(counts) == {2, 5, 12} and min(counts.values()) > 60  # ~100 each of 300
    built = make_task("mixture", tasks=({"name": "mqar", "n_pairs": 3, "seq_len": 32},
                                        {"name": "mqar", "n_pairs": 6, "seq_len": 32}))
    assert built.vocab_size == MQAR().vocab_size and built.sample(4, torch.Generator())[0].shape == (4, 32)
    with pytest.raises(InvalidInputError, match="vocab_size"):
        Mixture(tasks=(MQAR(n_keys=10), MQAR(n_keys=12)))
    with pytest.raises(InvalidInputError, match="sequence length"):
        Mixture(tasks=(MQAR(n_pairs=2), MQAR(n_pairs=3))).sample(50, torch.Generator().manual_seed(0))


def test_selective_copy_paper_layout_scores_the_data_at_the_markers():
    task = SelectiveCopy(length=16, n_tokens=4, n_symbols=6, teacher_forcing=False)
    inputs, targets = task.sample(25, torch.Generator().manual_seed(0))
    assert inputs.shape == (25, 20)
    for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        data = [t for t in seq[:16] if t != 0]  # the data tokens in order, read off the noise region
        assert len(data) == 4 and all(2 <= t <= 7 for t in data)
        assert seq[16:] == [1, 1, 1, 1]
        assert tgt[:16] == [IGNORE_INDEX] * 16 and tgt[16:] == data


def test_induction_target_is_the_token_after_the_first_trigger():
    task = InductionHeads(length=30, n_symbols=5)
    inputs, targets = task.sample(200, torch.Generator().manual_seed(0))
    assert inputs.shape == (200, 30) and task.vocab_size == 6
    firsts = set()
    for seq, tgt in zip(inputs.tolist(), targets.tolist(), strict=True):
        triggers = [i for i, t in enumerate(seq) if t == 0]
        assert len(triggers) == 2 and triggers[1] == 29 and triggers[0] <= 27
        firsts.add(triggers[0])
        assert tgt[:-1] == [IGNORE_INDEX] * 29 and tgt[-1] == seq[triggers[0] + 1] and 1 <= tgt[-1] <= 5
    assert firsts == set(range(28))  # every allowed position used over 200 draws
    with pytest.raises(InvalidInputError, match="length"):
        InductionHeads(length=2)
