"""Putting adapters into a model (all or nothing), uptraining, and counting what trains."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from snnk._utils import check_in, check_positive, check_positive_int
from snnk.nn.adapters._layout import (
    PLACEMENTS,
    _split,
    architecture,
    first_path,
    layer_blocks,
    unwrap,
)
from snnk.nn.adapters.adapter import (
    SNNKAdapter,
    _attach,
    _check_activation,
    _check_seed,
    _check_site,
    iter_adapters,
)
from snnk.nn.snnk_linear import SNNKLinear


@dataclass
class _Plan:
    """Adapters built but not yet in the model: ``sites`` are ``(owner, attribute, adapter)``."""

    model: nn.Module
    sites: list[tuple[nn.Module, str, SNNKAdapter]]
    trainable: list[nn.Parameter]
    config: dict

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every adapter tensor, as ``model.state_dict()`` will name it."""
        names = {id(m): n for n, m in self.model.named_modules()}
        out: dict[str, tuple[int, ...]] = {}
        for owner, attr, adapter in self.sites:
            owner_name = names[id(owner)]
            prefix = f"{owner_name}.{attr}.adapter." if owner_name else f"{attr}.adapter."
            out.update({k: tuple(v.shape) for k, v in adapter.state_dict(prefix=prefix).items()})
        return out


@dataclass
class Undo:
    """What :func:`apply_plan` and a load change, so that an error can put the model back."""

    model: nn.Module
    flags: list[tuple[nn.Parameter, bool]] = field(default_factory=list)
    replaced: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    values: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    config: dict | None = None

    def __post_init__(self) -> None:
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.config = getattr(self.model, "_snnk_adapter_config", None)

    def keep(self, tensor: torch.Tensor) -> None:
        """Remember ``tensor``'s values before it is overwritten."""
        self.values.append((tensor, tensor.detach().clone()))

    def rollback(self) -> None:
        with torch.no_grad():
            for tensor, old in reversed(self.values):
                tensor.copy_(old)
        for owner, attr, old_module in reversed(self.replaced):
            setattr(owner, attr, old_module)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        if self.config is not None:
            self.model._snnk_adapter_config = self.config
        elif "_snnk_adapter_config" in self.model.__dict__:
            del self.model._snnk_adapter_config


def _head_parameters(model: nn.Module, base: nn.Module) -> list[nn.Parameter]:
    """Parameters of the task head: those of ``model`` not shared with the base model."""
    if base is model:
        return []
    in_base = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in in_base]


def plan_adapters(
    model: nn.Module,
    num_features: int,
    activation: str,
    placement: str,
    train_head: bool,
    train_pooler: bool,
    seed: int | None,
    bottleneck: int | None,
    input_norm: float | None,
) -> _Plan:
    """Check every argument and build every adapter of :func:`add_adapters`, changing nothing."""
    model, base, model_type, layout = architecture(model, changes_structure=True)
    num_features = check_positive_int(num_features, "num_features")
    activation = _check_activation(activation)
    check_in(placement, "placement", PLACEMENTS)
    if bottleneck is not None:
        bottleneck = check_positive_int(bottleneck, "bottleneck")
    if input_norm is not None:
        input_norm = check_positive(input_norm, "input_norm")
    existing = sum(1 for _ in iter_adapters(model))
    if existing:
        raise RuntimeError(
            f"this model already has {existing} SNNK adapters; add_adapters would stack a "
            "second set. Start from a fresh base model, or use load_adapters to restore "
            "saved adapter weights into the existing ones"
        )
    pooler = getattr(base, "pooler", None)
    if train_pooler and pooler is None:
        raise ValueError(
            f"train_pooler=True, but this {type(model).__name__} has no pooler "
            "(base_model.pooler is None); use train_pooler=False"
        )
    seed = _check_seed(seed)
    blocks = layer_blocks(base, layout)
    site_lists = [layout.ffn_site]
    if placement == "houlsby":
        site_lists.insert(0, layout.attention_site)
    sites = []
    for block in blocks:
        ref = next(block.parameters())
        linear_path = first_path(block, tuple(p for p, _ in layout.ffn_in), "feed-forward layer")
        hidden = block.get_submodule(linear_path).in_features
        for candidates in site_lists:
            parent, name = _split(first_path(block, candidates, "adapter site"))
            owner = block.get_submodule(parent)
            _check_site(getattr(owner, name))
            adapter = SNNKAdapter(
                hidden,
                num_features,
                activation,
                bottleneck=bottleneck,
                input_norm=input_norm,
                seed=seed + len(sites),
                dtype=ref.dtype,
                device=ref.device,
            )
            sites.append((owner, name, adapter))
    trainable = _head_parameters(model, base) if train_head else []
    if train_pooler:
        trainable += list(pooler.parameters())
    config = {
        "model_type": model_type,
        "hidden_size": sites[0][2].hidden_size,
        "num_blocks": len(blocks),
        "num_adapters": len(sites),
        "num_features": num_features,
        "activation": activation,
        "placement": placement,
        "bottleneck": bottleneck,
        "input_norm": input_norm,
        "train_head": bool(train_head),
        "train_pooler": bool(train_pooler),
        "seed": seed,
        "norm": layout.norm,
    }
    return _Plan(model, sites, trainable, config)


