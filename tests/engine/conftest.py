import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Kernels compared to the last bit run single-threaded: thread count changes float summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
