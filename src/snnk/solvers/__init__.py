"""Linear algebra for kernel models (``snnk.solvers``): streaming normal equations, SPD
solves with jitter and pseudo-inverse fallback, GCV, multinomial logistic regression."""

from snnk.solvers.normal_equations import (
    LogisticResult,
    NormalEquations,
    SPDSolver,
    multinomial_logistic,
    solve_spd,
)

__all__ = ["LogisticResult", "NormalEquations", "SPDSolver", "multinomial_logistic", "solve_spd"]
