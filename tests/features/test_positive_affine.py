"""The one affine form of positive random features: PositiveFeatures, URF("exp") and
FAVOR+ attention all evaluate ``log φ(x) = x Aᵀ + b − γ‖x‖²/2``."""

import math

import pytest
import torch

from snnk.features import URF, PositiveFeatures
from snnk.features.positive import positive_log_features, positive_log_offsets

VARIANTS = [
    {},
    {"M": 0.1},
    {"hyperbolic": True},
    {"temperature": 2.5},
    {"sampler": "structured"},
    {"M": -0.05, "hyperbolic": True, "temperature": 0.5, "sampler": "iid"},
]


def points(n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kw", VARIANTS)
def test_affine_form_reproduces_log_features(kw):
    fm = PositiveFeatures(6, 24, seed=1, dtype=torch.float64, **kw)
    x = points()
    A, b, gamma = fm.affine_form()
    assert A.shape == (24, 6) and b.shape == (24,)
    assert gamma == pytest.approx(1.0 / kw.get("temperature", 1.0))
    via_form = positive_log_features(x @ A.T, x.square().sum(-1, keepdim=True), b, gamma)
    torch.testing.assert_close(via_form, fm.log_features(x), rtol=1e-12, atol=1e-12)


def test_affine_form_is_the_documented_formula():
    """log φ_j(x) = c g_jᵀx' − ‖x'‖²/2 − M‖g_j‖² + (d/4) log(1+4M) − ½ log D, x' = x/√T."""
    M, T, d, D = 0.2, 1.7, 6, 16
    fm = PositiveFeatures(d, D, M=M, temperature=T, seed=3, dtype=torch.float64)
    G = fm.projection.weight
    x = points(d=d)
    xs = x / math.sqrt(T)
    expected = (
        math.sqrt(1 + 4 * M) * xs @ G.T
        - 0.5 * xs.square().sum(-1, keepdim=True)
        - M * G.square().sum(-1)
        + d / 4 * math.log1p(4 * M)
        - 0.5 * math.log(D)
    )
    torch.testing.assert_close(fm.log_features(x), expected, rtol=1e-12, atol=1e-12)


def test_positive_log_features_and_offsets():
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    sq = torch.tensor([[2.0], [4.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -0.5], dtype=torch.float64)
    torch.testing.assert_close(
        positive_log_features(p, sq, b, gamma=0.5),
        torch.tensor([[1.0, 1.0], [2.5, 2.5]], dtype=torch.float64),
    )
    torch.testing.assert_close(positive_log_features(p, None, 1.0), p + 1.0)
    assert positive_log_offsets(0.3, 4) == pytest.approx(0.3 - 0.5 * math.log(4))
    rows = torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(
        positive_log_offsets(0.3, 4, 0.1, rows), 0.3 - 0.5 * math.log(4) - 0.1 * rows
    )
    with pytest.raises(ValueError, match="row_sq_norms is needed"):
        positive_log_offsets(0.3, 4, 0.1)


@pytest.mark.parametrize("M", [0.0, 0.05])
def test_urf_exp_kind_is_the_positive_feature_map(M):
    """Same seed, same draw: URF's exp input map equals PositiveFeatures (temperature 1)."""
    urf = URF("exp", 6, 24, M=M, seed=4, dtype=torch.float64)
    pos = PositiveFeatures(6, 24, M=M, seed=4, dtype=torch.float64)
    assert torch.equal(urf.projection.weight, pos.projection.weight)
    x = 0.3 * points()  # norms below 1: no VarianceWarning
    torch.testing.assert_close(urf.input_map(x), pos(x), rtol=1e-13, atol=0)
    # Ψ(w, b) = e^b Φ(w)
    w, bias = 0.3 * points(5, seed=1), torch.linspace(-1, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(
        urf.parameter_map(w, bias), pos(w) * torch.exp(bias)[:, None], rtol=1e-13, atol=0
    )
