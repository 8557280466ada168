r"""Orthonormal polynomial bases for weighted least squares, and their optimal densities.

* ``"legendre"``: ``φ_j(x) = √(2j+1) P_j(x)``, orthonormal for the uniform measure on
  ``[−1, 1]`` (``dx/2``); three-term recurrence ``(j+1)P_{j+1} = (2j+1)xP_j − jP_{j−1}``.
* ``"hermite"``: ``φ_j(x) = He_j(x)/√(j!)``, orthonormal for the standard Gaussian; recurrence
  ``√(j+1) φ_{j+1} = xφ_j − √j φ_{j−1}`` (no factorial overflow).

In ``d`` dimensions the basis is the tensor product over a downward-closed set of
multi-indices: total degree ``|α|₁ ≤ p`` (``index_set="total"``, ``C(p+d, d)`` functions) or
``max_k α_k ≤ p`` (``"tensor"``, ``(p+1)^d``).

The optimal density ``ρ_m = k_m/m`` is the uniform mixture of ``φ_α² dμ``; it is drawn by
picking ``α`` uniformly and each coordinate from ``φ_{α_k}² dμ_k`` by rejection: from the
arcsine (Chebyshev) density for Legendre, with the bound ``φ_j²(x)·(π/2)√(1−x²) ≤ 3`` that
follows from Bernstein's inequality ``√(sin θ)|P_j(cos θ)| < √(2/(πj))``; from ``N(0, s_j²)``,
``s_j² = 1 + j/2``, with a bound computed on a fine grid (times 1.05) for Hermite.
"""

from __future__ import annotations

import itertools
import math

import torch

from snnk._utils.validation import as_float_tensor, check_in, check_positive_int
from snnk.sampling._checks import F64, as_generator, check_count

__all__ = ["FAMILIES", "PolynomialBasis"]

#: polynomial families of :class:`PolynomialBasis`
FAMILIES = ("legendre", "hermite")


def _multi_indices(in_features: int, degree: int, index_set: str) -> torch.Tensor:
    rng = range(degree + 1)
    if index_set == "tensor":
        idx = list(itertools.product(rng, repeat=in_features))
    else:
        idx = [a for a in itertools.product(rng, repeat=in_features) if sum(a) <= degree]
    idx.sort(key=lambda a: (sum(a), tuple(-v for v in a)))
    return torch.tensor(idx, dtype=torch.long).reshape(-1, in_features)


def univariate(family: str, x: torch.Tensor, degree: int) -> torch.Tensor:
    """``φ_0..φ_degree`` at ``x`` (any shape), stacked on a new last axis (float64)."""
    x = x.to(F64)
    out = [torch.ones_like(x)]
    if degree >= 1:
        out.append(math.sqrt(3.0) * x if family == "legendre" else x.clone())
    if family == "legendre":
        p_prev, p = torch.ones_like(x), x.clone()
        for j in range(1, degree):
            p_prev, p = p, ((2 * j + 1) * x * p - j * p_prev) / (j + 1)
            out.append(math.sqrt(2 * j + 3) * p)
    else:
        for j in range(1, degree):
            out.append((x * out[j] - math.sqrt(j) * out[j - 1]) / math.sqrt(j + 1))
    return torch.stack(out, -1)


