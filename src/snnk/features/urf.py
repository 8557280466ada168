"""Universal random features (URFs): ``Φ(x)ᵀΨ(w, b)`` estimates ``f(wᵀx + b)``.

Real-valued forms of the SNNK paper's construction (Sehanobish et al., ICLR 2024; the
library spec, section 2.3), with no complex dtypes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from snnk._utils import as_float_tensor, check_positive, check_positive_int
from snnk.features._base import RandomFeatures
from snnk.features.positive import (
    VarianceWarning,
    check_variance_parameter,
    positive_log_features,
    positive_log_offsets,
)

#: a per-side second-moment factor above this makes the estimator useless in practice
_EXPLODES = math.log(1e3)


class SpectralMeasure:
    r"""A real spectral representation ``f(z) = E_{ω~P}[ρ(ω) cos(ωz + ψ(ω))]``.

    Every real ``f`` with an integrable Fourier transform ``τ`` has one with ``P`` any
    density covering ``supp τ``, ``ρ = |τ̂|/p`` and ``ψ = arg τ̂`` (angular frequencies).
    Subclasses implement :meth:`sample` and :meth:`log_second_moment`; override
    :meth:`weight` and :meth:`phase` when ``ρ ≠ 1`` or ``ψ ≠ 0``.

    Parameters
    ----------
    function : callable, optional
        ``f`` itself (tensor in, tensor out), used by :meth:`URF.target`.
    """

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.function = function

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` i.i.d. frequencies ``ω``, float64, shape ``(n,)``."""
        raise NotImplementedError

    def weight(self, omega: torch.Tensor) -> torch.Tensor:
        """``ρ(ω)``."""
        return torch.ones_like(omega)

    def phase(self, omega: torch.Tensor) -> torch.Tensor:
        """``ψ(ω)``."""
        return torch.zeros_like(omega)

    def log_second_moment(self, t: float) -> float:
        """``log E[ρ(ω)² exp(t ω²)]`` for ``t >= 0``; ``inf`` when it diverges."""
        raise NotImplementedError