def apply_plan(plan: _Plan, undo: Undo) -> None:
    """Put the planned adapters in, freeze everything else but the planned trainable tensors."""
    model = plan.model
    for owner, name, adapter in plan.sites:
        old = getattr(owner, name)
        new = _attach(old, adapter)
        undo.replaced.append((owner, name, old))
        setattr(owner, name, new)
    model.requires_grad_(False)
    for _, _, adapter in plan.sites:
        adapter.requires_grad_(True)
    for p in plan.trainable:
        p.requires_grad_(True)
    model._snnk_adapter_config = plan.config


def add_adapters(
    model: nn.Module,
    num_features: int = 8,
    activation: str = "relu",
    placement: str = "houlsby",
    train_head: bool = True,
    train_pooler: bool = False,
    seed: int | None = None,
    *,
    bottleneck: int | None = None,
    input_norm: float | None = None,
) -> nn.Module:
    r"""Insert SNNK adapters into a Hugging Face encoder, freeze the rest, return the model.

    Every adapter computes ``a(x) = x + v ⊙ Φ(x)Ψᵀ`` on the ``(batch, seq, H)`` output of an
    attention or feed-forward block, before that block's residual addition (see
    :mod:`snnk.nn.adapters` for the exact position in post-LN BERT and pre-LN ViT). Because
    ``v = 0`` at start, the adapted model's outputs equal the base model's bit for bit.
    All adapters are built before the first is put in: on any error the model is unchanged.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model whose ``config.model_type`` is in :data:`SUPPORTED_ARCHITECTURES`: a bare
        encoder (``BertModel``, ``ViTModel``, ...) or one with a task head.
    num_features : int, default 8
        ``D`` of every adapter; each adapter trains ``H·D + H`` numbers.
    activation : str, default "relu"
        Kind of the SNNK down map.
    placement : {"houlsby", "pfeiffer"}, default "houlsby"
        Two adapters per block (after attention and after the feed-forward block), or one
        (after the feed-forward block).
    train_head : bool, default True
        Keep the task head trainable (parameters outside the base model; weights tied to the
        embeddings stay frozen).
    train_pooler : bool, default False
        Keep the base model's pooler trainable (an error if the model has none).
    seed : int, optional
        Adapter ``i`` (in order of depth) is drawn with seed ``seed + i``; ``None`` draws one
        from the operating system (recorded in the saved config).
    bottleneck : int, optional
        Use a zero-initialised ``Linear(r, H)`` up-projection instead of the gate.
    input_norm : float, optional
        See :class:`SNNKAdapter`.

    Returns
    -------
    torch.nn.Module
        ``model``, modified in place.

    Raises
    ------
    ValueError
        Unsupported architecture (the message lists the supported ones), ``num_features``
        not positive, unknown ``placement``, or ``train_pooler`` without a pooler.
    RuntimeError
        The model already has SNNK adapters.
    """
    plan = plan_adapters(
        model,
        num_features,
        activation,
        placement,
        train_head,
        train_pooler,
        seed,
        bottleneck,
        input_norm,
    )
    undo = Undo(plan.model)
    try:
        apply_plan(plan, undo)
    except BaseException:
        undo.rollback()
        raise
    return plan.model


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in unwrap(model).parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def trainable_parameters(model: nn.Module) -> int:
    """Number of scalars that train: parameters with ``requires_grad`` (shared ones once)."""
    return sum(p.numel() for p in _unique_parameters(model) if p.requires_grad)


