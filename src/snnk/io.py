"""Save and load fitted estimators as one safetensors file with a JSON header: never pickle.

A model file holds every fitted array as a named tensor and, in the safetensors metadata
under the key ``"snnk"``, a JSON document with the estimator class, its hyper-parameters and
its non-array fitted attributes. Loading reads tensors and JSON only, so a model file from
an untrusted source cannot execute code; it can only be rejected.

Estimators take part through :class:`PersistMixin`: by default it stores every public
fitted attribute (name ending in ``_``) that is a NumPy array, a tensor, a number, a string,
``None`` or a list/tuple of those, and every fitted ``torch.nn.Module`` attribute as its
``state_dict`` (the estimator rebuilds the module skeleton in ``_build_modules`` from its
hyper-parameters and the other fitted attributes, then the buffers are loaded bit for bit).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snnk._version import __version__

FORMAT = "snnk-model"
FORMAT_VERSION = 1
_META_KEY = "snnk"


def _json_value(name: str, value: Any) -> Any:
    """A JSON-able form of a hyper-parameter or scalar attribute, or raise."""
    from snnk.kernels import Kernel

    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Kernel):
        return {"__kernel__": value.get_config()}
    if isinstance(value, list | tuple):
        return [_json_value(name, v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(f"{name}.{k}", v) for k, v in value.items()}
    raise TypeError(
        f"cannot save {name}={value!r} ({type(value).__name__}): model files hold numbers, "
        "strings, kernels and arrays only (e.g. pass random_state as an int, not a "
        "RandomState or Generator)"
    )


def _from_json(value: Any) -> Any:
    from snnk.kernels import make_kernel

    if isinstance(value, dict):
        if set(value) == {"__kernel__"}:
            return make_kernel(**value["__kernel__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class PersistMixin:
    """Default ``_export_state`` / ``_import_state`` for :func:`save_model` / :func:`load_model`.

    Subclasses that hold ``torch.nn.Module`` fitted attributes implement
    ``_build_modules(self)``: recreate them (any random buffers may be arbitrary; they are
    overwritten by the saved ``state_dict``) from hyper-parameters and the restored fitted
    attributes.
    """

    #: private fitted attributes that must survive a round trip as well
    _persist_private: tuple[str, ...] = ()

    def _fitted_names(self) -> list[str]:
        public = [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]
        return public + [k for k in self._persist_private if hasattr(self, k)]

    def _export_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta: dict[str, Any] = {"arrays": {}, "modules": [], "values": {}}
        tensors: dict[str, torch.Tensor] = {}
        for name in self._fitted_names():
            value = getattr(self, name)
            if isinstance(value, torch.nn.Module):
                meta["modules"].append(name)
                for key, t in value.state_dict().items():
                    tensors[f"module.{name}.{key}"] = t.detach().cpu().contiguous()
            elif isinstance(value, torch.Tensor):
                meta["arrays"][name] = "torch"
                tensors[f"attr.{name}"] = value.detach().cpu().contiguous()
            elif isinstance(value, np.ndarray):
                if value.dtype.kind in "OUS":
                    # e.g. string class labels: stored in JSON (they are not numbers)
                    items = [_json_value(name, v) for v in value.tolist()]
                    meta["values"][name] = {"__array__": items, "dtype": value.dtype.str}
                    continue
                meta["arrays"][name] = "numpy"
                tensors[f"attr.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
            else:
                meta["values"][name] = _json_value(name, value)
        return meta, tensors

    def _import_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        for name, value in meta["values"].items():
            if isinstance(value, dict) and set(value) == {"__array__", "dtype"}:
                value = np.array(value["__array__"], dtype=np.dtype(value["dtype"]))
            else:
                value = _from_json(value)
            setattr(self, name, value)
        for name, kind in meta["arrays"].items():
            t = tensors[f"attr.{name}"]
            setattr(self, name, t.numpy().copy() if kind == "numpy" else t.clone())
        if meta["modules"]:
            self._build_modules()
            for name in meta["modules"]:
                prefix = f"module.{name}."
                state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                getattr(self, name).load_state_dict(state, strict=True)

    def _build_modules(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} holds fitted modules but does not implement _build_modules"
        )

    def save(self, path: str | Path) -> Path:
        """Save this fitted estimator to ``path`` (safetensors + JSON); see :func:`save_model`."""
        return save_model(self, path)


def save_model(estimator: Any, path: str | Path) -> Path:
    """Write a fitted snnk estimator to ``path`` (one safetensors file, JSON metadata).

    Returns the path written. The write goes to a temporary file that replaces ``path``
    only when complete, so an interrupted save never leaves a truncated model behind.
    """
    from safetensors.torch import save_file
    from sklearn.utils.validation import check_is_fitted

    if not hasattr(estimator, "_export_state"):
        raise TypeError(f"{type(estimator).__name__} cannot be saved by snnk.io")
    check_is_fitted(estimator)
    params = {k: _json_value(k, v) for k, v in estimator.get_params(deep=False).items()}
    state, tensors = estimator._export_state()
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "snnk_version": __version__,
        "class": type(estimator).__name__,
        "params": params,
        "state": state,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(doc)})
    tmp.replace(path)
    return path


def _registry() -> dict[str, type]:
    import snnk.models as models

    return {
        name: cls
        for name in models.__all__
        if isinstance(cls := getattr(models, name), type) and hasattr(cls, "_import_state")
    }


def load_model(path: str | Path) -> Any:
    """Load an estimator written by :func:`save_model`. Reads tensors and JSON only."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not an snnk model file (safetensors): {exc}") from exc
    if _META_KEY not in meta:
        raise ValueError(f"{path} is a safetensors file but not an snnk model (no 'snnk' header)")
    try:
        doc = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt snnk header: {exc}") from exc
    if doc.get("format") != FORMAT or doc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported model format {doc.get('format')!r} version "
            f"{doc.get('format_version')!r}; this snnk reads {FORMAT!r} up to {FORMAT_VERSION}"
        )
    classes = _registry()
    cls = classes.get(doc.get("class"))
    if cls is None:
        raise ValueError(
            f"{path}: unknown estimator class {doc.get('class')!r}; known: {sorted(classes)}"
        )
    # hyper-parameters added after a file was written take the value that reproduces the
    # model it holds (``_legacy_params``), not today's default
    params = dict(getattr(cls, "_legacy_params", {}))
    params.update({k: _from_json(v) for k, v in doc["params"].items()})
    est = cls(**params)
    est._import_state(doc["state"], tensors)
    return est
