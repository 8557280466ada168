"""One factory for kernels: names and configs to kernel objects, and the estimators' rule."""

from __future__ import annotations

import math
import numbers
from typing import Any

from snnk._utils import check_positive
from snnk.kernels._base import (
    ArcCosine,
    Gaussian,
    Kernel,
    Laplace,
    Linear,
    Matern,
    Polynomial,
    ProductKernel,
    ScaledKernel,
    ShiftInvariantKernel,
    Softmax,
    SumKernel,
)
from snnk.kernels.conv_nngp import ConvNNGP, ConvNTK
from snnk.kernels.nngp import NNGP, NTK

_REGISTRY: dict[str, type[Kernel]] = {
    cls.name: cls
    for cls in (
        Gaussian,
        Laplace,
        Matern,
        ArcCosine,
        Softmax,
        Polynomial,
        Linear,
        NNGP,
        NTK,
        ConvNNGP,
        ConvNTK,
    )
}
_REGISTRY["rbf"] = Gaussian


def make_kernel(name: str | Kernel, **params: Any) -> Kernel:
    """Build a kernel from a name and flat hyper-parameters, or from a config dict.

    ``make_kernel("gaussian", lengthscale=2.0)``; ``make_kernel(**k.get_config())`` rebuilds
    ``k``, composed kernels included. A :class:`Kernel` instance is returned as it is.
    """
    if isinstance(name, Kernel):
        if params:
            raise ValueError("hyper-parameters cannot be given together with a Kernel instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"kernel must be a name or a snnk.kernels.Kernel, got {name!r}")
    key = name.lower()
    if key in ("sum", "product", "scaled"):
        parts = ("base", "scale") if key == "scaled" else ("k1", "k2")
        if set(params) != set(parts):
            raise ValueError(
                f"make_kernel({key!r}) needs exactly the config keys {list(parts)} (as written by "
                f"Kernel.get_config()), got {sorted(params)}; build composed kernels with "
                f"k1 + k2, k1 * k2 or c * k"
            )
        if key == "scaled":
            return ScaledKernel(_config_kernel(params["base"], "base"), params["scale"])
        cls = SumKernel if key == "sum" else ProductKernel
        return cls(_config_kernel(params["k1"], "k1"), _config_kernel(params["k2"], "k2"))
    if key not in _REGISTRY:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[key](**params)
    except TypeError as exc:
        raise TypeError(f"bad hyper-parameters for kernel {name!r}: {exc}") from exc


def _config_kernel(config: Any, name: str) -> Kernel:
    if isinstance(config, Kernel):
        return config
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"{name} must be a kernel config dict with a 'name' key, got {config!r}")
    return make_kernel(**config)


def kernel_names() -> list[str]:
    """The names :func:`make_kernel` accepts for a single kernel (aliases included)."""
    return sorted(_REGISTRY)


def resolve_kernel(kernel: str | Kernel, lengthscale: float | None = None) -> Kernel:
    """The kernel an estimator's flat ``kernel=`` / ``lengthscale=`` parameters describe.

    A :class:`Kernel` instance is returned as it is (it brings its own hyper-parameters and
    ``lengthscale`` is ignored). A name builds that kernel with ``lengthscale`` when the kernel
    has one and ``lengthscale`` is not ``None``, with its defaults otherwise.

    This is the one rule behind every estimator's ``kernel`` parameter.
    """
    if isinstance(kernel, Kernel):
        return kernel
    if not isinstance(kernel, str):
        raise TypeError(
            f"kernel must be a name ({', '.join(kernel_names())}) or a snnk.kernels.Kernel, "
            f"got {kernel!r}"
        )
    cls = _REGISTRY.get(kernel.lower())
    if lengthscale is not None and cls is not None and issubclass(cls, ShiftInvariantKernel):
        if isinstance(lengthscale, bool) or not isinstance(lengthscale, numbers.Real):
            raise TypeError(f"lengthscale must be a positive finite number, got {lengthscale!r}")
        if not (math.isfinite(lengthscale) and lengthscale > 0):
            raise ValueError(f"lengthscale must be a positive finite number, got {lengthscale!r}")
        return make_kernel(kernel, lengthscale=float(lengthscale))
    return make_kernel(kernel)


def with_lengthscale(kernel: Kernel, lengthscale: float) -> Kernel:
    """A copy of a shift-invariant kernel (or a :class:`ScaledKernel` of one) with a new
    lengthscale; the scale and the other hyper-parameters (e.g. Matérn's ``nu``) are kept."""
    if isinstance(kernel, ScaledKernel):
        return ScaledKernel(with_lengthscale(kernel.base, lengthscale), kernel.scale)
    if not isinstance(kernel, ShiftInvariantKernel):
        raise ValueError(
            f"only a shift-invariant kernel (gaussian, laplace, matern) has a lengthscale to "
            f"change, got {kernel!r}"
        )
    config = kernel.get_config()
    config["lengthscale"] = check_positive(lengthscale, "lengthscale")
    return make_kernel(**config)


def split_scale(kernel: Kernel) -> tuple[ShiftInvariantKernel, float, float]:
    """``(κ, ℓ, c)`` with ``kernel(x, y) = c · κ((x - y)/ℓ)`` and ``κ`` at unit lengthscale.

    Raises a ``ValueError`` for a kernel that is not a (scaled) shift-invariant kernel.
    """
    scale = 1.0
    base = kernel
    if isinstance(base, ScaledKernel):
        scale, base = base.scale, base.base
    if not isinstance(base, ShiftInvariantKernel):
        raise ValueError(
            f"a shift-invariant kernel (gaussian, laplace, matern) is needed, got {kernel!r}"
        )
    unit = with_lengthscale(base, 1.0)
    assert isinstance(unit, ShiftInvariantKernel)
    return unit, float(base.lengthscale), float(scale)
