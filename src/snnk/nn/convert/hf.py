r"""The Hugging Face side of conversion: finding self-attention modules, and the attention
function that runs kernel attention in their place.

Every attention module of transformers >= 5 projects its queries, keys and values itself and
then calls ``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ...)``
with ``(module, query (B, H, L, E), key (B, H_kv, S, E), value, attention_mask, scaling=...,
dropout=...)``, and expects ``(output (B, L, H, E), weights or None)``. Conversion registers
one more implementation, :data:`ATTENTION_NAME`, and gives each converted module a private
copy of its config naming it: that module (only) then calls :func:`kernel_attention_forward`,
which hands ``q, k, v`` to the module's ``snnk_attention`` child
(:meth:`~snnk.nn.KernelAttention.attend`). The projections, the output layer, the masks the
model builds and every other module are untouched.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

#: the name registered in transformers' ``AttentionInterface`` (and ``AttentionMaskInterface``)
ATTENTION_NAME = "snnk_kernel"
#: the child module of a converted attention module
CORE_NAME = "snnk_attention"


class StopForward(Exception):
    """Raised by a capture to skip the rest of a forward pass."""


@dataclass
class Site:
    """A self-attention module that can be converted."""

    name: str
    module: nn.Module
    num_heads: int
    head_dim: int
    is_causal: bool
    scaling: float


def _config_of(module: nn.Module):
    config = getattr(module, "config", None)
    return config if hasattr(config, "_attn_implementation") else None


def _heads(module: nn.Module) -> tuple[int, int] | None:
    config = _config_of(module)
    heads = getattr(module, "num_attention_heads", None) or getattr(module, "num_heads", None)
    if heads is None and config is not None:
        heads = getattr(config, "num_attention_heads", None)
    dim = getattr(module, "attention_head_size", None) or getattr(module, "head_dim", None)
    if isinstance(heads, int) and isinstance(dim, int) and heads > 0 and dim > 0:
        return heads, dim
    return None


def _is_cross(name: str, module: nn.Module) -> bool:
    return bool(getattr(module, "is_cross_attention", False)) or "cross" in (
        type(module).__name__.lower() + name.lower()
    )


def find_sites(model: nn.Module) -> list[Site]:
    """Every convertible self-attention module, in model order.

    A site is an innermost module with a transformers config (``_attn_implementation``), a
    head count and a head size (``BertSelfAttention``, ``GPT2Attention``, ...), that is not a
    cross-attention module.
    """
    found = []
    for name, module in model.named_modules():
        if _config_of(module) is None or _heads(module) is None or _is_cross(name, module):
            continue
        found.append((name, module))
    inner = [
        (n, m)
        for n, m in found
        if not any(o is not m and o_name.startswith(n + ".") for o_name, o in found)
    ]
    sites = []
    for name, module in inner:
        heads, dim = _heads(module)
        scaling = getattr(module, "scaling", None)
        sites.append(
            Site(
                name=name,
                module=module,
                num_heads=heads,
                head_dim=dim,
                is_causal=bool(getattr(module, "is_causal", False)),
                scaling=float(scaling) if isinstance(scaling, int | float) else dim**-0.5,
            )
        )
    return sites


def key_padding_mask(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """``(B, S)`` bool, True = padding, from a transformers attention mask (or None).

    The model's mask may be ``None``, a ``(B, S)`` 0/1 mask (flash style), a ``(B, 1, L, S)``
    bool mask (SDPA style, True = attend; causal structure included) or float additive bias
    (eager style). A key is padding when no query may attend to it.
    """
    if mask is None:
        return None
    if mask.ndim == 2:
        visible = mask.bool()
    elif mask.ndim == 4:
        if mask.dtype == torch.bool:
            seen = mask
        else:
            seen = mask > torch.finfo(mask.dtype).min / 2
        visible = seen.any(dim=-2).any(dim=1)
    else:
        raise ValueError(f"unexpected attention mask of shape {tuple(mask.shape)}")
    visible = visible.expand(batch, keys) if visible.shape != (batch, keys) else visible
    padding = ~visible
    return padding if bool(padding.any()) else None


def kernel_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: kernel attention on a converted module.

    A module whose conversion is switched off (``core.enabled`` False, used by
    :func:`~snnk.nn.convert.fit_attention` to run the exact model) or that has no core runs
    its original implementation. A capture callback (``core.capture``) sees the exact
    ``q, k, v`` and key padding of every call.
    """
    core = module._modules.get(CORE_NAME)
    B, S = key.shape[0], key.shape[-2]
    if core is not None and core.capture is not None:
        core.capture(query, key, value, key_padding_mask(attention_mask, B, S))
    if core is None or not core.enabled:
        original = module.__dict__["_snnk_original_config"]._attn_implementation
        return _original_function(original, module)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", False)) if causal is None else bool(causal)
    if causal and query.shape[-2] != key.shape[-2]:
        raise ValueError(
            "a linearized decoder has no key/value cache for step-by-step decoding yet: run "
            "full sequences (model(input_ids, use_cache=False)), or unlinearize(model) before "
            "generate()"
        )
    if key.shape[1] != query.shape[1]:  # grouped-query attention: one k/v head per group
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = core.attend(
        query, key, value, key_padding_mask=key_padding_mask(attention_mask, B, S), is_causal=causal
    )
    return out.transpose(1, 2).contiguous(), None


def _original_function(name: str | None, module: nn.Module) -> Callable:
    """The attention function ``module`` ran before conversion (its own module's eager one
    for ``"eager"``, as transformers dispatches)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name not in (None, "eager", ATTENTION_NAME):
        return ALL_ATTENTION_FUNCTIONS.get_interface(name, None)
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        from transformers.models.bert.modeling_bert import eager_attention_forward as eager
    return eager


def register() -> None:
    """Register :data:`ATTENTION_NAME` in transformers (idempotent)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, kernel_attention_forward)
    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def route(module: nn.Module) -> None:
    """Give ``module`` a private config copy that names :data:`ATTENTION_NAME`."""
    original = module.config
    private = copy.copy(original)
    private._attn_implementation_internal = ATTENTION_NAME  # no recursion into sub-configs
    module.__dict__["_snnk_original_config"] = original
    module.config = private


def unroute(module: nn.Module) -> None:
    """Undo :func:`route`: the module's original config object again."""
    original = module.__dict__.pop("_snnk_original_config", None)
    if original is not None:
        module.config = original
