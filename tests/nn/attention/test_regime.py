"""Regime warnings (one per module, naming the statistic) and the convex "nystrom" snap form."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from snnk.nn.attention import AttentionRegimeWarning, KernelAttention, kernel_attention


def qkv(L=64, E=16, std=1.0, seed=0, H=2):
    g = torch.Generator().manual_seed(seed)
    return [std * torch.randn(1, H, L, E, generator=g, dtype=torch.float64) for _ in range(3)]


def test_favor_warns_with_the_measured_statistic():
    q, k, v = qkv(std=1.5)  # ‖q‖²·scale ≈ 16·2.25/4 = 9
    rho = float(q.square().sum(-1).max()) / 4
    with pytest.warns(AttentionRegimeWarning, match=rf"max ‖q‖²·scale = {rho:.3g} > 4"):
        kernel_attention(q, k, v, "favor+", num_features=32)


def test_no_warning_inside_the_regime():
    q, k, v = qkv(std=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionRegimeWarning)
        for method in ("favor+", "hermite", "nystrom"):
            kernel_attention(q, k, v, method, num_features=32)


def test_hermite_warns_with_the_logit_row_std():
    q, k, v = qkv(std=3.0)
    with pytest.warns(AttentionRegimeWarning, match="logit row standard deviation is"):
        kernel_attention(q, k, v, "hermite", num_features=32)


def test_module_warns_once():
    m = KernelAttention(32, 2, "favor+", num_features=16, seed=0)
    x = 3.0 * torch.randn(1, 20, 32, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            m(x)
    hits = [r for r in rec if issubclass(r.category, AttentionRegimeWarning)]
    assert len(hits) == 1 and "max ‖q‖²·scale" in str(hits[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttentionRegimeWarning)
        kernel_attention(*qkv(std=1.5), "favor+", num_features=32, regime_warning=False)


@pytest.mark.parametrize("std", [1.0, 3.0, 10.0])
def test_nystrom_stays_in_the_convex_hull_of_v(std):
    """Peaked, clustered inputs that make the projection form's Gram matrix ill-conditioned:
    the snap form's output lies in the per-channel range of V."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(8, 16, generator=g, dtype=torch.float64)
    own = centres[torch.randint(0, 8, (256,), generator=g)]
    q = std * (own + 0.1 * torch.randn(256, 16, generator=g, dtype=torch.float64))
    k = std * (own + 0.1 * torch.randn(256, 16, generator=g, dtype=torch.float64))
    v = torch.randn(256, 16, generator=g, dtype=torch.float64)
    out = kernel_attention(q, k, v, "nystrom", num_features=32)
    lo, hi = v.amin(0), v.amax(0)
    assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())
    proj = kernel_attention(q, k, v, "nystrom", num_features=32, nystrom_form="projection")
    assert float(proj.abs().max()) > float(out.abs().max())  # the old form leaves the hull


def test_nystrom_error_falls_with_m_and_is_exact_with_every_key():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(2, 24, 16, generator=g, dtype=torch.float64)
    own = centres.gather(1, torch.randint(0, 24, (2, 256, 1), generator=g).expand(2, 256, 16))
    q = 1.2 * (own + 0.4 * torch.randn(2, 256, 16, generator=g, dtype=torch.float64))
    k = 1.2 * (own + 0.4 * torch.randn(2, 256, 16, generator=g, dtype=torch.float64))
    v = torch.randn(2, 256, 16, generator=g, dtype=torch.float64)
    exact = F.scaled_dot_product_attention(q, k, v)

    def rel(o):
        return float((o - exact).norm() / exact.norm())

    errs = [rel(kernel_attention(q, k, v, "nystrom", num_features=m)) for m in (8, 32, 128)]
    base = rel(v.mean(-2, keepdim=True).expand_as(exact))
    # measured 0.86, 0.55, 0.50 against a mean-of-V baseline of 0.99
    assert errs[0] > errs[1] > errs[2] and errs[0] < base, (errs, base)
    assert rel(kernel_attention(q, k, v, "nystrom", num_features=256)) < 1e-12


def test_nystrom_gradients_and_bad_form():
    q, k, v = (t.requires_grad_() for t in qkv(L=20, E=4, std=0.5))

    def f(q, k, v):
        return kernel_attention(q, k, v, "nystrom", num_features=5, chunk_size=7)

    assert torch.autograd.gradcheck(f, (q, k, v), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="nystrom_form"):
        kernel_attention(q, k, v, "nystrom", nystrom_form="svd")
    assert math.isfinite(float(f(q, k, v).detach().sum()))


def test_softmax_free_warns_when_key_norms_vary():
    q, k, v = qkv(std=0.3)
    k = k * torch.linspace(0.2, 6.0, 64, dtype=torch.float64)[:, None]  # norms spread
    with pytest.warns(AttentionRegimeWarning, match=r"std of ‖k‖²·scale/2 = "):
        kernel_attention(q, k, v, "softmax-free", num_features=16)


@pytest.mark.parametrize("std", [0.3, 0.9, 1.1, 3.0])
def test_hermite_warning_matches_the_exact_statistic(std):
    """The bound that skips the per-row statistic decides as the rows do: 0.3 is settled by
    the bound (0.08 against 4), 0.9 needs the rows (bound 6.2, rows below the threshold),
    1.1 and 3.0 have rows above it."""
    q, k, v = qkv(std=std)
    kc = k - k.mean(-2, keepdim=True)
    C = kc.mT @ kc / k.shape[-2]
    sigma = float(((q @ C) * q).sum(-1).amax().sqrt()) / 4  # scale = 1/√16
    assert abs(sigma - 2.0) > 0.05  # the cases are clear of the threshold
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        kernel_attention(q, k, v, "hermite", num_features=32)
    hits = [r for r in rec if issubclass(r.category, AttentionRegimeWarning)]
    assert len(hits) == (sigma > 2.0)
    if hits:
        assert f"deviation is {sigma:.3g} >" in str(hits[0].message)


@pytest.mark.parametrize("std", [0.1, 0.3, 0.6, 1.0, 2.0])
def test_hermite_skips_the_tempering_only_where_it_is_the_identity(std, monkeypatch):
    """Where the bound skips the tempering, output and gradients equal the tempered path's
    bit for bit; large inputs are tempered."""
    from snnk.nn.attention import methods

    decided = []
    bound = methods.Hermite._may_temper

    def spy(self, U, mean):
        decided.append(bound(self, U, mean))
        return decided[-1]

    def run():
        q, k, v = (t.requires_grad_() for t in qkv(L=96, E=8, std=std, seed=3))
        out = kernel_attention(q, k, v, "hermite", num_features=24, regime_warning=False)
        out.square().sum().backward()
        return [out.detach(), q.grad, k.grad, v.grad]

    monkeypatch.setattr(methods.Hermite, "_may_temper", spy)
    fast = run()
    monkeypatch.setattr(methods.Hermite, "_may_temper", lambda self, U, mean: True)
    tempered = run()
    for a, b in zip(fast, tempered, strict=True):
        assert torch.equal(a, b)
    assert decided == [std >= 1.0]  # measured: skipped up to 0.6, tempered from 1.0