class DiscreteMeasure(SpectralMeasure):
    """Finitely many atoms ``ω_k`` with probabilities ``π_k``, weights and phases.

    ``cos`` is ``DiscreteMeasure([1.0])``; ``sin`` is ``DiscreteMeasure([1.0], phases=[-π/2])``.
    """

    def __init__(self, frequencies, probabilities=None, weights=None, phases=None, function=None):
        super().__init__(function)
        self.frequencies = torch.as_tensor(frequencies, dtype=torch.float64).reshape(-1)
        k = self.frequencies.numel()
        self.probabilities = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if probabilities is None
            else torch.as_tensor(probabilities, dtype=torch.float64).reshape(-1)
        )
        if (self.probabilities < 0).any() or abs(float(self.probabilities.sum()) - 1.0) > 1e-9:
            raise ValueError("probabilities must be non-negative and sum to 1")
        self._w = (
            torch.ones(k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        self._p = (
            torch.zeros(k, dtype=torch.float64)
            if phases is None
            else torch.as_tensor(phases, dtype=torch.float64)
        )

    def _index(self, omega):
        return torch.argmin((omega[:, None] - self.frequencies[None, :]).abs(), dim=1)

    def sample(self, n, generator):
        if self.frequencies.numel() == 1:
            return self.frequencies.expand(n).clone()
        idx = torch.multinomial(self.probabilities, n, replacement=True, generator=generator)
        return self.frequencies[idx]

    def weight(self, omega):
        return self._w[self._index(omega)]

    def phase(self, omega):
        return self._p[self._index(omega)]

    def log_second_moment(self, t):
        vals = self.probabilities * self._w.square() * torch.exp(t * self.frequencies.square())
        return math.log(float(vals.sum()))


class GaussianMeasure(SpectralMeasure):
    """``ω ~ N(0, σ²)``: the spectrum of ``f(z) = exp(-σ² z² / 2)``."""

    def __init__(self, std: float = 1.0):
        self.std = check_positive(std, "std")
        super().__init__(lambda z: torch.exp(-0.5 * (self.std * z).square()))

    def sample(self, n, generator):
        return self.std * torch.randn(n, generator=generator, dtype=torch.float64)

    def log_second_moment(self, t):
        a = 1.0 - 2.0 * self.std**2 * t
        return math.inf if a <= 0 else -0.5 * math.log(a)


class LaplaceMeasure(SpectralMeasure):
    """``ω ~ Laplace(0, s)``: the spectrum of the Cauchy function ``f(z) = 1/(1 + s² z²)``.

    Heavy tailed: every URF built on it has infinite variance for every nonzero input.
    """

    def __init__(self, scale: float = 1.0):
        self.scale = check_positive(scale, "scale")
        super().__init__(lambda z: 1.0 / (1.0 + (self.scale * z).square()))

    def sample(self, n, generator):
        u = torch.rand(n, generator=generator, dtype=torch.float64) - 0.5
        return -self.scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())

    def log_second_moment(self, t):
        return 0.0 if t == 0 else math.inf


_ACTIVATIONS = ("cos", "sin", "exp", "gaussian")


def _measure_for(activation: str) -> SpectralMeasure:
    if activation == "cos":
        return DiscreteMeasure([1.0], function=torch.cos)
    if activation == "sin":
        return DiscreteMeasure([1.0], phases=[-math.pi / 2], function=torch.sin)
    return GaussianMeasure(1.0)


class URF(RandomFeatures):
    r"""Universal random features: ``Φ(x)ᵀΨ(w, b)`` is an unbiased estimate of ``f(wᵀx + b)``.

    Two towers share one Gaussian projection ``G`` (rows ``g_j``, ``j = 1..m``).

    *Fourier kinds* (``"cos"``, ``"sin"``, ``"gaussian"`` = ``e^{-z²/2}``, or any
    :class:`SpectralMeasure`): with frequencies ``ω_j ~ P`` and split ``s > 0``,

    ``Φ(x)_j = m^{-1/2} e^{ω_j² s² ‖x‖²/2} [cos(ω_j s g_jᵀx), sin(ω_j s g_jᵀx)]``

    ``Ψ(w,b)_j = m^{-1/2} ρ(ω_j) e^{g_jᵀw/s − ‖w‖²/(2s²)} [cos(ω_j b + ψ_j), −sin(ω_j b + ψ_j)]``

    (``D = 2m``), unbiased because ``E_g[e^{gᵀu}] = e^{uᵀu/2}`` holds for complex ``u``. For
    ``cos`` and ``s = 1`` these are exactly the real forms of the paper's ± complex features.
    The second moment per feature is at most ``E[ρ² e^{ω² s²‖x‖²}] · e^{‖w‖²/s²}``: finite only
    if ``P`` has tails lighter than ``exp(-ω² s²‖x‖²)``; a warning is raised for heavy-tailed
    ``P`` and for input norms where the variance explodes. The split ``s`` balances the two
    sides: the variance-optimal ``s`` shrinks as ``‖x‖`` grows relative to ``‖w‖``.

    *exp kind* (``"exp"``, ``f(z) = e^z``): positive features with variance parameter ``M``,
    ``Φ(x)_j = m^{-1/2}(1+4M)^{d/4} exp(c g_jᵀx − ‖x‖²/2 − M‖g_j‖²)``, ``c = √(1+4M)``, and
    ``Ψ(w,b) = e^b Φ(w)`` (``D = m``); see :class:`PositiveFeatures`.

    Parameters
    ----------
    activation : {"cos", "sin", "exp", "gaussian"} or SpectralMeasure
    in_features : int
        ``d``.
    num_features : int
        Output width ``D`` of both maps (even for Fourier kinds).
    M : float, default 0.0
        Variance parameter of the ``exp`` kind (must be 0 for Fourier kinds).
    split : float, default 1.0
        ``s`` of the Fourier kinds.
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
    seed, dtype, device
        As for :class:`FourierFeatures`.
    """

    def __init__(
        self,
        activation: str | SpectralMeasure,
        in_features: int,
        num_features: int,
        *,
        M: float = 0.0,
        split: float = 1.0,
        sampler: str = "orthogonal",
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        in_features = check_positive_int(in_features, "in_features")
        num_features = check_positive_int(num_features, "num_features")
        if isinstance(activation, SpectralMeasure):
            measure = activation
        elif isinstance(activation, str) and activation in _ACTIVATIONS:
            measure = None if activation == "exp" else _measure_for(activation)
        else:
            raise ValueError(
                f"activation must be one of {list(_ACTIVATIONS)} or a SpectralMeasure, got "
                f"{activation!r}; ReLU has no Fourier transform: use ArcCosineFeatures"
            )
        self.split = check_positive(split, "split")
        if measure is None:
            self.log_prefactor = check_variance_parameter(M, in_features)
        else:
            if M != 0:
                raise ValueError(
                    f"M={M} is only supported for activation='exp'; for Fourier kinds it "
                    f"inflates the variance exponentially in d (spec 2.7): leave M=0"
                )
            if num_features % 2:
                raise ValueError(
                    "num_features must be even for Fourier-type URFs (cos/sin pairs), got "
                    f"{num_features}"
                )
            if measure.log_second_moment(1e-6) == math.inf:
                warnings.warn(
                    f"{type(measure).__name__} is heavy tailed: the URF estimator has infinite "
                    f"variance for every nonzero input; use a spectrum with Gaussian-light tails",
                    VarianceWarning,
                    stacklevel=2,
                )
            self.log_prefactor = 0.0
        super().__init__(in_features, num_features, seed)
        self.activation = activation if isinstance(activation, str) else "measure"
        self.measure, self.M, self.sampler = measure, float(M), sampler
        self.num_projections = num_features if measure is None else num_features // 2
        self._draw(dtype, device)

    @property
    def is_fourier(self) -> bool:
        return self.measure is not None

    def _draw(self, dtype, device) -> None:
        self.projection = self._gaussian_projection(self.num_projections, dtype, device)
        if self.is_fourier:
            omega = self.measure.sample(self.num_projections, self.generator)
            dt = dtype or torch.get_default_dtype()
            self.register_buffer("omega", omega.to(dtype=dt, device=device))
            self.register_buffer("rho", self.measure.weight(omega).to(dtype=dt, device=device))
            self.register_buffer("psi", self.measure.phase(omega).to(dtype=dt, device=device))

    # -- the two towers -----------------------------------------------------------------------
    def _reads_values(self, t: torch.Tensor) -> bool:
        """Whether value checks (one host read each) run for ``t``: not on the meta device,
        not while ``torch.compile`` traces, not with :attr:`check_values` off."""
        return (
            self.check_values
            and t.numel() > 0
            and t.device.type != "meta"
            and not torch.compiler.is_compiling()
        )

    def _check_range(self, z: torch.Tensor, sq: torch.Tensor, name: str) -> torch.Tensor:
        """``z`` unchanged, or a ``ValueError`` naming ``name`` when finite input gave
        features that overflow (Inf/NaN) or a row that underflows to all zeros: the
        amplitudes are ``e^{±O(‖x‖²)}``, beyond the range of ``z.dtype``."""
        if not self._reads_values(z):
            return z
        if bool(~torch.isfinite(z).all() | (z == 0).all(-1).any()):
            norm = math.sqrt(float(sq.detach().max()))
            raise ValueError(
                f"URF({self.activation!r}) features overflow or underflow {z.dtype} for {name} "
                f"of norm up to {norm:.3g} (their amplitudes grow like exp(norm²)); rescale "
                f"{name} to norm ≲ 1 (e.g. sklearn.preprocessing.StandardScaler), where the "
                f"estimator is also useful"
            )
        return z

    def _warn_norms(self, sq_norm_max: float, side: str) -> None:
        if self.is_fourier:
            if side == "input":
                lm = self.measure.log_second_moment(self.split**2 * sq_norm_max)
            else:
                lm = sq_norm_max / self.split**2
        else:
            lm = 2.0 * sq_norm_max  # exp kind: variance grows like exp(‖x+w‖²)
        if lm == math.inf:
            warnings.warn(
                f"URF variance is infinite for {side} norms up to {math.sqrt(sq_norm_max):.3g} "
                f"(split={self.split}); rescale the {side}s to norm ≲ 1 or lower split",
                VarianceWarning,
                stacklevel=3,
            )
        elif lm > _EXPLODES:
            warnings.warn(
                f"URF variance explodes for {side} norms up to {math.sqrt(sq_norm_max):.3g} "
                f"(second-moment factor e^{lm:.1f}); rescale the {side}s to norm ≲ 1",
                VarianceWarning,
                stacklevel=3,
            )

    def input_map(self, x: torch.Tensor) -> torch.Tensor:
        """``Φ(x)``: ``(..., d) -> (..., D)``."""
        x2, lead, out_dtype = self._prepare(x)
        sq = x2.square().sum(-1, keepdim=True)
        if self._reads_values(sq):
            self._warn_norms(float(sq.detach().max()), "input")
        if self.is_fourier:
            p = self.projection(x2) * (self.omega.to(x2.dtype) * self.split)
            amp = torch.exp(0.5 * sq * (self.omega.to(x2.dtype) * self.split).square())
            amp = amp / math.sqrt(self.num_projections)
            z = torch.cat([torch.cos(p) * amp, torch.sin(p) * amp], -1)
        else:
            z = self._exp_map(x2, sq)
        z = z.reshape(*lead, self.num_features).to(out_dtype)
        return self._check_range(z, sq, "x")

    def parameter_map(
        self, weight: torch.Tensor, bias: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """``Ψ(w, b)``: weights ``(..., d)`` and biases ``(...)`` -> ``(..., D)``."""
        w2, lead, out_dtype = self._prepare(weight, "weight")
        if bias is None:
            b = torch.zeros(w2.shape[0], dtype=w2.dtype, device=w2.device)
        else:
            b = bias if isinstance(bias, torch.Tensor) else torch.as_tensor(bias, dtype=w2.dtype)
            b = as_float_tensor(
                b if b.is_floating_point() else b.double(),
                "bias",
                min_ndim=0,
                check_finite_values=self.check_values,
            )
            b = b.to(w2.device)
            if b.ndim and tuple(b.shape) != lead:
                raise ValueError(
                    f"bias must be a scalar or have shape {lead} (one per weight row), "
                    f"got shape {tuple(b.shape)}"
                )
            b = b.to(w2.dtype).expand(lead).reshape(-1)
        sq = w2.square().sum(-1, keepdim=True)
        if self._reads_values(sq):
            self._warn_norms(float(sq.detach().max()), "weight")
        if self.is_fourier:
            s = self.split
            logamp = self.projection(w2) / s - sq / (2 * s * s)
            amp = torch.exp(logamp) * self.rho.to(w2.dtype) / math.sqrt(self.num_projections)
            ph = b[:, None] * self.omega.to(w2.dtype) + self.psi.to(w2.dtype)
            z = torch.cat([amp * torch.cos(ph), -amp * torch.sin(ph)], -1)
        else:
            z = self._exp_map(w2, sq) * torch.exp(b)[:, None]
        z = z.reshape(*lead, self.num_features).to(out_dtype)
        return self._check_range(z, sq, "weight")

    def _exp_map(self, x2: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        """``exp`` of the positive-feature affine form (:func:`positive_log_features`)."""
        row_sq = self.projection.row_sq_norms().to(x2.dtype) if self.M != 0.0 else None
        b = positive_log_offsets(self.log_prefactor, self.num_projections, self.M, row_sq)
        proj = math.sqrt(1.0 + 4.0 * self.M) * self.projection(x2)
        return torch.exp(positive_log_features(proj, sq, b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`input_map`."""
        return self.input_map(x)

    def estimate(self, x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
        """``Φ(x) Ψ(W, b)ᵀ``: the estimate of ``f(x Wᵀ + b)``, shape ``(..., l)``."""
        return self.input_map(x) @ self.parameter_map(weight, bias).transpose(-1, -2)

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """The exact ``f(z)`` that :meth:`estimate` approximates."""
        if not self.is_fourier:
            return torch.exp(z)
        if self.measure.function is None:
            raise ValueError("this SpectralMeasure was built without `function`")
        return self.measure.function(z)

    def extra_repr(self) -> str:
        return (
            f"activation={self.activation!r}, {super().extra_repr()}, M={self.M}, "
            f"split={self.split}, sampler={self.sampler!r}"
        )
