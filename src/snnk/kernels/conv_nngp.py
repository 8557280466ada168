r"""Kernels of infinitely wide convolutional networks: the CNN NNGP and NTK (GAP or flatten).

A network ``[Conv(q) → φ] x L → readout → Dense`` in the NTK parameterisation, every
convolution ``z_s = (σ_w/√(|q| C)) Σ_δ W_δ a_{s+δ} + σ_b b`` with ``|q|`` filter offsets
``δ``, tends as every channel count grows to a Gaussian process whose covariance between two
images ``x, x′`` is a ``P x P`` matrix over position pairs ``(s, s′)`` (``P = HW``) following
(Novak et al. 2019; Arora et al. 2019; the conventions of neural-tangents 0.6.5)::

    K⁰[s, s′] = ⟨x_s, x′_s′⟩ / C
    Σ¹[s, s′] = (σ_w²/|q|) Σ_δ K⁰[s+δ, s′+δ] + σ_b²,                Θ¹ = Σ¹
    for ℓ = 1..L:
        K̃ = E[φ(u) φ(v)],  Σ̇ = E[φ′(u) φ′(v)],  (u, v) ~ N(0, [[Σ(x,x)[s,s], Σ[s,s′]],
                                                           [Σ[s,s′], Σ(x′,x′)[s′,s′]]])
        Σˡ⁺¹[s, s′] = (σ_w²/|q|) Σ_δ K̃[s+δ, s′+δ] + σ_b²
        Θˡ⁺¹[s, s′] = Σˡ⁺¹[s, s′] + (σ_w²/|q|) Σ_δ (Θˡ ⊙ Σ̇)[s+δ, s′+δ]

where the last step (``ℓ = L``) is the readout instead: global average pooling then a dense
layer gives ``NNGP = σ_w² mean_{s,s′} K̃ + σ_b²`` and ``NTK = NNGP + σ_w² mean_{s,s′} Θᴸ ⊙ Σ̇``;
flattening gives the same with the mean over ``s = s′`` only. ``"same"`` padding adds zeros
outside the image but keeps the divisor ``|q|``; ``"circular"`` wraps. The Gaussian
expectations are those of the fully connected kernels (:mod:`snnk.kernels._nngp_maps`: closed
forms for ReLU / leaky ReLU / abs, erf and GELU, Gauss–Hermite quadrature otherwise).

Cost: global average pooling needs every position pair, ``O(N₁N₂ P² |q|)`` time per layer
and ``(b₁, P, b₂, P)`` buffers per tile of ``b₁ x b₂`` image pairs; flattening needs only
``s = s′``, ``O(N₁N₂ P |q|)``. The "diagonal convolution" ``Σ_δ K[s+δ, s′+δ]`` is separable:
one pass of shifted slice additions along the rows ``(h, h′)``, one along the columns
``(w, w′)``, in place when autograd is off; the first layer is one GEMM of image patches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from snnk._utils import (
    as_float_tensor,
    check_in,
    check_positive_int,
    check_same_device,
    compute_dtype,
    iter_blocks,
)
from snnk._utils.blocks import KERNEL_BLOCK_ELEMENTS
from snnk.kernels._base import Kernel
from snnk.kernels._nngp_maps import diag_expectations
from snnk.kernels.nngp import FullyConnectedKernel

__all__ = ["ConvNNGP", "ConvNTK", "ConvolutionalKernel", "convolutional_kernels"]

_PADDINGS = ("same", "circular")
_READOUTS = ("gap", "flatten")
#: live (b₁ P x b₂ P) buffers of one tile of the pooled recursion (sizes the default tile)
_TILE_BUFFERS = 6
#: elements of one pooled tile buffer by default (512 KB in float64): a tile's buffers stay
#: in the CPU caches through a layer's passes. NTK depth 2 of 200 8x8 digits, one thread,
#: torch 2.13: 4x4 image pairs per tile 2.0 s, 2x2 2.5 s, 8x8 3.0 s, 16x16 3.6 s, 24x24 4.4 s
_TILE_ELEMENTS = 1 << 16


def _pair(value: Any, name: str) -> tuple[int, int]:
    items = value if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an integer or a pair (height, width), got {value!r}")
    return tuple(check_positive_int(v, name) for v in items)  # type: ignore[return-value]


def _offsets(size: int) -> list[int]:
    """Filter offsets ``δ`` of a 'same' convolution of odd or even ``size`` (lax's padding:
    ``(size - 1) // 2`` before, the rest after)."""
    before = (size - 1) // 2
    return [t - before for t in range(size)]


def _axis_sum(src, dst, dims: tuple[int, ...], n: int, offsets: list[int], circular: bool):
    """``dst[.., i, .., i′, ..] = Σ_δ src[.., i+δ, .., i′+δ, ..]`` along the axes ``dims``
    (all of length ``n``), zero outside for 'same', wrapped for 'circular'."""
    if 0 in offsets:
        dst.copy_(src)
    else:
        dst.zero_()
    for delta in offsets:
        if delta == 0:
            continue
        if circular:
            d = delta % n
            # (destination start, source start, length) of the two wrapped pieces
            pieces = [(0, d, n - d), (n - d, 0, d)]
        elif abs(delta) < n:
            pieces = [(max(0, -delta), max(0, delta), n - abs(delta))]
        else:
            continue
        grids = [[]]
        for _ in dims:
            grids = [[*g, p] for g in grids for p in pieces if p[2] > 0]
        for grid in grids:
            out, inp = dst, src
            for dim, (o, s, length) in zip(dims, grid, strict=True):
                out, inp = out.narrow(dim, o, length), inp.narrow(dim, s, length)
            out.add_(inp)
    return dst


def _take(layers: list[tuple], rows: slice) -> list[tuple]:
    """The images ``rows`` of per-layer ``(Σ, K̃, Σ̇ or None)`` position values."""
    return [tuple(None if t is None else t[rows] for t in v) for v in layers]


def _grad_mode(*ts: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


class ConvolutionalKernel(Kernel):
    r"""Common parameters and recursion of :class:`ConvNNGP` and :class:`ConvNTK`.

    Parameters
    ----------
    depth : int, default 2
        ``L``, the number of ``Conv → φ`` blocks before the readout; ``0`` gives the readout
        of the input kernel (``σ_w²⟨x̄, x̄′⟩/C + σ_b²`` with the position means ``x̄`` for
        ``"gap"``).
    activation : str or callable, default "relu"
        As for :class:`~snnk.kernels.NNGP`: ``"relu"``, ``"leaky_relu"``, ``"abs"``,
        ``"erf"``, ``"gelu"`` in closed form, any other name or elementwise torch function by
        Gauss–Hermite quadrature.
    weight_variance, bias_variance : float, default 1.0 and 0.0
        ``σ_w²`` and ``σ_b²`` of every convolution and of the dense readout.
    filter_size : int or (int, int), default 3
        ``(k_h, k_w)`` of every convolution, ``|q| = k_h k_w`` offsets (stride 1).
    padding : {"same", "circular"}, default "same"
        Zeros outside the image (the divisor stays ``|q|``) or periodic images.
    readout : {"gap", "flatten"}, default "gap"
        Global average pooling (every position pair, ``O(P²)`` per image pair) or flattening
        (``s = s′`` only, ``O(P)``).
    image_shape : (C, H, W) or (H, W), optional
        Shape of one image when the inputs are flat rows ``(n, C·H·W)`` (channel-major, as
        ``X.reshape(n, -1)`` of ``(n, C, H, W)`` images); needed to use the kernel inside
        estimators and compositions, which pass rows.
    method, quadrature_degree, negative_slope
        As for :class:`~snnk.kernels.NNGP`.

    Notes
    -----
    Inputs are images ``(n, C, H, W)``, single-channel images ``(n, H, W)``, or flat rows
    with ``image_shape``; ``X`` and ``Y`` must have the same image shape. The Gram matrix is
    computed in tiles of ``b x b`` image pairs (``block_rows=b``; by default ``b² P²`` is at
    most 2¹⁶ elements per buffer, so a tile's six ``(b, P, b, P)`` buffers stay in the CPU
    caches: 4 x 4 pairs for 8 x 8 images), the upper tiles only when ``Y`` is ``X``, whose
    ``x = x′`` entries follow the per-image recursion exactly (as :meth:`diag`). Per layer
    the pooled kernel costs ``O(N₁N₂P²(k_h + k_w))`` additions (the diagonal convolution is
    separable) and ``O(N₁N₂P²)`` activation maps. float64 stays float64; float16/bfloat16
    run in float32; autograd flows through every step (out of place then).
    """

    def __init__(
        self,
        depth: int = 2,
        activation: str | Callable = "relu",
        weight_variance: float = 1.0,
        bias_variance: float = 0.0,
        *,
        filter_size: int | tuple[int, int] = 3,
        padding: str = "same",
        readout: str = "gap",
        image_shape: tuple[int, ...] | None = None,
        method: str = "auto",
        quadrature_degree: int = 100,
        negative_slope: float = 0.01,
    ):
        self.filter_size = _pair(filter_size, "filter_size")
        self.padding = check_in(padding, "padding", _PADDINGS)
        self.readout = check_in(readout, "readout", _READOUTS)
        q = self.filter_size[0] * self.filter_size[1]
        # the fully connected kernel validates the shared parameters ...
        fc = FullyConnectedKernel(
            depth,
            activation,
            weight_variance,
            bias_variance,
            method=method,
            quadrature_degree=quadrature_degree,
            negative_slope=negative_slope,
        )
        self._fc = fc
        self.depth, self.activation = fc.depth, fc.activation
        self.weight_variance, self.bias_variance = fc.weight_variance, fc.bias_variance
        self.method, self.quadrature_degree = fc.method, fc.quadrature_degree
        self.negative_slope = fc.negative_slope
        # ... and its layer maps, with the conv's σ_w²/|q| and no bias, are the activation
        # step (the bias is added after the spatial sum, not constant at 'same' borders)
        self._maps = FullyConnectedKernel(
            0,
            fc.activation,
            fc.weight_variance / q,
            0.0,
            method=fc.method,
            quadrature_degree=fc.quadrature_degree,
            negative_slope=fc.negative_slope,
        )
        self.image_shape = self._check_image_shape(image_shape)

    @staticmethod
    def _check_image_shape(shape: Any) -> tuple[int, int, int] | None:
        if shape is None:
            return None
        if not isinstance(shape, (tuple, list)) or len(shape) not in (2, 3):
            raise ValueError(f"image_shape must be (C, H, W) or (H, W) of one image, got {shape!r}")
        dims = tuple(check_positive_int(s, "image_shape") for s in shape)
        return dims if len(dims) == 3 else (1, *dims)  # type: ignore[return-value]

    def _params(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "activation": self.activation,
            "weight_variance": self.weight_variance,
            "bias_variance": self.bias_variance,
            "filter_size": list(self.filter_size),
            "padding": self.padding,
            "readout": self.readout,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "method": self.method,
            "quadrature_degree": self.quadrature_degree,
            "negative_slope": self.negative_slope,
        }

    @property
    def num_offsets(self) -> int:
        """``|q|``, the number of filter offsets."""
        return self.filter_size[0] * self.filter_size[1]

    # -- inputs ---------------------------------------------------------------------------------
    def _images(self, X: Any, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
        """``X`` as validated ``(n, C, H, W)`` float images (not yet in the working dtype)."""
        X = as_float_tensor(X, name)
        if X.ndim == 2:
            if self.image_shape is None:
                raise ValueError(
                    f"{name} has shape {tuple(X.shape)}: flat rows need image_shape=(C, H, W) "
                    f"(or pass images shaped (n, C, H, W) or (n, H, W))"
                )
            if X.shape[1] != math.prod(self.image_shape):
                raise ValueError(
                    f"{name} has {X.shape[1]} features per row but image_shape "
                    f"{self.image_shape} holds {math.prod(self.image_shape)}; fix image_shape "
                    f"or the rows"
                )
            X = X.reshape(X.shape[0], *self.image_shape)
        elif X.ndim == 3:
            X = X.unsqueeze(1)
        elif X.ndim != 4:
            raise ValueError(
                f"{name} must be images shaped (n, C, H, W) or (n, H, W), or flat rows (n, "
                f"C*H*W) with image_shape; got shape {tuple(X.shape)}"
            )
        expected = tuple(like.shape[1:]) if like is not None else self.image_shape
        if expected is not None and tuple(X.shape[1:]) != tuple(expected):
            what = "X" if like is not None else "image_shape"
            raise ValueError(
                f"{name} holds images of shape (C, H, W) = {tuple(X.shape[1:])} but {what} "
                f"says {tuple(expected)}; channels and sizes must match"
            )
        return X

    def _prepare(self, X: Any, Y: Any | None):
        Xi = self._images(X, "X")
        Yi = None
        if Y is not None:
            Yi = self._images(Y, "Y", like=Xi)
            check_same_device(Xi, Yi, "X", "Y")
        out_dtype = Xi.dtype if Yi is None else torch.promote_types(Xi.dtype, Yi.dtype)
        work = compute_dtype(out_dtype)
        Xi = Xi.to(work)
        return Xi, (Xi if Yi is None else Yi.to(work)), out_dtype

    def _patches(self, X: torch.Tensor) -> torch.Tensor:
        """``(n, P, C|q|)`` image patches scaled by ``σ_w/√(|q|C)``: their products are the
        first layer's ``Σ¹ - σ_b²`` (one GEMM instead of a spatial sum)."""
        n, C, H, W = X.shape
        kh, kw = self.filter_size
        pads = []
        for k in (kw, kh):  # F.pad takes the last dimension first
            before = (k - 1) // 2
            pads += [before, k - 1 - before]
        if self.padding == "circular" and (kh > H or kw > W):
            idx_h = [(h + d) % H for d in _offsets(kh) for h in range(H)]
            idx_w = [(w + d) % W for d in _offsets(kw) for w in range(W)]
            idx_h = torch.tensor(idx_h, device=X.device).view(kh, H)
            idx_w = torch.tensor(idx_w, device=X.device).view(kw, W)
            Xp = X[:, :, idx_h, :][..., idx_w]  # (n, C, kh, H, kw, W)
            cols = Xp.permute(0, 3, 5, 1, 2, 4).reshape(n, H * W, C * kh * kw)
        else:
            mode = "circular" if self.padding == "circular" else "constant"
            Xp = torch.nn.functional.pad(X, pads, mode=mode)
            cols = Xp.unfold(2, kh, 1).unfold(3, kw, 1)  # (n, C, H, W, kh, kw)
            cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n, H * W, C * kh * kw)
        return cols * math.sqrt(self.weight_variance / (self.num_offsets * C))

    # -- spatial sums ---------------------------------------------------------------------------
    def _spatial_sum(self, src, scratch, view: tuple[int, ...], hdims, wdims):
        """``Σ_δ src[s+δ, s′+δ]`` (rows then columns), the result in ``src``'s buffer when it
        may be overwritten (``scratch`` is the other buffer), else in a fresh tensor."""
        (kh, kw), H, W = self.filter_size, view[hdims[0]], view[wdims[0]]
        circular = self.padding == "circular"
        shape = src.shape
        if scratch is None or _grad_mode(src):
            fresh = (torch.empty(view, dtype=src.dtype, device=src.device) for _ in range(2))
            a = _axis_sum(src.view(view), next(fresh), wdims, W, _offsets(kw), circular)
            return _axis_sum(a, next(fresh), hdims, H, _offsets(kh), circular).view(shape)
        a = _axis_sum(src.view(view), scratch.view(view), wdims, W, _offsets(kw), circular)
        return _axis_sum(a, src.view(view), hdims, H, _offsets(kh), circular).view(shape)

    # -- the recursion on one tile -------------------------------------------------------------
    def _run(self, q12, q11s, q22s, view, hdims, wdims, reduce_dims, ntk: bool, pin, pins):
        """``(NNGP, NTK or None)`` of one tile, reduced over ``reduce_dims`` (the readout).

        ``q12`` is ``Σ¹`` of the tile, ``q11s[ℓ]`` / ``q22s[ℓ]`` the per-position variances
        of layer ``ℓ + 1`` in shapes that broadcast against it. On diagonal tiles
        ``pin(t, values)`` writes the ``x = x′, s = s′`` entries of ``t`` (else ``pin`` is
        ``None``): ``Σˡ``, ``K̃`` and ``Σ̇`` there are ``pins[ℓ]`` of the diagonal recursion
        (the angle forms lose ``~q·ε`` where ``q₁₂ = q₁₁ = q₂₂``, e.g. erf's ``Σ̇``).
        """
        sb, q = self.bias_variance, self.num_offsets
        theta = None
        for layer in range(self.depth):
            if pin is not None:
                q12 = pin(q12, pins[layer][0])
            old = q12
            inplace = not _grad_mode(q12) and not (theta is not None and _grad_mode(theta))
            _, _, k, gain = self._maps.layer(q11s[layer], q22s[layer], q12, derivative=ntk)
            if pin is not None:
                k = pin(k, pins[layer][1])
                gain = pin(gain, pins[layer][2]) if ntk else gain
            if ntk:
                base = q12 if theta is None else theta
                theta = base.mul_(gain) if inplace else base * gain
            if layer == self.depth - 1:
                count = math.prod(q12.shape[d] for d in reduce_dims)
                nngp = k.sum(reduce_dims).mul_(q / count).add_(sb)
                if theta is None:
                    return nngp, None
                return nngp, theta.sum(reduce_dims).mul_(q / count).add_(nngp)
            scratch = (gain if ntk else old) if inplace else None
            q12 = self._spatial_sum(k, scratch, view, hdims, wdims)
            q12 = q12.add_(sb) if inplace else q12 + sb
            if ntk:
                theta = self._spatial_sum(theta, scratch, view, hdims, wdims)
                theta = theta.add_(q12) if inplace else theta + q12
        raise AssertionError("depth 0 is handled by the caller")  # pragma: no cover

    def _position_variances(self, patches: torch.Tensor, H: int, W: int, ntk: bool):
        """``([(Σˡ, σ_w²/|q| K̃ˡ, σ_w²/|q| Σ̇ˡ or None) for ℓ = 1..L], σ_w²/|q| Θᴸ ⊙ Σ̇ᴸ or
        None)`` at ``x = x′, s = s′`` of every image, each ``(n, P)``, from the ``O(nP|q|)``
        diagonal recursion (the last ``K̃`` and ``Θ ⊙ Σ̇`` are what flatten averages)."""
        n = patches.shape[0]
        q = patches.square().sum(-1) + self.bias_variance  # Σ¹(x, x)[s, s]
        theta = q if ntk else None
        view, opts = (n, H, W), self._fc._map_options()
        scale = self.weight_variance / self.num_offsets
        out = []
        for layer in range(self.depth):
            k, kd = diag_expectations(self.activation, q, derivative=ntk, **opts)
            k, kd = k * scale, (kd * scale if ntk else None)
            out.append((q, k, kd))
            if ntk:
                theta = theta * kd
            if layer == self.depth - 1:
                break
            q = self._spatial_sum(k.clone(), torch.empty_like(k), view, (1,), (2,))
            q = q + self.bias_variance
            if ntk:
                theta = self._spatial_sum(theta.clone(), torch.empty_like(k), view, (1,), (2,))
                theta = theta + q
        return out, theta

    # -- tiles ----------------------------------------------------------------------------------
    def _tile_side(self, P: int) -> int:
        """Images of ``X`` (and of ``Y``) per tile: ``side² x P²`` (pooled) or ``side² x P``
        (flatten) elements per buffer, at most ``_TILE_ELEMENTS`` (one image pair at least)."""
        per_pair = P * P if self.readout == "gap" else P
        budget = min(_TILE_ELEMENTS, KERNEL_BLOCK_ELEMENTS // _TILE_BUFFERS)
        return max(1, math.isqrt(budget // per_pair))

    def _pair_tile(self, PA, PB, vA, vB, HW: tuple[int, int], ntk: bool, diagonal: bool):
        """``(NNGP, NTK or None)`` of the image pairs ``PA x PB`` (patches, ``(a, P, C|q|)``);
        ``diagonal``: ``PA is PB`` (pin the ``x = x′, s = s′`` entries)."""
        (H, W), sb = HW, self.bias_variance
        a, P, D = PA.shape
        b = PB.shape[0]
        if self.readout == "gap":
            q12 = torch.addmm(PA.new_tensor(sb), PA.reshape(a * P, D), PB.reshape(b * P, D).T)
            q12 = q12.view(a, P, b, P)
            q11s = [v[0].view(a, P, 1, 1) for v in vA]
            q22s = [v[0].view(1, 1, b, P) for v in vB]
            layout = ((a, H, W, b, H, W), (1, 4), (2, 5), (1, 3))

            def pin(t, values):
                t = t.clone() if _grad_mode(t, values) else t.contiguous()
                t.view(a * P, a * P).diagonal().copy_(values.reshape(-1))
                return t

        else:
            q12 = torch.matmul(PA.transpose(0, 1), PB.permute(1, 2, 0)).permute(1, 2, 0) + sb
            q11s = [v[0].view(a, 1, P) for v in vA]
            q22s = [v[0].view(1, b, P) for v in vB]
            layout = ((a, b, H, W), (2,), (3,), (2,))

            def pin(t, values):
                t = t.clone() if _grad_mode(t, values) else t
                t.diagonal(0, 0, 1).copy_(values.T)
                return t

        pin = pin if diagonal else None
        return self._run(q12.contiguous(), q11s, q22s, *layout, ntk, pin, vA)

    def _self_tile(self, PA, vA, HW: tuple[int, int], ntk: bool):
        """``(NNGP, NTK or None)`` of each image with itself (pooled readout), ``(a,)``."""
        (H, W), a, P = HW, PA.shape[0], PA.shape[1]
        q12 = torch.baddbmm(PA.new_tensor(self.bias_variance), PA, PA.transpose(1, 2))
        q12 = q12.view(a, P, 1, P)

        def pin(t, values):
            t = t.clone() if _grad_mode(t, values) else t.contiguous()
            t.view(a, P, P).diagonal(dim1=1, dim2=2).copy_(values)
            return t

        q11s = [v[0].view(a, P, 1, 1) for v in vA]
        q22s = [v[0].view(a, 1, 1, P) for v in vA]
        layout = ((a, H, W, 1, H, W), (1, 4), (2, 5), (1, 3))
        nngp, theta = self._run(q12, q11s, q22s, *layout, ntk, pin, vA)
        return nngp[:, 0], (None if theta is None else theta[:, 0])

    def _depth0(self, Xi: torch.Tensor, Yi: torch.Tensor):
        """The readout of the input kernel: ``σ_w² mean K⁰ + σ_b²`` (NNGP = NTK)."""
        C, P = Xi.shape[1], Xi.shape[2] * Xi.shape[3]
        if self.readout == "gap":
            A, B, d = Xi.mean((2, 3)), Yi.mean((2, 3)), C
        else:
            A, B, d = Xi.flatten(1), Yi.flatten(1), C * P
        return (A @ B.T) * (self.weight_variance / d) + self.bias_variance

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, X, Y, block_rows: int | None, ntk: bool, verbose: bool = False):
        """``(NNGP, NTK or None)`` Gram matrices ``(n, m)`` in tiles of image pairs (the upper
        tiles only, mirrored, when ``Y`` is ``None``)."""
        same = Y is None
        Xi, Yi, out_dtype = self._prepare(X, Y)
        n, _, H, W = Xi.shape
        m = Yi.shape[0]
        if self.depth == 0:
            K = self._depth0(Xi, Yi).to(out_dtype)
            return K, (K if ntk else None)
        PX = self._patches(Xi)
        PY = PX if same else self._patches(Yi)
        vX = self._position_variances(PX, H, W, ntk=ntk)[0]
        vY = vX if same else self._position_variances(PY, H, W, ntk=False)[0]
        side = self._tile_side(H * W) if block_rows is None else block_rows
        side = check_positive_int(side, "block_rows")
        tiles = [
            (rows, cols)
            for rows in iter_blocks(n, side)
            for cols in iter_blocks(m, side)
            if not same or cols.start >= rows.start
        ]
        nngp = torch.empty(n, m, dtype=Xi.dtype, device=Xi.device)
        theta = torch.empty_like(nngp) if ntk else None
        from tqdm.auto import tqdm

        for rows, cols in tqdm(tiles, disable=not verbose, desc=type(self).__name__):
            diagonal = same and rows == cols
            got = self._pair_tile(
                PX[rows], PY[cols], _take(vX, rows), _take(vY, cols),
                (H, W), ntk, diagonal,
            )  # fmt: skip
            for out, value in zip((nngp, theta), got, strict=True):
                if out is None:
                    continue
                if diagonal:  # exactly symmetric: the upper triangle mirrored
                    value = value.triu() + value.triu(1).T
                out[rows, cols] = value
                if same and not diagonal:
                    out[cols, rows] = value.T
        return nngp.to(out_dtype), (None if theta is None else theta.to(out_dtype))

    def _diag_values(self, X: Any, ntk: bool) -> torch.Tensor:
        Xi, _, out_dtype = self._prepare(X, None)
        n, _, H, W = Xi.shape
        if self.depth == 0:
            A = Xi.mean((2, 3)) if self.readout == "gap" else Xi.flatten(1)
            d = A.shape[1]
            return (A.square().sum(1) * (self.weight_variance / d) + self.bias_variance).to(
                out_dtype
            )
        PX = self._patches(Xi)
        vX, theta = self._position_variances(PX, H, W, ntk=ntk)
        q = self.num_offsets
        if self.readout == "flatten":
            nngp = vX[-1][1].mean(1) * q + self.bias_variance
            out = theta.mean(1) * q + nngp if ntk else nngp
            return out.to(out_dtype)
        side = max(1, _TILE_ELEMENTS // (H * W) ** 2)
        parts = []
        for rows in iter_blocks(n, side):
            nngp, th = self._self_tile(PX[rows], _take(vX, rows), (H, W), ntk)
            parts.append(th if ntk else nngp)
        return torch.cat(parts).to(out_dtype)

    # -- Kernel interface -----------------------------------------------------------------------
    def __call__(
        self, X: Any, Y: Any | None = None, *, block_rows: int | None = None, verbose: bool = False
    ) -> torch.Tensor:
        """Gram matrix ``(n, m)`` of the images ``X`` against ``Y`` (``X`` when ``None``).

        ``block_rows``: images of ``X`` and of ``Y`` per tile (default: the memory budget);
        ``verbose``: a progress bar over the tiles.
        """
        ntk = isinstance(self, ConvNTK)
        nngp, theta = self._evaluate(X, Y, block_rows, ntk=ntk, verbose=verbose)
        out = theta if ntk else nngp
        self._check_overflow(out)
        return out

    def diag(self, X: Any) -> torch.Tensor:
        """``k(x_i, x_i)`` of every image, shape ``(n,)``, from per-image recursions."""
        out = self._diag_values(X, ntk=isinstance(self, ConvNTK))
        self._check_overflow(out)
        return out

    def _gram(self, X, Y):
        # a composed kernel passes Y = X for k(X): keep the pinned, mirrored evaluation
        return self(X, None if Y is X else Y)

    def _diag(self, X):
        return self.diag(X)


class ConvNNGP(ConvolutionalKernel):
    r"""NNGP kernel of an infinitely wide CNN ``[Conv → φ] x depth → GAP (or flatten) → Dense``.

    See :class:`ConvolutionalKernel` for the parameters and the recursion.

    >>> import torch
    >>> from snnk.kernels import ConvNNGP
    >>> k = ConvNNGP(depth=2, weight_variance=2.0, bias_variance=0.1)
    >>> K = k(torch.randn(6, 1, 8, 8, dtype=torch.float64))  # (6, 6)
    """

    name = "conv_nngp"


class ConvNTK(ConvolutionalKernel):
    r"""Neural tangent kernel of an infinitely wide CNN (NTK parameterisation, every weight
    and bias trained); see :class:`ConvolutionalKernel`."""

    name = "conv_ntk"


def convolutional_kernels(
    X: Any,
    Y: Any | None = None,
    *,
    block_rows: int | None = None,
    verbose: bool = False,
    **params: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(NNGP, NTK)`` Gram matrices of an infinitely wide CNN in one pass of the recursion
    (about the cost of the NTK alone); ``params`` are those of :class:`ConvolutionalKernel`."""
    kernel = ConvNTK(**params)
    nngp, ntk = kernel._evaluate(X, Y, block_rows, ntk=True, verbose=verbose)
    kernel._check_overflow(ntk)
    return nngp, ntk
