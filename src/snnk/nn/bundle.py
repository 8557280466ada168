"""Neural network bundling (SNNK paper, Figure 1c; spec section 4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from snnk._utils import as_float_tensor, check_positive_int
from snnk._utils.random import make_generator, on_cpu
from snnk.features import SpectralMeasure
from snnk.nn.snnk_linear import check_activation_map, check_widths
from snnk.nn.towers import SNNKMaps, resolve_sampler

_SKIP = (nn.Dropout, nn.Identity, nn.Flatten)


class BundledNetwork(nn.Module):
    r"""``y = U · (Φ_L ∘ … ∘ Φ_1)(x) + c``: a random input tower and one trainable matrix.

    The input tower holds no trainable parameters (random buffers only); all that a deep
    stack's weights contribute is collapsed into ``U`` (and the output bias ``c``).

    Build one from a trained MLP with :func:`bundle`, or from scratch (``U = 0``) to fit
    ``U`` in closed form (:class:`snnk.models.BundledRegressor`).

    Parameters
    ----------
    in_features : int
    widths : sequence of int
        Feature counts ``D_1, …, D_L`` of the tower.
    activations : str, SpectralMeasure or a sequence of them
        Activation of each stage (``"relu"`` and ``"exp"`` compose best: Fourier kinds
        compound variance through the tower).
    out_features : int
    bias : bool, default True
        Bias inputs of each stage (see :class:`SNNKMaps`) and the output bias ``c``.
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
        How the rows of every stage's ``G`` are drawn.
    seed : int, torch.Generator or None
        Draws every stage in order (the global RNG is never used).
    dtype, device
        Of the parameters and buffers (``device`` defaults to torch's default device; the
        random draws always happen on the CPU).
    orthogonal : bool, optional
        Deprecated: ``True`` is ``sampler="orthogonal"``, ``False`` is ``sampler="iid"``.

    Shapes
    ------
    ``(..., d) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        activations: str | SpectralMeasure | Sequence[str | SpectralMeasure],
        out_features: int,
        *,
        bias: bool = True,
        sampler: str = "orthogonal",
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        orthogonal: bool | None = None,
    ):
        super().__init__()
        widths = [check_positive_int(w, "widths") for w in widths]
        if not widths:
            raise ValueError("widths must list at least one feature count")
        if isinstance(activations, str | SpectralMeasure):
            activations = [activations] * len(widths)
        activations = list(activations)
        if len(activations) != len(widths):
            raise ValueError(f"got {len(activations)} activations for {len(widths)} tower stages")
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        sampler = resolve_sampler(sampler, orthogonal, "BundledNetwork")
        self.generator, self.seed = make_generator(seed)
        dims = [in_features, *widths]
        factory = {"dtype": dtype or torch.get_default_dtype()}
        with on_cpu() as default_device:
            factory["device"] = default_device if device is None else device
            self.tower = nn.ModuleList(
                SNNKMaps(
                    act,
                    dims[k],
                    widths[k],
                    bias=bias,
                    sampler=sampler,
                    seed=self.generator,
                    **factory,
                )
                for k, act in enumerate(activations)
            )
        self.weight = nn.Parameter(torch.zeros(out_features, widths[-1], **factory))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        self.source_parameters: int | None = None

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]

    @property
    def sampler(self) -> str:
        """How the rows of the tower's ``G`` are drawn."""
        return self.tower[0].sampler

    def reset_parameters(self) -> None:
        """Draw the tower again from ``seed`` and zero ``U`` and ``c``, as at construction.

        With an integer ``seed`` the network ends up bit for bit as it was built (so a
        network built on the meta device, materialised with ``to_empty(device=...)`` and
        reset holds proper values); with a generator the draws continue from its state.
        """
        if self.seed is not None:
            self.generator = make_generator(self.seed)[0]
        for maps in self.tower:
            maps.resample(self.generator)
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def resample(self, seed: int | torch.Generator | None = None) -> None:
        """Draw a new tower from ``seed`` (``None``: from the operating system); ``U`` is kept.

        ``U`` was fitted to the old tower, so the network's function changes: refit ``U``
        (or re-bundle) afterwards. :attr:`seed` records the new seed.
        """
        self.generator, self.seed = make_generator(seed)
        for maps in self.tower:
            maps.resample(self.generator)

    def input_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(Φ_L ∘ … ∘ Φ_1)(x)``: ``(..., d) -> (..., D_L)``; no trainable parameter involved.

        Like ``torch.nn`` layers, shapes, dtypes and devices are checked but values are not
        (a NaN/Inf scan would be one host synchronisation per call on a GPU; NaN propagates).
        The estimators built on this network validate their data before calling it.
        """
        u = as_float_tensor(
            x, "x", min_ndim=1, last_dim=self.in_features, check_finite_values=False
        )
        for maps in self.tower:
            u = maps.input_map(u)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.input_features(x)
        y = u @ self.weight.to(u.dtype).T
        return y if self.bias is None else y + self.bias.to(u.dtype)

    @property
    def num_parameters(self) -> int:
        """Trainable numbers: ``U`` and ``c``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        before = (
            ""
            if self.source_parameters is None
            else f", parameters before bundling={self.source_parameters}"
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"parameters={self.num_parameters}{before}"
        )


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out.extend(_flatten(child))
        return out
    return [module]


