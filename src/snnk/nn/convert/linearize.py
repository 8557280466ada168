r"""``linearize`` / ``unlinearize``: kernel attention in place of softmax attention, reversibly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from snnk.nn.attention import CAUSAL_METHODS, LEARNED_METHODS, METHODS, KernelAttention
from snnk.nn.convert.hf import CORE_NAME, Site, find_sites, register, route, unroute

_STATE = "_snnk_linearized"
#: methods :func:`linearize` accepts (every :class:`~snnk.nn.KernelAttention` method)
CONVERT_METHODS = METHODS + LEARNED_METHODS


class AttentionCore(KernelAttention):
    """:class:`~snnk.nn.KernelAttention` without projections: the attention of one converted
    layer, called through :meth:`attend` on the model's own projected ``q, k, v``.

    Holds only what the method needs (the learned feature maps of ``"hybrid"`` /
    ``"hedgehog"``, the random draw of ``"favor+"``). ``enabled`` False makes the layer run
    its original softmax implementation; ``capture`` (a callable or None) sees every call's
    ``q, k, v, key_padding_mask``.
    """

    def __init__(self, num_heads: int, head_dim: int, method: str, **kwargs):
        super().__init__(num_heads * head_dim, num_heads, method, bias=False, **kwargs)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Identity())  # the model's own projections are used
        self.enabled = True
        self.capture = None

    def _init_weights(self) -> None:
        """No projection weights to draw (they are replaced by the model's)."""

    def forward(self, q, k, v, key_padding_mask=None, attn_mask=None, is_causal=None):
        """Same as :meth:`attend`."""
        return self.attend(q, k, v, key_padding_mask, attn_mask, is_causal)


@dataclass(frozen=True)
class LinearizeConfig:
    """The arguments of one :func:`linearize` call (saved with a converted model)."""

    method: str
    num_features: int
    window: int | None
    seed: int
    layers: tuple[str, ...]
    attention_kwargs: dict

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out


def _check_method(method: object, window: object) -> None:
    if method not in CONVERT_METHODS:
        raise ValueError(
            f"method must be one of {list(CONVERT_METHODS)}, got {method!r}; for pretrained "
            "models use 'hybrid' (exact window + learned kernel) and fit_attention"
        )
    if window is not None and method != "hybrid":
        raise ValueError(
            f"window applies to method='hybrid' only, got window={window!r} with "
            f"method={method!r}; drop window or use method='hybrid'"
        )
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 0
    ):
        raise ValueError(
            f"window must be a non-negative int (keys attended exactly), got {window!r}"
        )


def _select(sites: list[Site], layers, model: nn.Module) -> list[Site]:
    if not sites:
        raise ValueError(
            f"found no self-attention module to convert in this {type(model).__name__}: "
            "linearize supports Hugging Face transformers >= 5 models whose attention modules "
            "dispatch through the attention interface (BERT family, GPT-2, Llama, ...)"
        )
    if layers is None:
        return sites
    if isinstance(layers, int) or not isinstance(layers, Sequence) or isinstance(layers, str):
        raise TypeError(f"layers must be None or a list of layer indices, got {layers!r}")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int)]
    bad += [i for i in layers if isinstance(i, int) and not -len(sites) <= i < len(sites)]
    if bad or not layers:
        raise ValueError(
            f"layers must be a non-empty list of indices in [0, {len(sites)}) (the model's "
            f"{len(sites)} self-attention modules), got {layers!r}"
        )
    return [sites[i] for i in sorted({i % len(sites) for i in layers})]


