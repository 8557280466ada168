"""Save and load fitted estimators as one safetensors file with a JSON header: never pickle.

A model file holds every fitted array as a named tensor and, in the safetensors metadata
under the key ``"snnk"``, a JSON document with the estimator class, its hyper-parameters and
its non-array fitted attributes. Loading reads tensors and JSON only, so a model file from
an untrusted source cannot execute code; it can only be rejected. Before anything is built
the header is checked against :mod:`snnk._persist_schema`: the document's structure, the
hyper-parameters against the estimator's ``_parameter_constraints`` (types and ranges), and
the fitted state against the class's declarations (``_persist_arrays``,
``_persist_values``: dtypes, shapes, sizes that agree, value ranges); a bad file gets a
``ValueError`` naming the file and the field.

Estimators take part through :class:`PersistMixin`: by default it stores every public
fitted attribute (name ending in ``_``) that is a NumPy array, a tensor, a number, a string,
``None`` or a list/tuple of those, and every fitted ``torch.nn.Module`` attribute as its
``state_dict`` (the estimator rebuilds the module skeleton in ``_build_modules`` from its
hyper-parameters and the other fitted attributes, then the buffers are loaded bit for bit).

Classes register themselves by subclassing :class:`PersistMixin` (``__init_subclass__``);
the library's estimators are also listed by name in :data:`KNOWN_CLASSES` and imported by
:mod:`importlib` on first use, so this module never imports :mod:`snnk.models`.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from snnk._persist_schema import (
    HEADER_SCHEMA,
    ArraySpec,
    Field,
    HeaderError,
    ValueSpec,
    check_header,
    check_module_state,
    check_param_names,
    check_params,
    check_state,
)
from snnk._utils.files import write_safetensors_atomic
from snnk._version import __version__

FORMAT = "snnk-model"
FORMAT_VERSION = 1
META_KEY = "snnk"

#: estimators of the library by class name -> the module that defines (or exports) them,
#: imported on first load of such a file when the class has not been imported yet
KNOWN_CLASSES: dict[str, str] = {
    "BundledClassifier": "snnk.models",
    "BundledRegressor": "snnk.models",
    "DeepKernelMachineClassifier": "snnk.models",
    "DeepKernelMachineRegressor": "snnk.models",
    "KernelRidgeCG": "snnk.models",
    "NystromRidge": "snnk.models",
    "NystromTransformer": "snnk.models",
    "OptimalWeightedLeastSquares": "snnk.models",
    "PositiveFeatureTransformer": "snnk.models",
    "RandomFeatureClassifier": "snnk.models",
    "RandomFeatureGP": "snnk.models",
    "RandomFeatureRidge": "snnk.models",
    "RandomFeatureTransformer": "snnk.models",
}

_REGISTRY: dict[str, type] = {}

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_SCHEMA",
    "KNOWN_CLASSES",
    "META_KEY",
    "ArraySpec",
    "Field",
    "HeaderError",
    "PersistMixin",
    "ValueSpec",
    "check_header",
    "check_state",
    "load_model",
    "load_model_and_preprocessing",
    "registered_class",
    "save_model",
]


def _json_value(name: str, value: Any) -> Any:
    """A JSON-able form of a hyper-parameter or scalar attribute, or raise."""
    from snnk.kernels import Kernel

    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, torch.device):  # device="cuda:0" and torch.device("cuda:0") alike
        return str(value)
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
    attributes. Every subclass with a public name is registered for :func:`load_model`.

    Class attributes
    ----------------
    _persist_private : tuple of str
        Private fitted attributes that must survive a round trip as well.
    _persist_arrays : dict of str to ArraySpec
        The fitted arrays the class declares (tensor key pattern -> dtype kinds, number of
        dimensions, named sizes, value range); a file whose arrays disagree is rejected
        before anything is built. Merged over the MRO (each class declares its own).
    _persist_values : dict of str to ValueSpec
        The scalar fitted attributes the class declares (JSON kinds, range, choices),
        merged over the MRO likewise.
    _legacy_params : dict
        Values of hyper-parameters added after files were written: an older file without
        them loads with these (the values that reproduce its model), not today's defaults.
    """

    _persist_private: ClassVar[tuple[str, ...]] = ()
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {}
    _persist_values: ClassVar[dict[str, ValueSpec]] = {}
    _legacy_params: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    @classmethod
    def _upgrade_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Hyper-parameters of an older file in today's names (renamed parameters)."""
        return params

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
                check_module_state(name, getattr(self, name), state)
                getattr(self, name).load_state_dict(state, strict=True)

    def _build_modules(self) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} holds fitted modules but does not implement _build_modules"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save this fitted estimator to ``path`` (safetensors + JSON); see :func:`save_model`."""
        return save_model(self, path)


def registered_class(name: str) -> type | None:
    """The :class:`PersistMixin` subclass saved under ``name``, importing the library module
    that defines it (:data:`KNOWN_CLASSES`) if needed; ``None`` when unknown."""
    if name not in _REGISTRY and name in KNOWN_CLASSES:
        importlib.import_module(KNOWN_CLASSES[name])
    cls = _REGISTRY.get(name)
    return cls if isinstance(cls, type) and issubclass(cls, PersistMixin) else None


