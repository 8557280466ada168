import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_global_rngs():
    """Seed torch's and NumPy's global generators before every test.

    The library never draws from them, but a test that builds its data with a bare
    ``torch.randn`` would otherwise see different numbers in every run and order (one such
    test failed once in a few hundred runs on a 1-ulp difference); seeded, every test sees
    the same data whatever ran before it.
    """
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - the legacy global state is what bare calls use


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (small sequential kernels, e.g. DPP chains,
    are fastest there and immune to a busy machine); the count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def sphere(n: int, d: int, radius: float, seed: int) -> torch.Tensor:
    """``n`` points uniform on the sphere of ``radius`` in R^d (float64)."""
    # Offset so that test data never shares a stream with the features' seeds 0, 1, 2, ...
    g = torch.Generator().manual_seed(1_000_003 + seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return radius * x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def loglog_slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


class _ScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of tensor values to the host (``bool(t)``, ``t.item()``)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def host_reads(fn) -> int:
    """How many times ``fn()`` reads a tensor value back to the host (a GPU synchronisation)."""
    with _ScalarReads() as mode:
        fn()
    return mode.reads
