r"""Centre selectors built on :mod:`snnk.sampling` (registered in :mod:`snnk.features.centers`).

* ``"rls"``: ``m`` rows without replacement ``∝`` the exact ridge leverage scores
  ``ℓ_i(λ) = [K(K + nλI)^{-1}]_{ii}``, with ``λ`` solved so that ``d_eff(λ) = m`` (or given
  as ``regularization``). ``O(n³)``: above ``max_candidates`` rows (default 4000) the scores
  are those of a uniform subsample of that many candidates.
* ``"bless"``: the same with BLESS-style approximate scores
  (:func:`~snnk.sampling.approximate_ridge_leverage_scores`): ``O(n d_eff + d_eff³)``-ish,
  every row a candidate.
* ``"kdpp"``: a k-DPP with ``L = W^{1/2} K W^{1/2}`` (``k = m``), exact, ``O(n³)``; above
  ``max_candidates`` rows it samples a uniform subsample of candidates. Where the kernel
  matrix has numerical rank ``r < m`` (repeated rows), a k-DPP of size ``r`` is completed
  by uniform draws among the other rows.
* ``"pivoted-cholesky"``: greedy pivoted Cholesky, ``O(c m (m + d))`` in panels of matrix
  products, on ``c = max(5000, 2m)`` uniformly drawn candidate rows by default
  (``max_candidates``; ``None``: every row, deterministic).
* ``"rpcholesky"``: randomly pivoted Cholesky (pivots ``∝`` the residual diagonal), in
  blocks of proposals with rejection: ``O(n m (m + d))`` in matrix products.

With ``sample_weight`` the leverage-score probabilities are multiplied by the weights, and the
k-DPP and pivoted Cholesky use ``W^{1/2} K W^{1/2}``. The two Cholesky selectors also have
a ``*_factor`` form returning the factor they computed (the Nyström features of the data,
:func:`snnk.features.select_center_factor`).
"""

from __future__ import annotations

import torch

from snnk.kernels import Kernel
from snnk.sampling import (
    FiniteDPP,
    approximate_ridge_leverage_scores,
    pivoted_cholesky,
    randomly_pivoted_cholesky,
    ridge_leverage_scores,
)

F64 = torch.float64
#: default cap on the candidates of the ``O(n³)`` selectors
MAX_CANDIDATES = 4000
#: default candidates of the greedy pivoted Cholesky: ``max(GREEDY_CANDIDATES, 2 m)`` rows
GREEDY_CANDIDATES = 5000


def _all_rows(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)


def _candidates(n: int, max_candidates: int, gen: torch.Generator) -> torch.Tensor:
    if (
        isinstance(max_candidates, bool)
        or not isinstance(max_candidates, int)
        or max_candidates < 1
    ):
        raise ValueError(f"max_candidates must be a positive integer, got {max_candidates!r}")
    if n <= max_candidates:
        return torch.arange(n)
    return torch.randperm(n, generator=gen)[:max_candidates].sort().values


def _weighted_gram(kernel: Kernel, X: torch.Tensor, weight) -> torch.Tensor:
    K = kernel(X).to(F64).cpu()
    if weight is not None:
        sw = weight.to(F64).cpu().sqrt()
        K = sw[:, None] * K * sw[None, :]
    return 0.5 * (K + K.T)


