"""The adapter config object and how ``target_modules`` selects layers by name."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from torch import nn

from snnk.nn.adapters._layout import ARCHITECTURES, first_path, layer_blocks
from snnk.nn.snnk_linear import ACTIVATIONS

#: name of the child module that holds a layer's named adapters
SLOT_NAME = "snnk_adapters"


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class AdapterConfig:
    r"""What one named adapter is: where it goes and its size (PEFT's ``LoraConfig`` role).

    Each target layer ``f`` becomes ``a(f(x))`` with ``a(y) = y + v ⊙ Φ(y)Ψᵀ`` (see
    :class:`~snnk.nn.SNNKAdapter`); the layer object itself is not replaced (the adapter is a
    child module run by a forward hook), so :func:`~snnk.nn.adapters.unload_adapters` gives
    back the original model bit for bit.

    Parameters
    ----------
    target_modules : str, sequence of str or None, default None
        Which layers get an adapter, by qualified name (``model.named_modules()``):

        * a string is a regular expression that must match the *whole* name
          (``r".*\.output\.dense"``), as in PEFT;
        * a list/tuple of strings matches a name equal to an entry or ending in
          ``"." + entry`` (``["query", "value"]``);
        * ``None`` uses the built-in Houlsby placement (after the attention and feed-forward
          blocks) of the architectures in :data:`~snnk.nn.SUPPORTED_ARCHITECTURES`.

        Targets must be ``nn.Linear`` layers (or transformers' ``Conv1D``, as in GPT-2);
        layers inside adapters and PEFT's ``lora_*`` layers are never targets.
    num_features : int, default 8
        ``D``: random features per adapter; an adapter on a layer of width ``H`` trains
        ``H·D + H`` numbers.
    activation : str, default "relu"
        Kind of the SNNK down map.
    bottleneck : int, optional
        A zero-initialised ``Linear(r, H)`` up-projection instead of the gate.
    input_norm : float, optional
        See :class:`~snnk.nn.SNNKAdapter`.
    seed : int, default 0
        Adapter ``i`` (in the order of ``named_modules``) is drawn with ``seed + i``.
    train_head : bool, default True
        While this adapter is active, the task head (parameters outside ``model.base_model``)
        trains too.
    """

    target_modules: str | tuple[str, ...] | None = None
    num_features: int = 8
    activation: str = "relu"
    bottleneck: int | None = None
    input_norm: float | None = None
    seed: int = 0
    train_head: bool = True

    def __post_init__(self) -> None:
        t = self.target_modules
        if isinstance(t, Sequence) and not isinstance(t, str):
            if not t or not all(isinstance(x, str) and x for x in t):
                raise ValueError(
                    f"target_modules must be a regular expression, a non-empty list of layer "
                    f"names, or None (built-in placement), got {t!r}"
                )
            object.__setattr__(self, "target_modules", tuple(t))
        elif isinstance(t, str):
            try:
                re.compile(t)
            except re.error as err:
                raise ValueError(
                    f"target_modules={t!r} is not a valid regular expression ({err}); pass a "
                    "list of names to match literally"
                ) from err
        elif t is not None:
            raise TypeError(
                f"target_modules must be a str (regex), a list of str or None, got {t!r}"
            )
        if not _is_int(self.num_features) or self.num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {self.num_features!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.bottleneck is not None and (not _is_int(self.bottleneck) or self.bottleneck <= 0):
            raise ValueError(f"bottleneck must be None or a positive int, got {self.bottleneck!r}")
        norm = self.input_norm
        if norm is not None and (
            isinstance(norm, bool)
            or not isinstance(norm, int | float)
            or not math.isfinite(norm)
            or norm <= 0
        ):
            raise ValueError(f"input_norm must be None or a positive number, got {norm!r}")
        if not _is_int(self.seed):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.train_head, bool):
            raise TypeError(f"train_head must be True or False, got {self.train_head!r}")

    def to_dict(self) -> dict:
        """JSON-ready fields (``target_modules`` a list, a string or None)."""
        out = asdict(self)
        if isinstance(self.target_modules, tuple):
            out["target_modules"] = list(self.target_modules)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> AdapterConfig:
        """The config from :meth:`to_dict` output; unknown or invalid keys raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"an adapter config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}; known: {sorted(names)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"invalid adapter config: {err}") from err


def _width(module: nn.Module) -> int | None:
    """Output width of a layer an adapter can follow, None for any other module."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):
        return module.nf  # transformers.pytorch_utils.Conv1D (GPT-2)
    return None


def _excluded(name: str) -> bool:
    parts = name.split(".")
    return SLOT_NAME in parts or any(p.startswith("lora_") for p in parts)


def _builtin_targets(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        linears = [n for n, m in model.named_modules() if _width(m) and not _excluded(n)]
        raise ValueError(
            f"target_modules=None (built-in placement) supports config.model_type in "
            f"{list(ARCHITECTURES)}; this {type(model).__name__} (model_type={model_type!r}) "
            f"needs target_modules, e.g. a list of layer names such as {linears[:4]}"
        )
    layout = ARCHITECTURES[model_type]
    base = getattr(model, "base_model", model)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for block in layer_blocks(base, layout):
        paths = tuple(p for p, _ in layout.ffn_in)
        hidden = block.get_submodule(first_path(block, paths, "feed-forward layer")).in_features
        for candidates in (layout.attention_site, layout.ffn_site):
            site = block.get_submodule(first_path(block, candidates, "adapter site"))
            out.append((names[id(site)], site, hidden))
    return out


def resolve_targets(
    model: nn.Module, target_modules: str | tuple[str, ...] | None, *, exact: bool = False
) -> list[tuple[str, nn.Module, int]]:
    """``(name, layer, width)`` of every layer ``target_modules`` selects, in model order.

    ``exact=True`` matches list entries against whole names only (used when loading).
    Raises ValueError naming ``target_modules`` when nothing matches, or when a matched
    module is not a layer an adapter can follow.
    """
    if target_modules is None:
        return _builtin_targets(model)
    out, wrong = [], []
    for name, module in model.named_modules():
        if not name or _excluded(name):
            continue
        if isinstance(target_modules, str):
            hit = re.fullmatch(target_modules, name) is not None
        else:
            hit = any(name == t or (not exact and name.endswith("." + t)) for t in target_modules)
        if not hit:
            continue
        width = _width(module)
        if width is None:
            base = getattr(module, "base_layer", None)  # a PEFT-wrapped layer
            width = None if base is None else _width(base)
        if width is None:
            wrong.append(f"{name} ({type(module).__name__})")
            continue
        out.append((name, module, width))
    if wrong and not out:
        raise ValueError(
            f"target_modules={target_modules!r} matches only modules that are not linear "
            f"layers: {wrong[:4]}; adapters follow nn.Linear (or Conv1D) layers, name those"
        )
    if not out:
        linears = [n for n, m in model.named_modules() if _width(m) and not _excluded(n)]
        raise ValueError(
            f"target_modules={target_modules!r} matches no layer of this "
            f"{type(model).__name__}; its linear layers are named like {linears[:4]} (a list "
            "entry matches a whole name or a name ending in '.' + entry; a string is a regex "
            "that must match the whole name)"
        )
    return out
