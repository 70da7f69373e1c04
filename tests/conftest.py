"""Fixtures any test folder may use."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test: on the 2-core shared test machine, OpenMP teams of
    two spin against the other jobs and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