@dataclass(frozen=True)
class UptrainReport:
    """What :func:`uptrain` did.

    Attributes
    ----------
    model : torch.nn.Module
        The model, modified in place.
    replaced : tuple of str
        Qualified names of the new :class:`~snnk.nn.SNNKLinear` layers.
    parameters_before, parameters_after : int
        All parameters of the model (trainable or not) before and after.
    """

    model: nn.Module
    replaced: tuple[str, ...]
    parameters_before: int
    parameters_after: int

    @property
    def parameters_saved(self) -> int:
        """``parameters_before - parameters_after``."""
        return self.parameters_before - self.parameters_after

    def __str__(self) -> str:
        share = self.parameters_saved / max(self.parameters_before, 1)
        return (
            f"uptrain replaced {len(self.replaced)} feed-forward layers: "
            f"{self.parameters_before:,} -> {self.parameters_after:,} parameters "
            f"({self.parameters_saved:,} saved, {share:.1%})"
        )


def uptrain(
    model: nn.Module,
    num_layers: int,
    num_features: int = 16,
    activation: str = "relu",
    seed: int | None = None,
    *,
    input_norm: float | None = None,
) -> UptrainReport:
    r"""Replace the first feed-forward layer of the last ``num_layers`` blocks by SNNK layers.

    In each chosen block, ``GELU(W x + b)`` (``W ∈ R^{4H×H}``) becomes
    ``SNNKLinear.from_linear``: ``Φ(x̃) Ψᵀ`` with ``x̃ = [x; 1]``, ``Ψ ← Ψ([W, b])`` of shape
    ``(4H, D)`` trainable and ``G ∈ R^{D×(H+1)}`` a fixed buffer; the activation module
    becomes ``nn.Identity`` (the SNNK layer includes its nonlinearity). Each layer saves
    ``4H(H + 1) - 4H·D`` parameters: 2,313,216 for BERT-base at ``D = 16``. For
    ``"relu"`` the new layer estimates the arc-cosine kernel of ``x̃`` and ``[w; b]``, not
    ``GELU(wᵀx + b)``: the model must be fine-tuned afterwards (nothing is frozen here; new
    parameters require grad). Every new layer is built before the first is put in: on any
    error the model is unchanged.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Supported as for :func:`add_adapters`.
    num_layers : int
        ``k``: the last ``k`` blocks are changed (``1 <= k <=`` number of blocks).
    num_features : int, default 16
        ``D`` of each SNNK layer.
    activation : str, default "relu"
    seed : int, optional
        Layer ``i`` (from the first changed block) is drawn with ``seed + i``.
    input_norm : float, optional
        Passed to :class:`~snnk.nn.SNNKLinear`.

    Returns
    -------
    UptrainReport
        The model, the replaced layers and the parameter counts (``parameters_saved``).
    """
    model, base, _, layout = architecture(model, changes_structure=True)
    num_layers = check_positive_int(num_layers, "num_layers")
    num_features = check_positive_int(num_features, "num_features")
    activation = _check_activation(activation)
    blocks = layer_blocks(base, layout)
    if num_layers > len(blocks):
        raise ValueError(f"num_layers must be at most {len(blocks)} (the blocks), got {num_layers}")
    seed = _check_seed(seed)
    names = {id(m): n for n, m in model.named_modules()}
    before = sum(p.numel() for p in _unique_parameters(model))
    plan = []
    for i, block in enumerate(blocks[len(blocks) - num_layers :]):
        paths = tuple(p for p, _ in layout.ffn_in)
        linear_path = first_path(block, paths, "feed-forward layer")
        act_path = dict(layout.ffn_in)[linear_path]
        linear = block.get_submodule(linear_path)
        if isinstance(linear, SNNKLinear):
            raise RuntimeError(f"{names[id(linear)]} is already an SNNKLinear (uptrained twice)")
        layer = SNNKLinear.from_linear(
            linear, activation, num_features, seed=seed + i, input_norm=input_norm
        )
        plan.append((block, linear_path, act_path, layer))
    for block, linear_path, act_path, layer in plan:
        parent, name = _split(linear_path)
        setattr(block.get_submodule(parent), name, layer)
        act_parent, act_name = _split(act_path)
        setattr(block.get_submodule(act_parent), act_name, nn.Identity())
    replaced = tuple(f"{names[id(block)]}.{linear_path}" for block, linear_path, _, _ in plan)
    after = sum(p.numel() for p in _unique_parameters(model))
    return UptrainReport(model, replaced, before, after)
