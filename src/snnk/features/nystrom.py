"""Nyström feature maps for any kernel."""

from __future__ import annotations

import torch
from torch import nn

from snnk._utils import as_float_tensor, check_in, check_positive_int, make_generator
from snnk.features.centers import CENTER_METHODS, select_centers
from snnk.kernels import Kernel, make_kernel


class NystromFeatures(nn.Module):
    r"""Nyström features ``φ(x) = k(x, C) K_CC^{+1/2}`` for any kernel.

    ``φ(x)ᵀφ(y) = k(x, C) K_CC⁺ k(C, y)`` is the Nyström approximation of ``k(x, y)``
    (Williams & Seeger, 2001): the projection of ``k(x, ·)`` onto the span of the centres
    in the RKHS. It is exact on the centres, so with ``num_centers = n`` and the training
    points as centres it reproduces the Gram matrix ``K`` (up to round-off and the
    eigenvalue cut-off ``rcond``). Biased, but never worse than the best rank-``m``
    approximation by more than the centres' coverage allows; ``"kmeans++"`` (D²-sampling in
    the kernel's own feature space) picks better-spread centres than ``"uniform"``.

    Parameters
    ----------
    kernel : Kernel or str
    num_centers : int
        ``m``; the output width.
    centers : str, default "uniform"
        ``"uniform"``, ``"kmeans++"``, ``"kmeans"``, ``"rls"``, ``"bless"``, ``"kdpp"``,
        ``"pivoted-cholesky"`` or ``"rpcholesky"``, a method of
        :func:`snnk.features.centers.select_centers`: rows drawn uniformly,
        D²-sampled in the kernel's feature space, k-means cluster means (new points), ridge
        leverage scores (exact or BLESS), a k-DPP, or greedy / randomly pivoted Cholesky.
    rcond : float, optional
        Eigenvalues of ``K_CC`` below ``rcond · λ_max`` are dropped (pseudo-inverse);
        default ``m · eps`` of float64, the dtype the map computes in.
    seed : int, torch.Generator or None

    Attributes (after :meth:`fit`; buffers, saved in ``state_dict``)
    ----------
    centers : Tensor of shape ``(m, d)``, in the dtype of the data it was fitted on
    normalization : Tensor of shape ``(m, m)``, ``K_CC^{+1/2}`` (symmetric), float64

    Notes
    -----
    ``K_CC^{+1/2}`` has a condition number of ``cond(K_CC)^{1/2}``, often 1e2 to 1e4, and
    ``k(x, C)`` carries the rounding of its dtype, so both are kept and applied in float64
    whatever the input dtype (the output is cast back to it): features of float32 data
    then match the float64 map of the same numbers to float32 rounding (1e-7 relative),
    where a float32 ``K_CC^{+1/2}`` would lose about ``eps32 · cond(K_CC)``, 1e-3 for a
    condition number of 5e4. The cost is a float64 kernel block per call.
    """

    def __init__(
        self,
        kernel: Kernel | str,
        num_centers: int,
        *,
        centers: str = "uniform",
        rcond: float | None = None,
        seed: int | torch.Generator | None = None,
    ):
        super().__init__()
        self.kernel = make_kernel(kernel)
        self.num_centers = check_positive_int(num_centers, "num_centers")
        self.center_selection = check_in(centers, "centers", tuple(CENTER_METHODS))
        self.rcond = rcond
        self.generator, self.seed = make_generator(seed)
        self.register_buffer("centers", torch.empty(0))
        self.register_buffer("normalization", torch.empty(0))

    @property
    def num_features(self) -> int:
        return self.num_centers

    @property
    def is_fitted(self) -> bool:
        return self.centers.numel() > 0

    def fit(self, X, y=None) -> NystromFeatures:
        """Choose ``num_centers`` centres for ``X`` (:func:`~snnk.features.centers.select_centers`)
        and factor ``K_CC``."""
        X = as_float_tensor(X, "X")
        if X.ndim != 2:
            raise ValueError(f"X must have shape (n, d) for fit, got {tuple(X.shape)}")
        n = X.shape[0]
        if self.num_centers > n:
            raise ValueError(
                f"num_centers={self.num_centers} exceeds the number of rows of X ({n}); "
                f"lower num_centers or pass more data"
            )
        C = select_centers(
            X,
            self.num_centers,
            method=self.center_selection,
            random_state=self.generator,
            kernel=self.kernel,
        )
        Kcc = self.kernel(C.to(torch.float64))
        Kcc = 0.5 * (Kcc + Kcc.T)
        evals, evecs = torch.linalg.eigh(Kcc)
        eps = torch.finfo(torch.float64).eps
        rcond = self.rcond if self.rcond is not None else self.num_centers * eps
        keep = evals > rcond * evals.max().clamp_min(0.0)
        inv_sqrt = torch.where(keep, evals.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
        self.centers = C.clone()
        self.normalization = (evecs * inv_sqrt) @ evecs.T
        self.rank_ = int(keep.sum())
        return self

    def allocate(self, in_features: int, dtype: torch.dtype = torch.float64) -> NystromFeatures:
        """Give the (empty) buffers their fitted shapes and dtypes, ``(m, d)`` in ``dtype`` (the
        data's) and ``(m, m)`` in float64, so that a saved ``state_dict`` loads into a
        skeleton checked against them. Values are arbitrary until loaded. Returns ``self``."""
        m, device = self.num_centers, self.centers.device
        self.centers = torch.empty(m, in_features, dtype=dtype, device=device)
        self.normalization = torch.empty(m, m, dtype=torch.float64, device=device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x) = k(x, C) K_CC^{+1/2}``: ``(..., d) -> (..., m)`` in ``x``'s dtype, computed
        in float64 (see the class notes)."""
        if not self.is_fitted:
            raise RuntimeError("NystromFeatures is not fitted yet: call .fit(X) first")
        x = as_float_tensor(x, "x", min_ndim=1, last_dim=self.centers.shape[1])
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(torch.float64)
        kx = self.kernel(x2, self.centers.to(torch.float64))
        phi = kx @ self.normalization.to(torch.float64)
        return phi.reshape(*lead, self.num_centers).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers are empty before fit: take the saved shapes so that loading just works.
        for name in ("centers", "normalization"):
            key = prefix + name
            if key in state_dict:
                setattr(
                    self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"kernel={self.kernel!r}, num_centers={self.num_centers}, "
            f"centers={self.center_selection!r}, seed={self.seed}"
        )