def save_model(
    estimator: Any,
    path: str | os.PathLike[str],
    *,
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted snnk estimator to ``path`` (one safetensors file, JSON metadata).

    Returns the path written. The write goes to a temporary file beside ``path`` that
    replaces it only when complete (:func:`snnk._utils.files.write_safetensors_atomic`), so an
    interrupted save never leaves a truncated model behind; a missing folder raises
    ``FileNotFoundError`` naming it.

    ``preprocessing``: a JSON object (strings, finite numbers, booleans, ``None``, lists and
    string-keyed objects) stored beside the estimator under the header key
    ``"preprocessing"``: how the columns of a table become the estimator's inputs (``snnk
    fit`` writes its fitted column transform there). :func:`load_model` ignores it;
    :func:`load_model_and_preprocessing` returns it.
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not hasattr(estimator, "_export_state"):
        raise TypeError(f"{type(estimator).__name__} cannot be saved by snnk.io")
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise NotFittedError(
            f"this {type(estimator).__name__} is not fitted, so there is nothing to save: "
            "call fit(X, y) first, then save_model"
        ) from exc
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
    if preprocessing is not None:
        if not isinstance(preprocessing, dict):
            raise TypeError(
                f"preprocessing must be a dict (a JSON object), got {type(preprocessing).__name__}"
            )
        try:  # finite numbers only: NaN and Infinity are not JSON
            json.dumps(preprocessing, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"preprocessing is not a JSON object of finite values: {exc}"
            ) from None
        doc["preprocessing"] = preprocessing
    return write_safetensors_atomic(path, tensors, metadata={META_KEY: json.dumps(doc)})


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON document and the tensors of a model file (format checked, nothing built)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not an snnk model file (safetensors): {exc}") from exc
    if META_KEY not in meta:
        raise ValueError(f"{path} is a safetensors file but not an snnk model (no 'snnk' header)")
    try:
        doc = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt snnk header: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: corrupt snnk header: a JSON object is expected")
    return doc, tensors


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load an estimator written by :func:`save_model`. Reads tensors and JSON only.

    The header is checked against :data:`HEADER_SCHEMA` and the class's declarations before
    the estimator is built; every problem is a ``ValueError`` naming the file and the field.
    """
    return load_model_and_preprocessing(path)[0]


def load_model_and_preprocessing(
    path: str | os.PathLike[str],
    check: Callable[[dict[str, Any], Any], None] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """``(estimator, preprocessing)`` of a file written by :func:`save_model`.

    ``preprocessing`` is the JSON object saved with the estimator (``None`` when there is
    none). ``check(preprocessing, estimator)``, when given, validates it and raises
    :class:`HeaderError` naming the field (e.g. ``preprocessing.numeric.0.scale``); like every
    other problem of the file, that becomes a ``ValueError`` naming the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    doc, tensors = _read(path)
    if doc.get("format") != FORMAT or not isinstance(doc.get("format_version", 0), int):
        raise ValueError(
            f"{path}: unsupported model format {doc.get('format')!r} version "
            f"{doc.get('format_version')!r}; this snnk reads {FORMAT!r} up to {FORMAT_VERSION}"
        )
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported model format {doc.get('format')!r} version "
            f"{doc.get('format_version')!r}; this snnk reads {FORMAT!r} up to {FORMAT_VERSION}"
        )
    try:
        check_header(doc, tuple(f for f in HEADER_SCHEMA if f.path == "class"))
        cls = registered_class(doc["class"])
        if cls is None:
            known = sorted(set(_REGISTRY) | set(KNOWN_CLASSES))
            raise HeaderError("class", f"unknown estimator class {doc['class']!r}; known: {known}")
        check_header(doc)
        # hyper-parameters added after a file was written take the value that reproduces
        # the model it holds (``_legacy_params``), not today's default
        raw = cls._upgrade_params(dict(doc["params"]))
        check_param_names(cls, raw)
        params = {**cls._legacy_params, **{k: _param_from_json(k, v) for k, v in raw.items()}}
        check_params(cls, params)
        check_state(cls, raw, doc["state"], tensors)
    except HeaderError as exc:
        raise ValueError(f"{path}: field {exc.field!r}: {exc.problem}") from None
    try:
        est = cls(**params)
        est._import_state(doc["state"], tensors)
    except HeaderError as exc:
        raise ValueError(f"{path}: field {exc.field!r}: {exc.problem}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: the saved state does not rebuild a {cls.__name__}: {exc}"
        ) from exc
    preprocessing = doc.get("preprocessing")
    if preprocessing is not None and check is not None:
        try:
            check(preprocessing, est)
        except HeaderError as exc:
            raise ValueError(f"{path}: field {exc.field!r}: {exc.problem}") from None
    return est, preprocessing


def _param_from_json(name: str, value: Any) -> Any:
    """A hyper-parameter from its JSON form; a kernel configuration that does not build is
    a :class:`HeaderError` naming it."""
    try:
        return _from_json(value)
    except (TypeError, ValueError, KeyError) as exc:
        raise HeaderError(f"params.{name}", f"not a valid kernel configuration: {exc}") from None
