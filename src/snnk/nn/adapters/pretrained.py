"""``save_pretrained`` / ``from_pretrained`` for named adapters: one checked folder each.

Layout (``dir`` given to :func:`save_pretrained`)::

    dir/snnk_adapters_index.json          names, active adapters
    dir/<name>/snnk_adapter_config.json   AdapterConfig, target layers, widths, checksum
    dir/<name>/snnk_adapter_model.safetensors

An adapter folder holds the adapter tensors of every target layer (random buffers included,
so outputs are reproduced bit for bit) and, when its config trains the head, the head.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from snnk._utils.files import write_text_atomic
from snnk.nn.adapters._layout import unwrap
from snnk.nn.adapters.config import SLOT_NAME, AdapterConfig, resolve_targets
from snnk.nn.adapters.folder import check_folder_path, copy_into, read_folder, write_folder
from snnk.nn.adapters.named import (
    _check_name,
    _head_parameters,
    _state,
    add_adapter,
    delete_adapter,
    set_adapter,
)

ADAPTER_CONFIG_NAME = "snnk_adapter_config.json"
ADAPTER_WEIGHTS_NAME = "snnk_adapter_model.safetensors"
INDEX_NAME = "snnk_adapters_index.json"
_FORMAT, _VERSION = "snnk-named-adapter", 1
_INDEX_FORMAT = "snnk-named-adapters-index"


def _adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    state = _state(model)
    out: dict[str, torch.Tensor] = {}
    for target in state.targets[name]:
        adapter = model.get_submodule(f"{target}.{SLOT_NAME}.adapters.{name}")
        out.update(adapter.state_dict(prefix=f"{target}."))
    if state.configs[name].train_head:
        names = {id(p): n for n, p in model.named_parameters()}
        out.update({f"head::{names[id(p)]}": p.detach() for p in _head_parameters(model)})
    return out


def save_pretrained(
    model: nn.Module, path: str | os.PathLike[str], adapter_names: list[str] | None = None
) -> Path:
    """Write the named adapters of ``model`` (all, or ``adapter_names``) into folder ``path``.

    Each adapter gets a subfolder with its config (JSON) and tensors (safetensors), written
    atomically; ``snnk_adapters_index.json`` lists them. Nothing is pickled.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    inner = unwrap(model)
    state = _state(inner)
    folder = check_folder_path(path)
    names = list(state.configs) if adapter_names is None else list(adapter_names)
    unknown = [n for n in names if n not in state.configs]
    if unknown or not names:
        raise ValueError(
            f"adapter_names must name adapters of this model {sorted(state.configs)}, got "
            f"{adapter_names!r}"
        )
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    for name in names:
        config = {
            "adapter_name": name,
            "config": state.configs[name].to_dict(),
            "model_class": type(inner).__name__,
            "model_type": model_type,
            "targets": state.targets[name],
        }
        tensors = _adapter_tensors(inner, name)
        write_folder(
            folder / name, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, config, tensors, _FORMAT, 1
        )
    index = {
        "format": _INDEX_FORMAT,
        "adapters": names,
        "active": [n for n in state.active if n in names],
    }
    write_text_atomic(folder / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    return folder


def _read_adapter(folder: Path) -> tuple[str, AdapterConfig, list[str], dict, dict]:
    saved, tensors = read_folder(
        folder, ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, _FORMAT, _VERSION
    )
    config_file = folder / ADAPTER_CONFIG_NAME
    targets = saved.get("targets")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{config_file}: 'targets' must be a non-empty list of layer names")
    try:
        name = _check_name(saved.get("adapter_name"), "the saved adapter_name")
        config = AdapterConfig.from_dict(saved.get("config"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_file}: {err}") from err
    return name, config, targets, saved, tensors


def _load_one(model: nn.Module, folder: Path, adapter_name: str | None) -> str:
    """Add and fill one adapter from ``folder``, all or nothing; returns its name."""
    name, config, targets, saved, tensors = _read_adapter(folder)
    name = name if adapter_name is None else _check_name(adapter_name)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if saved.get("model_type") != model_type:
        raise ValueError(
            f"{folder}: the adapter was saved from a model with model_type="
            f"{saved.get('model_type')!r}, this model has {model_type!r}"
        )
    # built-in placement is re-resolved (its sites may be dropouts); names match exactly
    load_targets = None if config.target_modules is None else tuple(targets)
    found = [n for n, _, _ in resolve_targets(model, load_targets, exact=True)]
    if found != targets:
        missing = sorted(set(targets) - set(found))
        raise ValueError(f"{folder}: this model lacks the target layers {missing[:4]}")
    add_adapter(model, replace(config, target_modules=load_targets), name)
    try:
        own = _adapter_tensors(model, name)
        copy_into(own, tensors, folder)
    except BaseException:
        delete_adapter(model, name)
        raise
    # the add-time config keeps the user's target_modules (a regex or names), not the list
    _state(model).configs[name] = config
    return name


def from_pretrained(
    model: nn.Module, path: str | os.PathLike[str], adapter_name: str | None = None
) -> nn.Module:
    """Load adapters written by :func:`save_pretrained` into ``model`` (normally a fresh
    base model) and return it; outputs equal the saved model's bit for bit.

    ``path`` is the folder given to :func:`save_pretrained` (every adapter in it is loaded,
    the saved active set is restored) or one adapter's subfolder (``adapter_name`` renames
    it). Each folder is checked (JSON keys and values, checksum, tensor names, dtypes, finite
    values, shapes against the model) before the model is touched; a failure removes what
    this call added.

    Raises
    ------
    ValueError
        Not an snnk adapter folder, a damaged or edited file, or a model that lacks the
        target layers or has other widths.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    folder = check_folder_path(path)
    index_file = folder / INDEX_NAME
    if not index_file.is_file():
        _load_one(model, folder, adapter_name)
        return model
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{index_file} is not valid JSON ({err}); save again") from err
    if not isinstance(index, dict) or index.get("format") != _INDEX_FORMAT:
        raise ValueError(f"{index_file} is not an snnk adapter index")
    names, active = index.get("adapters"), index.get("active")
    if (
        not isinstance(names, list)
        or not names
        or not isinstance(active, list)
        or not set(active) <= set(names)
    ):
        raise ValueError(f"{index_file}: 'adapters' and 'active' must be lists of saved names")
    if adapter_name is not None:
        if adapter_name not in names:
            raise ValueError(f"adapter_name={adapter_name!r} is not in {folder}; it has {names}")
        names, active = [adapter_name], [adapter_name]
    loaded: list[str] = []
    try:
        for name in names:
            loaded.append(_load_one(model, folder / _check_name(name), None))
    except BaseException:
        for name in reversed(loaded):
            delete_adapter(model, name)
        raise
    if active:
        set_adapter(model, active)
    return model
