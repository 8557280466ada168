"""Privacy budget: parameters, warnings, a composing accountant and dp_accounting-style events.

Conventions follow diffprivlib and OpenDP: ``epsilon`` and ``delta`` are keyword arguments
validated in one place; a :class:`BudgetAccountant` is checked *before* the private data is
touched and charged *after* a release succeeded, and refuses any build that would exceed its
total (basic sequential composition: ``ε = Σ ε_j``, ``δ = Σ δ_j``).
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

NEIGHBORING = ("add_remove", "replace_one")


class PrivacyLeakWarning(RuntimeWarning):
    """A choice that weakens or voids the privacy guarantee (seeded noise, data-derived
    parameters, ``δ ≥ 1/n``). Shown every time (filter ``"always"``), like diffprivlib's."""


class BudgetError(ValueError):
    """A release would spend more privacy budget than its accountant has left."""


warnings.simplefilter("always", PrivacyLeakWarning)


def check_epsilon(epsilon: Any, *, allow_inf: bool = False) -> float:
    """``epsilon`` as a float after checking it is a real number ``> 0`` (``inf`` only when
    ``allow_inf``: the explicit non-private mode)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"epsilon must be a real number > 0, got {epsilon!r}")
    eps = float(epsilon)
    if math.isnan(eps) or eps <= 0 or (math.isinf(eps) and not allow_inf):
        extra = " (epsilon=float('inf') means no privacy and is refused here)" * (not allow_inf)
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}{extra}")
    return eps


def check_delta(delta: Any, noise: str) -> float:
    """``delta`` in ``[0, 1)``; ``> 0`` is required by Gaussian noise, ``0`` by Laplace noise."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise TypeError(f"delta must be a real number in [0, 1), got {delta!r}")
    d = float(delta)
    if not (0.0 <= d < 1.0):
        raise ValueError(f"delta must lie in [0, 1), got {delta!r}")
    if noise == "gaussian" and d == 0.0:
        raise ValueError(
            "noise='gaussian' needs delta > 0 (approximate DP), got delta=0; pass e.g. "
            "delta=1e-6 (well below 1/n) or use noise='laplace' for pure epsilon-DP"
        )
    if noise == "laplace" and d != 0.0:
        raise ValueError(
            f"noise='laplace' gives pure epsilon-DP and takes delta=0, got delta={delta!r}; "
            "use noise='gaussian' to spend a delta"
        )
    return d


def check_neighboring(neighboring: Any) -> str:
    """The neighbouring relation: ``"add_remove"`` (one record added or removed; the size
    ``n`` is private) or ``"replace_one"`` (one record changed; ``n`` is public and every
    sensitivity doubles)."""
    if neighboring not in NEIGHBORING:
        raise ValueError(
            f"neighboring must be one of {list(NEIGHBORING)} (the neighbouring relation the "
            f"guarantee is stated for), got {neighboring!r}"
        )
    return neighboring


def warn_delta(delta: float, n: int) -> None:
    """Warn when ``δ ≥ 1/n``: such a δ allows releasing one record in the clear."""
    if delta > 0 and n > 0 and delta >= 1.0 / n:
        warnings.warn(
            f"delta={delta:g} is >= 1/n = {1.0 / n:.3g}: an (epsilon, delta) guarantee with "
            "delta this large allows publishing a whole record; use delta << 1/n",
            PrivacyLeakWarning,
            stacklevel=3,
        )


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaplaceEvent:
    """Laplace noise of scale ``b = noise_multiplier · Δ₁`` on a statistic of L1 sensitivity
    ``Δ₁`` (dp_accounting's ``LaplaceDpEvent``): ``(1/noise_multiplier)``-DP."""

    noise_multiplier: float

    def epsilon_delta(self) -> tuple[float, float]:
        return 1.0 / self.noise_multiplier, 0.0


@dataclass(frozen=True)
class GaussianEvent:
    """Gaussian noise of s.d. ``σ = noise_multiplier · Δ₂`` (dp_accounting's
    ``GaussianDpEvent``); the ``(epsilon, delta)`` it was calibrated for is recorded."""

    noise_multiplier: float
    epsilon: float
    delta: float

    def epsilon_delta(self) -> tuple[float, float]:
        return self.epsilon, self.delta


