"""The fast Johnson-Lindenstrauss map of a kernel-sum release (subsampled randomized Fourier).

``P x = √(d/k) · (Q (s ∘ x))_I`` with ``s ∈ {±1}^d`` random signs, ``Q`` the orthonormal
real discrete Fourier transform of ``R^d`` (``Re`` / ``Im`` of ``rfft`` scaled by ``√(2/d)``,
the ``0`` and ``d/2`` terms by ``1/√d``) and ``I`` a uniform ``k``-subset of the ``d`` real
coordinates (Woolfe, Liberty, Rokhlin & Tygert 2008, the SRFT; Ailon & Chazelle 2009). ``Q``
is orthogonal with entries ``≤ √(2/d)``, so after the sign flip every coordinate of ``Q s x``
carries ``≈ ‖x‖²/d`` of the energy and sampling ``k`` of them preserves norms and distances
with the Johnson-Lindenstrauss guarantee of a dense Gaussian map up to a ``log`` factor
(Tropp 2011): ``E‖Px‖² = ‖x‖²`` exactly. A product costs ``O(d log d)`` (one real FFT) for
any ``k`` instead of ``d·k``.

Privacy: like the dense map, ``(s, I)`` is public randomness drawn from the seed alone and
applied row by row to the data and to the queries; the released statistic is
``Σ_x z(P x)`` with ``‖z(·)‖₂ = 1`` whatever its input, so the sensitivities of
:mod:`snnk.private.kde` do not depend on which projection (if any) is used.
"""

from __future__ import annotations

import math

import torch

from snnk._utils import compute_dtype

#: the projections a kernel-sum release can use before its Fourier features
PROJECTIONS = ("gaussian", "fourier")


def real_fourier_layout(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the ``d`` real coordinates of ``Q x`` in ``view_as_real(rfft(x))``
    flattened (length ``2(⌊d/2⌋ + 1)``), and their orthonormalising factors."""
    pairs = torch.arange(1, (d + 1) // 2)  # terms with a distinct conjugate: Re and Im
    parts = [torch.zeros(1, dtype=torch.int64), torch.stack([2 * pairs, 2 * pairs + 1], 1)]
    if d % 2 == 0 and d > 1:  # the Nyquist term is real
        parts.append(torch.full((1,), d, dtype=torch.int64))
    pos = torch.cat([t.reshape(-1) for t in parts])
    return pos, _factors(pos, d)


def _factors(pos: torch.Tensor, d: int) -> torch.Tensor:
    """``1/√d`` for the real-only terms (``0`` and, for even ``d``, ``d/2``), else ``√(2/d)``."""
    single = (pos == 0) | ((pos == d) & (d % 2 == 0))
    out = torch.full(pos.shape, math.sqrt(2.0 / d), dtype=torch.float64)
    out[single] = 1.0 / math.sqrt(d)
    return out


class FourierProjection(torch.nn.Module):
    """``R^d → R^k``, ``x ↦ √(d/k) (Q (s ∘ x))_I`` (see the module docstring); ``k ≤ d``.

    Buffers (persistent, drawn from ``generator`` only): ``signs`` (d,) of ``±1.0`` and
    ``index`` (k,) the sampled positions in the flattened ``view_as_real(rfft(·))``;
    ``scale`` (k,) (``√(d/k)`` times the orthonormalising factor) is derived from them.
    """

    def __init__(self, in_features: int, out_features: int, generator: torch.Generator):
        super().__init__()
        if not 1 <= out_features <= in_features:
            raise ValueError(
                f"projection='fourier' samples projection_dim={out_features} of the "
                f"in_features={in_features} coordinates of a Fourier transform: it needs "
                "projection_dim <= in_features (a projection to as many dimensions as the "
                "input saves nothing; use projection_dim=None)"
            )
        self.in_features, self.out_features = in_features, out_features
        signs = torch.randint(0, 2, (in_features,), generator=generator, dtype=torch.int64)
        pos, _ = real_fourier_layout(in_features)
        pick = torch.randperm(in_features, generator=generator)[:out_features]
        self.register_buffer("signs", (2 * signs - 1).to(torch.float64))
        self.register_buffer("index", pos[pick.sort().values])
        self.register_load_state_dict_post_hook(lambda module, _keys: module.check_buffers())

    def check_buffers(self) -> None:
        """``ValueError`` unless ``signs`` are ``±1`` and ``index`` is ``k`` distinct sorted
        positions of real coordinates (run after every ``load_state_dict``: a tampered file
        must not index out of range or repeat a coordinate)."""
        signs, index = self.signs, self.index
        if signs.device.type == "meta":
            return
        if signs.shape != (self.in_features,) or not bool((signs.abs() == 1).all()):
            raise ValueError(
                f"projection.signs must be {self.in_features} values of +1 or -1 (the public "
                f"randomness of the release); the file was altered"
            )
        valid = torch.zeros(2 * (self.in_features // 2 + 1), dtype=torch.bool)
        valid[real_fourier_layout(self.in_features)[0]] = True
        ok = index.shape == (self.out_features,) and bool(
            ((index >= 0) & (index < valid.numel())).all()
        )
        ok = ok and bool(valid[index.clamp(0, valid.numel() - 1)].all())
        if not ok or (index.numel() > 1 and not bool((index[1:] > index[:-1]).all())):
            raise ValueError(
                f"projection.index must be {self.out_features} distinct increasing positions of "
                f"real Fourier coordinates for in_features={self.in_features}; the file was altered"
            )

    @property
    def scale(self) -> torch.Tensor:
        """``√(d/k)`` times the orthonormalising factor of each sampled coordinate."""
        d = self.in_features
        return _factors(self.index, d) * math.sqrt(d / self.out_features)

    def sampled_transform(self, x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """``(Q (s ∘ x))_I`` before the scale, in ``x``'s dtype (float32 or float64; ``signs``
        in that dtype); ``(..., 0 rows)`` gives an empty ``(..., k)``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"x has {x.shape[-1]} features per row but the projection was drawn for "
                f"in_features={self.in_features}; pass rows of that width"
            )
        if x.numel() == 0:  # the FFT backends refuse empty batches
            return x.new_zeros(*x.shape[:-1], self.out_features)
        c = torch.fft.rfft(x * signs, dim=-1)
        flat = torch.view_as_real(c).reshape(*x.shape[:-1], -1)
        return flat.index_select(-1, self.index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, d) -> (n, k)`` in ``x``'s floating dtype (float16 / bfloat16 computed in
        float32: the FFT has no half-precision CPU kernels)."""
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"x must have a floating dtype, got {x.dtype}; convert it with x.double()"
            )
        work = compute_dtype(x.dtype)
        xw = x.to(work)
        t = self.sampled_transform(xw, self.signs.to(work))
        return (t * self.scale.to(work)).to(x.dtype)
