"""SNNK layers: ``f(Wx + b)`` replaced by ``Φ(x) Ψ(W, b)ᵀ`` (Sehanobish et al., ICLR 2024)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from snnk._utils import as_float_tensor, check_in, check_positive, check_positive_int
from snnk._utils.random import make_generator
from snnk.features import URF, ArcCosineFeatures, SpectralMeasure

ACTIVATIONS = ("relu", "exp", "cos", "sin", "gaussian")


class SNNKMaps(nn.Module):
    """The two towers of one SNNK layer: ``input_map(x)`` and ``parameter_map(W, b)``.

    * ``"relu"``: ``Φ(x) = D^{-1/2} ReLU(G x̃)``, ``Ψ(w, b) = D^{-1/2} ReLU(G w̃)`` with
      ``x̃ = [x; 1]``, ``w̃ = [w; b]`` when ``bias`` (else ``x̃ = x``). ``E[Φ(x)ᵀΨ(w)]`` is
      the arc-cosine kernel ``k_1(x̃, w̃)/2 = ‖x̃‖‖w̃‖(sin θ + (π − θ) cos θ)/(2π)``: **not**
      ``ReLU(wᵀx + b)``; the layer keeps ReLU's scale and positivity but is a different,
      strictly more expressive function of ``(x, w)``.
    * ``"exp"``, ``"cos"``, ``"sin"``, ``"gaussian"``, or a :class:`SpectralMeasure`:
      :class:`snnk.features.URF`, an unbiased estimate of ``f(wᵀx + b)``.
    """

    def __init__(
        self,
        activation: str | SpectralMeasure,
        in_features: int,
        num_features: int,
        *,
        bias: bool = True,
        orthogonal: bool = True,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
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
        sampler = "orthogonal" if orthogonal else "iid"
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

    def _augment(self, x: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
        if not self.bias:
            return x
        col = torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 1)
        return torch.cat([x, col], dim=-1)

    def input_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return self.maps(self._augment(x, 1.0)) * math.sqrt(0.5)
        return self.maps.input_map(x)

    def parameter_map(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
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


class SNNKLinear(nn.Module):
    r"""Drop-in replacement for ``f(Linear(x))``: ``y = Φ(x) Ψ(W, b)ᵀ``.

    The input tower ``Φ`` is random and fixed (persistent buffers from ``seed``); only the
    parameter side trains. With ``D = num_features`` features the forward costs
    ``O(D·d + l·D)`` instead of ``O(l·d)`` and stores ``l·D`` trainable numbers instead of
    ``l(d + 1)``: a saving when ``D < l·d/(l + d)``.

    Parameters
    ----------
    in_features, out_features : int
        ``d`` and ``l``.
    num_features : int
        ``D``, width of both towers (even for Fourier kinds).
    activation : {"relu", "exp", "cos", "sin", "gaussian"} or SpectralMeasure
        ``"relu"`` estimates the arc-cosine kernel ``k_1([x;1], [w;b])/2``, not
        ``ReLU(wᵀx + b)`` (see :class:`SNNKMaps`); the others estimate ``f(wᵀx + b)``
        without bias.
    bias : bool, default True
    mode : {"direct", "weights"}, default "direct"
        ``"direct"`` trains ``Ψ`` itself (parameter ``psi`` of shape ``(l, D)``; cheapest);
        ``"weights"`` trains ``W``, ``b`` through ``Ψ(·)``, keeping the ``f(Wx + b)`` meaning,
        and caches ``Ψ`` in eval mode.
    orthogonal : bool, default True
        Orthogonal random features for ``G``.
    input_norm : float, optional
        If given, inputs are rescaled to this norm over the feature (last) dimension, which
        keeps URF variances bounded.
    seed : int, torch.Generator or None
        Draws ``G`` (and the initial weights, also from this generator: the global RNG is
        never used).
    **urf_kwargs
        ``M`` (exp kind) or ``split`` (Fourier kinds), passed to :class:`snnk.features.URF`.

    Shapes
    ------
    ``(..., d) -> (..., l)``.

    Like ``torch.nn`` layers, ``forward`` checks shapes, dtypes and devices but never reads
    values back to the host (no NaN/Inf scan, no per-call synchronisation on a GPU); the
    initial weights are checked once, at construction.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_features: int,
        activation: str | SpectralMeasure = "relu",
        bias: bool = True,
        mode: str = "direct",
        orthogonal: bool = True,
        input_norm: float | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **urf_kwargs,
    ):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.num_features = check_positive_int(num_features, "num_features")
        self.mode = check_in(mode, "mode", ("direct", "weights"))
        self.input_norm = None if input_norm is None else check_positive(input_norm, "input_norm")
        self.generator, self.seed = make_generator(seed)
        self.towers = SNNKMaps(
            activation,
            in_features,
            num_features,
            bias=bias,
            orthogonal=orthogonal,
            seed=self.generator,
            dtype=dtype,
            device=device,
            **urf_kwargs,
        )
        self.activation, self.has_bias = activation, bias
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        # Initial W, b as nn.Linear draws them (U(±1/√d)), from our own generator.
        bound = 1.0 / math.sqrt(in_features)
        w0 = (torch.rand(out_features, in_features, generator=self.generator) * 2 - 1) * bound
        b0 = (torch.rand(out_features, generator=self.generator) * 2 - 1) * bound if bias else None
        self._init_from(w0.to(**factory), None if b0 is None else b0.to(**factory))

    def _init_from(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        for name in ("psi", "weight", "bias"):
            if name in self._parameters:
                del self._parameters[name]
        self._cache: tuple | None = None
        # Values are checked here, once (NaN/Inf, URF variance warning), not in forward.
        with torch.no_grad(), self.towers.maps._checking_values():
            psi = self.towers.parameter_map(weight, bias)
        if self.mode == "direct":
            self.psi = nn.Parameter(psi.detach().clone())
            self.weight = self.bias = None
        else:
            self.psi = None
            self.weight = nn.Parameter(weight.detach().clone())
            self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        activation: str | SpectralMeasure = "relu",
        num_features: int = 64,
        **kwargs,
    ) -> SNNKLinear:
        """An SNNK layer initialised from a trained ``nn.Linear`` (``Ψ ← Ψ(W, b)``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        kwargs.setdefault("dtype", linear.weight.dtype)
        kwargs.setdefault("device", linear.weight.device)
        layer = cls(
            linear.in_features,
            linear.out_features,
            num_features,
            activation,
            bias=linear.bias is not None,
            **kwargs,
        )
        layer._init_from(
            linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        )
        return layer

    def parameter_features(self) -> torch.Tensor:
        """``Ψ(W, b)``, shape ``(l, D)`` (cached in eval mode for ``mode="weights"``)."""
        if self.mode == "direct":
            return self.psi
        key = (self.weight._version, None if self.bias is None else self.bias._version)
        if not self.training and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        psi = self.towers.parameter_map(self.weight, self.bias)
        if not self.training:
            self._cache = (key, psi.detach())
        else:
            self._cache = None
        return psi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_float_tensor(
            x, "x", min_ndim=1, last_dim=self.in_features, check_finite_values=False
        )
        if self.input_norm is not None:
            x = F.normalize(x, dim=-1) * self.input_norm
        phi = self.towers.input_map(x)
        psi = self.parameter_features()
        return phi @ psi.to(phi.dtype).T

    @property
    def num_parameters(self) -> int:
        """Trainable numbers of this layer."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops(self) -> dict[str, int]:
        """Multiply-adds per input row: the dense layer's vs this layer's, and the saving."""
        d, l, D = self.in_features, self.out_features, self.num_features
        proj = self.towers.maps.projection.num_rows * (
            d + int(self.activation == "relu" and self.has_bias)
        )
        ours = proj + l * D
        return {"dense": l * d, "snnk": ours, "saved": l * d - ours}

    def extra_repr(self) -> str:
        act = (
            self.activation if isinstance(self.activation, str) else type(self.activation).__name__
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_features={self.num_features}, activation={act!r}, bias={self.has_bias}, "
            f"mode={self.mode!r}, seed={self.seed}"
        )