@dataclass(frozen=True)
class ComposedEvent:
    """Sequential composition of ``events`` (basic: epsilons and deltas add)."""

    events: tuple[Any, ...]

    def epsilon_delta(self) -> tuple[float, float]:
        e = [ev.epsilon_delta() for ev in self.events]
        return sum(x for x, _ in e), sum(y for _, y in e)


@dataclass(frozen=True)
class ParallelEvent:
    """The same ``event`` applied to disjoint parts of the data (parallel composition): the
    cost is that of one part."""

    event: Any
    parts: int

    def epsilon_delta(self) -> tuple[float, float]:
        return self.event.epsilon_delta()


# -- accountant ------------------------------------------------------------------------------
_DEFAULT: list[BudgetAccountant] = []
_LOCK = threading.Lock()


@dataclass(eq=False)
class BudgetAccountant:
    """Tracks privacy spending under basic composition and refuses over-spend.

    Parameters
    ----------
    epsilon : float, default inf
        Total ε budget.
    delta : float, default 1.0
        Total δ budget.

    Notes
    -----
    Use it as a context manager to make it the default of every release built inside the
    block (``with BudgetAccountant(epsilon=1.0): ...``).
    """

    epsilon: float = math.inf
    delta: float = 1.0
    spent_budget: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, numbers.Real):
            raise TypeError(f"epsilon must be a real number >= 0, got {self.epsilon!r}")
        if not (float(self.epsilon) >= 0):
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        if not (0.0 <= float(self.delta) <= 1.0):
            raise ValueError(f"delta must lie in [0, 1], got {self.delta!r}")
        self.epsilon, self.delta = float(self.epsilon), float(self.delta)

    def total(self) -> tuple[float, float]:
        """``(ε, δ)`` spent so far (sum over :attr:`spent_budget`)."""
        return (
            math.fsum(e for e, _ in self.spent_budget),
            math.fsum(d for _, d in self.spent_budget),
        )

    def remaining(self) -> tuple[float, float]:
        """``(ε, δ)`` still available."""
        e, d = self.total()
        return max(0.0, self.epsilon - e), max(0.0, self.delta - d)

    def check(self, epsilon: float, delta: float) -> None:
        """Raise :class:`BudgetError` if spending ``(epsilon, delta)`` would exceed the total."""
        e, d = self.total()
        tol = 1e-12
        if e + epsilon > self.epsilon * (1 + tol) + tol or d + delta > self.delta + tol:
            raise BudgetError(
                f"privacy budget exceeded: spending (epsilon={epsilon:g}, delta={delta:g}) on "
                f"top of (epsilon={e:g}, delta={d:g}) already spent exceeds the accountant's "
                f"total (epsilon={self.epsilon:g}, delta={self.delta:g}); remaining: "
                f"{self.remaining()}"
            )

    def spend(self, epsilon: float, delta: float) -> None:
        """Record a spend of ``(epsilon, delta)`` (after :meth:`check`)."""
        self.check(epsilon, delta)
        self.spent_budget.append((float(epsilon), float(delta)))

    def __copy__(self) -> BudgetAccountant:
        # one ledger: scikit-learn's clone() deep-copies parameters, and a copied accountant
        # would let the clone spend the same budget again
        return self

    def __deepcopy__(self, memo) -> BudgetAccountant:
        return self

    def __enter__(self) -> BudgetAccountant:
        with _LOCK:
            _DEFAULT.append(self)
        return self

    def __exit__(self, *exc) -> None:
        with _LOCK:
            _DEFAULT.remove(self)

    @staticmethod
    def default() -> BudgetAccountant:
        """The accountant of the innermost ``with`` block, else the global one (infinite
        budget, which still records every spend)."""
        with _LOCK:
            if _DEFAULT:
                return _DEFAULT[-1]
            return _GLOBAL


_GLOBAL = BudgetAccountant()


def resolve_accountant(accountant: BudgetAccountant | None) -> BudgetAccountant:
    """``accountant`` itself, or :meth:`BudgetAccountant.default` for ``None``."""
    if accountant is None:
        return BudgetAccountant.default()
    if not isinstance(accountant, BudgetAccountant):
        raise TypeError(f"accountant must be a BudgetAccountant or None, got {accountant!r}")
    return accountant
