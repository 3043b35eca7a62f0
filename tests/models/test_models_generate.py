import torch

from alloyml.models.generate import sample_next


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(sample_next(logits, 1.0, 0.8, g)) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.8: the rest is cut
    seen = {int(sample_next(logits, 1.0, 0.81, g)) for _ in range(300)}
    assert seen == {0, 1, 2}
    assert int(sample_next(logits, 0.0, 1.0, None)) == 0
