"""Positive random features for the softmax kernel ``exp(xᵀy / T)`` (FAVOR+ and relatives)."""

from __future__ import annotations

import math
import warnings

import torch

from snnk._utils import check_positive, check_positive_int
from snnk.features._base import RandomFeatures

_LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)


class VarianceWarning(UserWarning):
    """A random-feature estimator whose variance is infinite or very large for these inputs."""


def check_variance_parameter(M: float, in_features: int) -> float:
    """Validate the generalized-PRF parameter ``M`` and return ``(d/4)·log(1 + 4M)``.

    Raises if ``M <= -1/4`` (no estimator), if the prefactor ``(1+4M)^{d/4}`` overflows
    float32 or if ``M·d`` exceeds float32's exponent range (every feature underflows);
    warns if ``M <= -1/8`` (infinite variance).
    """
    if isinstance(M, bool) or not isinstance(M, int | float) or not math.isfinite(M):
        raise TypeError(f"M must be a finite real number, got {M!r}")
    if M <= -0.25:
        raise ValueError(f"M must be > -1/4 (the Gaussian integral diverges otherwise), got {M}")
    if M <= -0.125:
        warnings.warn(
            f"M={M} <= -1/8 gives an estimator with infinite variance; use M in (-1/8, ~‖x‖²/d]",
            VarianceWarning,
            stacklevel=3,
        )
    log_const = in_features / 4.0 * math.log1p(4.0 * M)
    if abs(log_const) > _LOG_FLOAT32_MAX:
        raise ValueError(
            f"the prefactor (1+4M)^(d/4) = exp({log_const:.1f}) overflows float32 for M={M}, "
            f"d={in_features}; the variance-optimal M is about ‖x+y‖²/(2d), i.e. close to 0 "
            f"in high dimension"
        )
    if M * in_features > _LOG_FLOAT32_MAX:
        # every feature carries exp(-M‖g_j‖²) with E‖g_j‖² = d: beyond float32's range the
        # features of any input of sensible norm are all 0 (M=1e30 was accepted before)
        raise ValueError(
            f"M={M} is too large for d={in_features}: every feature carries exp(-M‖g‖²) ≈ "
            f"exp(-{M * in_features:.3g}), which underflows float32; the variance-optimal M is "
            f"about ‖x+y‖²/(2d), so use M <= {_LOG_FLOAT32_MAX / in_features:.3g}"
        )
    return log_const


