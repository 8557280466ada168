r"""Sampling designs for optimal weighted least squares (Cohen & Migliorati; Nouy & Michel).

Let ``V_m = span{φ_1..φ_m}`` be orthonormal in ``L²(μ)``, ``k_m(x) = Σ_j φ_j(x)²`` the inverse
Christoffel function, ``ρ_m = k_m/m`` the optimal density and ``w = m/k_m`` the weight. With
points ``x_1..x_n`` the weighted least-squares projection solves ``G c = (1/n) Σ w(x_i) f(x_i)
φ(x_i)`` with

.. math:: G = \frac1n Σ_i w(x_i) φ(x_i) φ(x_i)ᵀ, \qquad E[G] = I,

and is quasi-optimal when ``‖G − I‖₂ ≤ δ < 1``. On a finite ground set of ``N`` candidates
(``μ`` uniform on them) the orthonormal basis is ``ψ = √N U`` with ``U`` an orthonormal basis
of the feature matrix (:func:`~snnk.sampling.orthonormal_basis`), ``ρ_m(x_i) = ‖U_i‖²/m``
and ``w_i = m/(N ‖U_i‖²)``, so ``G = (m/n) Σ_i U_iU_iᵀ/‖U_i‖²``.

Designs (all return indices into the ground set, batched over ``num_samples``):

* ``"iid"``: ``n`` i.i.d. draws from ``ρ_m`` (leverage-score sampling); stable for
  ``n ≳ m log m``;
* ``"dpp"``: one projection DPP of ``K = UUᵀ`` (``n = m``, marginals ``ρ_m``);
* ``"repeated_dpp"``: ``⌊n/m⌋`` independent projection DPPs (the rest, if any, i.i.d. from
  ``ρ_m``); stable with ``n`` a small multiple of ``m`` (Nouy & Michel, Section 5);
* ``"volume"``: volume-rescaled sampling, one projection DPP plus ``n − m`` i.i.d. draws from
  ``ρ_m`` in random order (Dereziński, Warmuth & Hsu): unbiased coefficients, finite mean
  error even at ``n = m``.

:func:`continuous_projection_dpp` draws the projection DPP of ``V_m`` on a continuous domain
by the chain rule with rejection from ``ρ_m`` (about ``m H_m`` proposals).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from snnk.sampling._checks import F64, as_generator, as_matrix, check_count
from snnk.sampling.dpp import check_orthonormal, projection_dpp

__all__ = [
    "DESIGNS",
    "continuous_projection_dpp",
    "expected_proposals",
    "gram_deviation",
    "optimal_weights",
    "sample_design",
]

#: names of the sampling designs of :func:`sample_design`
DESIGNS = ("iid", "dpp", "repeated_dpp", "volume")


def _leverage(U: torch.Tensor) -> torch.Tensor:
    return U.square().sum(1)


def _iid(U: torch.Tensor, count: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    if count == 0:
        return torch.empty(batch, 0, dtype=torch.long)
    p = _leverage(U).cpu()
    return torch.multinomial(p.expand(batch, -1), count, replacement=True, generator=gen)


def sample_design(
    U, n: int | None = None, *, design: str = "repeated_dpp", num_samples: int = 1, generator=None
) -> torch.Tensor:
    r"""``num_samples`` designs of ``n`` points of the ground set for the basis ``U``.

    Parameters
    ----------
    U : Tensor of shape ``(N, m)``
        Orthonormal basis of the features on the ``N`` candidates.
    n : int, optional
        Points per design (default ``m``); ``"dpp"`` needs ``n = m``, the others ``n ≥ 1``
        (``"volume"``: ``n ≥ m``).
    design : {"iid", "dpp", "repeated_dpp", "volume"}
    num_samples : int, default 1
    generator : torch.Generator, int or None

    Returns
    -------
    LongTensor of shape ``(num_samples, n)`` (repeats possible except within one DPP block).
    """
    U = as_matrix(U, "U")
    N, m = U.shape
    if m == 0 or m > N:
        raise ValueError(f"U must have 1 <= m <= N columns, got shape {(N, m)}")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {list(DESIGNS)}, got {design!r}")
    n = m if n is None else check_count(n, "n")
    B = check_count(num_samples, "num_samples")
    check_orthonormal(U)
    gen = as_generator(generator)
    if design == "iid":
        return _iid(U, n, B, gen)
    if design == "dpp":
        if n != m:
            raise ValueError(f"design='dpp' draws exactly m = {m} points; got n = {n}")
        return projection_dpp(U, B, generator=gen, check=False)
    if design == "volume":
        if n < m:
            raise ValueError(f"design='volume' needs n >= m = {m}, got n = {n}")
        pts = torch.cat(
            [projection_dpp(U, B, generator=gen, check=False), _iid(U, n - m, B, gen)], 1
        )
        order = torch.rand(B, n, generator=gen).argsort(1)
        return pts.gather(1, order)
    s = n // m
    blocks = (
        [] if s == 0 else [projection_dpp(U, B * s, generator=gen, check=False).reshape(B, s * m)]
    )
    return torch.cat([*blocks, _iid(U, n - s * m, B, gen)], 1)


def _indices(indices, N: int, device: torch.device) -> torch.Tensor:
    """``indices`` as a LongTensor of rows in ``[0, N)`` on ``device`` (integers only, no
    wrap-around; checked on the host)."""
    idx = (
        indices.cpu()
        if isinstance(indices, torch.Tensor)
        else torch.as_tensor(indices, device="cpu")
    )
    if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
        raise TypeError(
            f"indices must be integer row numbers (e.g. from sample_design), got dtype {idx.dtype}"
        )
    idx = idx.to(torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= N):
        raise ValueError(
            f"indices must be rows of U in [0, {N}), got values in "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    return idx.to(device)


def optimal_weights(U, indices) -> torch.Tensor:
    r"""Weights ``w_i = m / (N ‖U_i‖²)`` of the chosen rows (relative to the uniform measure)."""
    U = as_matrix(U, "U")
    N, m = U.shape
    lev = _leverage(U)
    idx = _indices(indices, N, U.device)
    sel = lev[idx.to(U.device)]
    if bool((sel <= 0).any()):
        raise ValueError(
            "a chosen row has zero leverage (weight m/k_m infinite); it cannot be drawn"
        )
    return (m / (N * sel)).cpu()


def gram_deviation(U, indices) -> torch.Tensor:
    r"""``‖G − I‖₂`` of each design, ``G = (1/n) Σ_i w_i ψ(x_i)ψ(x_i)ᵀ`` (shape ``(B,)``).

    ``indices`` is ``(n,)`` or ``(B, n)``; ``G = (m/n) Σ_i U_iU_iᵀ / ‖U_i‖²``.
    """
    U = as_matrix(U, "U")
    idx = _indices(indices, U.shape[0], U.device)
    if idx.ndim == 1:
        idx = idx[None]
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(
            f"indices must have shape (n,) or (B, n) with n >= 1, got {tuple(idx.shape)}"
        )
    m, n = U.shape[1], idx.shape[1]
    rows = U[idx]  # (B, n, m)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    G = (m / n) * rows.transpose(1, 2) @ rows
    ev = torch.linalg.eigvalsh(G - torch.eye(m, dtype=F64, device=U.device))
    return ev.abs().amax(-1).cpu()


def expected_proposals(m: int) -> float:
    r"""``m H_m = m Σ_{i≤m} 1/i``: mean number of proposals of :func:`continuous_projection_dpp`."""
    m = check_count(m, "m")
    return m * math.fsum(1.0 / i for i in range(1, m + 1))


def continuous_projection_dpp(
    features: Callable[[torch.Tensor], torch.Tensor],
    sample_optimal: Callable[[int, torch.Tensor], torch.Tensor],
    m: int,
    *,
    generator=None,
    max_proposals: int | None = None,
) -> tuple[torch.Tensor, int]:
    r"""One projection-DPP sample of ``V_m`` on a continuous domain (chain rule + rejection).

    Step ``t`` proposes ``x ~ ρ_m`` and accepts it with probability
    ``1 − ‖P_{t−1} φ(x)‖²/k_m(x)`` (``P_{t−1}`` projects on the span of the accepted feature
    vectors), which yields the density ``(k_m(x) − ‖P_{t−1}φ(x)‖²)/(m − t + 1)``; the expected
    acceptance rate at step ``t`` is ``(m − t + 1)/m``, so about ``m H_m`` proposals in all.

    Parameters
    ----------
    features : callable
        ``features(x)`` of ``x`` ``(k, d)`` returns ``(k, m)`` values of an orthonormal basis.
    sample_optimal : callable
        ``sample_optimal(k, generator)`` returns ``k`` i.i.d. points ``(k, d)`` from ``ρ_m``.
    m : int
        Dimension of ``V_m`` (the sample size).
    generator : torch.Generator, int or None
    max_proposals : int, optional
        Give up (``RuntimeError``) after this many proposals (default ``100 m H_m + 1000``).

    Returns
    -------
    (points ``(m, d)``, total number of proposals)
    """
    m = check_count(m, "m")
    gen = as_generator(generator)
    limit = (
        check_count(max_proposals, "max_proposals")
        if max_proposals is not None
        else int(100 * expected_proposals(m)) + 1000
    )
    E = torch.zeros(0, m, dtype=F64)
    accepted: list[torch.Tensor] = []
    proposals = 0
    pool_size = math.ceil(1.5 * expected_proposals(m)) + 16
    x, phi, k, pos = None, None, None, pool_size
    while len(accepted) < m:
        if pos >= pool_size:  # i.i.d. proposals from ρ_m, drawn and featurised in bulk
            x = torch.as_tensor(sample_optimal(pool_size, gen))
            phi = torch.as_tensor(features(x), dtype=F64)
            if phi.shape != (pool_size, m):
                raise ValueError(
                    f"features(x) must return shape ({pool_size}, {m}), got {tuple(phi.shape)}"
                )
            k, pos = phi.square().sum(1).clamp_min(1e-300), 0
        t = len(accepted)
        stop = min(pool_size, pos + max(4, math.ceil(2.0 * m / (m - t))))
        chunk = phi[pos:stop]
        proj = (chunk @ E.T).square().sum(1) if t else torch.zeros(stop - pos, dtype=F64)
        accept_p = (1.0 - proj / k[pos:stop]).clamp(0.0, 1.0)
        hits = torch.nonzero(torch.rand(stop - pos, generator=gen, dtype=F64) < accept_p)
        if hits.numel() == 0:
            proposals += stop - pos
            pos = stop
        else:
            i = pos + int(hits[0])
            proposals += i - pos + 1
            pos = i + 1
            v = phi[i]
            for _ in range(2 if t else 0):
                v = v - E.T @ (E @ v)
            E = torch.cat([E, (v / v.norm().clamp_min(1e-300))[None]])
            accepted.append(x[i])
        if proposals > limit:
            raise RuntimeError(
                f"continuous_projection_dpp: {proposals} proposals without completing {m} "
                f"points; check that features are orthonormal for the measure of sample_optimal"
            )
    return torch.stack(accepted), proposals