class PolynomialBasis:
    r"""Orthonormal polynomial features ``φ_α(x) = Π_k φ_{α_k}(x_k)``.

    Parameters
    ----------
    family : {"legendre", "hermite"}
        Measure ``μ``: uniform on ``[−1, 1]^d`` or standard Gaussian on ``ℝ^d``.
    degree : int
        Polynomial degree ``p ≥ 0``.
    in_features : int, default 1
    index_set : {"total", "tensor"}, default "total"

    Notes
    -----
    Calling the basis on ``X`` of shape ``(..., d)`` returns ``(..., m)`` in float64.
    """

    def __init__(
        self,
        family: str = "legendre",
        degree: int = 5,
        in_features: int = 1,
        index_set: str = "total",
    ):
        self.family = check_in(family, "family", FAMILIES)
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be an integer >= 0, got {degree!r}")
        self.degree = degree
        self.in_features = check_positive_int(in_features, "in_features")
        self.index_set = check_in(index_set, "index_set", ("total", "tensor"))
        self.multi_indices = _multi_indices(self.in_features, degree, index_set)
        if self.multi_indices.shape[0] > 100_000:
            raise ValueError(
                f"{self.multi_indices.shape[0]} basis functions; lower degree or in_features"
            )

    @property
    def num_features(self) -> int:
        """``m``, the number of basis functions."""
        return self.multi_indices.shape[0]

    def __repr__(self) -> str:
        return (
            f"PolynomialBasis(family={self.family!r}, degree={self.degree}, "
            f"in_features={self.in_features}, index_set={self.index_set!r})"
        )

    def __call__(self, X) -> torch.Tensor:
        X = as_float_tensor(X, "X", min_ndim=1, last_dim=self.in_features)
        vals = univariate(self.family, X, self.degree)  # (..., d, p+1)
        out = torch.ones(*X.shape[:-1], self.num_features, dtype=F64, device=X.device)
        for k in range(self.in_features):
            out = out * vals[..., k, :][..., self.multi_indices[:, k].to(X.device)]
        if out.numel() and not bool(torch.isfinite(out).all()):
            big = float(X.abs().max())
            raise ValueError(
                f"the degree-{self.degree} {self.family} features are not finite (they "
                f"overflow float64) at |X| = {big:.3g}; X must lie in the support of the "
                f"measure (|x| <= 1 for legendre, moderate |x| for hermite) or use a lower "
                f"degree"
            )
        return out

    # -- sampling ---------------------------------------------------------------------------
    def sample_measure(self, n: int, generator=None) -> torch.Tensor:
        """``n`` i.i.d. points ``(n, d)`` from ``μ`` (uniform on ``[−1,1]^d`` or Gaussian)."""
        gen = as_generator(generator)
        n = check_count(n, "n")
        shape = (n, self.in_features)
        if self.family == "legendre":
            return 2.0 * torch.rand(shape, generator=gen, dtype=F64) - 1.0
        return torch.randn(shape, generator=gen, dtype=F64)

    def _univariate_draw(self, degrees: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One draw from ``φ_j² dμ`` for each entry ``j`` of ``degrees`` (rejection)."""
        out = torch.empty(degrees.numel(), dtype=F64)
        todo = torch.arange(degrees.numel())
        while todo.numel():
            j = degrees[todo]
            if self.family == "legendre":
                x = torch.cos(math.pi * torch.rand(todo.numel(), generator=gen, dtype=F64))
                phi = univariate("legendre", x, self.degree).gather(1, j[:, None])[:, 0]
                ratio = phi.square() * (math.pi / 2) * (1 - x.square()).clamp_min(0).sqrt() / 3.0
            else:
                s = (1.0 + j.to(F64) / 2).sqrt()
                x = s * torch.randn(todo.numel(), generator=gen, dtype=F64)
                phi = univariate("hermite", x, self.degree).gather(1, j[:, None])[:, 0]
                ratio = phi.square() * s * torch.exp(-0.5 * x.square() * (1 - 1 / s.square()))
                ratio = ratio / self._hermite_bounds()[j]
            ok = torch.rand(todo.numel(), generator=gen, dtype=F64) < ratio
            out[todo[ok]] = x[ok]
            todo = todo[~ok]
        return out

    def _hermite_bounds(self) -> torch.Tensor:
        """``1.05 · sup_x φ_j(x)² γ(x)/N(x; 0, s_j²)`` on a fine grid, for ``j = 0..p``."""
        if not hasattr(self, "_bounds"):
            x = torch.linspace(
                -12.0 - 3 * self.degree**0.5, 12.0 + 3 * self.degree**0.5, 40001, dtype=F64
            )
            phi = univariate("hermite", x, self.degree)  # (G, p+1)
            s = (1.0 + torch.arange(self.degree + 1, dtype=F64) / 2).sqrt()
            r = phi.square() * s * torch.exp(-0.5 * x[:, None].square() * (1 - 1 / s.square()))
            self._bounds = 1.05 * r.amax(0)
        return self._bounds

    def sample_optimal(self, n: int, generator=None) -> torch.Tensor:
        r"""``n`` i.i.d. points ``(n, d)`` from the optimal density ``ρ_m = k_m/m``."""
        gen = as_generator(generator)
        n = check_count(n, "n")
        alpha = self.multi_indices[torch.randint(self.num_features, (n,), generator=gen)]
        draws = self._univariate_draw(alpha.reshape(-1), gen)
        return draws.reshape(n, self.in_features)