def _sq(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(-1)


def positive_log_offsets(
    log_prefactor: float,
    num_features: int,
    M: float = 0.0,
    row_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor | float:
    r"""Per-feature offsets ``b_j = (d/4) log(1+4M) − ½ log D − M‖g_j‖²`` of positive features.

    Parameters
    ----------
    log_prefactor : float
        ``(d/4) log(1 + 4M)``, from :func:`check_variance_parameter`.
    num_features : int
        ``D``, the number of features the estimate averages over (``½ log D`` normalises
        ``φ(x)ᵀφ(y)`` to a mean).
    M : float, default 0.0
        Variance parameter; with ``M = 0`` the offset is one number.
    row_sq_norms : Tensor of shape ``(m,)``, optional
        ``‖g_j‖²`` of the projection rows; needed when ``M ≠ 0``.

    Returns
    -------
    float when ``row_sq_norms`` is None (then ``M`` must be 0), else a ``(m,)`` tensor.
    """
    base = log_prefactor - 0.5 * math.log(num_features)
    if row_sq_norms is None:
        if M != 0.0:
            raise ValueError(f"row_sq_norms is needed when M != 0 (got M={M})")
        return base
    return base - M * row_sq_norms


def positive_log_features(
    projections: torch.Tensor,
    sq_norms: torch.Tensor | None,
    offsets: torch.Tensor | float,
    gamma: float = 1.0,
) -> torch.Tensor:
    r"""The positive-random-feature affine form in log space.

    ``log φ_j(x) = p_j(x) + b_j − γ‖x‖²/2``

    with ``p_j(x) = c g_jᵀx`` the (scaled) projections, ``b_j`` the offsets of
    :func:`positive_log_offsets` and ``γ = 1/T``. For ``g_j ~ N(0, I)``,
    ``c = √(1 + 4M)`` and ``γ = 1``, ``E[φ(x)ᵀφ(y)] = exp(xᵀy)`` (:class:`PositiveFeatures`,
    :class:`URF`'s ``"exp"`` kind and FAVOR+ attention all evaluate it here). The same form
    with landmark rows ``z_j`` in place of ``c g_j`` and ``b_j = −‖z_j‖²/2`` gives the
    Gaussian-kernel features of Nyström attention.

    Parameters
    ----------
    projections : Tensor of shape ``(..., D)``
    sq_norms : Tensor broadcastable to ``(..., D)`` (e.g. ``(..., 1)``), or None
        ``‖x‖²`` of each row; None drops the term (callers that cancel it).
    offsets : Tensor of shape ``(D,)`` (or broadcastable), or float
    gamma : float, default 1.0

    Returns
    -------
    Tensor of shape ``(..., D)``: ``projections + offsets − (γ/2)·sq_norms``.
    """
    logf = projections + offsets
    if sq_norms is not None:
        logf = logf - (0.5 * gamma) * sq_norms
    return logf


class PositiveFeatures(RandomFeatures):
    r"""Positive random features of the softmax kernel ``k(x, y) = exp(xᵀy / T)``.

    With ``x' = x/√T``, ``g_j`` rows of a Gaussian projection (``j = 1..m``),
    ``c = √(1+4M)`` and ``M > -1/4``:

    ``log φ_j(x) = c g_jᵀx' − ‖x'‖²/2 − M‖g_j‖² + (d/4) log(1+4M) − ½ log m``

    and ``E[φ(x)ᵀφ(y)] = exp(x'ᵀy')`` exactly (Choromanski et al. 2021 for ``M = 0``, the
    FAVOR+ features; ``M ≠ 0`` is the generalized/FAVOR++-type family of the SNNK paper's
    URFs, variance-optimal near ``M ≈ ‖x+y‖²/(2d)``). ``hyperbolic=True`` uses the pair
    ``exp(±c g_jᵀx' …)/√2`` (``D = 2m``), which lowers the variance further.

    The map is one affine form in log space, ``log φ(x) = x Aᵀ + b − γ‖x‖²/2``
    (:meth:`affine_form`, evaluated by :func:`positive_log_features`).
    Features are computed in the log domain: :meth:`log_features` returns ``log φ`` and
    :meth:`stabilized` returns ``(φ·e^{-s}, s)`` with ``s`` a per-row maximum, so that callers
    (attention) can cancel ``e^{s}`` without bias. No epsilon floor is ever added.

    Parameters
    ----------
    in_features : int
        ``d``.
    num_features : int
        Output width ``D`` (``= m``, or ``2m`` with ``hyperbolic=True``: then even).
    temperature : float, default 1.0
        ``T`` of the softmax kernel.
    M : float, default 0.0
        Variance-control parameter of the generalized form.
    hyperbolic : bool, default False
        Use the ``±`` pair of features.
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
    seed, dtype, device
        As for :class:`FourierFeatures`.

    Notes
    -----
    Variance (single i.i.d. feature, ``M = 0``): ``exp(2x'ᵀy')(exp(‖x'+y'‖²) − 1)``.
    """

    def __init__(
        self,
        in_features: int,
        num_features: int,
        *,
        temperature: float = 1.0,
        M: float = 0.0,
        hyperbolic: bool = False,
        sampler: str = "orthogonal",
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        in_features = check_positive_int(in_features, "in_features")
        num_features = check_positive_int(num_features, "num_features")
        if hyperbolic and num_features % 2:
            raise ValueError(f"num_features must be even with hyperbolic=True, got {num_features}")
        self.temperature = check_positive(temperature, "temperature")
        self.log_prefactor = check_variance_parameter(M, in_features)
        super().__init__(in_features, num_features, seed)
        self.M, self.hyperbolic, self.sampler = float(M), bool(hyperbolic), sampler
        self.num_projections = num_features // 2 if hyperbolic else num_features
        self._draw(dtype, device)

    def _draw(self, dtype, device) -> None:
        self.projection = self._gaussian_projection(self.num_projections, dtype, device)

    def log_offsets(self, dtype: torch.dtype | None = None) -> torch.Tensor | float:
        """The offsets ``b_j`` of :func:`positive_log_offsets` for this draw: shape ``(D,)``
        (the ``±`` pair shares one offset) computed in ``dtype`` (default: the buffers'),
        or a float when ``M = 0`` (all equal)."""
        if self.M == 0.0:
            return positive_log_offsets(self.log_prefactor, self.num_features)
        sq = self.projection.row_sq_norms()
        b = positive_log_offsets(
            self.log_prefactor, self.num_features, self.M, sq if dtype is None else sq.to(dtype)
        )
        return torch.cat([b, b]) if self.hyperbolic else b

    def affine_form(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        r"""``(A, b, γ)`` with ``log φ(x) = x Aᵀ + b − γ‖x‖²/2`` for raw inputs ``x``.

        ``A = c G / √T`` (rows ``±`` for ``hyperbolic``), shape ``(D, d)``; ``b`` as in
        :meth:`log_offsets`, always a ``(D,)`` tensor; ``γ = 1/T``. Both tensors are in the
        buffers' dtype and device. Callers that project many rows at once in their own
        layout (attention) evaluate :func:`positive_log_features` from this form; ``A`` is
        materialised for ``sampler="structured"``.
        """
        G = self.projection.dense_weight()
        A = G * math.sqrt(1.0 + 4.0 * self.M)
        if self.temperature != 1.0:
            A = A / math.sqrt(self.temperature)
        b = positive_log_offsets(self.log_prefactor, self.num_features, self.M, _sq(G))
        if self.hyperbolic:
            A, b = torch.cat([A, -A]), torch.cat([b, b])
        return A, b, 1.0 / self.temperature

    def log_features(self, x: torch.Tensor) -> torch.Tensor:
        """``log φ(x)``, shape ``(..., D)`` (computed in float32 for half inputs)."""
        x2, lead, out_dtype = self._prepare(x)
        x2 = x2 / math.sqrt(self.temperature)
        proj = self.projection(x2) * math.sqrt(1.0 + 4.0 * self.M)
        if self.hyperbolic:
            proj = torch.cat([proj, -proj], -1)
        sq = x2.square().sum(-1, keepdim=True)
        logf = positive_log_features(proj, sq, self.log_offsets(x2.dtype))
        return logf.reshape(*lead, self.num_features).to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x) = exp(log φ(x))``; may overflow for ``‖x‖²/T`` in the hundreds (use
        :meth:`stabilized`)."""
        # a tensor stays where it is (torch.as_tensor would move it to torch's default device)
        x2 = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        logf = self.log_features(x2)
        return torch.exp(
            logf.float() if logf.dtype in (torch.float16, torch.bfloat16) else logf
        ).to(logf.dtype)

    def stabilized(
        self, x: torch.Tensor, dim: int | tuple[int, ...] = -1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(φ(x)·e^{-s}, s)`` with ``s = max log φ(x)`` over ``dim`` (kept).

        Entries of the first tensor lie in ``(0, 1]`` so nothing overflows, in any dtype;
        ``φ(x) = first · exp(s)`` exactly. ``s`` is detached from autograd: it is a constant
        shift that the caller cancels.
        """
        logf = self.log_features(x)
        work = logf.float() if logf.dtype in (torch.float16, torch.bfloat16) else logf
        s = torch.amax(work, dim=dim, keepdim=True).detach()
        return torch.exp(work - s).to(logf.dtype), s.to(logf.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, M={self.M}, "
            f"hyperbolic={self.hyperbolic}, sampler={self.sampler!r}"
        )