def snnkify(
    model: nn.Module,
    activation_map: dict[type[nn.Module], str | SpectralMeasure] | None = None,
    num_features: int | Sequence[int] = 64,
    *,
    seed: int | None = 0,
    filter: Callable[[str, nn.Linear], bool] | None = None,
    **kwargs,
) -> nn.Module:
    """Replace every ``Linear``-then-activation pair of ``model`` by an :class:`SNNKLinear`.

    Pairs are consecutive children of ``nn.Sequential`` containers, at any depth. The
    ``Linear`` becomes ``SNNKLinear.from_linear(...)`` and the activation an ``nn.Identity``
    (the SNNK layer includes it). Each new layer is a distinct module with its own seed
    (``seed + i``). The model is modified in place and returned.

    Parameters
    ----------
    activation_map : dict, default ``{nn.ReLU: "relu"}``
        Activation module type -> SNNK activation.
    num_features : int or sequence of int
        ``D`` of every new layer, or one ``D`` per replaced pair in visiting order (the
        first layer sees the raw input and usually deserves the most features). A sequence
        must have exactly one entry per replaced pair.
    filter : callable, optional
        ``filter(qualified_name, linear)``; pairs for which it returns False are kept.
    **kwargs
        Passed to :meth:`SNNKLinear.from_linear` (``mode``, ``input_norm``, ...).
    """
    amap = {nn.ReLU: "relu"} if activation_map is None else dict(activation_map)
    widths = None if isinstance(num_features, int) else [int(m) for m in num_features]
    counter = [0]

    def visit(module: nn.Module, prefix: str) -> None:
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                lin, act = module._modules[a], module._modules[b]
                kind = next((v for k, v in amap.items() if isinstance(act, k)), None)
                if isinstance(lin, nn.Linear) and kind is not None:
                    qual = f"{prefix}{a}"
                    if filter is not None and not filter(qual, lin):
                        continue
                    i = counter[0]
                    if widths is not None and i >= len(widths):
                        raise ValueError(
                            f"num_features has {len(widths)} entries but the model has more "
                            "Linear-then-activation pairs; give one entry per pair (or an int)"
                        )
                    m = num_features if widths is None else widths[i]
                    s = None if seed is None else seed + i
                    counter[0] += 1
                    module._modules[a] = SNNKLinear.from_linear(lin, kind, m, seed=s, **kwargs)
                    module._modules[b] = nn.Identity()
        for name, child in module.named_children():
            if not isinstance(child, SNNKLinear):
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    if widths is not None and counter[0] != len(widths):
        raise ValueError(
            f"num_features has {len(widths)} entries but {counter[0]} pairs were replaced; "
            "give one entry per replaced pair"
        )
    return model
