r"""Ridge leverage scores: exact, and approximated by a BLESS-style coarse-to-fine sweep.

For a kernel matrix ``K`` (``n × n``) and a regularisation ``λ > 0`` the λ-ridge leverage
scores and the effective dimension are

.. math:: ℓ_i(λ) = [K (K + nλI)^{-1}]_{ii}, \qquad d_{eff}(λ) = Σ_i ℓ_i(λ).

They are the inclusion probabilities of the L-ensemble DPP with ``L = K/(nλ)``; sampling
Nyström centres ``∝ ℓ_i`` keeps kernel ridge regression within ``1 + ε`` of exact with
``O(d_eff log d_eff)`` centres (Alaoui & Mahoney, 2015; Rudi et al., 2015).

The exact scores need an ``O(n³)`` eigendecomposition. :func:`approximate_ridge_leverage_scores`
follows BLESS (Rudi, Calandriello, Carratino & Rosasco, NeurIPS 2018): ``λ`` decreases
geometrically from ``trace K / n`` (where ``d_eff ≤ 1``); at each level a uniform subset of
``R = min(n, q₁ κ²/λ)`` points is scored with the previous level's weighted dictionary
``(J, π_J)``,

.. math:: ℓ̃_i(λ) = \frac{k_{ii} − k_{iJ}(K_{JJ} + nλ\,\mathrm{diag}(π_J))^{-1} k_{Ji}}{nλ},

and each scored point enters the next dictionary with probability
``min(1, q₂ ℓ̃_i n/R)`` (overall inclusion ``π_i = min(R/n, q₂ ℓ̃_i)``), so the dictionary has
``O(q₂ d_eff)`` points and the cost is ``O(R |J|² + |J|³)`` per level, independent of ``n``
once ``q₁ κ²/λ < n``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from snnk._utils.validation import check_positive_int
from snnk.kernels import Kernel, make_kernel
from snnk.sampling._checks import F64, as_generator, as_square, check_eigenvalues_finite
from snnk.solvers import SPDSolver

__all__ = [
    "LeverageEstimate",
    "approximate_ridge_leverage_scores",
    "effective_dimension",
    "regularization_for_dimension",
    "ridge_leverage_scores",
]


def _eigh(K) -> tuple[torch.Tensor, torch.Tensor]:
    K = as_square(K, "K")
    if K.shape[0] == 0:
        raise ValueError("K is empty; leverage scores need at least one row")
    scale = float(K.abs().max())
    if scale == 0.0:
        n = K.shape[0]
        return torch.zeros(n, dtype=F64), torch.eye(n, dtype=F64)
    lam, V = torch.linalg.eigh(K / scale)  # scaled: no overflow / underflow in eigh
    if float(lam.min()) < -1e-6 * float(lam.abs().max()):
        raise ValueError(
            f"K must be positive semi-definite (a kernel matrix); its smallest eigenvalue is "
            f"{float(lam.min()) * scale:.3g} against a largest of {float(lam.max()) * scale:.3g}"
        )
    # eigenvalues at round-off level (<= n eps λ_max) are zeros of K: without this a rank-r K
    # had d_eff(λ) -> n instead of r once nλ fell below the round-off (and ℓ_i -> 1 for all i)
    lam = torch.where(lam > float(lam.max()) * (lam.numel() * torch.finfo(F64).eps), lam, 0.0)
    lam = lam * scale
    check_eigenvalues_finite(lam, "K")
    return lam, V


def _check_reg(regularization) -> float:
    if isinstance(regularization, torch.Tensor) and regularization.numel() == 1:
        regularization = regularization.item()
    if isinstance(regularization, bool) or not isinstance(regularization, numbers.Real):
        raise TypeError(f"regularization must be a positive float, got {regularization!r}")
    if not (math.isfinite(regularization) and regularization > 0):
        raise ValueError(f"regularization must be finite and > 0, got {regularization!r}")
    return float(regularization)


def effective_dimension(eigenvalues, regularization: float, n: int | None = None) -> float:
    r"""``d_eff(λ) = Σ_j s_j / (s_j + nλ)`` from the eigenvalues ``s_j`` of ``K``."""
    s = torch.as_tensor(eigenvalues, dtype=F64)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("eigenvalues contain NaN or Inf")
    s = s.clamp_min(0.0)
    n = s.numel() if n is None else check_positive_int(n, "n")
    return float((s / (s + n * _check_reg(regularization))).sum())


def _dimension(dimension) -> float:
    if isinstance(dimension, bool) or not isinstance(dimension, numbers.Real):
        raise TypeError(f"dimension must be a real number (a target d_eff), got {dimension!r}")
    return float(dimension)


def _solve_dimension(s: torch.Tensor, target: float) -> float:
    """The ``λ`` with ``d_eff(λ) = target`` (bisection in ``log λ``; ``0 < target < rank``)."""
    n = s.numel()
    rank = int((s > s.max() * (n * torch.finfo(F64).eps)).sum())
    if not 0 < target < rank:
        raise ValueError(
            f"dimension must be in (0, {rank}) (the numerical rank of K), got {target!r}"
        )
    lo, hi = math.log(float(s.max()) * 1e-18 / n), math.log(float(s.sum()) * 1e3 / n)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((s / (s + n * math.exp(mid))).sum()) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return math.exp(0.5 * (lo + hi))


def regularization_for_dimension(K, dimension: float) -> float:
    r"""The ``λ`` at which ``d_eff(λ) = dimension`` for the kernel matrix ``K`` (``O(n³)``)."""
    s, _ = _eigh(K)
    return _solve_dimension(s, _dimension(dimension))


def ridge_leverage_scores(
    K, regularization: float | None = None, *, dimension: float | None = None
) -> torch.Tensor:
    r"""Exact ``ℓ_i(λ) = [K(K + nλI)^{-1}]_{ii}`` for ``K`` of shape ``(n, n)`` (float64).

    Give ``regularization`` (``λ``) or ``dimension`` (``λ`` is then solved so that
    ``d_eff(λ) = dimension``). Cost ``O(n³)`` (one ``eigh``); the scores sum to ``d_eff``.
    """
    if (regularization is None) == (dimension is None):
        raise ValueError("give exactly one of regularization (λ) or dimension (d_eff)")
    s, V = _eigh(K)
    reg = (
        _solve_dimension(s, _dimension(dimension))
        if dimension is not None
        else _check_reg(regularization)
    )
    return _scores_from_eigh(s, V, reg)


def _scores_from_eigh(s: torch.Tensor, V: torch.Tensor, reg: float) -> torch.Tensor:
    n = s.numel()
    return (V.square() * (s / (s + n * reg))).sum(1).clamp(0.0, 1.0)


@dataclass(frozen=True)
class LeverageEstimate:
    """Result of :func:`approximate_ridge_leverage_scores`.

    Attributes
    ----------
    scores : Tensor ``(n,)``
        Estimated ``ℓ̃_i(λ)`` of every row, float64 in ``(0, 1]``.
    dictionary : LongTensor ``(|J|,)``
        Rows of the final weighted dictionary.
    probabilities : Tensor ``(|J|,)``
        Their inclusion probabilities ``π_J`` (the dictionary weights are ``1/π_J``).
    regularization : float
        The ``λ`` the scores are for.
    effective_dimension : float
        ``Σ_i ℓ̃_i``, the estimate of ``d_eff(λ)``.
    levels : int
        Number of coarse-to-fine levels run.
    """

    scores: torch.Tensor
    dictionary: torch.Tensor
    probabilities: torch.Tensor
    regularization: float
    effective_dimension: float
    levels: int


def _approx_scores(kernel, X, diag, rows, J, pi, nlam: float) -> torch.Tensor:
    """``ℓ̃`` of ``X[rows]`` at ``nλ`` with the weighted dictionary ``(J, π)`` (in blocks)."""
    if J.numel() == 0:
        return (diag[rows] / nlam).clamp(0.0, 1.0)
    XJ = X[J]
    KJJ = kernel(XJ).to(F64)
    solve = SPDSolver(0.5 * (KJJ + KJJ.T) + torch.diag(nlam * pi))  # factored once
    out = torch.empty(rows.numel(), dtype=F64)
    step = max(1, 2_000_000 // max(J.numel(), 1))
    for s in range(0, rows.numel(), step):
        r = rows[s : s + step]
        KrJ = kernel(X[r], XJ).to(F64)
        quad = (KrJ * solve(KrJ.T).T).sum(1)
        out[s : s + step] = (diag[r] - quad) / nlam
    return out.clamp(torch.finfo(F64).tiny, 1.0)


def approximate_ridge_leverage_scores(
    X,
    kernel: Kernel | str,
    regularization: float | None = None,
    *,
    dimension: float | None = None,
    generator=None,
    q1: float = 10.0,
    q2: float = 8.0,
    shrink: float = 2.0,
) -> LeverageEstimate:
    r"""BLESS-style estimates of the ridge leverage scores of ``k`` on the rows of ``X``.

    Parameters
    ----------
    X : Tensor of shape ``(n, d)``
    kernel : Kernel or str
    regularization : float, optional
        Target ``λ`` (the sweep stops there). Give it or ``dimension``.
    dimension : float, optional
        Target ``d_eff``: the sweep stops at the first level whose estimated ``d_eff``
        reaches it, then ``λ`` is interpolated (log-log) between the last two levels.
    generator : torch.Generator, int or None
    q1, q2 : float
        Oversampling of the uniform pre-sample (``R = min(n, q₁κ²/λ)``, ``κ² = max k(x,x)``)
        and of the dictionary (``π_i = min(R/n, q₂ ℓ̃_i)``); ``|J| ≈ q₂ d_eff``.
    shrink : float, default 2
        Ratio between successive ``λ``.

    Returns
    -------
    LeverageEstimate
    """
    if (regularization is None) == (dimension is None):
        raise ValueError("give exactly one of regularization (λ) or dimension (d_eff)")
    kern = make_kernel(kernel)
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty (n, d) matrix, got shape {tuple(X.shape)}")
    for name, v, low in (("q1", q1, 1.0), ("q2", q2, 0.0), ("shrink", shrink, 1.0)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > low):
            raise ValueError(f"{name} must be a finite number > {low:g}, got {v!r}")
    gen = as_generator(generator)
    n = X.shape[0]
    diag = kern.diag(X).to(F64).clamp_min(0.0)
    kappa2, lam = float(diag.max()), float(diag.sum()) / n
    if not (math.isfinite(kappa2) and kappa2 > 0):
        raise ValueError("the kernel's diagonal k(x, x) is zero or not finite on X")
    target_reg = None if regularization is None else _check_reg(regularization)
    if dimension is not None and not 0 < _dimension(dimension) < n:
        raise ValueError(f"dimension must be in (0, n = {n}), got {dimension!r}")
    J = torch.empty(0, dtype=torch.long)
    pi = torch.empty(0, dtype=F64)
    prev: tuple[float, float] | None = None
    levels = 0
    floor = kappa2 * 1e-15
    while True:
        levels += 1
        R = min(n, math.ceil(q1 * kappa2 / lam))
        rows = torch.randperm(n, generator=gen)[:R]
        sc = _approx_scores(kern, X, diag, rows, J, pi, n * lam)
        d_hat = float(sc.sum()) * n / R
        p = (q2 * sc * n / R).clamp(max=1.0)
        keep = torch.rand(R, generator=gen, dtype=F64) < p
        J, pi = rows[keep], (p[keep] * R / n)
        done = (
            (target_reg is not None and lam <= target_reg * (1 + 1e-12))
            or (dimension is not None and d_hat >= float(dimension))
            or lam <= floor
        )
        if done:
            break
        prev = (lam, d_hat)
        lam = lam / shrink if target_reg is None else max(lam / shrink, target_reg)
    final = target_reg if target_reg is not None else lam
    if dimension is not None and prev is not None and d_hat > float(dimension):
        (l0, d0), (l1, d1) = prev, (lam, d_hat)
        if d0 > 0 and d1 > d0:
            t = (math.log(float(dimension)) - math.log(d0)) / (math.log(d1) - math.log(d0))
            final = math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0)))
    scores = _approx_scores(kern, X, diag, torch.arange(n), J, pi, n * final)
    return LeverageEstimate(scores, J, pi, final, float(scores.sum()), levels)
