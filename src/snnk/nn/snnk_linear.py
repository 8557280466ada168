"""SNNK layers: ``f(Wx + b)`` replaced by ``Φ(x) Ψ(W, b)ᵀ`` (Sehanobish et al., ICLR 2024)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from snnk._utils import as_float_tensor, check_in, check_positive, check_positive_int
from snnk._utils.random import make_generator, on_cpu
from snnk.features import SpectralMeasure
from snnk.nn.towers import (
    ACTIVATIONS,
    SNNKMaps,
    _check_input_scale,
    resolve_sampler,
)

__all__ = ["ACTIVATIONS", "SNNKLinear", "SNNKMaps", "snnkify"]


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
        without bias. The Fourier kinds (``cos``, ``sin``, ``gaussian``, a measure) need
        small inputs: their variance grows like ``exp(‖x‖²)``, and rows beyond the norm
        where ``Φ(x)`` would overflow (``≈ 12/max|ω|`` in float32, see
        :meth:`SNNKMaps.input_map`) are shrunk to it, so the output stays finite but
        meaningless there; without ``input_norm`` a
        :class:`~snnk.features.VarianceWarning` is raised at construction.
    bias : bool, default True
    mode : {"direct", "weights"}, default "direct"
        ``"direct"`` trains ``Ψ`` itself (parameter ``psi`` of shape ``(l, D)``; cheapest);
        ``"weights"`` trains ``W``, ``b`` through ``Ψ(·)``, keeping the ``f(Wx + b)`` meaning,
        and caches ``Ψ`` in eval mode.
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
        How the rows of ``G`` are drawn.
    input_norm : float, optional
        If given, inputs are rescaled to this norm over the feature (last) dimension, which
        keeps URF variances bounded.
    seed : int, torch.Generator or None
        Draws ``G`` (and the initial weights, also from this generator: the global RNG is
        never used).
    dtype, device
        Of the parameters and buffers (``device`` defaults to torch's default device, so
        ``with torch.device("meta"): SNNKLinear(...)`` builds an unallocated layer; the
        random draws always happen on the CPU).
    orthogonal : bool, optional
        Deprecated: ``True`` is ``sampler="orthogonal"``, ``False`` is ``sampler="iid"``.
    **urf_kwargs
        ``M`` (exp kind) or ``split`` (Fourier kinds), passed to :class:`snnk.features.URF`.

    Shapes
    ------
    ``(..., d) -> (..., l)``.

    Like ``torch.nn`` layers, ``forward`` checks shapes, dtypes and devices but never reads
    values back to the host (no NaN/Inf scan, no per-call synchronisation on a GPU, nothing
    that stops ``torch.compile(fullgraph=True)``); the initial weights are checked once, at
    construction.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_features: int,
        activation: str | SpectralMeasure = "relu",
        bias: bool = True,
        mode: str = "direct",
        sampler: str = "orthogonal",
        input_norm: float | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        orthogonal: bool | None = None,
        **urf_kwargs,
    ):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.num_features = check_positive_int(num_features, "num_features")
        self.mode = check_in(mode, "mode", ("direct", "weights"))
        self.input_norm = None if input_norm is None else check_positive(input_norm, "input_norm")
        sampler = resolve_sampler(sampler, orthogonal, "SNNKLinear")
        self.generator, self.seed = make_generator(seed)
        dtype = dtype or torch.get_default_dtype()
        with on_cpu() as default_device:
            device = default_device if device is None else device
            self.towers = SNNKMaps(
                activation,
                in_features,
                num_features,
                bias=bias,
                sampler=sampler,
                seed=self.generator,
                dtype=dtype,
                device=device,
                **urf_kwargs,
            )
            self.activation, self.has_bias = activation, bias
            _check_input_scale(self.towers, self.input_norm, dtype)
            w0, b0 = self._initial_weights()
        w0 = w0.to(dtype=dtype, device=device)
        self._init_from(w0, None if b0 is None else b0.to(w0))

    def _initial_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W₀, b₀ ~ U(±1/√d)`` as ``nn.Linear`` draws them, from the layer's generator."""
        bound = 1.0 / math.sqrt(self.in_features)
        gen = self.generator
        w0 = (torch.rand(self.out_features, self.in_features, generator=gen) * 2 - 1) * bound
        b0 = (torch.rand(self.out_features, generator=gen) * 2 - 1) * bound
        return w0, b0 if self.has_bias else None

    def _parameter_features(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``Ψ(W, b)`` with the values checked once (NaN/Inf, URF variance warning)."""
        if weight.is_meta:
            return self.towers.parameter_map(weight, bias)
        with torch.no_grad(), self.towers.maps._checking_values():
            return self.towers.parameter_map(weight, bias)

    def _init_from(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        for name in ("psi", "weight", "bias"):
            if name in self._parameters:
                del self._parameters[name]
        self._cache: tuple | None = None
        if self.mode == "direct":
            psi = self._parameter_features(weight, bias)
            self.psi = nn.Parameter(psi.detach().clone())
            self.weight = self.bias = None
        else:
            self._parameter_features(weight, bias)  # checks the values
            self.psi = None
            self.weight = nn.Parameter(weight.detach().clone())
            self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def reset_parameters(self) -> None:
        """Draw everything again from ``seed``: ``G`` (and frequencies), then ``W₀, b₀``.

        With an integer ``seed`` the layer ends up bit for bit as it was built, so a layer
        built on the meta device, materialised by ``to_empty(device=...)`` and reset holds
        the values a layer built there directly would hold. With a generator as ``seed``
        the draws continue from its current state. Parameters are written in place (an
        optimiser holding them keeps working); a layer from :meth:`from_linear` returns to a
        random initialisation.
        """
        if self.seed is not None:
            self.generator = make_generator(self.seed)[0]
        self.towers.resample(self.generator)
        w0, b0 = self._initial_weights()
        ref = self.psi if self.mode == "direct" else self.weight
        w0 = w0.to(dtype=ref.dtype, device=ref.device)
        b0 = None if b0 is None else b0.to(w0)
        with torch.no_grad():
            if self.mode == "direct":
                self.psi.copy_(self._parameter_features(w0, b0))
            else:
                self._parameter_features(w0, b0)
                self.weight.copy_(w0)
                if self.bias is not None:
                    self.bias.copy_(b0)
        self._cache = None

    def resample(self, seed: int | torch.Generator | None = None) -> None:
        """Draw a new input tower ``G`` (and frequencies) from ``seed``; parameters are kept.

        In ``mode="weights"`` ``Ψ(W, b)`` follows the new draw, so the layer still estimates
        ``f(Wx + b)`` (with a fresh error); in ``mode="direct"`` the trained ``Ψ`` belonged to
        the old draw, and the layer's function changes. ``None`` draws a seed from the
        operating system; :attr:`seed` records the new one.
        """
        self.generator, self.seed = make_generator(seed)
        self.towers.resample(self.generator)
        self._cache = None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ):
        # Check every shape below this layer before torch copies any of them: a state dict of
        # another size must fail with the key named and leave the layer as it was.
        for name, current in self.state_dict(keep_vars=True).items():
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and saved.shape != current.shape:
                raise ValueError(
                    f"cannot load {prefix + name!r} into this SNNKLinear: the state dict holds "
                    f"shape {tuple(saved.shape)}, the layer has {tuple(current.shape)} "
                    f"({self.extra_repr()}); build the layer with the sizes the state dict "
                    "was saved with"
                )
        self._cache = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

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
    def sampler(self) -> str:
        """How the rows of ``G`` are drawn."""
        return self.towers.sampler

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


def check_activation_map(
    activation_map: dict[type[nn.Module], str | SpectralMeasure] | None,
) -> dict[type[nn.Module], str | SpectralMeasure]:
    """``activation_map`` as a dict of module types to SNNK activations, or a clear error."""
    if activation_map is None:
        return {nn.ReLU: "relu"}
    try:
        amap = dict(activation_map)
    except (TypeError, ValueError):
        raise TypeError(
            "activation_map must be a dict of activation module types to SNNK activations, "
            f"e.g. {{torch.nn.ReLU: 'relu'}}; got {type(activation_map).__name__}"
        ) from None
    for key, kind in amap.items():
        if not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise TypeError(
                f"activation_map keys must be torch.nn.Module classes such as torch.nn.ReLU, "
                f"got {key!r}"
            )
        if not (isinstance(kind, SpectralMeasure) or kind in ACTIVATIONS):
            raise ValueError(
                f"activation_map[{key.__name__}] must be one of {list(ACTIVATIONS)} or a "
                f"SpectralMeasure, got {kind!r}"
            )
    return amap


def check_widths(num_features: int | Sequence[int]) -> list[int] | None:
    """``None`` for one width everywhere, else the list of per-layer widths."""
    if isinstance(num_features, int) and not isinstance(num_features, bool):
        check_positive_int(num_features, "num_features")
        return None
    if isinstance(num_features, str) or not isinstance(num_features, Sequence):
        raise TypeError(
            "num_features must be an int or a sequence of ints (one per replaced pair), got "
            f"{num_features!r}"
        )
    return [check_positive_int(m, "num_features") for m in num_features]


def _pairs(
    model: nn.Module, amap: dict[type[nn.Module], str | SpectralMeasure]
) -> Iterator[tuple[nn.Sequential, str, str, str, str | SpectralMeasure]]:
    """``(container, linear name, activation name, qualified name, kind)`` of every pair.

    Consecutive ``Linear``-then-activation children of every ``nn.Sequential``, in visiting
    order (depth first, a container's pairs before its children); each pair once even if
    its container is shared, and nothing inside a pair is visited.
    """
    seen: set[tuple[int, str]] = set()

    def visit(module: nn.Module, prefix: str) -> Iterator:
        taken: set[str] = set()
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                lin, act = module._modules[a], module._modules[b]
                kind = next((v for k, v in amap.items() if isinstance(act, k)), None)
                if a in taken or (id(module), a) in seen:
                    continue
                if isinstance(lin, nn.Linear) and kind is not None:
                    seen.add((id(module), a))
                    taken.update((a, b))
                    yield module, a, b, f"{prefix}{a}", kind
        for name, child in module.named_children():
            if name not in taken and not isinstance(child, SNNKLinear):
                yield from visit(child, f"{prefix}{name}.")

    yield from visit(model, "")


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
    (``seed + i``). The model is modified in place and returned. Every new layer is built
    before the first one is put in: if anything fails (a layer that cannot be converted, a
    ``filter`` that raises, a wrong number of widths), ``model`` is left as it was.

    Parameters
    ----------
    model : torch.nn.Module
    activation_map : dict, default ``{nn.ReLU: "relu"}``
        Activation module type -> SNNK activation.
    num_features : int or sequence of int
        ``D`` of every new layer, or one ``D`` per replaced pair in visiting order (the
        first layer sees the raw input and usually deserves the most features). A sequence
        must have exactly one entry per replaced pair.
    seed : int or None, default 0
    filter : callable, optional
        ``filter(qualified_name, linear)``; pairs for which it returns False are kept.
    **kwargs
        Passed to :meth:`SNNKLinear.from_linear` (``mode``, ``input_norm``, ``sampler``, ...).

    Raises
    ------
    TypeError
        ``model`` is not a module, or ``activation_map`` / ``num_features`` have the wrong type.
    ValueError
        A sequence ``num_features`` without one entry per replaced pair, or an activation
        that is not an SNNK activation.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (e.g. an nn.Sequential MLP), got "
            f"{type(model).__name__}; snnkify changes a model in place and returns it"
        )
    amap = check_activation_map(activation_map)
    widths = check_widths(num_features)
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be a callable filter(name, linear) -> bool, got {filter!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    plan = []
    for container, a, b, qual, kind in _pairs(model, amap):
        lin = container._modules[a]
        if filter is not None and not filter(qual, lin):
            continue
        i = len(plan)
        if widths is not None and i >= len(widths):
            raise ValueError(
                f"num_features has {len(widths)} entries but the model has more "
                "Linear-then-activation pairs; give one entry per pair (or an int)"
            )
        m = num_features if widths is None else widths[i]
        s = None if seed is None else seed + i
        plan.append((container, a, b, SNNKLinear.from_linear(lin, kind, m, seed=s, **kwargs)))
    if widths is not None and len(plan) != len(widths):
        raise ValueError(
            f"num_features has {len(widths)} entries but {len(plan)} pairs were replaced; "
            "give one entry per replaced pair"
        )
    for container, a, b, layer in plan:
        container._modules[a] = layer
        container._modules[b] = nn.Identity()
    return model
