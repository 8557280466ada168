"""The SNNK adapter module and how it is attached after an existing layer."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from snnk._utils import check_in, check_positive_int, draw_seed, make_generator
from snnk.nn.adapters._layout import unwrap
from snnk.nn.snnk_linear import ACTIVATIONS, SNNKLinear


class SNNKAdapter(nn.Module):
    r"""One SNNK adapter: ``a(x) = x + v ⊙ Φ(x) Ψᵀ`` (or ``x + U Φ(x) Ψᵀ + c``).

    The down map is an :class:`~snnk.nn.SNNKLinear` without bias,
    ``Φ(x) Ψᵀ`` with ``Φ(x) = D^{-1/2} ReLU(G x)`` for ``activation="relu"`` (its expectation
    over ``G`` is the arc-cosine kernel ``k_1(x, ψ)/2`` of ``x`` with each row of ``Ψ``).
    ``Ψ`` starts as ``Ψ(W₀)`` for ``W₀ ~ U(±H^{-1/2})`` (Kaiming-uniform with ``a = √5``,
    the official code's ``"mam"`` initialisation) drawn from the adapter's own generator.

    Parameters
    ----------
    hidden_size : int
        ``H``, the width of the residual stream.
    num_features : int, default 8
        ``D``, the number of random features (rows of ``G``).
    activation : {"relu", "exp", "cos", "sin", "gaussian"}, default "relu"
        Kind of the SNNK down map (see :class:`~snnk.nn.SNNKLinear`).
    bottleneck : int, optional
        ``None`` (default): the down map has ``H`` outputs and a per-channel gate
        ``v ∈ R^H`` (zeros) scales them; ``H·D + H`` trainable numbers. An integer ``r``: the
        down map has ``r`` outputs and a zero-initialised ``Linear(r, H)`` maps them back;
        ``r·D + r·H + H`` trainable numbers.
    input_norm : float, optional
        Rescale inputs to this norm over the last dimension before ``Φ`` (useful for the
        Fourier and ``exp`` kinds; ReLU features are positively homogeneous).
    seed : int, torch.Generator or None
        Draws ``G`` and ``W₀``; the global RNG is never used.
    dtype, device
        Of the parameters and buffers.

    Shapes
    ------
    ``(..., H) -> (..., H)``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_features: int = 8,
        activation: str = "relu",
        *,
        bottleneck: int | None = None,
        input_norm: float | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_features = check_positive_int(num_features, "num_features")
        self.bottleneck = (
            None if bottleneck is None else check_positive_int(bottleneck, "bottleneck")
        )
        self.generator, self.seed = make_generator(seed)
        out = self.hidden_size if bottleneck is None else self.bottleneck
        self.down = SNNKLinear(
            hidden_size,
            out,
            num_features,
            activation,
            bias=False,
            input_norm=input_norm,
            seed=self.generator,
            dtype=dtype,
            device=device,
        )
        factory = {"dtype": dtype, "device": device}
        if bottleneck is None:
            self.gate = nn.Parameter(torch.zeros(hidden_size, **factory))
            self.up = None
        else:
            self.gate = None
            # skip_init: no draw from the global RNG; the weights are zeroed right away.
            self.up = nn.utils.skip_init(nn.Linear, out, hidden_size, **factory)
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        delta = h * self.gate.to(h.dtype) if self.up is None else self.up(h)
        return x + delta.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_features={self.num_features}, "
            f"bottleneck={self.bottleneck}, seed={self.seed}"
        )


class _ThenAdapter:
    """Mixin: the module's own ``forward``, then its child ``adapter``."""

    adapter: SNNKAdapter

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.adapter(super().forward(input))


class AdaptedLinear(_ThenAdapter, nn.Linear):
    """An ``nn.Linear`` followed by an :class:`SNNKAdapter` (same ``weight``/``bias`` names)."""


class AdaptedDropout(_ThenAdapter, nn.Dropout):
    """An ``nn.Dropout`` followed by an :class:`SNNKAdapter`."""


def _check_site(site: nn.Module) -> None:
    if type(site) not in (nn.Linear, nn.Dropout):
        raise TypeError(
            f"cannot place an adapter after a {type(site).__name__}; expected nn.Linear or "
            "nn.Dropout (is the model's layout from a supported transformers version?)"
        )


def _attach(site: nn.Module, adapter: SNNKAdapter) -> nn.Module:
    """A drop-in for ``site`` that runs ``adapter`` on its output, sharing its parameters."""
    _check_site(site)
    if type(site) is nn.Linear:
        new: nn.Module = AdaptedLinear(
            site.in_features, site.out_features, bias=site.bias is not None, device="meta"
        )
        new.weight = site.weight
        new.bias = site.bias
    else:
        new = AdaptedDropout(site.p, site.inplace)
    new.train(site.training)
    new.adapter = adapter
    return new


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, SNNKAdapter]]:
    for name, module in unwrap(model).named_modules():
        if isinstance(module, SNNKAdapter):
            yield name, module


def _check_activation(activation: str) -> str:
    if not isinstance(activation, str):
        raise TypeError(
            f"activation must be one of {list(ACTIVATIONS)} (a name, so that the adapter "
            f"config can be saved as JSON), got {activation!r}"
        )
    return check_in(activation, "activation", ACTIVATIONS)


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return draw_seed()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return seed


def adapter_config(model: nn.Module) -> dict:
    config = getattr(unwrap(model), "_snnk_adapter_config", None)
    if config is None:
        raise ValueError("this model has no SNNK adapters; call add_adapters first")
    return config
