import math

import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.models.config import ModelConfig
from alloyml.models.data import MQAR, batches
from alloyml.models.model import IGNORE_INDEX, LinearLM
from alloyml.models.trainer import Trainer, list_checkpoints, lr_at, tracin_checkpoints


def test_lr_schedule_closed_form():
    kw = dict(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(109, **kw) == pytest.approx(0.1)
    mid = 10 + 99 / 2  # halfway through the cosine: (1 + cos(pi / 2)) / 2 = 0.5
    assert lr_at(int(mid), **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 49 / 99)))


def small_moe_model():
    torch.manual_seed(0)
    return LinearLM(ModelConfig(mixer="gla", ffn="moe", vocab_size=17, d_model=32, n_layers=1, n_heads=2,
                                n_experts=4, ffn_mult=2))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = batches(MQAR(n_pairs=2, n_keys=8, n_values=8), batch_size=4, seed=1)
    kw = dict(steps=8, lr=1e-2, warmup_steps=2, checkpoint_every=3)
    full = small_moe_model()
    seen = []
    straight = Trainer(**kw, checkpoint_dir=tmp_path / "a", callback=seen.append).fit(full, data)
    assert [m.step for m in seen] == list(range(1, 9))
    assert all(len(m.expert_load) == 1 and sum(m.expert_load[0]) == pytest.approx(1) for m in seen)

    def crash_at_step_4(step):
        if step == 4:
            raise RuntimeError("worker lost")
        return data(step)

    with pytest.raises(RuntimeError, match="worker lost"):
        Trainer(**kw, checkpoint_dir=tmp_path / "b").fit(small_moe_model(), crash_at_step_4)
    assert [c.step for c in list_checkpoints(tmp_path / "b")] == [3]
    resumed = small_moe_model()
    again = Trainer(**kw, checkpoint_dir=tmp_path / "b").fit(resumed, data, resume_from=tmp_path / "b")
    assert [m.step for m in again.history_] == [4, 5, 6, 7, 8]
    assert [m.loss for m in again.history_] == [m.loss for m in straight.history_[3:]]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    checkpoints = list_checkpoints(tmp_path / "a")
    assert [c.step for c in checkpoints] == [3, 6, 8]
    lrs = [lr_at(c.step - 1, lr=1e-2, steps=8, warmup_steps=2, min_lr_ratio=0.1) for c in checkpoints]
    assert [c.lr for c in checkpoints] == pytest.approx(lrs)
    pairs = tracin_checkpoints(tmp_path / "a")
    assert torch.equal(pairs[-1][0]["lm_head.weight"], full.lm_head.weight.detach()) and pairs[-1][1] == lrs[-1]


def test_bad_trainer_settings_fail_before_training():
    with pytest.raises(InvalidInputError, match="checkpoint_dir"):
        Trainer(checkpoint_every=5).fit(small_moe_model(), lambda s: None)
    with pytest.raises(InvalidInputError, match="precision"):
        Trainer(precision="fp8").fit(small_moe_model(), lambda s: None)


def test_mqar_training_gets_well_below_chance():
    task = MQAR(n_pairs=4, n_keys=8, n_values=8)
    torch.manual_seed(0)
    model = LinearLM(ModelConfig(mixer="mamba", vocab_size=task.vocab_size, d_model=64, n_layers=2, n_heads=2))
    trainer = Trainer(steps=200, lr=1e-2, warmup_steps=10).fit(model, batches(task, batch_size=32, seed=0))
    chance = math.log(task.n_values)
    assert trainer.history_[0].loss > 0.9 * chance
    assert sum(m.loss for m in trainer.history_[-20:]) / 20 < 0.75 * chance
    inputs, targets = batches(task, batch_size=256, seed=99)(0)  # unseen examples
    with torch.no_grad():
        predictions = model.eval()(inputs).logits.argmax(-1)
    scored = targets != IGNORE_INDEX
    accuracy = (predictions[scored] == targets[scored]).float().mean().item()
    assert accuracy > 2.5 / task.n_values  # chance is 1 / n_values


def test_packed_documents_train_as_separate_rows():
    """One packed row (pack_documents) has the loss of the documents scored one by one: the mean
    next-token cross-entropy over every token that has a next token in its own document; the Trainer
    passes cu_seqlens on, so its first step reports that loss."""
    from alloyml.models.trainer import pack_documents

    gen = torch.Generator().manual_seed(5)
    docs = [torch.randint(0, 17, (n,), generator=gen) for n in (6, 1, 20, 3)]
    inputs, targets, cu = pack_documents(docs)
    assert inputs.shape == targets.shape == (1, 30) and cu.tolist() == [0, 6, 7, 27, 30]
    assert (targets == IGNORE_INDEX).sum() == len(docs)

    torch.manual_seed(0)
    model = LinearLM(ModelConfig(mixer="mamba", vocab_size=17, d_model=32, n_layers=1, n_heads=2)).double()
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            if len(doc) > 1:
                logits = model(doc[None, :-1]).logits[0]
                total += torch.nn.functional.cross_entropy(logits, doc[1:], reduction="sum").item()
                count += len(doc) - 1
        packed_loss = model(inputs, targets=targets, cu_seqlens=cu).loss.item()
    # rel 1e-6: the model's cross-entropy runs on float32 logits (logits equal to 1e-10: test_models_packed)
    assert packed_loss == pytest.approx(total / count, rel=1e-6)

    trainer = Trainer(steps=1, lr=1e-3, warmup_steps=0).fit(model, lambda step: (inputs, targets, cu))
    assert trainer.history_[0].loss == pytest.approx(packed_loss, rel=1e-6)
    with pytest.raises(InvalidInputError, match="documents"):
        pack_documents([torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)])
