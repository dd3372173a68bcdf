"""Model tests run tiny networks: one intra-op thread each.

With tiny tensors, OpenMP threads spend their time at barriers; on a machine shared with
other processes a descheduled thread stalls every op (measured here: 3.5 s with one thread,
25 s with two, for the gradient tests). The previous setting is restored afterwards.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
