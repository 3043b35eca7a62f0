"""Model tests run tiny shapes, where intra-op threads cost more than they give (and the suite shares
its cores): one thread per test process."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
