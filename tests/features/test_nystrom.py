"""NystromFeatures keeps K_CC^{+1/2} and k(x, C) in float64: float32 data far from the origin
gets the float64 map's features (and Gram matrix) to float32 rounding, the output keeps the
input's dtype, and the state_dict round-trips bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snnk.features import NystromFeatures
from snnk.kernels import Gaussian, Matern


def _data(offset, seed, n=60, d=3):
    rng = np.random.default_rng(seed)
    return torch.from_numpy((offset + rng.normal(size=(n, d))).astype(np.float32))


def _max_rel(out, ref, floor=1e-3):
    big = ref.abs() >= floor
    return float(((out - ref).abs()[big] / ref.abs()[big]).max())


@pytest.mark.parametrize(
    "kernel", [Gaussian(2.0), Matern(1.5, lengthscale=2.0)], ids=["gauss", "matern"]
)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_float32_matches_float64_far_from_the_origin(offset, seed, kernel):
    X32 = _data(offset, seed)
    fm32 = NystromFeatures(kernel, 15, seed=seed).fit(X32)
    fm64 = NystromFeatures(kernel, 15, seed=seed).fit(X32.double())
    F32, F64 = fm32(X32), fm64(X32.double())
    assert F32.dtype == torch.float32 and torch.isfinite(F32).all()
    F32 = F32.double()
    assert _max_rel(F32, F64) <= 1e-5
    assert _max_rel(F32 @ F32.T, F64 @ F64.T) <= 1e-5  # Gram entries >= 1e-3


def test_normalization_is_float64_and_the_output_keeps_the_input_dtype():
    X = _data(0.0, 0)
    fm = NystromFeatures(Gaussian(1.5), 10, seed=0).fit(X)
    assert fm.centers.dtype == torch.float32 and fm.normalization.dtype == torch.float64
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        out = fm(X[:4].to(dt))
        assert out.dtype == dt and torch.isfinite(out.float()).all()
    skeleton = NystromFeatures(Gaussian(1.5), 10).allocate(3, torch.float32)
    assert skeleton.centers.dtype == torch.float32
    assert skeleton.normalization.dtype == torch.float64


def test_state_dict_round_trip_is_bit_exact():
    X = _data(1e4, 1)
    fm = NystromFeatures(Gaussian(2.0), 12, seed=1).fit(X)
    state = {k: v.clone() for k, v in fm.state_dict().items()}
    back = NystromFeatures(Gaussian(2.0), 12)
    back.load_state_dict(state)
    for k, v in back.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k])
    assert torch.equal(back(X), fm(X))


def test_a_float32_normalization_of_an_older_state_dict_still_loads():
    X = _data(0.0, 2)
    fm = NystromFeatures(Gaussian(2.0), 8, seed=2).fit(X)
    old = {"centers": fm.centers.clone(), "normalization": fm.normalization.float()}
    back = NystromFeatures(Gaussian(2.0), 8)
    back.load_state_dict(old)
    torch.testing.assert_close(back(X), fm(X), rtol=1e-4, atol=1e-6)
