"""The two towers of an SNNK layer (``Φ(x)``, ``Ψ(W, b)``), shared by SNNKLinear and bundles."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from snnk._utils import check_in, on_cpu
from snnk.features import URF, ArcCosineFeatures, SpectralMeasure, VarianceWarning

ACTIVATIONS = ("relu", "exp", "cos", "sin", "gaussian")

#: a second-moment factor of one URF feature above ``e^this`` makes its estimate useless
_EXPLODES = math.log(1e3)


def resolve_sampler(sampler: str | bool, orthogonal: bool | None, owner: str) -> str:
    """``sampler=`` from the new argument and the deprecated ``orthogonal: bool``.

    A bool in ``sampler`` (the old positional ``orthogonal``) counts as ``orthogonal=``.
    """
    if isinstance(sampler, bool):
        sampler, orthogonal = "orthogonal", sampler if orthogonal is None else orthogonal
    if orthogonal is None:
        if not isinstance(sampler, str):
            raise TypeError(f"sampler must be a string such as 'orthogonal', got {sampler!r}")
        return sampler
    new = "orthogonal" if orthogonal else "iid"
    warnings.warn(
        f"{owner}: orthogonal={orthogonal!r} is deprecated and will be removed; use "
        f"sampler={new!r}",
        FutureWarning,
        stacklevel=3,
    )
    if sampler not in ("orthogonal", new):
        raise ValueError(
            f"{owner}: got both sampler={sampler!r} and orthogonal={orthogonal!r}; give "
            "sampler= only"
        )
    return new


def _is_fourier(activation: str | SpectralMeasure) -> bool:
    return activation not in ("relu", "exp")


def _log_budget(dtype: torch.dtype, num_features: int) -> float:
    """The largest exponent ``a`` of a Fourier amplitude ``e^a`` that leaves room below
    overflow of ``dtype`` for ``Φ(x)Ψᵀ`` (a sum of ``D`` terms) and its gradients (factors
    ``ω²s²‖x‖``, ``|Ψ|``, ``l``): ``D · e^{a+12}`` finite, and at least ``e^a = √max``
    (half types, whose range is too small for that margin)."""
    top = math.log(torch.finfo(dtype).max)
    return max(top - math.log(num_features) - 12.0, 0.5 * top)


def overflow_radius(towers: SNNKMaps, dtype: torch.dtype) -> float:
    """The input norm ``R`` up to which the Fourier input tower stays finite in ``dtype``:
    ``ω_max² s² R²/2`` equals :func:`_log_budget` (``inf`` for ``"relu"`` and ``"exp"``)."""
    if not _is_fourier(towers.activation) or towers.maps.omega.is_meta:
        return math.inf
    top = float(towers.maps.omega.abs().max()) * towers.maps.split
    budget = _log_budget(dtype, towers.num_features)
    return math.inf if top == 0 else math.sqrt(2.0 * budget) / top


class SNNKMaps(nn.Module):
    """The two towers of one SNNK layer: ``input_map(x)`` and ``parameter_map(W, b)``.

    * ``"relu"``: ``Φ(x) = D^{-1/2} ReLU(G x̃)``, ``Ψ(w, b) = D^{-1/2} ReLU(G w̃)`` with
      ``x̃ = [x; 1]``, ``w̃ = [w; b]`` when ``bias`` (else ``x̃ = x``). ``E[Φ(x)ᵀΨ(w)]`` is
      the arc-cosine kernel ``k_1(x̃, w̃)/2 = ‖x̃‖‖w̃‖(sin θ + (π − θ) cos θ)/(2π)``: **not**
      ``ReLU(wᵀx + b)``; the layer keeps ReLU's scale and positivity but is a different,
      strictly more expressive function of ``(x, w)``.
    * ``"exp"``, ``"cos"``, ``"sin"``, ``"gaussian"``, or a :class:`SpectralMeasure`:
      :class:`snnk.features.URF`, an unbiased estimate of ``f(wᵀx + b)``.

    Parameters
    ----------
    activation : {"relu", "exp", "cos", "sin", "gaussian"} or SpectralMeasure
    in_features, num_features : int
        ``d`` and ``D``.
    bias : bool, default True
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
        How the rows of ``G`` are drawn (see :class:`snnk.features.RandomProjection`).
    seed : int, torch.Generator or None
    orthogonal : bool, optional
        Deprecated: ``True`` is ``sampler="orthogonal"``, ``False`` is ``sampler="iid"``.
    """

    def __init__(
        self,
        activation: str | SpectralMeasure,
        in_features: int,
        num_features: int,
        *,
        bias: bool = True,
        sampler: str = "orthogonal",
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        orthogonal: bool | None = None,
        **urf_kwargs,
    ):
        super().__init__()
        if isinstance(activation, str):
            check_in(activation, "activation", ACTIVATIONS)
        elif not isinstance(activation, SpectralMeasure):
            raise ValueError(
                f"activation must be one of {list(ACTIVATIONS)} or a SpectralMeasure, "
                f"got {activation!r}"
            )
        self.activation = activation
        self.in_features, self.num_features, self.bias = in_features, num_features, bias
        sampler = resolve_sampler(sampler, orthogonal, "SNNKMaps")
        if activation == "relu":
            if urf_kwargs:
                raise ValueError(f"options {sorted(urf_kwargs)} do not apply to activation='relu'")
            self.maps = ArcCosineFeatures(
                in_features + int(bias),
                num_features,
                1,
                sampler=sampler,
                seed=seed,
                dtype=dtype,
                device=device,
            )
        else:
            self.maps = URF(
                activation,
                in_features,
                num_features,
                sampler=sampler,
                seed=seed,
                dtype=dtype,
                device=device,
                **urf_kwargs,
            )
        # Inside a network the towers check shapes, dtypes and devices but not values: a
        # NaN/Inf scan is a host synchronisation per call (as in torch.nn layers).
        self.maps.check_values = False

    @property
    def seed(self) -> int | None:
        return self.maps.seed

    @property
    def sampler(self) -> str:
        """How the rows of ``G`` are drawn."""
        return self.maps.sampler

    def resample(self, seed: int | torch.Generator | None = None) -> None:
        """Draw new random matrices ``G`` (and frequencies) from ``seed``, in place.

        Same shapes, dtype and device; ``None`` draws a seed from the operating system.
        """
        with on_cpu():
            self.maps.resample(seed)
        self.maps.check_values = False

    def _augment(self, x: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
        if not self.bias:
            return x
        col = torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 1)
        return torch.cat([x, col], dim=-1)

    def input_map(self, x: torch.Tensor) -> torch.Tensor:
        """``Φ(x)``: ``(..., d) -> (..., D)``.

        Fourier kinds: rows of norm above the overflow radius ``R`` (:func:`overflow_radius`,
        ``‖x‖ ≈ 12/ω_max`` in float32) are shrunk to norm ``R`` first, so the features stay
        finite (their amplitudes are ``e^{ω²s²‖x‖²/2}``). The estimate is meaningless there
        anyway (variance ``≈ e^{ω²s²‖x‖²}``): pass ``input_norm`` (SNNKLinear) or scale
        the inputs to norm ≲ 1 (the construction warns when no bound is given). This needs
        no value read back to the host, so it also holds under ``torch.compile``.
        """
        if self.activation == "relu":
            return self.maps(self._augment(x, 1.0)) * math.sqrt(0.5)
        if self.maps.is_fourier and x.is_floating_point():
            x = self._bound_norms(x)
        return self.maps.input_map(x)

    def _bound_norms(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with every row of norm above the overflow radius scaled to that norm
        (differentiable; ``1`` exactly as the factor of the other rows)."""
        work = x if x.dtype == torch.float64 else x.to(torch.float32)
        top = self.maps.omega.abs().amax().to(work.dtype) * self.maps.split
        radius = math.sqrt(2.0 * _log_budget(x.dtype, self.num_features)) / top
        # ‖x‖ without overflow of the squares: the row maximum factored out
        amax = work.abs().amax(-1, keepdim=True)
        safe = amax.clamp_min(torch.finfo(work.dtype).tiny)
        norm = amax * torch.linalg.vector_norm(work / safe, dim=-1, keepdim=True)
        return x * (radius / norm).clamp(max=1.0).to(x.dtype)

    def parameter_map(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``Ψ(W, b)``: ``(..., d)`` weights and ``(...)`` biases -> ``(..., D)``."""
        if self.activation == "relu":
            if self.bias:
                if bias is None:
                    bias = torch.zeros(weight.shape[:-1], dtype=weight.dtype, device=weight.device)
                weight = torch.cat([weight, bias.unsqueeze(-1).to(weight.dtype)], -1)
            return self.maps(weight) * math.sqrt(0.5)
        return self.maps.parameter_map(weight, bias if self.bias else None)

    def target(self, z: torch.Tensor) -> torch.Tensor:
        """The activation ``f`` the towers estimate (ReLU for ``"relu"``, see above)."""
        return torch.relu(z) if self.activation == "relu" else self.maps.target(z)


def _check_input_scale(towers: SNNKMaps, input_norm: float | None, dtype: torch.dtype) -> None:
    """Warn or raise when inputs of norm ``input_norm`` break a Fourier-kind estimate.

    Fourier kinds scale ``Φ(x)`` by ``exp(ω² s² ‖x‖²/2)``: the estimate's variance grows
    like ``E[exp(ω² s² ‖x‖²)]`` and the features would overflow past the radius ``R`` of
    :func:`overflow_radius` (``‖x‖ ≈ 12`` in float32 for ``cos``), where
    :meth:`SNNKMaps.input_map` shrinks the rows to norm ``R`` instead. ``input_norm=None``
    (no bound known): a :class:`~snnk.features.VarianceWarning` with the fix; a known norm
    beyond ``R``: ``ValueError``; one that explodes the variance: a warning. Nothing is
    checked for ``"relu"`` and ``"exp"``, whose features cannot overflow from finite inputs.
    """
    if not _is_fourier(towers.activation):
        return
    maps = towers.maps
    kind = towers.activation if isinstance(towers.activation, str) else "SpectralMeasure"
    radius = overflow_radius(towers, dtype)
    if input_norm is None:
        warnings.warn(
            f"activation={kind!r} without input_norm: the estimate's variance grows like "
            f"exp(‖x‖²), and Φ(x) overflows {dtype} beyond ‖x‖ ≈ {radius:.3g}, so inputs "
            "are shrunk to that norm there (a hidden state of width 768 has ‖x‖ ≈ 28); "
            "pass input_norm=1.0, or rescale the inputs to norm ≲ 1 yourself",
            VarianceWarning,
            stacklevel=3,
        )
        return
    if input_norm > radius:
        raise ValueError(
            f"input_norm={input_norm} makes Φ(x) = exp(ω² s² ‖x‖²/2)·[cos, sin] overflow "
            f"{dtype} (inputs up to norm {radius:.3g} stay finite); use input_norm ≲ 1"
        )
    log_moment = maps.measure.log_second_moment((maps.split * input_norm) ** 2)
    if log_moment > _EXPLODES:
        factor = "infinite" if log_moment == math.inf else f"e^{log_moment:.3g}"
        warnings.warn(
            f"input_norm={input_norm}: the URF estimate's variance explodes (second-moment "
            f"factor {factor}); use a smaller input_norm (or a smaller split)",
            VarianceWarning,
            stacklevel=3,
        )
