"""One intra-op thread for these tests: they are small, and the machine they run on is shared
(2 cores, several test sessions at once), where two threads per process only contend."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
