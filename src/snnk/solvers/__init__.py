"""Linear algebra for kernel models (``snnk.solvers``): streaming normal equations, one jittered
Cholesky policy and SPD solves, preconditioned conjugate gradients on operators, the Nyström
(Falkon) and Nyström + diagonal preconditioners, the Gaussian marginal likelihood and its
gradient, GCV and leave-one-out, multinomial logistic regression, and the SPD / Newton–Schulz
inverses used by kernel attention."""

from snnk.solvers.cg import CGInfo, conjugate_gradient
from snnk.solvers.cholesky import (
    JitterWarning,
    SPDSolver,
    add_lower_gram,
    cholesky_solve,
    jittered_cholesky,
    lower_gram,
    solve_spd,
    symmetric_eigh,
    symmetric_from_lower,
)
from snnk.solvers.cross_validation import default_alpha_grid, gcv_ridge, loo_ridge, ridge_gcv
from snnk.solvers.inverse import SPD_INVERSE_METHODS, newton_schulz_inverse, spd_inverse
from snnk.solvers.likelihood import (
    LikelihoodGradient,
    log_marginal_likelihood_from_stats,
    log_marginal_likelihood_with_grad,
    minimize_bounded,
    profile_amplitude_noise,
)
from snnk.solvers.logistic import (
    BlockSums,
    LogisticResult,
    RowSums,
    multinomial_logistic,
    softmax_newton,
)
from snnk.solvers.normal_equations import NormalEquations
from snnk.solvers.nystrom_direct import (
    NystromDirectSolution,
    NystromStatistics,
    nystrom_direct_solve,
    nystrom_statistics,
    solve_nystrom_statistics,
)
from snnk.solvers.preconditioners import (
    FalkonPreconditioner,
    NystromDiagonalPreconditioner,
    NystromFactor,
)
from snnk.solvers.student_t import (
    student_t_log_marginal,
    student_t_log_pdf,
    student_t_posterior_scale,
)

__all__ = [
    "SPD_INVERSE_METHODS",
    "BlockSums",
    "CGInfo",
    "FalkonPreconditioner",
    "JitterWarning",
    "LikelihoodGradient",
    "LogisticResult",
    "NormalEquations",
    "NystromDiagonalPreconditioner",
    "NystromDirectSolution",
    "NystromFactor",
    "NystromStatistics",
    "RowSums",
    "SPDSolver",
    "add_lower_gram",
    "cholesky_solve",
    "conjugate_gradient",
    "default_alpha_grid",
    "gcv_ridge",
    "jittered_cholesky",
    "log_marginal_likelihood_from_stats",
    "log_marginal_likelihood_with_grad",
    "loo_ridge",
    "lower_gram",
    "minimize_bounded",
    "multinomial_logistic",
    "newton_schulz_inverse",
    "nystrom_direct_solve",
    "nystrom_statistics",
    "profile_amplitude_noise",
    "ridge_gcv",
    "softmax_newton",
    "solve_nystrom_statistics",
    "solve_spd",
    "spd_inverse",
    "student_t_log_marginal",
    "student_t_log_pdf",
    "student_t_posterior_scale",
    "symmetric_eigh",
    "symmetric_from_lower",
]