def _check_chain(linears: list[nn.Linear]) -> None:
    """Each ``Linear`` must take what the one before it gives (``out_features -> in_features``)."""
    for k in range(1, len(linears)):
        before, after = linears[k - 1], linears[k]
        if after.in_features != before.out_features:
            raise ValueError(
                f"bundle: Linear layer {k} takes {after.in_features} inputs but Linear layer "
                f"{k - 1} gives {before.out_features} outputs; the stack must chain "
                f"(is this {type(after).__name__} from another model, or a layer missing?)"
            )


def bundle(
    mlp: nn.Sequential,
    num_features: int | Sequence[int] = 256,
    activation_map: dict[type[nn.Module], str | SpectralMeasure] | None = None,
    *,
    sampler: str = "orthogonal",
    seed: int | torch.Generator | None = 0,
    orthogonal: bool | None = None,
) -> BundledNetwork:
    r"""Bundle ``Linear → act → … → Linear → act [→ Linear]`` into a :class:`BundledNetwork`.

    Input tower ``u_k = Φ_k(u_{k−1})``, ``u_0 = x`` (random, parameter free); parameter tower
    ``V_1 = W_1``, ``V_{k+1} = W_{k+1} Ψ_k(V_k, b_k)``, collapsed offline into
    ``U = W_{L+1} Ψ_L(V_L, b_L)`` (or ``Ψ_L(V_L, b_L)`` when the stack ends with an
    activation). Stage ``k+1`` acts on the feature vector ``u_k``, not on ``h_k``: bundling is
    its own approximation, which converges as all ``D_k`` grow for exp and relu stacks (for
    Fourier kinds the variance compounds through the stages; use them with care). Dropout
    and identity modules are skipped (eval-mode semantics).

    Parameters
    ----------
    mlp : nn.Sequential
        Possibly nested; its layers in order.
    num_features : int or sequence of int
        ``D_k`` per stage.
    activation_map : dict, default ``{nn.ReLU: "relu"}``
        Activation module type -> SNNK activation.
    sampler : {"iid", "orthogonal", "structured", "qmc", "halton"}, default "orthogonal"
    seed : int, torch.Generator or None, default 0
    orthogonal : bool, optional
        Deprecated: ``True`` is ``sampler="orthogonal"``, ``False`` is ``sampler="iid"``.

    Raises
    ------
    TypeError
        ``mlp`` is not an ``nn.Sequential``.
    ValueError
        The stack is not ``Linear → activation`` pairs (optionally followed by one
        ``Linear``), consecutive layers do not chain (``out_features`` of one layer is not
        ``in_features`` of the next), or ``num_features`` has not one width per pair.
    """
    sampler = resolve_sampler(sampler, orthogonal, "bundle")
    if not isinstance(mlp, nn.Sequential):
        raise TypeError(f"bundle needs an nn.Sequential stack, got {type(mlp).__name__}")
    amap = check_activation_map(activation_map)
    layers = [m for m in _flatten(mlp) if not isinstance(m, _SKIP)]
    pairs: list[tuple[nn.Linear, str | SpectralMeasure]] = []
    i = 0
    while i + 1 < len(layers) and isinstance(layers[i], nn.Linear):
        kind = next((v for k, v in amap.items() if isinstance(layers[i + 1], k)), None)
        if kind is None:
            break
        pairs.append((layers[i], kind))
        i += 2
    rest = layers[i:]
    final = rest[0] if len(rest) == 1 and isinstance(rest[0], nn.Linear) else None
    if not pairs or (rest and final is None):
        names = " → ".join(type(m).__name__ for m in layers)
        raise ValueError(
            f"bundle expects Linear → activation pairs optionally followed by one Linear, with "
            f"activations among {[k.__name__ for k in amap]}; got {names}. Pass activation_map "
            f"for other activation modules"
        )
    _check_chain([lin for lin, _ in pairs] + ([] if final is None else [final]))
    per_layer = check_widths(num_features)
    widths = [num_features] * len(pairs) if per_layer is None else per_layer
    if len(widths) != len(pairs):
        raise ValueError(f"num_features lists {len(widths)} widths for {len(pairs)} layers")
    first = pairs[0][0]
    out_features = final.out_features if final is not None else pairs[-1][0].out_features
    net = BundledNetwork(
        first.in_features,
        widths,
        [k for _, k in pairs],
        out_features,
        bias=True,
        sampler=sampler,
        seed=seed,
        dtype=first.weight.dtype,
        device=first.weight.device,
    )
    with torch.no_grad():
        V, psi = first.weight, None
        for k, (lin, _) in enumerate(pairs):
            if psi is not None:
                V = lin.weight @ psi
            b = (
                lin.bias
                if lin.bias is not None
                else torch.zeros(lin.out_features, dtype=V.dtype, device=V.device)
            )
            psi = net.tower[k].parameter_map(V, b)
        U = final.weight @ psi if final is not None else psi
        net.weight.copy_(U)
        if final is not None and final.bias is not None:
            net.bias.copy_(final.bias)
        else:
            net.bias.zero_()
    net.source_parameters = sum(p.numel() for p in mlp.parameters())
    return net
