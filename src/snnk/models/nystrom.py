r"""Kernel ridge regression at scale: Nyström centres solved the Falkon way, and exact.

Two estimators share one model shape, ``f(x) = Σ_j β_j k(x, c_j)``, and one solver: the
conjugate gradient method with a Nyström preconditioner, where every product with a kernel
matrix is computed in row blocks (one ``b x M`` or ``b x n`` block at a time; nothing of size
``n x n`` or ``n x M`` is ever held).

* :class:`NystromRidge`: ``M`` centres drawn from the data, the Nyström normal equations solved
  by the Falkon method (Rudi, Carratino & Rosasco, NeurIPS 2017). Cost ``O(n M d)`` per
  iteration plus ``O(M³)`` once.
* :class:`KernelRidgeCG`: exact kernel ridge regression (the model of scikit-learn's
  ``KernelRidge``) by preconditioned CG on ``(K + αI) a = y`` with a Nyström + diagonal
  preconditioner. Cost ``O(n² d)`` per iteration, memory ``O(n d + n M / blocks + M²)``.

``alpha`` follows scikit-learn's ``KernelRidge`` in both: it multiplies the squared RKHS norm
against the *sum* (not the mean) of squared errors. Falkon's penalty ``λ`` is ``alpha / n``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - the sklearn extra installs it
    raise ImportError("snnk.models needs scikit-learn: pip install 'snnk[sklearn]'") from exc

from snnk._utils import (
    check_positive,
    check_positive_int,
    crossprod,
    iter_blocks,
    make_generator,
)
from snnk.io import PersistMixin
from snnk.kernels import Kernel, make_kernel
from snnk.solvers import SPDSolver
from snnk.solvers.normal_equations import _add_lower_gram, cholesky_solve

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: elements of one kernel block (rows x columns); about 32 MB in float64
_BLOCK_ELEMENTS = 1 << 22
#: ``solver="auto"`` uses the direct solver up to this many centres (an M x M float64 Gram)
_DIRECT_MAX_CENTERS = 8192


# -- solver pieces --------------------------------------------------------------------------------
def _jittered_cholesky(A: torch.Tensor, name: str) -> torch.Tensor:
    """Lower Cholesky factor of ``A + εI`` for the smallest ``ε`` in a short ladder.

    Kernel matrices of smooth kernels are numerically singular; ``ε`` starts at
    ``M·eps·mean(diag A)`` (Falkon's choice) and grows by 100x until the factorisation
    succeeds. Only used for preconditioners: the systems solved keep the exact matrices.
    """
    m = A.shape[0]
    scale = max(float(torch.diagonal(A).mean()), torch.finfo(A.dtype).tiny)
    eye = torch.eye(m, dtype=A.dtype, device=A.device)
    jitter = m * torch.finfo(A.dtype).eps * scale
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(A + jitter * eye)
        if int(info) == 0:
            return L
        jitter *= 100.0
    raise np.linalg.LinAlgError(
        f"could not factor {name} even with a jitter of {jitter:.1e}; the kernel matrix of the "
        "centres is far from positive definite (check the kernel's hyper-parameters)"
    )


def _lower_gram(L: torch.Tensor) -> torch.Tensor:
    """``LᵀL`` for lower-triangular ``L`` (LAPACK ``lauum``, a third of a GEMM's flops on CPU).

    Only the lower triangle of the result is filled, which is all a Cholesky reads.
    """
    if L.device.type == "cpu" and L.dtype in (torch.float32, torch.float64):
        from scipy.linalg import lapack

        lauum = lapack.dlauum if L.dtype == torch.float64 else lapack.slauum
        out, info = lauum(L.numpy(), lower=1)
        if info == 0:
            return torch.from_numpy(out)
    return L.T @ L


def _pcg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    precond: Callable[[torch.Tensor], torch.Tensor],
    *,
    tol: float,
    max_iter: int,
    progress=None,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    r"""Preconditioned conjugate gradients for ``H X = B``, every column on its own.

    ``H`` (symmetric positive definite, given by ``matvec``) and the preconditioner
    ``P^{-1}`` (``precond``) act on all columns at once, so one pass over the data serves
    every output. Column ``j`` stops moving once its preconditioned residual norm
    ``sqrt(r_jᵀ P^{-1} r_j)`` falls below ``tol`` times its initial value; the loop ends when
    every column has, or after ``max_iter`` iterations.

    Returns ``(X, n_iter, relative_residuals)``.
    """
    X = torch.zeros_like(rhs)
    R = rhs.clone()
    Z = precond(R)
    rz = (R * Z).sum(0)
    rz0 = torch.where(rz > 0, rz, 1.0)
    P = Z.clone()
    n_iter = 0
    rel = torch.sqrt(rz.clamp_min(0) / rz0)
    while n_iter < max_iter and bool((rel > tol).any()):
        active = (rel > tol).to(rhs.dtype)
        HP = matvec(P)
        pHp = (P * HP).sum(0)
        step = torch.where(pHp > 0, rz / torch.where(pHp > 0, pHp, 1.0), 0.0) * active
        X += step * P
        R -= step * HP
        Z = precond(R)
        rz_new = (R * Z).sum(0)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
        P = Z + beta * P
        rz = rz_new
        rel = torch.sqrt(rz.clamp_min(0) / rz0)
        n_iter += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(residual=f"{float(rel.max()):.1e}")
    return X, n_iter, rel


def _select_centers(X: np.ndarray, sw: np.ndarray | None, m: int, random_state) -> np.ndarray:
    """Row indices of ``min(m, #distinct)`` distinct rows of ``X`` with positive weight.

    Candidates are the distinct rows in sorted order, so a row repeated ``k`` times and the
    same row with weight ``k`` give the same candidates and, with the same ``random_state``,
    the same centres. Repeated centres would add nothing but singular directions.
    """
    rows = np.flatnonzero(sw > 0) if sw is not None else np.arange(X.shape[0])
    if rows.size == 0:
        raise ValueError("sample_weight is zero everywhere; at least one positive weight needed")
    _, first = np.unique(X[rows], axis=0, return_index=True)
    candidates = rows[first]
    if m >= candidates.size:
        return np.sort(candidates)
    seed = int(check_random_state(random_state).randint(2**31 - 1))
    gen, _ = make_generator(seed)
    pick = torch.randperm(candidates.size, generator=gen)[:m].numpy()
    return np.sort(candidates[pick])


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor sharing its memory (a copy when ``a`` is read-only or strided)."""
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, order="C")
    return torch.from_numpy(a)


# -- estimators -----------------------------------------------------------------------------------
class _KernelExpansion(RegressorMixin, PersistMixin, BaseEstimator):
    """Shared machinery of models ``f(x) = Σ_j β_j k(x, c_j)``: checks, kernel, prediction."""

    _persist_private = ("_y_1d",)

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | None = 1.0,
        num_centers: int = 1000,
        alpha: float = 1e-3,
        center_selection: str = "uniform",
        max_iter: int = 100,
        tol: float = 1e-6,
        dtype: str | None = None,
        batch_size: int | None = None,
        random_state=None,
        verbose: bool = False,
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.num_centers = num_centers
        self.alpha = alpha
        self.center_selection = center_selection
        self.max_iter = max_iter
        self.tol = tol
        self.dtype = dtype
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # -- checks -----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        check_positive_int(self.num_centers, "num_centers")
        check_positive_int(self.max_iter, "max_iter")
        check_positive(self.alpha, "alpha")
        check_positive(self.tol, "tol", allow_zero=True)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        if self.center_selection != "uniform":
            raise ValueError(
                f"center_selection must be 'uniform' (centres drawn uniformly from the "
                f"distinct training rows), got {self.center_selection!r}"
            )
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be None (follow the input), 'float32' or 'float64', got {self.dtype!r}"
            )

    def _make_kernel(self) -> Kernel:
        if isinstance(self.kernel, Kernel):
            return self.kernel
        base = make_kernel(self.kernel)
        if self.lengthscale is not None and hasattr(base, "lengthscale"):
            return make_kernel(
                self.kernel, lengthscale=check_positive(self.lengthscale, "lengthscale")
            )
        return base

    def _validate_fit(self, X, y, sample_weight):
        self._check_params()
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], y_numeric=True, multi_output=True
        )
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        Y = y.reshape(-1, 1) if self._y_1d else y
        sw = None
        if sample_weight is not None:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        dt = (
            _DTYPES[self.dtype]
            if self.dtype is not None
            else (torch.float32 if X.dtype == np.float32 else torch.float64)
        )
        self.kernel_ = self._make_kernel()
        return X, Y, sw, dt

    def _rows(self, columns: int) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        return max(64, _BLOCK_ELEMENTS // max(1, columns))

    def _progress(self, desc: str):
        if not self.verbose:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.max_iter, desc=desc)

    def _warn_convergence(self, rel: torch.Tensor) -> None:
        if float(rel.max()) > self.tol:
            warnings.warn(
                f"{type(self).__name__}: conjugate gradients stopped after {self.max_iter} "
                f"iterations at relative residual {float(rel.max()):.1e} > tol={self.tol:g}; "
                "raise max_iter (or alpha, or num_centers for a better preconditioner)",
                ConvergenceWarning,
                stacklevel=3,
            )

    # -- prediction ---------------------------------------------------------------------------
    def _expansion(self) -> tuple[np.ndarray, np.ndarray]:
        """``(points, coefficients)`` of the fitted expansion; each subclass defines it."""
        raise NotImplementedError

    def predict(self, X) -> np.ndarray:
        """Predict ``f(x) = Σ_j β_j k(x, c_j)`` in row blocks (never the full kernel matrix).

        Returns an array of the model's compute dtype (float32 stays float32), shape
        ``(n,)`` or ``(n, n_outputs)`` like the ``y`` it was fitted on.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        points, coef = self._expansion()
        C = _tensor(points)
        Xt = _tensor(X).to(C.dtype)
        B = _tensor(coef).to(C.dtype)
        out = torch.empty(Xt.shape[0], B.shape[1], dtype=C.dtype)
        step = self._rows(C.shape[0])
        for rows in iter_blocks(Xt.shape[0], step):
            out[rows] = self.kernel_(Xt[rows], C, block_rows=step) @ B
        intercept = getattr(self, "intercept_", None)
        if intercept is not None:
            out += torch.from_numpy(np.asarray(intercept)).to(out.dtype)
        res = out.numpy()
        return res[:, 0] if self._y_1d else res

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        return tags


class NystromRidge(_KernelExpansion):
    r"""Nyström kernel ridge regression solved by the Falkon method.

    With centres ``c_1..c_M`` drawn uniformly (without replacement) from the distinct
    training rows, the model ``f(x) = Σ_j β_j k(x, c_j)`` minimises

    .. math:: Σ_i w_i (y_i − f(x_i))² + α ‖f‖²_H, \qquad ‖f‖²_H = βᵀ K_{MM} β,

    that is, it solves the Nyström normal equations

    .. math:: (K_{nM}ᵀ W K_{nM} + α K_{MM}) β = K_{nM}ᵀ W y

    (``W = diag(sample_weight)``, identity by default). ``alpha`` is scikit-learn's
    ``KernelRidge(alpha)``: with ``num_centers >= n`` (every distinct row a centre) the
    predictions are those of ``KernelRidge(alpha=alpha)`` with the same kernel. Falkon and the
    Nyström-KRR literature write the same system with ``λ n`` in place of ``α``, i.e.
    ``λ = alpha / n``.

    **Solvers.** ``solver="direct"`` makes one pass over the data in row blocks and accumulates
    ``G = K_nMᵀ W K_nM`` (lower block triangle)
    and ``K_nMᵀ W y`` (the kernel values in the compute dtype, the products in float64);
    with ``K_MM + εI = L Lᵀ`` it then solves the equivalent, well
    conditioned ridge system ``(L^{-1} G L^{-T} + αI) u = L^{-1} K_nMᵀ W y``, ``β = L^{-T} u``
    (Ridge on the Nyström features ``K_nM L^{-T}``, i.e. scikit-learn's ``Nystroem + Ridge``
    model without its intercept). Cost ``n M²`` flops at GEMM speed plus ``O(M³)``; memory
    ``O(M² + b M)``. ``solver="cg"`` is Falkon's conjugate gradient method: cheaper in memory
    and preferable for large ``M`` (``"auto"`` takes ``"direct"`` up to 8,192 centres).

    Conjugate gradients with Falkon's preconditioner. With ``K_MM + εI = TᵀT``
    (Cholesky with a small jitter ``ε``) and ``AᵀA = T Tᵀ / M + (α / Σw) I``, the matrix
    ``P = (Σw/M) K_MM² + α K_MM`` (what ``K_nMᵀWK_nM + αK_MM`` would be if every centre stood
    for ``Σw/M`` training rows) equals ``Σw · Tᵀ AᵀA T``, and ``P^{-1} = T^{-1} A^{-1} A^{-T}
    T^{-T} / Σw`` costs four triangular solves. The preconditioned system is close to the
    identity, so a few tens of iterations suffice whatever ``α``.

    **Cost of CG.** ``O(M³)`` once (two Cholesky factorisations and one ``lauum``, in float64),
    then ``O(n M (d + o))`` per CG iteration for ``o`` outputs: every iteration recomputes
    ``K_nM`` in row blocks of ``b`` rows. Memory ``O(M² + b M + n d)``: ``K_MM`` and two
    ``M x M`` factors, one block, the data. Prediction: ``O(n_test M d)`` in blocks.

    Parameters
    ----------
    kernel : str or snnk.kernels.Kernel, default "gaussian"
        A kernel name for :func:`snnk.kernels.make_kernel` ("gaussian", "laplace", "matern",
        ...) or a kernel object. With an object, ``lengthscale`` is ignored (the object
        carries its own hyper-parameters); use an object for any hyper-parameter other than
        the lengthscale (e.g. ``Matern(nu=2.5, lengthscale=2.0)``).
    lengthscale : float or None, default 1.0
        Lengthscale of a named kernel (``gamma = 1 / (2 lengthscale²)`` in scikit-learn's
        RBF). Ignored for kernels without one (linear, polynomial, ...) and for objects.
    alpha : float, default 1e-3
        Ridge strength, scikit-learn ``KernelRidge`` convention (penalty ``alpha ‖f‖²`` added
        to the *sum* of squared errors); Falkon's ``penalty`` is ``alpha / n``.
    num_centers : int, default 1000
        Number ``M`` of Nyström centres. If it exceeds the number of distinct training rows
        (with positive weight), every such row is a centre: exact kernel ridge regression.
        This is not an error and gives no warning; ``centers_.shape[0]`` says what was used.
    center_selection : {"uniform"}, default "uniform"
        Uniform sampling without replacement of distinct rows (Falkon's default).
    solver : {"auto", "direct", "cg"}, default "auto"
        See **Solvers** above. ``max_iter`` and ``tol`` apply to ``"cg"`` only.
    fit_intercept : bool, default False
        Add an unpenalised constant ``c``: minimise ``Σ w_i (y_i − c − f(x_i))² + α‖f‖²``
        (exactly, by centring the kernel columns and the targets with their weighted means).
        ``False`` is scikit-learn's ``KernelRidge`` model; use ``True`` for targets far from
        zero mean (prices, delays), which a Gaussian expansion fits poorly.
    max_iter : int, default 100
        Maximum CG iterations.
    tol : float, default 1e-6
        Stop when the preconditioned residual norm of every output falls below ``tol`` times
        its initial value. Test error usually settles long before (``tol=1e-3`` is often
        enough); ``tol=0`` runs all ``max_iter`` iterations.
    dtype : {None, "float32", "float64"}, default None
        Precision of the kernel blocks (and of ``centers_`` and the predictions). ``None``
        follows the training data: float32 stays float32, anything else is float64. The CG
        vectors and the ``M x M`` factors are float64 in every case.
    batch_size : int or None, default None
        Rows per kernel block; ``None`` keeps a block near 4M elements.
    random_state : int, RandomState or None
        Seeds the choice of centres.
    verbose : bool, default False
        Progress bar over the CG iterations (tqdm).

    Attributes
    ----------
    centers_ : ndarray of shape (M, n_features)
        The centres (in the compute dtype).
    center_indices_ : ndarray of shape (M,)
        Their row numbers in the training data.
    dual_coef_ : ndarray of shape (M, n_outputs)
        ``β``, float64.
    intercept_ : ndarray of shape (n_outputs,)
        ``c`` (zeros unless ``fit_intercept``).
    kernel_ : snnk.kernels.Kernel
    n_iter_ : int
        CG iterations done (1 for the direct solver: one pass, one solve).
    solver_ : str
        The solver used ("direct" or "cg").
    n_features_in_ : int
    """

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | None = 1.0,
        num_centers: int = 1000,
        alpha: float = 1e-3,
        center_selection: str = "uniform",
        solver: str = "auto",
        fit_intercept: bool = False,
        max_iter: int = 100,
        tol: float = 1e-6,
        dtype: str | None = None,
        batch_size: int | None = None,
        random_state=None,
        verbose: bool = False,
    ):
        super().__init__(
            kernel=kernel,
            lengthscale=lengthscale,
            num_centers=num_centers,
            alpha=alpha,
            center_selection=center_selection,
            max_iter=max_iter,
            tol=tol,
            dtype=dtype,
            batch_size=batch_size,
            random_state=random_state,
            verbose=verbose,
        )
        self.solver = solver
        self.fit_intercept = fit_intercept

    def _centre(self, ksum: torch.Tensor, Yt: torch.Tensor, w, wsum: float):
        """``(Σw, m̄, ȳ)``: weighted means of the kernel columns (``ksum = K_nMᵀ w``) and of
        the targets, or ``None`` without ``fit_intercept``."""
        if not self.fit_intercept:
            return None
        ysum = Yt.sum(0) if w is None else w @ Yt
        return wsum, ksum / wsum, ysum / wsum

    def _fit_direct(self, Xt, C, Kmm, Yt, w, alpha: float, step: int, wsum: float):
        """``(β, centre)`` from one pass of blocked normal equations (see **Solvers**)."""
        k, m = self.kernel_, C.shape[0]
        G = torch.zeros(m, m, dtype=torch.float64)
        B = torch.zeros(m, Yt.shape[1], dtype=torch.float64)
        ksum = torch.zeros(m, dtype=torch.float64)
        for rows in iter_blocks(Xt.shape[0], step):
            # kernel values in the compute dtype; the Gram in float64, because L⁻¹ G L⁻ᵀ
            # amplifies its rounding by up to cond(K_MM) (float32 sums gave 5e-3 errors)
            Kb = k(Xt[rows], C, block_rows=step).double()
            Kw = Kb if w is None else Kb * w[rows, None]
            _add_lower_gram(G, Kw, Kb)
            B += crossprod(Kw, Yt[rows])
            ksum += Kw.sum(0)
        G = torch.tril(G) + torch.tril(G, -1).T
        centre = self._centre(ksum, Yt, w, wsum)
        if centre is not None:  # unpenalised intercept: centred columns and targets
            wsum, mbar, ybar = centre
            G -= wsum * torch.outer(mbar, mbar)
            B -= wsum * torch.outer(mbar, ybar)
        L = _jittered_cholesky(Kmm, "K_MM")
        A = torch.linalg.solve_triangular(L, G, upper=False)  # L⁻¹ G
        A = torch.linalg.solve_triangular(L, A.T, upper=False)  # L⁻¹ G L⁻ᵀ (G symmetric)
        A = 0.5 * (A + A.T)
        U = SPDSolver(A, alpha)(torch.linalg.solve_triangular(L, B, upper=False))
        return torch.linalg.solve_triangular(L.T, U, upper=True), centre

    def fit(self, X, y, sample_weight=None) -> NystromRidge:
        """Fit on ``X`` (n, d) and ``y`` (n,) or (n, n_outputs); optional ``sample_weight``."""
        X, Y, sw, dt = self._validate_fit(X, y, sample_weight)
        idx = _select_centers(X, sw, self.num_centers, self.random_state)
        Xt = _tensor(X).to(dt)
        C = Xt[idx].contiguous()
        k = self.kernel_
        m = C.shape[0]
        alpha = float(self.alpha)
        Yt = _tensor(Y)
        w = _tensor(sw) if sw is not None else None
        wsum = float(sw.sum()) if sw is not None else float(X.shape[0])
        step = self._rows(m)
        if self.solver not in ("auto", "direct", "cg"):
            raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {self.solver!r}")
        Kmm = k(C, C).double()
        direct = self.solver == "direct" or (self.solver == "auto" and m <= _DIRECT_MAX_CENTERS)
        if direct:
            beta, centre = self._fit_direct(Xt, C, Kmm, Yt, w, alpha, step, wsum)
            self._set_intercept(beta, centre, Yt.shape[1])
            self.solver_, self.n_iter_ = "direct", 1
            self.centers_ = C.numpy().copy()
            self.center_indices_ = idx.astype(np.int64)
            self.dual_coef_ = beta.numpy().copy()
            return self
        self.solver_ = "cg"

        # Preconditioner (float64): K_MM + εI = L Lᵀ (T = Lᵀ), L_A L_Aᵀ = LᵀL / M + (α/Σw) I.
        L = _jittered_cholesky(Kmm, "K_MM")
        inner = _lower_gram(L) / m
        inner.diagonal().add_(alpha / wsum)
        LA = _jittered_cholesky(inner, "T Tᵀ/M + λI")
        del inner

        def precond(R: torch.Tensor) -> torch.Tensor:
            V = torch.linalg.solve_triangular(L, R, upper=False)
            V = cholesky_solve(LA, V)
            return torch.linalg.solve_triangular(L.T, V, upper=True) / wsum

        def knm_products(U: torch.Tensor | None, Yw: torch.Tensor | None) -> torch.Tensor:
            """``K_nMᵀ W K_nM U`` (or ``K_nMᵀ Yw`` when ``Yw`` is given), in row blocks."""
            out = torch.zeros(m, (Yw if Yw is not None else U).shape[1], dtype=torch.float64)
            Ud = U.to(dt) if U is not None else None
            for rows in iter_blocks(Xt.shape[0], step):
                Kb = k(Xt[rows], C, block_rows=step)
                if Yw is not None:
                    V = Yw[rows].to(dt)
                else:
                    V = Kb @ Ud
                    if w is not None:
                        V = V * w[rows, None].to(dt)
                out += crossprod(Kb, V).double()
            return out

        def matvec(U: torch.Tensor) -> torch.Tensor:
            out = knm_products(U, None) + alpha * (Kmm @ U)
            if centre is not None:
                out -= centre[0] * torch.outer(centre[1], centre[1] @ U)
            return out

        Yw = Yt * w[:, None] if w is not None else Yt
        if self.fit_intercept:  # K_nMᵀ w in the same pass as the right-hand side
            wv = w if w is not None else torch.ones(Xt.shape[0], dtype=torch.float64)
            both = knm_products(None, torch.cat([Yw, wv[:, None]], 1))
            rhs, centre = both[:, :-1], self._centre(both[:, -1], Yt, w, wsum)
        else:
            rhs, centre = knm_products(None, Yw), None
        if centre is not None:
            rhs -= centre[0] * torch.outer(centre[1], centre[2])
        bar = self._progress("NystromRidge CG")
        try:
            beta, self.n_iter_, rel = _pcg(
                matvec, rhs, precond, tol=self.tol, max_iter=self.max_iter, progress=bar
            )
        finally:
            if bar is not None:
                bar.close()
        self._warn_convergence(rel)
        self._set_intercept(beta, centre, Yt.shape[1])
        self.centers_ = C.numpy().copy()
        self.center_indices_ = idx.astype(np.int64)
        self.dual_coef_ = beta.numpy().copy()
        return self

    def _set_intercept(self, beta: torch.Tensor, centre, outputs: int) -> None:
        """``c = ȳ − m̄ᵀβ`` (zeros without ``fit_intercept``), shape ``(n_outputs,)``."""
        if centre is None:
            self.intercept_ = np.zeros(outputs)
        else:
            self.intercept_ = (centre[2] - centre[1] @ beta).numpy().copy()

    def _expansion(self):
        return self.centers_, self.dual_coef_


class KernelRidgeCG(_KernelExpansion):
    r"""Exact kernel ridge regression by conjugate gradients with a Nyström preconditioner.

    The model of scikit-learn's ``KernelRidge``: ``f(x) = Σ_i a_i k(x, x_i)`` over all
    training rows, with

    .. math:: (S K S + α I) b = S y, \qquad a = S b, \qquad S = diag(\sqrt{w})

    (``a = (K + αI)^{-1} y`` without weights), solved without ever forming ``K``: every
    iteration computes ``K v`` in row blocks of ``b x n``. This is the path to exact-KRR
    accuracy when ``n`` is too large for a dense ``n x n`` Cholesky (``O(n³)`` time,
    ``8 n²`` bytes) but ``n² d`` work per iteration is affordable.

    **Preconditioner.** Nyström plus diagonal: with ``M`` centres ``C`` drawn from the
    training rows, ``G = K_nC``, ``K_CC + εI = L Lᵀ`` and ``F = L^{-1} Gᵀ`` (so ``FᵀF`` is the
    Nyström approximation of ``K``),

    .. math:: P = S FᵀF S + D, \qquad D = diag(w ⊙ (diag K − diag FᵀF)) + α I,

    applied by the Woodbury identity
    ``P^{-1} = D^{-1} − D^{-1} S Fᵀ (I + F S D^{-1} S Fᵀ)^{-1} F S D^{-1}``: the ``M x M`` inner
    matrix is formed once in one pass over ``G`` (``O(n M²)``), and each application costs
    two blockwise products with ``G`` (``O(n M d)``) and ``M x M`` triangular solves. The
    diagonal term keeps the part of ``K`` that the centres miss on the diagonal, which
    clusters the preconditioned spectrum further than ``αI`` alone.

    **Cost.** ``O(n M² + M³)`` set-up, then ``O(n² d + n M d)`` per iteration; memory
    ``O(n d + b n + M²)`` (the data, one block, the factors). ``num_centers`` trades set-up
    time against iterations. **Cache.** Within ``cache_size`` MiB the kernel blocks are
    evaluated once and kept: first ``G = K_nC`` (``n M`` entries, used twice per
    iteration by the preconditioner), then, if it also fits, the whole ``K`` (``n²``
    entries: each iteration is then one matrix product, no kernel evaluation). The solution
    is the same; only time and memory change (``cache_size=0`` recomputes every block).

    Parameters
    ----------
    kernel, lengthscale, alpha
        As in :class:`NystromRidge` (``alpha`` in scikit-learn's ``KernelRidge`` convention).
    num_centers : int, default 1000
        Centres of the Nyström preconditioner (only speed depends on it, not the solution).
        Clipped to the number of distinct training rows.
    center_selection : {"uniform"}, default "uniform"
    max_iter : int, default 100
        Maximum CG iterations.
    tol : float, default 1e-6
        Stop when the preconditioned residual norm of every output falls below ``tol`` times
        its initial value.
    dtype : {None, "float32", "float64"}, default None
        Precision of the kernel blocks, of ``X_fit_`` and of the predictions; ``None`` follows
        the training data. CG vectors and factors are float64.
    batch_size : int or None, default None
        Rows per kernel block; ``None`` keeps a block near 4M elements.
    random_state : int, RandomState or None
        Seeds the preconditioner's centres.
    verbose : bool, default False
        Progress bar over the CG iterations.
    cache_size : float, default 1024
        MiB for kernel blocks kept across CG iterations (in the compute dtype), as in
        scikit-learn's ``SVC(cache_size=...)``; see "Cache" above.

    Attributes
    ----------
    X_fit_ : ndarray of shape (n, n_features)
        The training rows (in the compute dtype); predictions need them all.
    dual_coef_ : ndarray of shape (n, n_outputs)
        ``a``, float64.
    kernel_ : snnk.kernels.Kernel
    n_iter_ : int
    n_features_in_ : int
    """

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | None = 1.0,
        num_centers: int = 1000,
        alpha: float = 1e-3,
        center_selection: str = "uniform",
        max_iter: int = 100,
        tol: float = 1e-6,
        dtype: str | None = None,
        batch_size: int | None = None,
        random_state=None,
        verbose: bool = False,
        cache_size: float = 1024,
    ):
        super().__init__(
            kernel=kernel,
            lengthscale=lengthscale,
            num_centers=num_centers,
            alpha=alpha,
            center_selection=center_selection,
            max_iter=max_iter,
            tol=tol,
            dtype=dtype,
            batch_size=batch_size,
            random_state=random_state,
            verbose=verbose,
        )
        self.cache_size = cache_size

    def fit(self, X, y, sample_weight=None) -> KernelRidgeCG:
        """Fit on ``X`` (n, d) and ``y`` (n,) or (n, n_outputs); optional ``sample_weight``."""
        check_positive(self.cache_size, "cache_size", allow_zero=True)
        X, Y, sw, dt = self._validate_fit(X, y, sample_weight)
        idx = _select_centers(X, sw, self.num_centers, self.random_state)
        n = X.shape[0]
        Xt = _tensor(X).to(dt)
        C = Xt[idx].contiguous()
        k = self.kernel_
        alpha = float(self.alpha)
        s = torch.sqrt(_tensor(sw)) if sw is not None else torch.ones(n, dtype=torch.float64)
        L = _jittered_cholesky(k(C.double(), C.double()), "K_CC")
        kdiag = k.diag(Xt).double()

        # The preconditioner's products run in float64 whatever the data's dtype: its ``u``
        # comes through ``L⁻ᵀ`` (entries up to cond(K_CC) larger than the result) and
        # cancels in ``Rd − G u``; float32 products made P⁻¹ inexact and CG stall near 1e-2
        # (n = 20,000, M = 4,000). The kernel blocks ``G`` themselves are evaluated in the
        # data's dtype (the exponentials are the cost) and widened: the same values enter
        # the Woodbury inner matrix and every application, so P⁻¹ stays one fixed SPD map.
        # One pass over G = K_nC: the diagonal D and the Woodbury inner matrix F S D^{-1} S Fᵀ.
        step_c = self._rows(C.shape[0])
        itemsize = torch.finfo(dt).bits // 8
        budget = float(self.cache_size) * 2**20
        G_all = None
        if n * C.shape[0] * itemsize <= budget:
            blocks = [k(Xt[rows], C, block_rows=step_c) for rows in iter_blocks(n, step_c)]
            G_all = torch.cat(blocks)
            budget -= n * C.shape[0] * itemsize

        def G(rows):
            return G_all[rows] if G_all is not None else k(Xt[rows], C, block_rows=step_c)

        d = torch.empty(n, dtype=torch.float64)
        Q = torch.zeros(C.shape[0], C.shape[0], dtype=torch.float64)
        for rows in iter_blocks(n, step_c):
            Fb = torch.linalg.solve_triangular(L, G(rows).double().T, upper=False)
            resid = (kdiag[rows] - Fb.square().sum(0)).clamp_min(0.0)
            d[rows] = s[rows].square() * resid + alpha
            Fs = Fb * (s[rows] / d[rows].sqrt())
            Q += Fs @ Fs.T
        Q.diagonal().add_(1.0)
        inner = SPDSolver(Q)
        del Q

        def precond(R: torch.Tensor) -> torch.Tensor:
            Rd = R / d[:, None]
            t = torch.zeros(C.shape[0], R.shape[1], dtype=torch.float64)
            for rows in iter_blocks(n, step_c):
                t += crossprod(G(rows).double(), s[rows, None] * Rd[rows])
            u = torch.linalg.solve_triangular(
                L.T, inner(torch.linalg.solve_triangular(L, t, upper=False)), upper=True
            )
            out = torch.empty_like(R)
            for rows in iter_blocks(n, step_c):
                Gu = G(rows).double() @ u
                out[rows] = Rd[rows] - (s[rows, None] / d[rows, None]) * Gu
            return out

        step = self._rows(n)
        K_all = None
        if n * n * itemsize <= budget:
            K_all = torch.cat([k(Xt[rows], Xt, block_rows=step) for rows in iter_blocks(n, step)])

        def matvec(P: torch.Tensor) -> torch.Tensor:
            Ps = (s[:, None] * P).to(dt)
            out = torch.empty_like(P)
            for rows in iter_blocks(n, step):
                Kb = K_all[rows] if K_all is not None else k(Xt[rows], Xt, block_rows=step)
                out[rows] = s[rows, None] * (Kb @ Ps).double()
            return out + alpha * P

        bar = self._progress("KernelRidgeCG")
        try:
            b, self.n_iter_, rel = _pcg(
                matvec,
                s[:, None] * _tensor(Y),
                precond,
                tol=self.tol,
                max_iter=self.max_iter,
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        self._warn_convergence(rel)
        self.X_fit_ = Xt.numpy().copy()
        self.dual_coef_ = (s[:, None] * b).numpy().copy()
        return self

    def _expansion(self):
        return self.X_fit_, self.dual_coef_
