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

from typing import ClassVar

import numpy as np
import torch

from snnk._persist import ArraySpec, ValueSpec
from snnk._utils import check_positive
from snnk._utils.blocks import DEPRECATED
from snnk.kernels import Kernel, KernelMatrix
from snnk.models._base import is_dask
from snnk.models._device import to_device
from snnk.models._nystrom_base import KernelExpansion
from snnk.solvers import FalkonPreconditioner, NystromDiagonalPreconditioner, NystromFactor
from snnk.solvers.cross_validation import default_alpha_grid
from snnk.solvers.nystrom_direct import nystrom_direct_solve

#: ``solver="auto"`` uses the direct solver up to this many centres (an M x M float64 Gram)
_DIRECT_MAX_CENTERS = 8192
#: points of the ``alpha="gcv"`` grid (the length of ``cv_scores_``)
_GRID_SIZE = default_alpha_grid(torch.ones(1)).numel()


class NystromRidge(KernelExpansion):
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

    Conjugate gradients with Falkon's preconditioner
    (:class:`snnk.solvers.FalkonPreconditioner`): ``P = (Σw/M) K_MM² + α K_MM``, what
    ``K_nMᵀWK_nM + αK_MM`` would be if every centre stood for ``Σw/M`` training rows, applied
    by four triangular solves. The preconditioned system is close to the identity, so a few
    tens of iterations suffice whatever ``α``.

    **Cost of CG.** ``O(M³)`` once (two Cholesky factorisations and one ``lauum``, in float64),
    then ``O(n M (d + o))`` per CG iteration for ``o`` outputs: every iteration recomputes
    ``K_nM`` in row blocks of ``b`` rows. Memory ``O(M² + b M + n d)``: ``K_MM`` and two
    ``M x M`` factors, one block, the data. Prediction: ``O(n_test M d)`` in blocks.

    **Dask.** ``fit`` takes a Dask array or data frame (``y`` and ``sample_weight`` Dask or
    NumPy): the direct solver's sums ``K_nMᵀWK_nM``, ``K_nMᵀWy``, ``K_nMᵀw``, ``Σwy``,
    ``Σwy²`` are computed per chunk on the workers and tree-reduced, then solved (and GCV
    scored) on the client: one pass, ``O(M²)`` per task whatever the chunk. The centres are
    chosen from a pool of ``max(20 M, 20,000)`` rows (all rows when there are no more: then
    the fit is the in-memory fit up to summation order, 1e-9 relative; else a seeded
    uniform sample of rows, and every ``center_selection`` sees the pool only).
    ``lengthscale="scale"`` reads the data once more (per-column moments). ``solver="cg"``
    is refused (a pass per iteration); ``predict`` of a Dask array is lazy (one task per
    chunk). See ``docs/nystrom.md`` for a cluster example.

    **Defaults.** ``lengthscale="scale"``, ``alpha="gcv"`` and ``fit_intercept=True`` are
    those of :class:`RandomFeatureRidge`, so the two siblings fit the same model family the
    same way out of the box, adapting the lengthscale and the ridge strength to the data
    (before: ``lengthscale=1.0``, ``alpha=1e-3``, no intercept, whose quality depended on
    the data's scale: CV R² 0.805 against 0.838 now on a diamonds subset, 0.48 against
    0.46 on scikit-learn's pre-scaled diabetes data; ``docs/kernel_machines.md``). Models
    saved with the old defaults keep them: a file stores every hyper-parameter.

    Parameters
    ----------
    kernel : str or snnk.kernels.Kernel, default "gaussian"
        A kernel name for :func:`snnk.kernels.make_kernel` ("gaussian", "laplace", "matern",
        ...) or a kernel object. With an object, ``lengthscale`` is ignored (the object
        carries its own hyper-parameters); use an object for any hyper-parameter other than
        the lengthscale (e.g. ``Matern(nu=2.5, lengthscale=2.0)``).
    lengthscale : float, "scale" or None, default "scale"
        Lengthscale of a named kernel (``gamma = 1 / (2 lengthscale²)`` in scikit-learn's
        RBF). ``"scale"`` sets ``ℓ² = d·Var(X)/2`` from the training data (``γ = 1/(d·Var X)``,
        scikit-learn's ``gamma="scale"``), the rule of :class:`RandomFeatureRidge`; the value
        used is ``lengthscale_``. Ignored for kernels without one (linear, polynomial, ...)
        and for objects.
    alpha : float or "gcv", default "gcv"
        Ridge strength, scikit-learn ``KernelRidge`` convention (penalty ``alpha ‖f‖²`` added
        to the *sum* of squared errors); Falkon's ``penalty`` is ``alpha / n``. ``"gcv"``
        chooses it by generalised cross-validation on the grid of
        :class:`RandomFeatureRidge` (``10^-5 … 10^2`` times the mean eigenvalue of the
        Nyström features' Gram matrix ``L⁻¹GL⁻ᵀ``, 29 points) from the direct solver's
        statistics: one more ``M x M`` eigendecomposition, no pass over the data; the value
        used is ``alpha_`` (``solver="cg"`` needs a number).
    num_centers : int, default 1000
        Number ``M`` of Nyström centres. If it exceeds the number of distinct training rows
        (with positive weight), every such row is a centre: exact kernel ridge regression.
        This is not an error and gives no warning; ``centers_.shape[0]`` says what was used.
    center_selection : str, default "uniform"
        One of ``"uniform"``, ``"kmeans++"``, ``"rls"``, ``"bless"``, ``"kdpp"``,
        ``"pivoted-cholesky"``, ``"rpcholesky"``:
        Uniform sampling without replacement of distinct rows (Falkon's default),
        D²-sampling in the kernel's feature space (``∝ weight``), ridge leverage scores
        (exact or BLESS), a k-DPP, or greedy / randomly pivoted Cholesky; every row selector
        of :func:`snnk.features.select_center_indices` (see ``docs/sampling.md``).
    solver : {"auto", "direct", "cg"}, default "auto"
        See **Solvers** above. ``max_iter`` and ``tol`` apply to ``"cg"`` only.
    fit_intercept : bool, default True
        Add an unpenalised constant ``c``: minimise ``Σ w_i (y_i − c − f(x_i))² + α‖f‖²``
        (exactly, by centring the kernel columns and the targets with their weighted means).
        ``False`` is scikit-learn's ``KernelRidge`` model (with ``lengthscale`` and ``alpha``
        numbers and ``num_centers >= n`` the predictions are ``KernelRidge``'s); targets far
        from zero mean (prices, delays) are fitted poorly without the constant.

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
    block_rows : int or None, default None
        Rows per kernel block; ``None`` keeps a block near 4M elements
        (``snnk._utils.blocks.KERNEL_BLOCK_ELEMENTS``).
    random_state : int, RandomState or None
        Seeds the choice of centres.
    verbose : bool, default False
        Progress bar over the CG iterations (tqdm).
    batch_size : int or None, default "deprecated"
        Deprecated alias of ``block_rows`` (``FutureWarning``).
    device : str or torch.device, default "cpu"
        Where ``fit`` computes: the data, the centre selection, every kernel block, the Gram matrix,
        the factorisations, CG and GCV
        live there (``"cuda"``: on the GPU, with kernel blocks sized to a share of its free
        memory). The centres' random draw comes from a CPU generator, so every device
        chooses the same centres. Not saved: fitted arrays are NumPy, and prediction runs on
        a tensor input's device, else on ``device`` when this machine has it, else on the
        CPU. NumPy in, NumPy out; a tensor in, a tensor out on its device.

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
    lengthscale_ : float or None
        The kernel's lengthscale (from ``"scale"`` or as given).
    alpha_ : float
        The ridge strength used (chosen by GCV or as given).
    cv_scores_ : ndarray of shape (29,)
        GCV score of every grid point (``alpha="gcv"`` only).
    kernel_ : snnk.kernels.Kernel
    n_iter_ : int
        CG iterations done (1 for the direct solver: one pass, one solve).
    solver_ : str
        The solver used ("direct" or "cg").
    n_features_in_ : int
    """

    _alpha_options = ("gcv",)
    #: the fitted ``lengthscale_`` (``None`` for kernels without one), the ``alpha_`` used
    #: and, for ``alpha="gcv"``, the score of every grid point
    _persist_values: ClassVar[dict[str, ValueSpec]] = {
        "lengthscale_": ValueSpec(("real", "none"), low=0.0, low_open=True),
        "alpha_": ValueSpec(("real",), low=0.0, low_open=True),
    }
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {
        "attr.cv_scores_": ArraySpec(ndim=1, dims=(_GRID_SIZE,), finite=False),
    }

    def __init__(
        self,
        kernel: str | Kernel = "gaussian",
        lengthscale: float | str | None = "scale",
        num_centers: int = 1000,
        alpha: float | str = "gcv",
        center_selection: str = "uniform",
        solver: str = "auto",
        fit_intercept: bool = True,
        max_iter: int = 100,
        tol: float = 1e-6,
        dtype: str | None = None,
        block_rows: int | None = None,
        random_state=None,
        verbose: bool = False,
        batch_size: int | str | None = DEPRECATED,
        device: str | torch.device | None = "cpu",
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
            block_rows=block_rows,
            random_state=random_state,
            verbose=verbose,
            batch_size=batch_size,
            device=device,
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

    def _fit_direct(self, Knm: KernelMatrix, factor: NystromFactor, Yt, w, alpha):
        """``β`` from one pass of blocked normal equations (see **Solvers**); sets
        ``intercept_``, ``alpha_`` and, for GCV, ``cv_scores_``."""
        sol = nystrom_direct_solve(
            Knm.blocks(torch.float64), factor, Yt, w, alpha, fit_intercept=self.fit_intercept
        )
        self._set_solution(sol)
        return sol.beta

    def _set_solution(self, sol) -> None:
        """``intercept_``, ``alpha_`` and, for GCV, ``cv_scores_`` of a direct solution."""
        self.intercept_ = sol.intercept.cpu().numpy().copy()
        self.alpha_ = sol.alpha
        if sol.scores is not None:
            self.cv_scores_ = sol.scores.cpu().numpy()

    def _fit_cg(self, Knm: KernelMatrix, Kmm, factor: NystromFactor, Yt, w, alpha, wsum):
        """``(β, centre)`` by conjugate gradients with Falkon's preconditioner."""
        precond = FalkonPreconditioner(factor, alpha, wsum)
        Yw = Yt * w[:, None] if w is not None else Yt
        if self.fit_intercept:  # K_nMᵀ w in the same pass as the right-hand side
            ones = torch.ones(Yt.shape[0], dtype=torch.float64, device=Yt.device)
            wv = w if w is not None else ones
            both = Knm.rmatmul(torch.cat([Yw, wv[:, None]], 1))
            rhs, centre = both[:, :-1], self._centre(both[:, -1], Yt, w, wsum)
            rhs -= centre[0] * torch.outer(centre[1], centre[2])
        else:
            rhs, centre = Knm.rmatmul(Yw), None

        def matvec(U: torch.Tensor) -> torch.Tensor:
            out = Knm.gram_matmul(U, w) + alpha * (Kmm @ U)
            if centre is not None:
                out -= centre[0] * torch.outer(centre[1], centre[1] @ U)
            return out

        return self._solve_cg(matvec, rhs, precond, "NystromRidge CG", stacklevel=4), centre

    def fit(self, X, y, sample_weight=None) -> NystromRidge:
        """Fit on ``X`` (n, d) and ``y`` (n,) or (n, n_outputs); optional ``sample_weight``.

        ``X`` may be a NumPy array, a torch tensor, or a Dask array or data frame (then ``y``
        and ``sample_weight`` are Dask or NumPy with the same rows; see **Dask**)."""
        if is_dask(X):
            from snnk.models._dask_kernel import fit_nystrom_dask

            return fit_nystrom_dask(self, X, y, sample_weight)
        X, Y, sw, dt, device = self._validate_fit(X, y, sample_weight)
        self._check_solver()
        Xin = to_device(X, device)  # centres are chosen on the data as given (then cast)
        Xt = Xin.to(dt)
        idx = self._center_indices(Xin, sw)
        C = Xt[torch.from_numpy(idx).to(device)].contiguous()
        Yt = to_device(Y, device)
        w = to_device(sw, device) if sw is not None else None
        wsum = float(sw.sum()) if sw is not None else float(X.shape[0])
        m = C.shape[0]
        Knm = KernelMatrix(self.kernel_, Xt, C, block_rows=self._rows(m, device, dt))
        Kmm = self.kernel_(C, C).double()
        factor = NystromFactor(Kmm, name="K_MM")
        if self._use_direct(m):
            alpha = "gcv" if self.alpha == "gcv" else float(self.alpha)
            beta = self._fit_direct(Knm, factor, Yt, w, alpha)
            self.solver_, self.n_iter_ = "direct", 1
        else:
            self.solver_, self.alpha_ = "cg", float(self.alpha)
            beta, centre = self._fit_cg(Knm, Kmm, factor, Yt, w, self.alpha_, wsum)
            self._set_intercept(beta, centre, Yt.shape[1])
        self.centers_ = C.cpu().numpy().copy()
        self.center_indices_ = idx
        self.dual_coef_ = beta.cpu().numpy().copy()
        return self

    def _check_solver(self) -> None:
        if self.solver not in ("auto", "direct", "cg"):
            raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {self.solver!r}")
        if self.solver == "cg" and self.alpha == "gcv":
            raise ValueError(
                "alpha='gcv' scores the ridge grid from the direct solver's statistics: use "
                "solver='direct' (or 'auto'), or give alpha a number for solver='cg'"
            )

    def _use_direct(self, m: int) -> bool:
        """Whether the direct solver runs for ``m`` centres (see **Solvers**)."""
        if self.solver == "direct":
            return True
        return self.solver == "auto" and (m <= _DIRECT_MAX_CENTERS or self.alpha == "gcv")

    def _set_intercept(self, beta: torch.Tensor, centre, outputs: int) -> None:
        """``c = ȳ − m̄ᵀβ`` (zeros without ``fit_intercept``), shape ``(n_outputs,)``."""
        if centre is None:
            self.intercept_ = np.zeros(outputs)
        else:
            self.intercept_ = (centre[2] - centre[1] @ beta).cpu().numpy().copy()

    def _expansion(self):
        return self.centers_, self.dual_coef_


class KernelRidgeCG(KernelExpansion):
    r"""Exact kernel ridge regression by conjugate gradients with a Nyström preconditioner.

    The model of scikit-learn's ``KernelRidge``: ``f(x) = Σ_i a_i k(x, x_i)`` over all
    training rows, with

    .. math:: (S K S + α I) b = S y, \qquad a = S b, \qquad S = diag(\sqrt{w})

    (``a = (K + αI)^{-1} y`` without weights), solved without ever forming ``K``: every
    iteration computes ``K v`` in row blocks of ``b x n``. This is the path to exact-KRR
    accuracy when ``n`` is too large for a dense ``n x n`` Cholesky (``O(n³)`` time,
    ``8 n²`` bytes) but ``n² d`` work per iteration is affordable.

    **Preconditioner.** Nyström plus diagonal (:class:`snnk.solvers.NystromDiagonalPreconditioner`):
    with ``M`` centres drawn from the training rows, ``P = S FᵀF S + D`` where ``FᵀF`` is the
    Nyström approximation of ``K`` and ``D`` keeps the diagonal the centres miss (plus
    ``αI``), applied by the Woodbury identity at two blockwise products with ``K_nC`` each.

    **Cost.** ``O(n M² + M³)`` set-up, then ``O(n² d + n M d)`` per iteration; memory
    ``O(n d + b n + M²)`` (the data, one block, the factors). ``num_centers`` trades set-up
    time against iterations. **Cache.** Within ``cache_size`` MiB the kernel blocks are
    evaluated once and kept: first ``G = K_nC`` (``n M`` entries, used twice per
    iteration by the preconditioner), then, if it also fits, the whole ``K`` (``n²``
    entries: each iteration is then one matrix product, no kernel evaluation). The solution
    is the same; only time and memory change (``cache_size=0`` recomputes every block).
    A Dask array is refused (each iteration would be a pass over the data): fit
    :class:`NystromRidge` on it, one tree-reduced pass.

    Parameters
    ----------
    kernel, lengthscale, alpha
        As in :class:`NystromRidge` (``alpha`` in scikit-learn's ``KernelRidge`` convention).
    num_centers : int, default 1000
        Centres of the Nyström preconditioner (only speed depends on it, not the solution).
        Clipped to the number of distinct training rows.
    center_selection : str, default "uniform"
        Any row selector of :class:`NystromRidge`'s ``center_selection``.
    max_iter : int, default 100
        Maximum CG iterations.
    tol : float, default 1e-6
        Stop when the preconditioned residual norm of every output falls below ``tol`` times
        its initial value.
    dtype : {None, "float32", "float64"}, default None
        Precision of the kernel blocks, of ``X_fit_`` and of the predictions; ``None`` follows
        the training data. CG vectors and factors are float64.
    block_rows : int or None, default None
        Rows per kernel block; ``None`` keeps a block near 4M elements
        (``snnk._utils.blocks.KERNEL_BLOCK_ELEMENTS``).
    random_state : int, RandomState or None
        Seeds the preconditioner's centres.
    verbose : bool, default False
        Progress bar over the CG iterations.
    cache_size : float, default 1024
        MiB for kernel blocks kept across CG iterations (in the compute dtype), as in
        scikit-learn's ``SVC(cache_size=...)``; see "Cache" above.
    batch_size : int or None, default "deprecated"
        Deprecated alias of ``block_rows`` (``FutureWarning``).
    device : str or torch.device, default "cpu"
        Where ``fit`` computes: the data, the centre selection, every kernel block, the
        preconditioner and CG
        live there (``"cuda"``: on the GPU, with kernel blocks sized to a share of its free
        memory). The centres' random draw comes from a CPU generator, so every device
        chooses the same centres. Not saved: fitted arrays are NumPy, and prediction runs on
        a tensor input's device, else on ``device`` when this machine has it, else on the
        CPU. NumPy in, NumPy out; a tensor in, a tensor out on its device.

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
        block_rows: int | None = None,
        random_state=None,
        verbose: bool = False,
        cache_size: float = 1024,
        batch_size: int | str | None = DEPRECATED,
        device: str | torch.device | None = "cpu",
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
            block_rows=block_rows,
            random_state=random_state,
            verbose=verbose,
            batch_size=batch_size,
            device=device,
        )
        self.cache_size = cache_size

    def fit(self, X, y, sample_weight=None) -> KernelRidgeCG:
        """Fit on ``X`` (n, d) and ``y`` (n,) or (n, n_outputs); optional ``sample_weight``."""
        if is_dask(X):
            raise ValueError(
                "KernelRidgeCG does not fit a Dask array: every CG iteration is a pass over "
                "the n x n kernel matrix (tens of passes over the data). Use NystromRidge, "
                "whose direct solver is one tree-reduced pass (NystromRidge(num_centers=M)"
                ".fit(X_dask, y_dask)), or compute the array if it fits in memory"
            )
        check_positive(self.cache_size, "cache_size", allow_zero=True)
        X, Y, sw, dt, device = self._validate_fit(X, y, sample_weight)
        Xin = to_device(X, device)  # centres are chosen on the data as given (then cast)
        Xt = Xin.to(dt)
        idx = self._center_indices(Xin, sw)
        n = X.shape[0]
        C = Xt[torch.from_numpy(idx).to(device)].contiguous()
        k = self.kernel_
        alpha = float(self.alpha)
        f64 = torch.float64
        s = to_device(np.sqrt(sw), device) if sw is not None else None
        if s is None:
            s = torch.ones(n, dtype=f64, device=device)
        factor = NystromFactor(k(C.double(), C.double()), name="K_CC")
        # Cache budget: G = K_nC first (used twice per iteration), then all of K if it fits.
        budget = float(self.cache_size) * 2**20
        rows = self._rows(C.shape[0], device, dt)
        Knc = KernelMatrix(k, Xt, C, block_rows=rows, cache_bytes=budget)
        if Knc.cached:
            budget -= Knc.nbytes
        Knn = KernelMatrix(k, Xt, block_rows=self._rows(n, device, dt), cache_bytes=budget)
        precond = NystromDiagonalPreconditioner(Knc, factor, Knn.diag().double(), alpha, s)

        def matvec(P: torch.Tensor) -> torch.Tensor:
            return s[:, None] * (Knn @ (s[:, None] * P).to(dt)).double() + alpha * P

        rhs = s[:, None] * to_device(Y, device)
        b = self._solve_cg(matvec, rhs, precond, "KernelRidgeCG")
        self.X_fit_ = Xt.cpu().numpy().copy()
        self.dual_coef_ = (s[:, None] * b).cpu().numpy().copy()
        return self

    def _expansion(self):
        return self.X_fit_, self.dual_coef_
