"""Saving adapters (atomic safetensors + JSON) and loading them all or nothing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from snnk._utils.files import write_safetensors_atomic, write_text_atomic
from snnk._version import __version__
from snnk.nn.adapters._layout import PLACEMENTS, architecture, unwrap
from snnk.nn.adapters.adapter import adapter_config, iter_adapters
from snnk.nn.adapters.insert import Undo, apply_plan, plan_adapters
from snnk.nn.snnk_linear import ACTIVATIONS

#: file names written by :func:`save_adapters`
WEIGHTS_NAME = "snnk_adapters.safetensors"
CONFIG_NAME = "snnk_adapters.json"
_FORMAT = "snnk-adapters"
_FORMAT_VERSION = 1

#: keys of the adapters' structure: a model with adapters must match them to load a folder
_STRUCTURE = ("num_features", "activation", "placement", "bottleneck", "input_norm")


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
    model = unwrap(model)
    out: dict[str, torch.Tensor] = {}
    for name, adapter in iter_adapters(model):
        out.update(adapter.state_dict(prefix=f"{name}."))
    if not out:
        raise ValueError("this model has no SNNK adapters; call add_adapters first")
    for name, p in model.named_parameters():
        if p.requires_grad and name not in out:
            out[name] = p.detach()
    return out


def save_adapters(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the adapters (and trained head) of ``model`` into the folder ``path``.

    Two files: ``snnk_adapters.safetensors`` (the tensors of :func:`adapter_state_dict`) and
    ``snnk_adapters.json`` (the :func:`add_adapters` arguments, model type and sizes). The
    folder is created if needed; each file is written atomically (a reader sees the old
    file or the whole new one, never half of it). Nothing is pickled.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {path!r}")
    config = dict(adapter_config(model))
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in adapter_state_dict(model).items()
    }
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"path: {str(folder)!r} is a file; save_adapters writes a folder of two files, "
            "give a folder path"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(folder / WEIGHTS_NAME, tensors, metadata={"format": _FORMAT})
    config.update(format=_FORMAT, format_version=_FORMAT_VERSION, snnk_version=__version__)
    config["tensors"] = sorted(tensors)
    write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return folder


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _optional_positive_int(value: object) -> bool:
    return value is None or _positive_int(value)


def _optional_positive_number(value: object) -> bool:
    return value is None or (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


#: key -> (check, what it must be), for every key :func:`load_adapters` reads
_SCHEMA = {
    "model_type": (lambda v: isinstance(v, str), "a string"),
    "hidden_size": (_positive_int, "a positive integer"),
    "num_blocks": (_positive_int, "a positive integer"),
    "num_adapters": (_positive_int, "a positive integer"),
    "num_features": (_positive_int, "a positive integer"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {list(ACTIVATIONS)}"),
    "placement": (lambda v: v in PLACEMENTS, f"one of {list(PLACEMENTS)}"),
    "bottleneck": (_optional_positive_int, "null or a positive integer"),
    "input_norm": (_optional_positive_number, "null or a positive number"),
    "train_head": (lambda v: isinstance(v, bool), "true or false"),
    "train_pooler": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "tensors": (
        lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
        "a list of tensor names",
    ),
}


def _read_config(config_file: Path) -> dict:
    """The JSON config of an adapter folder, every key checked (type and value)."""
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{config_file} is not valid JSON ({err}); save the adapters again"
        ) from err
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise ValueError(f"{config_file} is not an SNNK adapter config (format {_FORMAT!r})")
    version = saved.get("format_version")
    if not _positive_int(version) or version > _FORMAT_VERSION:
        raise ValueError(
            f"{config_file} has format_version={version!r}; this snnk reads versions up to "
            f"{_FORMAT_VERSION} (upgrade snnk to load adapters saved by a newer version)"
        )
    missing = [k for k in _SCHEMA if k not in saved]
    if missing:
        raise ValueError(f"{config_file} lacks the keys {missing}; save the adapters again")
    for key, (check, what) in _SCHEMA.items():
        if not check(saved[key]):
            raise ValueError(f"{config_file}: {key!r} must be {what}, got {saved[key]!r}")
    per_block = 2 if saved["placement"] == "houlsby" else 1
    if saved["num_adapters"] != per_block * saved["num_blocks"]:
        raise ValueError(
            f"{config_file}: num_adapters={saved['num_adapters']} does not fit "
            f"placement={saved['placement']!r} with num_blocks={saved['num_blocks']}"
        )
    return saved


def _read_tensors(weights_file: Path, listed: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of an adapter folder: readable, the ones the config lists, finite."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_file), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(
            f"{weights_file} is not a readable safetensors file ({err}); save the adapters again"
        ) from err
    if metadata.get("format", _FORMAT) != _FORMAT:
        raise ValueError(f"{weights_file} is not an SNNK adapter file (format {_FORMAT!r})")
    if sorted(tensors) != sorted(listed):
        raise ValueError(
            f"{weights_file} holds the tensors {sorted(tensors)[:5]}..., but its config lists "
            f"{sorted(listed)[:5]}...: the two files are from different saves"
        )
    for name, value in tensors.items():
        if not value.is_floating_point():
            raise ValueError(f"{weights_file}: {name!r} has dtype {value.dtype}, not a float")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{weights_file}: {name!r} holds NaN or Inf values")
    return tensors


def _check_against(
    weights_file: Path,
    tensors: dict[str, torch.Tensor],
    expected: set[str],
    shapes: dict[str, tuple[int, ...]],
) -> None:
    """Every expected tensor present, none unknown to the model, every shape equal."""
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{weights_file} does not match this model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, value in tensors.items():
        if tuple(value.shape) != shapes[name]:
            raise ValueError(
                f"{name}: saved shape {tuple(value.shape)}, model shape {shapes[name]}"
            )


def load_adapters(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Restore adapters saved by :func:`save_adapters` into ``model`` and return it.

    ``model`` is normally a fresh base model (for example the same checkpoint loaded again
    with ``from_pretrained``): the adapters are added as the saved config says, then every
    saved tensor, random buffers included, is copied in, so the logits equal the saved
    model's bit for bit. A model that already has adapters of the same structure is
    overwritten in place.

    All or nothing: the config (every key, type and value), the tensors (names, dtypes,
    finite values) and their shapes against the model are checked before the model is
    touched, and any later error puts the model back as it was (modules, ``requires_grad``
    flags, values).

    Raises
    ------
    ValueError
        The folder is not an SNNK adapter folder, a file is damaged or inconsistent, the
        model type or sizes differ, or tensors are missing, unexpected or of another shape.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {path!r}")
    folder = Path(path)
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a folder written by save_adapters: expected "
            f"{CONFIG_NAME} and {WEIGHTS_NAME} in it"
        )
    saved = _read_config(config_file)
    inner, _, model_type, _ = architecture(model)
    if model_type != saved["model_type"]:
        raise ValueError(
            f"the adapters were saved from a {saved['model_type']!r} model, but this model's "
            f"model_type is {model_type!r}"
        )
    tensors = _read_tensors(weights_file, saved["tensors"])
    shapes = {k: tuple(v.shape) for k, v in inner.state_dict(keep_vars=True).items()}
    plan = None
    if any(True for _ in iter_adapters(inner)):
        config = adapter_config(inner)
        diff = {k: (saved[k], config.get(k)) for k in _STRUCTURE if saved[k] != config.get(k)}
        if diff:
            raise ValueError(
                "the model's adapters differ from the saved ones (saved, current): "
                + ", ".join(f"{k}={v}" for k, v in diff.items())
            )
        expected = set(adapter_state_dict(inner))
    else:
        plan = plan_adapters(
            model,
            saved["num_features"],
            saved["activation"],
            saved["placement"],
            saved["train_head"],
            saved["train_pooler"],
            saved["seed"],
            saved["bottleneck"],
            saved["input_norm"],
        )
        config = plan.config
        adapters = plan.adapter_shapes()
        names = {id(p): n for n, p in inner.named_parameters()}
        expected = set(adapters) | {names[id(p)] for p in plan.trainable}
        shapes.update(adapters)
    for key in ("hidden_size", "num_blocks"):
        if config[key] != saved[key]:
            raise ValueError(
                f"the adapters were saved for {key}={saved[key]}, this model has {config[key]}"
            )
    _check_against(weights_file, tensors, expected, shapes)
    undo = Undo(inner)
    try:
        if plan is not None:
            apply_plan(plan, undo)
        targets = inner.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, value in tensors.items():
                undo.keep(targets[name])
                targets[name].copy_(value)
    except BaseException:
        undo.rollback()
        raise
    return model
