"""Argument checks shared by the samplers of :mod:`snnk.sampling` (private to the package)."""

from __future__ import annotations

import numbers

import torch

from snnk._utils.random import make_generator
from snnk._utils.threads import single_thread_if
from snnk._utils.validation import as_float_tensor, check_positive_int

F64 = torch.float64


def as_generator(generator) -> torch.Generator:
    """A CPU ``torch.Generator``: as given, or seeded from an int (``None``: OS entropy)."""
    if isinstance(generator, torch.Generator) or generator is None:
        return make_generator(generator)[0]
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(
            f"generator must be a torch.Generator, an int seed or None, got {generator!r}"
        )
    return make_generator(int(generator))[0]


def as_matrix(x, name: str) -> torch.Tensor:
    """``x`` as a finite float64 matrix of shape ``(N, r)`` (float16/bfloat16/float32 upcast)."""
    t = as_float_tensor(x, name)
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shapes only, no values); pass real values")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a matrix of shape (N, r), got shape {tuple(t.shape)}")
    return t.to(F64)


def as_square(x, name: str) -> torch.Tensor:
    """``x`` as a finite symmetric float64 matrix of shape ``(N, N)``: ``(x + xᵀ)/2``."""
    t = as_matrix(x, name)
    if t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(t.shape)}")
    return 0.5 * t + 0.5 * t.T  # not (t + tᵀ)/2: that overflows for entries above 9e307


def check_eigenvalues_finite(lam: torch.Tensor, name: str) -> None:
    """ValueError when the eigenvalues of a finite ``name`` overflow float64 (above ~1.8e308)."""
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(
            f"the eigenvalues of {name} overflow float64; divide {name} by a constant "
            f"(e.g. its largest entry) first"
        )


def input_eps(x) -> float:
    """Machine epsilon of ``x``'s floating dtype (float64's for anything else or ``None``)."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps
    return torch.finfo(F64).eps


def check_count(value, name: str) -> int:
    """A positive integer (``num_samples``, ``k``, ...)."""
    return check_positive_int(value, name)


def uniforms(shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
    """Uniforms in ``(0, 1]`` (never 0, so an inverse-CDF draw never lands on a zero mass)."""
    u = 1.0 - torch.rand(shape, generator=generator, dtype=F64)
    return u.to(device)


#: below this many flops per step a chain runs on one thread (thread start-up and spinning
#: cost more than the work, and on a busy machine they cost milliseconds per call)
SMALL_WORK = 1 << 24


def threads_for(work: float):
    """One intra-op thread when ``work`` (flops per step) is below :data:`SMALL_WORK`."""
    return single_thread_if(work < SMALL_WORK)
