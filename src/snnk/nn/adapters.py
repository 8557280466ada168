r"""SNNK adapters and uptraining for Hugging Face transformers (spec sections 5 and 6.2).

An **SNNK adapter** is a bottleneck adapter whose down-projection and nonlinearity are one
SNNK layer and whose up-projection is a zero-initialised per-channel gate:

.. math::

    a(x) = x + v \odot \Phi(x) \Psi^\top, \qquad
    \Phi(x) = D^{-1/2}\,\mathrm{ReLU}(G x) \in \mathbb{R}^D,

with a fixed random ``G ∈ R^{D×H}`` (orthogonal Gaussian rows, a persistent buffer), a
trainable ``Ψ ∈ R^{H×D}`` and a trainable gate ``v ∈ R^H`` that starts at zero, so the adapted
model equals the base model exactly at initialisation. It trains ``H·D + H`` numbers per
adapter: 6,912 for ``H = 768``, ``D = 8``, i.e. 165,888 for the 24 adapters of BERT-base.

:func:`add_adapters` places two adapters per block (Houlsby placement), at the output of the
attention block and of the feed-forward block, inside the residual branch:

* post-LN BERT family: ``LayerNorm(a(dropout(dense(h))) + residual)``;
* pre-LN ViT: ``h + a(o_proj(attention(LN(h))))`` and ``h + a(fc2(GELU(fc1(LN(h)))))`` (in
  transformers 5 the block's dropout, shared by both branches, follows the adapter; it is 0 in
  ViT checkpoints).

:func:`uptrain` replaces the first feed-forward layer ``GELU(W x + b)`` of the last ``k``
blocks by an :class:`~snnk.nn.SNNKLinear` initialised from ``W, b``.

transformers is never imported here: models are recognised by ``model.config.model_type`` and
their module layout, so ``import snnk`` does not need the ``snnk[hf]`` extra.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snnk._utils import check_in, check_positive, check_positive_int, draw_seed, make_generator
from snnk._version import __version__
from snnk.nn.snnk_linear import ACTIVATIONS, SNNKLinear

PLACEMENTS = ("houlsby", "pfeiffer")

#: file names written by :func:`save_adapters`
WEIGHTS_NAME = "snnk_adapters.safetensors"
CONFIG_NAME = "snnk_adapters.json"
_FORMAT = "snnk-adapters"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class _Layout:
    """Where things sit in one architecture (paths relative to the base model / a block).

    Each field lists candidate paths; the first that exists is used (transformers 5 renamed
    some ViT modules).
    """

    blocks: tuple[str, ...]
    attention_site: tuple[str, ...]
    ffn_site: tuple[str, ...]
    ffn_in: tuple[tuple[str, str], ...]
    norm: str


_BERT = _Layout(
    blocks=("encoder.layer",),
    attention_site=("attention.output.dropout",),
    ffn_site=("output.dropout",),
    ffn_in=(("intermediate.dense", "intermediate.intermediate_act_fn"),),
    norm="post",
)
_ARCHITECTURES: dict[str, _Layout] = {
    "bert": _BERT,  # also MiniLM checkpoints such as all-MiniLM-L6-v2
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": _Layout(
        blocks=("transformer.layer",),
        attention_site=("attention.out_lin",),
        ffn_site=("ffn.dropout",),
        ffn_in=(("ffn.lin1", "ffn.activation"),),
        norm="post",
    ),
    "vit": _Layout(
        blocks=("layers", "encoder.layer"),
        attention_site=("attention.o_proj", "attention.output.dropout"),
        ffn_site=("mlp.fc2", "output.dropout"),
        ffn_in=(
            ("mlp.fc1", "mlp.activation_fn"),
            ("intermediate.dense", "intermediate.intermediate_act_fn"),
        ),
        norm="pre",
    ),
}

#: ``model.config.model_type`` values that :func:`add_adapters` and :func:`uptrain` accept
SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)


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


def _attach(site: nn.Module, adapter: SNNKAdapter) -> nn.Module:
    """A drop-in for ``site`` that runs ``adapter`` on its output, sharing its parameters."""
    if type(site) is nn.Linear:
        new: nn.Module = AdaptedLinear(
            site.in_features, site.out_features, bias=site.bias is not None, device="meta"
        )
        new.weight = site.weight
        new.bias = site.bias
    elif type(site) is nn.Dropout:
        new = AdaptedDropout(site.p, site.inplace)
    else:
        raise TypeError(
            f"cannot place an adapter after a {type(site).__name__}; expected nn.Linear or "
            "nn.Dropout (is the model's layout from a supported transformers version?)"
        )
    new.train(site.training)
    new.adapter = adapter
    return new


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def _architecture(
    model: nn.Module, *, changes_structure: bool = False
) -> tuple[nn.Module, nn.Module, str, _Layout]:
    """``(model, base model, model_type, layout)``; raises for unsupported models."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if changes_structure and _unwrap(model) is not model:
        raise ValueError(
            f"model is wrapped in {type(model).__name__}, which has already registered the "
            "parameters it synchronises; change the model first, then wrap it "
            "(add_adapters / uptrain / load_adapters on the bare model, then "
            "DistributedDataParallel(model))"
        )
    model = _unwrap(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            "SNNK adapters support Hugging Face models with config.model_type in "
            f"{list(SUPPORTED_ARCHITECTURES)} (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MiniLM "
            f"checkpoints, which are 'bert', and ViT); got {type(model).__name__} with "
            f"model_type={model_type!r}"
        )
    base = getattr(model, "base_model", model)
    return model, base, model_type, _ARCHITECTURES[model_type]


