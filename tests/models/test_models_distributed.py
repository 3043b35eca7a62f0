import pytest
import torch

from alloyml.models.config import ModelConfig
from alloyml.models.data import MQAR, batches
from alloyml.models.distributed import train_data_parallel
from alloyml.models.model import LinearLM
from alloyml.models.saving import load_model
from alloyml.models.trainer import Trainer


@pytest.mark.slow
@pytest.mark.ray
def test_two_workers_take_the_same_steps_as_one_process(tmp_path, ray_session):
    task = MQAR(n_pairs=2, n_keys=8, n_values=8)
    cfg = ModelConfig(mixer="mamba", vocab_size=task.vocab_size, d_model=32, n_layers=1, n_heads=2)
    kw = dict(steps=4, lr=1e-2, warmup_steps=1, precision="fp32")
    result = train_data_parallel(cfg, "mqar", {"n_pairs": 2, "n_keys": 8, "n_values": 8}, batch_size=8,
                                 output_dir=tmp_path / "model", num_workers=2, seed=0, **kw)
    torch.manual_seed(0)
    single = LinearLM(cfg)
    Trainer(**kw).fit(single, batches(task, 8, seed=0))
    # the mean of two half-batch gradients is the full-batch gradient: same updates up to rounding
    distributed = load_model(tmp_path / "model")
    for (name, a), b in zip(single.state_dict().items(), distributed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert len(result.losses) == 4  # rank 0's half-batch losses, one per step