def _draw(p: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """``m`` distinct indices ``∝ p`` (successive sampling); zero mass only after the rest."""
    p = p.to(F64).cpu().clamp_min(0.0)
    top = float(p.max()) if p.numel() else 0.0
    p = p + (top * 1e-12 if top > 0 else 1.0)
    return torch.multinomial(p, m, replacement=False, generator=gen)


def rls_centers(
    X, m, *, weight, generator, kernel, regularization=None, max_candidates=MAX_CANDIDATES
):
    """``m`` rows ``∝`` exact ridge leverage scores (``d_eff(λ) = m`` unless ``regularization``)."""
    gen = generator()
    n = X.shape[0]
    if m >= n:
        return _all_rows(n, gen)
    cand = _candidates(n, max_candidates, gen)
    if m >= cand.numel():
        return cand[torch.randperm(cand.numel(), generator=gen)][:m]
    Xc = X[cand.to(X.device)]
    K = kernel(Xc).to(F64).cpu()
    try:
        if regularization is not None:
            scores = ridge_leverage_scores(K, regularization)
        else:
            scores = ridge_leverage_scores(K, dimension=float(m))
    except ValueError:  # m at or above the numerical rank: every direction is needed
        scores = ridge_leverage_scores(K, float(K.diagonal().mean()) * 1e-12 + 1e-300)
    if weight is not None:
        scores = scores * weight.to(F64).cpu()[cand]
    return cand[_draw(scores, m, gen)]


def bless_centers(X, m, *, weight, generator, kernel, regularization=None, q1=10.0, q2=2.0):
    """``m`` rows ``∝`` BLESS-style approximate ridge leverage scores."""
    gen = generator()
    n = X.shape[0]
    if m >= n:
        return _all_rows(n, gen)
    if regularization is not None:
        est = approximate_ridge_leverage_scores(
            X, kernel, regularization, generator=gen, q1=q1, q2=q2
        )
    else:
        est = approximate_ridge_leverage_scores(
            X, kernel, dimension=float(m), generator=gen, q1=q1, q2=q2
        )
    scores = est.scores
    if weight is not None:
        scores = scores * weight.to(F64).cpu()
    return _draw(scores, m, gen)


def kdpp_centers(X, m, *, weight, generator, kernel, max_candidates=MAX_CANDIDATES):
    """A k-DPP of ``L = W^{1/2} K W^{1/2}`` on the candidates, ``k = m``."""
    gen = generator()
    n = X.shape[0]
    if m >= n:
        return _all_rows(n, gen)
    cand = _candidates(n, max_candidates, gen)
    if m >= cand.numel():
        return cand[torch.randperm(cand.numel(), generator=gen)][:m]
    w = None if weight is None else weight[cand]
    dpp = FiniteDPP(_weighted_gram(kernel, X[cand.to(X.device)], w))
    k = min(m, dpp.rank)
    pick = dpp.sample_k(k, generator=gen)[0] if k > 0 else torch.empty(0, dtype=torch.long)
    if k < m:  # rank-deficient kernel matrix: complete uniformly among the other rows
        rest = torch.ones(cand.numel(), dtype=torch.bool)
        rest[pick] = False
        others = torch.nonzero(rest)[:, 0]
        pick = torch.cat([pick, others[torch.randperm(others.numel(), generator=gen)[: m - k]]])
    return cand[pick]


def pivoted_cholesky_factor(
    X, m, *, weight, generator, kernel, max_candidates="auto", block_size=None
):
    """``(pivots, F, rows)``: the greedy pivots (rows of ``X``, pick order) and the factor
    ``F`` ``(r, m)`` of ``W^{1/2} K W^{1/2}`` on the rows ``rows`` of ``X`` (sorted; ``None``:
    every row). Candidates: every row (``max_candidates=None``) or a uniform subsample of
    ``max_candidates`` rows when smaller than ``n`` (``"auto"``:
    ``max(GREEDY_CANDIDATES, 2 m)``; the greedy costs ``O(c m²)`` on ``c`` candidates
    while the fit costs ``O(n m²)``). ``F`` is ``None`` where ``m`` reaches the candidates."""
    n = X.shape[0]
    if isinstance(max_candidates, str) and max_candidates == "auto":
        max_candidates = max(GREEDY_CANDIDATES, 2 * m)
    if max_candidates is None or (
        not isinstance(max_candidates, bool)
        and isinstance(max_candidates, int)
        and max_candidates >= n
    ):
        res = pivoted_cholesky(X, kernel, m, weight=weight, block_size=block_size)
        return res.pivots, res.factor, None
    cand = _candidates(n, max_candidates, generator())
    if m >= cand.numel():
        return cand[:m], None, None
    w = None if weight is None else weight[cand]
    res = pivoted_cholesky(X[cand.to(X.device)], kernel, m, weight=w, block_size=block_size)
    return cand[res.pivots], res.factor, cand


def pivoted_cholesky_centers(
    X, m, *, weight, generator, kernel, max_candidates="auto", block_size=None
):
    """The ``m`` pivots of the greedy pivoted Cholesky of ``W^{1/2} K W^{1/2}`` among the
    candidates of :func:`pivoted_cholesky_factor` (``block_size`` candidate columns per
    panel, see :func:`~snnk.sampling.pivoted_cholesky`)."""
    n = X.shape[0]
    if m >= n:
        return torch.arange(n)
    return pivoted_cholesky_factor(
        X,
        m,
        weight=weight,
        generator=generator,
        kernel=kernel,
        max_candidates=max_candidates,
        block_size=block_size,
    )[0]


def rpcholesky_factor(X, m, *, weight, generator, kernel, block_size=None):
    """``(pivots, F, None)`` of randomly pivoted Cholesky (``F`` on every row of ``X``)."""
    res = randomly_pivoted_cholesky(
        X, kernel, m, generator=generator(), weight=weight, block_size=block_size
    )
    return res.pivots, res.factor, None


def rpcholesky_centers(X, m, *, weight, generator, kernel, block_size=None):
    """The ``m`` pivots of randomly pivoted Cholesky of ``W^{1/2} K W^{1/2}``."""
    gen = generator()
    n = X.shape[0]
    if m >= n:
        return _all_rows(n, gen)
    return randomly_pivoted_cholesky(
        X, kernel, m, generator=gen, weight=weight, block_size=block_size
    ).pivots