def _first_path(root: nn.Module, candidates: tuple[str, ...], what: str) -> str:
    for path in candidates:
        try:
            root.get_submodule(path)
        except AttributeError:
            continue
        return path
    raise ValueError(
        f"could not find the {what} in {type(root).__name__} (looked for {list(candidates)}); "
        "this transformers version lays the model out differently"
    )


def _blocks(base: nn.Module, layout: _Layout) -> list[nn.Module]:
    return list(base.get_submodule(_first_path(base, layout.blocks, "list of blocks")))


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition(".")
    return parent, name


def _iter_adapters(model: nn.Module) -> Iterator[tuple[str, SNNKAdapter]]:
    for name, module in _unwrap(model).named_modules():
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


def _head_parameters(model: nn.Module, base: nn.Module) -> list[nn.Parameter]:
    """Parameters of the task head: those of ``model`` not shared with the base model."""
    if base is model:
        return []
    in_base = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in in_base]


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
    attention or feed-forward block, before that block's residual addition (see the module
    docstring for the exact position in post-LN BERT and pre-LN ViT). Because ``v = 0`` at
    start, the adapted model's outputs equal the base model's bit for bit.

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
    model, base, model_type, layout = _architecture(model, changes_structure=True)
    num_features = check_positive_int(num_features, "num_features")
    activation = _check_activation(activation)
    check_in(placement, "placement", PLACEMENTS)
    if bottleneck is not None:
        bottleneck = check_positive_int(bottleneck, "bottleneck")
    if input_norm is not None:
        input_norm = check_positive(input_norm, "input_norm")
    existing = sum(1 for _ in _iter_adapters(model))
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
    blocks = _blocks(base, layout)
    site_lists = [layout.ffn_site]
    if placement == "houlsby":
        site_lists.insert(0, layout.attention_site)
    # Find every site first, so that an unexpected layout fails before anything changes.
    sites = []
    for block in blocks:
        ref = next(block.parameters())
        linear_path = _first_path(block, tuple(p for p, _ in layout.ffn_in), "feed-forward layer")
        hidden = block.get_submodule(linear_path).in_features
        for candidates in site_lists:
            parent, name = _split(_first_path(block, candidates, "adapter site"))
            sites.append((block.get_submodule(parent), name, hidden, ref))
    for index, (owner, name, hidden, ref) in enumerate(sites):
        adapter = SNNKAdapter(
            hidden,
            num_features,
            activation,
            bottleneck=bottleneck,
            input_norm=input_norm,
            seed=seed + index,
            dtype=ref.dtype,
            device=ref.device,
        )
        setattr(owner, name, _attach(getattr(owner, name), adapter))

    model.requires_grad_(False)
    for _, adapter in _iter_adapters(model):
        adapter.requires_grad_(True)
    if train_head:
        for p in _head_parameters(model, base):
            p.requires_grad_(True)
    if train_pooler:
        pooler.requires_grad_(True)
    model._snnk_adapter_config = {
        "model_type": model_type,
        "hidden_size": sites[0][2],
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
    return model


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in _unwrap(model).parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def trainable_parameters(model: nn.Module) -> int:
    """Number of scalars that train: parameters with ``requires_grad`` (shared ones once)."""
    return sum(p.numel() for p in _unique_parameters(model) if p.requires_grad)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What :func:`save_adapters` stores: the trained state of an adapted model.

    Every adapter's parameters and random buffers (``G``), plus every other parameter that
    requires grad (the head, and the pooler if trained), under their names in ``model``
    (unwrapped from ``DistributedDataParallel``). The frozen base model is not included.

    Returns
    -------
    dict of str to torch.Tensor
        Detached tensors sharing memory with the model.
    """
    model = _unwrap(model)
    out: dict[str, torch.Tensor] = {}
    for name, adapter in _iter_adapters(model):
        out.update(adapter.state_dict(prefix=f"{name}."))
    if not out:
        raise ValueError("this model has no SNNK adapters; call add_adapters first")
    for name, p in model.named_parameters():
        if p.requires_grad and name not in out:
            out[name] = p.detach()
    return out


def _config_of(model: nn.Module) -> dict:
    config = getattr(_unwrap(model), "_snnk_adapter_config", None)
    if config is None:
        raise ValueError("this model has no SNNK adapters; call add_adapters first")
    return config


def save_adapters(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the adapters (and trained head) of ``model`` into the folder ``path``.

    Two files: ``snnk_adapters.safetensors`` (the tensors of :func:`adapter_state_dict`) and
    ``snnk_adapters.json`` (the :func:`add_adapters` arguments, model type and sizes). Nothing
    is pickled.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    from safetensors.torch import save_file

    config = dict(_config_of(model))
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in adapter_state_dict(model).items()
    }
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": _FORMAT})
    config.update(format=_FORMAT, format_version=_FORMAT_VERSION, snnk_version=__version__)
    config["tensors"] = sorted(tensors)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


_STRUCTURE = ("num_features", "activation", "placement", "bottleneck", "input_norm")


def load_adapters(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Restore adapters saved by :func:`save_adapters` into ``model`` and return it.

    ``model`` is normally a fresh base model (for example the same checkpoint loaded again
    with ``from_pretrained``): the adapters are added as the saved config says, then every
    saved tensor, random buffers included, is copied in, so the logits equal the saved
    model's bit for bit. A model that already has adapters of the same structure is
    overwritten in place.

    Raises
    ------
    ValueError
        The folder is not an SNNK adapter folder, the model type or sizes differ, or tensors
        are missing or unexpected.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a folder written by save_adapters: expected "
            f"{CONFIG_NAME} and {WEIGHTS_NAME} in it"
        )
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if saved.get("format") != _FORMAT:
        raise ValueError(f"{config_file} is not an SNNK adapter config (format {_FORMAT!r})")
    inner, _, model_type, _ = _architecture(model)
    if model_type != saved["model_type"]:
        raise ValueError(
            f"the adapters were saved from a {saved['model_type']!r} model, but this model's "
            f"model_type is {model_type!r}"
        )
    if any(True for _ in _iter_adapters(inner)):
        current = _config_of(inner)
        diff = {k: (saved[k], current[k]) for k in _STRUCTURE if saved[k] != current[k]}
        if diff:
            raise ValueError(
                "the model's adapters differ from the saved ones (saved, current): "
                + ", ".join(f"{k}={v}" for k, v in diff.items())
            )
    else:
        add_adapters(
            model,
            saved["num_features"],
            saved["activation"],
            saved["placement"],
            train_head=saved["train_head"],
            train_pooler=saved["train_pooler"],
            seed=saved["seed"],
            bottleneck=saved["bottleneck"],
            input_norm=saved["input_norm"],
        )
    config = _config_of(inner)
    for key in ("hidden_size", "num_blocks"):
        if config[key] != saved[key]:
            raise ValueError(
                f"the adapters were saved for {key}={saved[key]}, this model has {config[key]}"
            )
    tensors = load_file(str(weights_file))
    expected = adapter_state_dict(inner)
    known = inner.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(known))
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not match this model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            target = known[name]
            if target.shape != value.shape:
                raise ValueError(
                    f"{name}: saved shape {tuple(value.shape)}, model shape {tuple(target.shape)}"
                )
            target.copy_(value)
    return model


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
    parameters require grad).

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
    model, base, _, layout = _architecture(model, changes_structure=True)
    num_layers = check_positive_int(num_layers, "num_layers")
    num_features = check_positive_int(num_features, "num_features")
    activation = _check_activation(activation)
    blocks = _blocks(base, layout)
    if num_layers > len(blocks):
        raise ValueError(f"num_layers must be at most {len(blocks)} (the blocks), got {num_layers}")
    seed = _check_seed(seed)
    names = {id(m): n for n, m in model.named_modules()}
    before = sum(p.numel() for p in _unique_parameters(model))
    replaced = []
    for i, block in enumerate(blocks[len(blocks) - num_layers :]):
        paths = tuple(p for p, _ in layout.ffn_in)
        linear_path = _first_path(block, paths, "feed-forward layer")
        act_path = dict(layout.ffn_in)[linear_path]
        linear = block.get_submodule(linear_path)
        if isinstance(linear, SNNKLinear):
            raise RuntimeError(f"{names[id(linear)]} is already an SNNKLinear (uptrained twice)")
        layer = SNNKLinear.from_linear(
            linear, activation, num_features, seed=seed + i, input_norm=input_norm
        )
        parent, name = _split(linear_path)
        setattr(block.get_submodule(parent), name, layer)
        act_parent, act_name = _split(act_path)
        setattr(block.get_submodule(act_parent), act_name, nn.Identity())
        replaced.append(f"{names[id(block)]}.{linear_path}")
    after = sum(p.numel() for p in _unique_parameters(model))
    return UptrainReport(model, tuple(replaced), before, after)
