import numpy as np
import pytest
import torch


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
