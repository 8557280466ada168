"""Common anatomy of random feature maps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from snnk._utils import (
    all_finite,
    as_float_tensor,
    check_finite,
    check_same_device,
    compute_dtype,
    make_generator,
)
from snnk.features._projection import RandomProjection
from snnk.kernels import GaussianSpectrum


class RandomFeatures(nn.Module):
    """Base class: a feature map ``φ: R^d → R^D`` whose random draw is fixed at construction.

    Subclasses draw their random matrices once, from a CPU ``torch.Generator`` seeded by
    ``seed``, into persistent buffers; nothing is redrawn unless :meth:`resample` is called,
    and the global RNGs of torch and NumPy are never used.

    ``forward`` accepts inputs of shape ``(..., d)`` and returns ``(..., D)`` in the input's
    dtype (float16/bfloat16 are computed in float32 and cast back).
    """

    in_features: int
    num_features: int
    #: Check inputs for NaN/Inf (and, for :class:`~snnk.features.URF`, warn on norms that
    #: explode the variance). Both read values back to the host, one synchronisation per
    #: call on a GPU; layers that use a feature map inside a network switch it off and,
    #: like ``torch.nn`` layers, check only shapes, dtypes and devices.
    check_values: bool = True

    def __init__(self, in_features: int, num_features: int, seed: int | torch.Generator | None):
        super().__init__()
        self.in_features = in_features
        self.num_features = num_features
        self.generator, self.seed = make_generator(seed)

    # -- helpers for subclasses --------------------------------------------------------------
    def _reference_buffer(self) -> torch.Tensor | None:
        for b in self.buffers():
            return b
        return None

    def _prepare(self, x, name: str = "x") -> tuple[torch.Tensor, tuple[int, ...], torch.dtype]:
        """Validate ``x``, flatten it to ``(N, d)`` in the compute dtype."""
        x = as_float_tensor(
            x, name, min_ndim=1, last_dim=self.in_features, check_finite_values=False
        )
        ref = self._reference_buffer()
        if ref is not None:
            check_same_device(ref, x, "this module", name)
        if self.check_values:
            check_finite(x, name)
        lead = tuple(x.shape[:-1])
        return x.reshape(-1, self.in_features).to(compute_dtype(x.dtype)), lead, x.dtype

    def _check_output(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``z`` unchanged, or a ``ValueError`` when finite input gave non-finite features
        (an unbounded map, e.g. arc-cosine of order 2, overflowing the output dtype)."""
        if (
            self.check_values
            and z.device.type != "meta"
            and not torch.compiler.is_compiling()
            and not all_finite(z)
        ):
            big = float(x.detach().abs().max())
            raise ValueError(
                f"{type(self).__name__} overflows {z.dtype} for inputs x of magnitude "
                f"{big:.3g}; scale x down (e.g. sklearn.preprocessing.StandardScaler)"
                + ("" if z.dtype == torch.float64 else " or pass float64 inputs")
            )
        return z

    @contextlib.contextmanager
    def _checking_values(self) -> Iterator[None]:
        """Turn :attr:`check_values` on for the calls inside the block."""
        old, self.check_values = self.check_values, True
        try:
            yield
        finally:
            self.check_values = old

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ):
        # torch reports a shape mismatch only after loading the rest; check first and name the
        # key and the fix (a map of another size cannot hold these random matrices).
        for name, current in self.named_buffers():
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and saved.shape != current.shape:
                raise ValueError(
                    f"state dict entry {prefix + name!r} has shape {tuple(saved.shape)} but this "
                    f"{type(self).__name__} holds {tuple(current.shape)} (in_features="
                    f"{self.in_features}, num_features={self.num_features}); build the map with "
                    f"the in_features / num_features / sampler it was saved with"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def resample(self, seed: int | torch.Generator | None = None) -> None:
        """Draw new random matrices (in place, same shapes, dtype and device)."""
        ref = self._reference_buffer()
        self.generator, self.seed = make_generator(seed)
        self._draw(
            dtype=None if ref is None else ref.dtype, device=None if ref is None else ref.device
        )

    def _draw(self, dtype, device) -> None:
        raise NotImplementedError

    def _gaussian_projection(self, num_rows: int, dtype, device) -> RandomProjection:
        """A ``num_rows x in_features`` projection with N(0, I) rows from ``self.sampler``."""
        return RandomProjection(
            self.in_features,
            num_rows,
            GaussianSpectrum(),
            self.sampler,
            self.generator,
            dtype=dtype,
            device=device,
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_features={self.num_features}, seed={self.seed}"
