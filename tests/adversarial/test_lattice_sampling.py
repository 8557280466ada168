"""Hostile second reading of ``snnk.lattice`` and ``snnk.sampling``.

Each case here failed before its fix (or pins a property the review checked and found sound,
stated in its docstring):

* FastGP / profiled_nll: data scaled by ``1e200`` or ``1e-200``, or constant data, made every
  output NaN (``|ỹ|²`` over/underflowed, ``log Ŝ = ±inf``, NaN gradients); NaN data and a
  NaN / negative nugget were accepted; a wrong-length ``y_new`` in ``append`` was a raw torch
  error; ``bayesian_cubature`` took ``confidence`` outside ``(0, 1)``, ``abs_tol < 0`` and
  ``n_max < n_init``.
* Kernels / designs / operator: NaN / Inf weights or scale, ``dimension=0`` (a
  ZeroDivisionError), ``alpha=2.5`` (silently 2), integer SI inputs (a raw dtype error),
  NaN or negative DSI inputs (silently garbage), a NaN / wrong-size lattice shift, a negative
  digital shift, an integer point dtype (every point 0), a NaN / Inf / str nugget,
  ``K @ scalar``, ``omega``/``double`` with a bad kind or sizes, ``fftbr`` of float16.
* FiniteDPP: eigenvalues near ``1.8e308`` were all dropped (the round-off threshold
  overflowed), non-orthonormal ``eigen=`` eigenvectors were accepted (wrong distribution),
  ``L`` with entries above ``9e307`` overflowed in the symmetrisation, a float16 PSD ``L``
  was refused as non-PSD, the meta device was a raw error; ``log_elementary_symmetric_
  polynomials`` truncated ``k = 1.5`` and raised IndexError for ``k < 0``.
* Leverage: a rank-``r`` K had ``d_eff(λ) → n`` (not ``r``) below the round-off level, a
  non-PSD K was accepted, numpy / 0-d tensor ``λ`` refused, ``effective_dimension`` took
  NaN eigenvalues and ``n = 0``.
* Designs: out-of-range, negative (silently wrapped) and float indices; empty designs
  (ZeroDivisionError); Hermite features NaN at large finite ``x``; ``max_proposals < 0``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from snnk.lattice import (
    DigitalNet,
    DSIKernel,
    FastGP,
    Lattice,
    SIKernel,
    StructuredGram,
    bayesian_cubature,
    double,
    fftbr,
    fwht,
    omega,
    profiled_nll,
)
from snnk.sampling import (
    FiniteDPP,
    PolynomialBasis,
    continuous_projection_dpp,
    effective_dimension,
    gram_deviation,
    log_elementary_symmetric_polynomials,
    optimal_weights,
    orthonormal_basis,
    pivoted_cholesky,
    ridge_leverage_scores,
)

F64 = torch.float64
DESIGNS = [(Lattice, SIKernel), (DigitalNet, DSIKernel)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _gp_data(cls, n=32):
    pts = cls(2, seed=0)(n)
    y = torch.sin(2 * math.pi * pts.x[:, 0]) + pts.x[:, 1] ** 2
    return pts, y


# -- FastGP and the profiled likelihood ----------------------------------------------------------


@pytest.mark.category("scale")
@pytest.mark.parametrize("cls", [Lattice, DigitalNet])
@pytest.mark.parametrize("factor", [1e-200, 1e-100, 1e100])
def test_fast_gp_is_scale_equivariant(cls, factor):
    """y → c·y: the fitted weights, m₀/c, Ŝ/c² and the NLL shift by n log c are unchanged
    (before: NaN everywhere for c = 1e-200; the 1e±100 cases passed before and pin that the
    rescaled likelihood does not perturb ordinary fits)."""
    pts, y = _gp_data(cls)
    ref = FastGP(pts, y).fit(max_iter=30)
    gp = FastGP(pts, y * factor).fit(max_iter=30)
    torch.testing.assert_close(gp.kernel.weights, ref.kernel.weights, rtol=1e-5, atol=0)
    torch.testing.assert_close(gp.mean / factor, ref.mean, rtol=1e-10, atol=0)
    torch.testing.assert_close(gp.nll() - pts.n * math.log(factor), ref.nll(), rtol=1e-9, atol=1e-9)
    mean, var = gp.integral()
    ref_mean, ref_var = ref.integral()
    torch.testing.assert_close(mean / factor, ref_mean, rtol=1e-10, atol=0)
    if factor >= 1e-100:  # Ŝ ∝ c² underflows below 1e-154 (correctly rounded to 0 there)
        torch.testing.assert_close(gp.scale / factor**2, ref.scale, rtol=1e-6, atol=0)
        torch.testing.assert_close(var / factor**2, ref_var, rtol=1e-6, atol=0)


@pytest.mark.category("scale")
@pytest.mark.parametrize("cls", [Lattice, DigitalNet])
def test_fast_gp_constant_data_gives_exact_integral_not_nan(cls):
    pts, _ = _gp_data(cls)
    gp = FastGP(pts, torch.full((pts.n,), 3.0, dtype=F64)).fit(max_iter=10)
    mean, var = gp.integral()
    assert float(mean) == 3.0 and float(var) == 0.0
    assert math.isfinite(float(gp.nll()))
    res = bayesian_cubature(lambda x: torch.ones(x.shape[0], dtype=F64), 2, seed=0, n_max=512)
    assert res.estimate == 1.0 and res.half_width == 0.0


@pytest.mark.category("scale")
def test_profiled_nll_is_finite_with_finite_gradient_at_extreme_scales():
    lam = torch.linspace(0.5, 2.0, 16, dtype=F64)
    base = torch.randn(16, generator=_gen(), dtype=F64)
    ref, _ = profiled_nll(lam, base)
    for c in (1e-300, 1e-200, 1e200, 1e300):
        w = torch.zeros(16, dtype=F64, requires_grad=True)
        nll, _ = profiled_nll(lam * torch.exp(w), base * c)
        (g,) = torch.autograd.grad(nll, w)
        assert torch.isfinite(nll) and torch.isfinite(g).all()
        torch.testing.assert_close(nll - 16 * math.log(c), ref, rtol=1e-12, atol=1e-9)


@pytest.mark.category("scale")
def test_fast_gp_huge_data_is_a_value_error_naming_y():
    pts, y = _gp_data(Lattice)
    with pytest.raises(ValueError, match="divide y"):
        FastGP(pts, y * 1e200)


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("cls", [Lattice, DigitalNet])
def test_fast_gp_refuses_nonfinite_data_and_bad_nugget(cls):
    pts, y = _gp_data(cls)
    bad = y.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN"):
        FastGP(pts, bad)
    for nugget in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="nugget"):
            FastGP(pts, y, nugget=nugget)


@pytest.mark.category("inplace")
@pytest.mark.parametrize("cls", [Lattice, DigitalNet])
def test_fast_gp_append_validates_before_changing_state(cls):
    design = cls(2, seed=0)
    pts = design(32)
    gp = FastGP(pts, pts.x.sum(1))
    before = (gp.y.clone(), gp.eigenvalues.clone(), gp.coef.clone(), gp.points)
    nxt = design(32, 32)
    for y_new, err in (
        (torch.ones(16, dtype=F64), "y_new must have shape"),
        (torch.full((32,), float("nan"), dtype=F64), "y_new contains NaN"),
    ):
        with pytest.raises(ValueError, match=err):
            gp.append(nxt, y_new)
        assert gp.points is before[3] and torch.equal(gp.y, before[0])
        assert torch.equal(gp.eigenvalues, before[1]) and torch.equal(gp.coef, before[2])


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fast_gp_on_low_precision_designs(dtype):
    """Half-precision nets compute in float32 (before: a raw overflow error for float16, and
    a negative posterior variance in float32); half-precision lattices are refused with the
    fix (before: a raw "Unsupported dtype Half" from the FFT)."""
    pts = DigitalNet(2, seed=0, dtype=dtype)(64)
    y = torch.sin(2 * math.pi * pts.x[:, 0].double()) + pts.x[:, 1].double()
    gp = FastGP(pts, y).fit(max_iter=10)
    assert gp.y.dtype == (torch.float32 if dtype != torch.float32 else dtype)
    mean, var = gp.integral()
    assert abs(float(mean) - 0.5) < 1e-3 and float(var) >= 0
    assert (gp.posterior_variance(pts.x[:8]) >= 0).all()
    lat = Lattice(2, seed=0, dtype=dtype)(64)
    if dtype == torch.float32:
        assert (FastGP(lat, lat.x.sum(1)).posterior_variance(lat.x[:8]) >= 0).all()
    else:
        with pytest.raises(ValueError, match=r"dtype=torch\.float32"):
            FastGP(lat, lat.x.sum(1).float())


@pytest.mark.category("options")
def _row_sum(x):
    return x.sum(1)


def test_bayesian_cubature_refuses_bad_options():
    for kw, msg in (
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 2.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"abs_tol": -1.0}, "abs_tol"),
        ({"abs_tol": float("nan")}, "abs_tol"),
        ({"n_init": 512, "n_max": 256}, "n_max"),
    ):
        with pytest.raises(ValueError, match=msg):
            bayesian_cubature(_row_sum, 2, seed=0, **kw)


# -- kernels, designs, operator, transforms ------------------------------------------------------


@pytest.mark.category("options")
@pytest.mark.parametrize("kern", [SIKernel, DSIKernel])
def test_kernel_parameters_are_validated(kern):
    for kw, msg in (
        ({"weights": float("nan")}, "weights"),
        ({"weights": float("inf")}, "weights"),
        ({"scale": float("nan")}, "scale"),
        ({"scale": float("inf")}, "scale"),
        ({"alpha": 2.5}, "alpha"),
        ({"alpha": [1, 1.5]}, "alpha"),
    ):
        with pytest.raises(ValueError, match=msg):
            kern(2, **kw)
    for d in (0, -1):
        with pytest.raises(ValueError, match="dimension"):
            kern(d)


@pytest.mark.category("dtype")
def test_si_kernel_refuses_integer_points_with_type_error():
    with pytest.raises(TypeError, match="x must hold floating"):
        SIKernel(2)(torch.ones(3, 2, dtype=torch.long), torch.zeros(1, 2))


@pytest.mark.category("nonfinite")
def test_dsi_kernel_refuses_nan_floats_and_out_of_range_bits():
    k = DSIKernel(2, t=40)
    with pytest.raises(ValueError, match="NaN"):
        k(torch.full((3, 2), float("nan"), dtype=F64), torch.zeros(1, 2, dtype=F64))
    for v in (-5, 2**40):
        with pytest.raises(ValueError, match="t-bit"):
            k(torch.full((1, 2), v, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    ok = k(torch.full((1, 2), 2**40 - 1, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    assert torch.isfinite(ok).all()


@pytest.mark.category("options")
def test_design_shift_and_dtype_are_validated():
    with pytest.raises(ValueError, match="shift"):
        Lattice(2, shift=torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="shift"):
        Lattice(2, shift=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="shift"):
        DigitalNet(2, shift=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="shift"):
        DigitalNet(2, t=40, shift=torch.tensor([2**40, 0]))
    for cls in (Lattice, DigitalNet):
        with pytest.raises(TypeError, match="dtype"):
            cls(2, dtype=torch.int64)


@pytest.mark.category("options")
@pytest.mark.parametrize("design,kern", DESIGNS)
def test_structured_gram_nugget_and_matmul_are_validated(design, kern):
    pts = design(3, seed=0)(16)
    for nugget in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="nugget"):
            StructuredGram(kern(3), pts, nugget=nugget)
    with pytest.raises(TypeError, match="nugget"):
        StructuredGram(kern(3), pts, nugget="a")
    K = StructuredGram(kern(3), pts, nugget=1e-3)
    with pytest.raises(ValueError, match="0-d"):
        K @ torch.tensor(1.0)
    # weights at 1e-300: λ = (n, 0, …, 0) exactly; solve gave NaN, now it says "add a nugget"
    singular = StructuredGram(kern(3, weights=1e-300), pts)
    with pytest.raises(ValueError, match="add a nugget"):
        singular.solve(torch.ones(16, dtype=F64))
    fixed = StructuredGram(kern(3, weights=1e-300), pts, nugget=1e-8)
    assert torch.isfinite(fixed.solve(torch.ones(16, dtype=F64))).all()


@pytest.mark.category("options")
def test_transform_helpers_validate_kind_sizes_and_take_half_inputs():
    with pytest.raises(ValueError, match="kind"):
        omega(4, "foo")
    with pytest.raises(ValueError, match="kind"):
        double(torch.ones(4), torch.ones(4), "foo")
    with pytest.raises(ValueError, match="one length"):
        double(torch.ones(4), torch.ones(8), "net")
    x = torch.randn(64, generator=_gen(), dtype=F64)
    for dt in (torch.float16, torch.bfloat16):
        out = fftbr(x.to(dt))
        torch.testing.assert_close(out, fftbr(x.to(dt).float()), rtol=0, atol=0)
    torch.testing.assert_close(
        fftbr(torch.arange(8)), fftbr(torch.arange(8, dtype=F64)), rtol=0, atol=0
    )
    big = torch.tensor([2**40 + 1, 0, 0, 0])  # float32 (the default dtype) loses the +1
    assert fwht(big).dtype == F64 and float(fwht(big)[0]) == (2**40 + 1) / 2


@pytest.mark.category("scale")
@pytest.mark.parametrize("design,kern", DESIGNS)
def test_structured_gram_agrees_with_dense_float64(design, kern):
    """Sound: matvec / solve / logdet / eigenvalues / extend against the dense matrix."""
    pts = design(3, seed=1)(16)
    K = StructuredGram(kern(3, alpha=2), pts, nugget=1e-3)
    D = K.to_dense()
    v = torch.randn(16, generator=_gen(1), dtype=F64)
    torch.testing.assert_close(K.matvec(v), D @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(K.solve(v), torch.linalg.solve(D, v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(K.logdet(), torch.logdet(D), rtol=1e-12, atol=1e-12)
    ev = torch.sort(K.eigenvalues).values
    torch.testing.assert_close(ev, torch.linalg.eigvalsh(D), rtol=1e-12, atol=1e-12)
    big = K.extend(pts.design(16, 16))
    ref = StructuredGram(kern(3, alpha=2), pts.design(32), nugget=1e-3)
    torch.testing.assert_close(big.eigenvalues, ref.eigenvalues, rtol=1e-12, atol=1e-12)


# -- finite DPPs ---------------------------------------------------------------------------------


def _exact_l_ensemble(L):
    n = L.shape[0]
    z = float(torch.linalg.det(L + torch.eye(n, dtype=F64)))
    out = {}
    for r in range(n + 1):
        for a in itertools.combinations(range(n), r):
            idx = list(a)
            out[a] = (float(torch.linalg.det(L[idx][:, idx])) if a else 1.0) / z
    return out


def _chi2(samples, probs):
    counts: dict = {}
    for s in samples:
        key = tuple(sorted(s))
        counts[key] = counts.get(key, 0) + 1
    m = len(samples)
    assert all(probs.get(k, 0.0) > 0 for k in counts), "a zero-probability set was drawn"
    cells = [(counts.get(k, 0), m * p) for k, p in probs.items() if m * p >= 5]
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1


@pytest.mark.category("scale")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l_ensemble_matches_exact_subset_probabilities(seed):
    """Sound: FiniteDPP(L).sample, FiniteDPP(K=...) and FiniteDPP(eigen=...) against the exact
    P(S = A) of all 32 subsets of 5 items, 8,000 draws each, chi-square below the 0.9999
    quantile (dof <= 31: < 66); a rank-deficient L (duplicate rows) as well."""
    g = _gen(seed)
    X = torch.randn(5, 3, generator=g, dtype=F64)
    L = X @ X.T + 0.3 * torch.eye(5, dtype=F64)
    lam, V = torch.linalg.eigh(L)
    K = L @ torch.linalg.inv(L + torch.eye(5, dtype=F64))
    X2 = torch.cat([X[:3], X[:2]])
    L2 = X2 @ X2.T
    for dpp, exact in (
        (FiniteDPP(L), _exact_l_ensemble(L)),
        (FiniteDPP(K=K), _exact_l_ensemble(L)),
        (FiniteDPP(eigen=(lam, V)), _exact_l_ensemble(L)),
        (FiniteDPP(L2), _exact_l_ensemble(L2)),
    ):
        draws = [s.tolist() for s in dpp.sample(8000, generator=100 + seed)]
        stat, dof = _chi2(draws, exact)
        assert dof >= 5 and stat < 66.0, (stat, dof)


@pytest.mark.category("scale")
def test_finite_dpp_keeps_eigenvalues_near_float64_max():
    d = FiniteDPP(eigen=(torch.tensor([1e308, 1e308], dtype=F64), torch.eye(2, dtype=F64)))
    assert d.rank == 2
    for s in d.sample(5, generator=0):
        assert sorted(s.tolist()) == [0, 1]


@pytest.mark.category("scale")
def test_finite_dpp_accepts_entries_above_half_float64_max():
    L = 1.5e308 * torch.eye(3, dtype=F64)
    d = FiniteDPP(L)
    assert d.rank == 3
    assert d.sample_k(2, 4, generator=0).shape == (4, 2)
    with pytest.raises(ValueError, match="overflow"):
        FiniteDPP(1.5e308 * torch.ones(3, 3, dtype=F64))


@pytest.mark.category("options")
def test_finite_dpp_refuses_non_orthonormal_eigenvectors():
    with pytest.raises(ValueError, match="eigenvectors must have orthonormal"):
        FiniteDPP(eigen=(torch.ones(2, dtype=F64), torch.ones(2, 2, dtype=F64)))


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_psd_kernel_is_accepted(dtype):
    X = torch.randn(5, 3, generator=_gen(), dtype=F64)
    d = FiniteDPP((X @ X.T).to(dtype))
    assert d.rank == 3
    assert d.sample_k(2, 3, generator=0).shape == (3, 2)


@pytest.mark.category("device")
def test_meta_inputs_are_value_errors():
    with pytest.raises(ValueError, match="meta"):
        FiniteDPP(torch.eye(3, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        pivoted_cholesky(torch.zeros(5, 2, device="meta"), "gaussian", 2)


@pytest.mark.category("options")
def test_log_esp_validates_k_and_shape():
    for k in (-1, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            log_elementary_symmetric_polynomials(torch.ones(3), k)
    with pytest.raises(ValueError, match="vector"):
        log_elementary_symmetric_polynomials(torch.ones(2, 2), 2)
    assert log_elementary_symmetric_polynomials(torch.ones(3), 0).shape == (4, 1)


# -- leverage scores -----------------------------------------------------------------------------


@pytest.mark.category("scale")
@pytest.mark.parametrize("scale", [1.0, 1e250, 1e-250])
def test_leverage_of_low_rank_kernel_sums_to_at_most_its_rank(scale):
    """A rank-3 K on 5 rows: d_eff(λ) → 3 as λ → 0 (before: → 5 once nλ fell below the
    round-off of K's zero eigenvalues)."""
    X = torch.randn(5, 3, generator=_gen(), dtype=F64)
    K = X @ X.T * scale
    for reg in (1e-18, 1e-30):
        s = ridge_leverage_scores(K, reg * scale)
        assert torch.isfinite(s).all()
        assert float(s.sum()) == pytest.approx(3.0, abs=1e-6)


@pytest.mark.category("options")
def test_leverage_refuses_non_psd_and_accepts_numpy_and_tensor_regularization():
    X = torch.randn(5, 3, generator=_gen(), dtype=F64)
    K = X @ X.T
    with pytest.raises(ValueError, match="positive semi-definite"):
        ridge_leverage_scores(-K, 0.1)
    ref = ridge_leverage_scores(K, 0.1)
    for reg in (np.float32(0.1), torch.tensor(0.1, dtype=F64)):
        torch.testing.assert_close(ridge_leverage_scores(K, reg), ref, rtol=1e-6, atol=0)
    with pytest.raises(TypeError, match="dimension"):
        ridge_leverage_scores(K, dimension="2")
    with pytest.raises(ValueError, match="overflow"):
        ridge_leverage_scores(1.5e308 * torch.ones(3, 3, dtype=F64), 1.0)


@pytest.mark.category("nonfinite")
def test_effective_dimension_refuses_nan_and_zero_n():
    with pytest.raises(ValueError, match="NaN"):
        effective_dimension(torch.tensor([float("nan"), 1.0]), 0.1)
    with pytest.raises(ValueError, match="n must be a positive"):
        effective_dimension(torch.tensor([1.0, 2.0]), 0.1, n=0)


# -- designs and bases ---------------------------------------------------------------------------


@pytest.mark.category("shape")
def test_design_helpers_validate_indices():
    U = orthonormal_basis(torch.randn(10, 3, generator=_gen(), dtype=F64))
    for fn in (optimal_weights, gram_deviation):
        with pytest.raises(ValueError, match=r"rows of U in \[0, 10\)"):
            fn(U, [100])
        with pytest.raises(ValueError, match=r"rows of U in \[0, 10\)"):
            fn(U, [-1])  # used to wrap to the last row silently
        with pytest.raises(TypeError, match="integer row numbers"):
            fn(U, [1.7])
    with pytest.raises(ValueError, match="n >= 1"):
        gram_deviation(U, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, n\)"):
        gram_deviation(U, torch.zeros(1, 1, 2, dtype=torch.long))


@pytest.mark.category("scale")
def test_polynomial_overflow_is_a_value_error_not_nan():
    basis = PolynomialBasis("hermite", 30)
    with pytest.raises(ValueError, match="overflow"):
        basis(torch.tensor([[1e200]], dtype=F64))
    assert torch.isfinite(basis(torch.tensor([[5.0]], dtype=F64))).all()


@pytest.mark.category("options")
def test_orthonormal_basis_validates_rcond():
    """rcond = NaN or >= 1 returned an empty (N, 0) basis without a word."""
    X = torch.randn(6, 2, generator=_gen(), dtype=F64)
    for rcond in (float("nan"), 2.0, 1.0, -1.0):
        with pytest.raises(ValueError, match="rcond"):
            orthonormal_basis(X, rcond=rcond)
    assert orthonormal_basis(X, rcond=0.0).shape == (6, 2)


@pytest.mark.category("options")
def test_continuous_projection_dpp_validates_max_proposals():
    basis = PolynomialBasis("legendre", 3)
    with pytest.raises(ValueError, match="max_proposals"):
        continuous_projection_dpp(basis, basis.sample_optimal, 4, generator=0, max_proposals=-1)
