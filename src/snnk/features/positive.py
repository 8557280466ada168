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

    Raises if ``M <= -1/4`` (no estimator) or if the prefactor ``(1+4M)^{d/4}`` overflows
    float32; warns if ``M <= -1/8`` (infinite variance).
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
    return log_const


class PositiveFeatures(RandomFeatures):
    r"""Positive random features of the softmax kernel ``k(x, y) = exp(xᵀy / T)``.

    With ``x' = x/√T``, ``g_j`` rows of a Gaussian projection (``j = 1..m``),
    ``c = √(1+4M)`` and ``M > -1/4``:

    ``log φ_j(x) = c g_jᵀx' − ‖x'‖²/2 − M‖g_j‖² + (d/4) log(1+4M) − ½ log m``

    and ``E[φ(x)ᵀφ(y)] = exp(x'ᵀy')`` exactly (Choromanski et al. 2021 for ``M = 0``, the
    FAVOR+ features; ``M ≠ 0`` is the generalized/FAVOR++-type family of the SNNK paper's
    URFs, variance-optimal near ``M ≈ ‖x+y‖²/(2d)``). ``hyperbolic=True`` uses the pair
    ``exp(±c g_jᵀx' …)/√2`` (``D = 2m``), which lowers the variance further.

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

    def log_features(self, x: torch.Tensor) -> torch.Tensor:
        """``log φ(x)``, shape ``(..., D)`` (computed in float32 for half inputs)."""
        x2, lead, out_dtype = self._prepare(x)
        x2 = x2 / math.sqrt(self.temperature)
        c = math.sqrt(1.0 + 4.0 * self.M)
        proj = self.projection(x2) * c
        offset = self.log_prefactor - 0.5 * math.log(self.num_features)
        offset = offset - 0.5 * x2.square().sum(-1, keepdim=True)
        if self.M != 0.0:
            offset = offset - self.M * self.projection.row_sq_norms().to(x2.dtype)
        logf = torch.cat([proj, -proj], -1) + offset if self.hyperbolic else proj + offset
        return logf.reshape(*lead, self.num_features).to(out_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x) = exp(log φ(x))``; may overflow for ``‖x‖²/T`` in the hundreds (use
        :meth:`stabilized`)."""
        x2 = torch.as_tensor(x)
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