def linearize(
    model: nn.Module,
    method: str = "hybrid",
    *,
    num_features: int = 64,
    window: int | None = None,
    layers: Sequence[int] | None = None,
    seed: int = 0,
    **attention_kwargs,
) -> nn.Module:
    r"""Replace softmax self-attention by kernel attention in every (or the chosen) layer.

    Each converted self-attention module keeps its projections, output layer, masks and
    weights; it gains a child ``snnk_attention`` (an :class:`AttentionCore`) that computes
    ``attend(q, k, v)`` on the module's own projected heads with the module's logit scale,
    causal for decoders (GPT-2) and bidirectional for encoders (BERT). Nothing else in the
    model changes, so :func:`unlinearize` restores it bit for bit.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A transformers >= 5 model (BERT family, GPT-2, ...); not wrapped in DDP.
    method : str, default "hybrid"
        Any :class:`~snnk.nn.KernelAttention` method. ``"hybrid"``: exact softmax in a
        sliding window of ``window`` keys plus a learned positive kernel for the rest, one
        shared normaliser; ``"hedgehog"``: the learned kernel alone. Train their feature
        maps with :func:`fit_attention`.
    num_features : int, default 64
        ``m`` per head (random features, landmarks or learned features).
    window : int, optional
        ``"hybrid"`` only (default 64).
    layers : list of int, optional
        Indices among the model's self-attention modules; default all.
    seed : int, default 0
        Layer ``i`` draws its features with ``seed + i``.
    **attention_kwargs
        ``chunk_size``, ``jitter``, ``pinv``, ``landmarks``, ``far_kernel``,
        ``value_rank``, ... of :class:`~snnk.nn.KernelAttention` (not ``scale``: each
        layer's own is used). ``far_kernel="nystrom"`` (``"hybrid"``, bidirectional models
        only) gives every layer the snapped landmark far field, a
        :class:`~snnk.nn.attention.learned.LearnedSnapMap` with ``num_features`` landmarks
        per sequence and head: the most faithful far field without training, and
        :func:`fit_attention` trains its few parameters per head.

    Returns
    -------
    torch.nn.Module
        ``model``, changed in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        raise ValueError("linearize the bare model, then wrap it in DistributedDataParallel")
    if _STATE in model.__dict__:
        raise ValueError("this model is linearized already; call unlinearize(model) first")
    _check_method(method, window)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if "scale" in attention_kwargs:
        raise TypeError("scale is taken from each attention module; do not pass it")
    sites = _select(find_sites(model), layers, model)
    cores = []
    for i, site in enumerate(sites):
        if site.is_causal and attention_kwargs.get("far_kernel") == "nystrom":
            raise ValueError(
                f"{site.name} is causal (a decoder) and far_kernel='nystrom' is bidirectional "
                "only (its clusters see every key); use far_kernel='learned' for decoders"
            )
        if site.is_causal and method not in CAUSAL_METHODS + LEARNED_METHODS:
            raise ValueError(
                f"{site.name} is causal (a decoder) and method={method!r} is not; use one of "
                f"{list(CAUSAL_METHODS + LEARNED_METHODS)}"
            )
        ref = next(site.module.parameters())
        cores.append(
            AttentionCore(
                site.num_heads,
                site.head_dim,
                method,
                num_features=num_features,
                window=window,
                is_causal=site.is_causal,
                seed=seed + i,
                scale=site.scaling,
                dtype=ref.dtype,
                device=ref.device,
                **attention_kwargs,
            )
        )
    register()
    for site, core in zip(sites, cores, strict=True):
        site.module.add_module(CORE_NAME, core)
        route(site.module)
    config = LinearizeConfig(
        method=method,
        num_features=num_features,
        window=cores[0].window if method == "hybrid" else window,
        seed=seed,
        layers=tuple(s.name for s in sites),
        attention_kwargs=dict(attention_kwargs),
    )
    model.__dict__[_STATE] = config
    return model


def linearize_config(model: nn.Module) -> LinearizeConfig:
    """How ``model`` was linearized (raises ValueError if it was not)."""
    config = model.__dict__.get(_STATE) if isinstance(model, nn.Module) else None
    if config is None:
        raise ValueError("this model is not linearized; call linearize(model, ...) first")
    return config


def cores(model: nn.Module) -> list[tuple[str, AttentionCore]]:
    """``(attention module name, core)`` of every converted layer, in model order."""
    config = linearize_config(model)
    return [(name, model.get_submodule(f"{name}.{CORE_NAME}")) for name in config.layers]


def unlinearize(model: nn.Module) -> nn.Module:
    """Undo :func:`linearize`: remove every core and routing; the original model exactly
    (same modules, ``state_dict`` and outputs bit for bit)."""
    config = linearize_config(model)
    for name in config.layers:
        module = model.get_submodule(name)
        del module._modules[CORE_NAME]
        unroute(module)
    del model.__dict__[_STATE]
    return model


def feature_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable attention parameters of a linearized model (learned feature maps)."""
    return [p for _, core in cores(model) for p in core.feature_parameters()]
