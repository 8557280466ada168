"""Save and load fitted estimators as one safetensors file with a JSON header: never pickle.

A model file holds every fitted array as a named tensor and, in the safetensors metadata
under the key ``"snnk"``, a JSON document with the estimator class, its hyper-parameters and
its non-array fitted attributes. Loading reads tensors and JSON only, so a model file from
an untrusted source cannot execute code; it can only be rejected. The header is checked
against :data:`HEADER_SCHEMA` (and the class's declared arrays, ``_persist_arrays``) before
anything is built, and a bad file gets a ``ValueError`` naming the file and the field.

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

import fnmatch
import importlib
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

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
    "KernelRidgeCG": "snnk.models",
    "NystromRidge": "snnk.models",
    "RandomFeatureClassifier": "snnk.models",
    "RandomFeatureGP": "snnk.models",
    "RandomFeatureRidge": "snnk.models",
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
    "check_header",
    "check_state",
    "load_model",
    "registered_class",
    "save_model",
]


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


# -- the header schema ---------------------------------------------------------------------------
class HeaderError(Exception):
    """A model file's header disagrees with the schema (``field``: where, ``problem``: what)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Field:
    """One entry of the header: its dotted ``path``, the JSON types it may have, whether it
    is required, and (for objects and lists) the JSON types of every member."""

    path: str
    types: tuple[type, ...]
    required: bool = True
    members: tuple[type, ...] | None = None
    choices: tuple[Any, ...] | None = None


#: the header document of a model file, checked field by field before anything is built
HEADER_SCHEMA: tuple[Field, ...] = (
    Field("format", (str,)),
    Field("format_version", (int,)),
    Field("snnk_version", (str,), required=False),
    Field("class", (str,)),
    Field("params", (dict,)),
    Field("state", (dict,)),
    Field("state.arrays", (dict,), members=(str,), choices=("numpy", "torch")),
    Field("state.modules", (list,), members=(str,)),
    Field("state.values", (dict,)),
)

#: JSON types a saved scalar attribute or hyper-parameter may be built from
_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class ArraySpec:
    """What an estimator declares about one saved tensor (``_persist_arrays``).

    ``kinds``: allowed NumPy dtype kinds (``"f"`` floating, ``"i"``/``"u"`` integer, ``"b"``
    bool); ``ndim``: number of dimensions; ``dims``: a name per dimension, so that sizes
    agree across tensors and with integer hyper-parameters or values of the same name
    (``None``: any size); ``required``: the tensor must be in every file of the class.
    """

    kinds: str = "f"
    ndim: int | None = None
    dims: tuple[str | None, ...] | None = None
    required: bool = False


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not the integer 1
    return isinstance(value, types)


def _lookup(doc: dict[str, Any], path: str) -> tuple[bool, Any]:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _type_names(types: tuple[type, ...]) -> str:
    names = {dict: "object", list: "list", str: "string", int: "integer", float: "number"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_header(doc: dict[str, Any], schema: tuple[Field, ...] = HEADER_SCHEMA) -> None:
    """Check the header document against ``schema``; raise :class:`HeaderError` at the first
    field that is missing or of the wrong JSON type."""
    for f in schema:
        found, value = _lookup(doc, f.path)
        if not found:
            if f.required:
                raise HeaderError(f.path, "missing")
            continue
        if not _has_type(value, f.types):
            raise HeaderError(
                f.path, f"expected {_type_names(f.types)}, got {type(value).__name__}"
            )
        if isinstance(value, dict):
            items = list(value.items())
        else:
            items = list(enumerate(value)) if isinstance(value, list) else []
        for key, item in items:
            if f.members is not None and not _has_type(item, f.members):
                raise HeaderError(
                    f"{f.path}.{key}",
                    f"expected {_type_names(f.members)}, got {type(item).__name__}",
                )
            if f.choices is not None and item not in f.choices:
                raise HeaderError(f"{f.path}.{key}", f"expected one of {f.choices}, got {item!r}")


def _check_json(field: str, value: Any) -> None:
    """A saved value holds JSON scalars, lists and string-keyed objects only (a kernel is an
    object ``{"__kernel__": {...}}``; a string array ``{"__array__": [...], "dtype": ...}``)."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(f"{field}.{i}", v)
    elif isinstance(value, dict):
        if "__kernel__" in value and not (
            set(value) == {"__kernel__"} and isinstance(value["__kernel__"], dict)
        ):
            raise HeaderError(field, "a kernel must be {'__kernel__': {...config...}}")
        if "__array__" in value:
            dtype = value.get("dtype")
            ok = set(value) == {"__array__", "dtype"} and isinstance(value["__array__"], list)
            try:
                ok = ok and isinstance(dtype, str) and np.dtype(dtype).kind in "OUS"
            except TypeError:
                ok = False
            if not ok:
                raise HeaderError(
                    field, "a label array must be {'__array__': [...], 'dtype': 'U…'}"
                )
        for k, v in value.items():
            _check_json(f"{field}.{k}", v)
    elif not isinstance(value, _JSON_SCALARS):
        raise HeaderError(field, f"unexpected {type(value).__name__}")


def _check_names(cls: type, state: dict[str, Any]) -> None:
    """Every saved attribute is a fitted name of ``cls``: ``name_`` (public) or one of its
    ``_persist_private``; never a method, a property or a dunder; each saved once."""
    seen: set[str] = set()
    for part in ("arrays", "modules", "values"):
        for name in state[part]:
            field = f"state.{part}.{name}"
            public = name.isidentifier() and name.endswith("_") and not name.startswith("_")
            if not (public or name in cls._persist_private) or hasattr(cls, name):
                raise HeaderError(field, f"{name!r} is not a fitted attribute of {cls.__name__}")
            if name in seen:
                raise HeaderError(field, f"{name!r} is saved twice")
            seen.add(name)


def _check_tensors(cls: type, params: dict, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Tensor names match the header's arrays and modules; declared tensors have the declared
    dtype kinds, dimensions and named sizes."""
    expected = {f"attr.{name}" for name in state["arrays"]}
    for key in expected - set(tensors):
        raise HeaderError(f"tensors.{key}", "missing")
    prefixes = tuple(f"module.{m}." for m in state["modules"])
    for key in tensors:
        if key not in expected and not key.startswith(prefixes):
            raise HeaderError(f"tensors.{key}", "no array or module of the header holds it")
    sizes: dict[str, int] = {}
    for source in (params, state["values"]):
        sizes.update({k: v for k, v in source.items() if _has_type(v, (int,))})
    for pattern, spec in cls._persist_arrays.items():
        keys = [k for k in tensors if fnmatch.fnmatchcase(k, pattern)]
        if spec.required and not keys:
            raise HeaderError(f"tensors.{pattern}", f"missing ({cls.__name__} needs it)")
        for key in keys:
            _check_spec(f"tensors.{key}", tensors[key], spec, sizes)


def _check_spec(field: str, t: torch.Tensor, spec: ArraySpec, sizes: dict[str, int]) -> None:
    kind = "b" if t.dtype == torch.bool else "f" if t.is_floating_point() else "i"
    if t.is_complex() or kind not in spec.kinds:
        raise HeaderError(field, f"dtype {t.dtype} is not of the kinds {spec.kinds!r}")
    if spec.ndim is not None and t.ndim != spec.ndim:
        raise HeaderError(field, f"expected {spec.ndim} dimensions, got shape {tuple(t.shape)}")
    for axis, name in enumerate(spec.dims or ()):
        if name is None:
            continue
        size = sizes.setdefault(name, int(t.shape[axis]))
        if t.shape[axis] != size:
            raise HeaderError(
                field, f"dimension {axis} is {t.shape[axis]}, but {name} is {size} in this file"
            )


def check_state(
    cls: type, params: dict[str, Any], state: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Check a header's ``params`` and ``state`` (already of the right JSON types, see
    :func:`check_header`) and the tensors against the class ``cls``."""
    allowed = set(cls().get_params(deep=False))
    for name, value in params.items():
        if name not in allowed:
            raise HeaderError(f"params.{name}", f"not a parameter of {cls.__name__}")
        _check_json(f"params.{name}", value)
    for name, value in state["values"].items():
        _check_json(f"state.values.{name}", value)
    _check_names(cls, state)
    _check_tensors(cls, params, state, tensors)


def _check_module_state(name: str, module: torch.nn.Module, saved: dict[str, torch.Tensor]):
    """The saved ``state_dict`` of a rebuilt module has its keys, shapes and dtypes (a load
    would otherwise cast or fail deep inside torch)."""
    own = module.state_dict()
    for key in sorted(set(own) ^ set(saved)):
        problem = "missing" if key in own else "not a tensor of the rebuilt module"
        raise HeaderError(f"tensors.module.{name}.{key}", problem)
    for key, t in own.items():
        if saved[key].shape != t.shape or saved[key].dtype != t.dtype:
            raise HeaderError(
                f"tensors.module.{name}.{key}",
                f"expected {t.dtype} of shape {tuple(t.shape)}, got {saved[key].dtype} of "
                f"shape {tuple(saved[key].shape)}",
            )


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
        The fitted arrays the class declares (dtype kind, number of dimensions, named
        sizes); a file whose arrays disagree is rejected before anything is built.
    _legacy_params : dict
        Values of hyper-parameters added after files were written: an older file without
        them loads with these (the values that reproduce its model), not today's defaults.
    """

    _persist_private: ClassVar[tuple[str, ...]] = ()
    _persist_arrays: ClassVar[dict[str, ArraySpec]] = {}
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
                _check_module_state(name, getattr(self, name), state)
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


def save_model(estimator: Any, path: str | os.PathLike[str]) -> Path:
    """Write a fitted snnk estimator to ``path`` (one safetensors file, JSON metadata).

    Returns the path written. The write goes to a temporary file beside ``path`` that
    replaces it only when complete (:func:`snnk._utils.files.write_safetensors_atomic`), so an
    interrupted save never leaves a truncated model behind; a missing folder raises
    ``FileNotFoundError`` naming it.
    """
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
        params = cls._upgrade_params(dict(doc["params"]))
        check_state(cls, params, doc["state"], tensors)
    except HeaderError as exc:
        raise ValueError(f"{path}: field {exc.field!r}: {exc.problem}") from None
    params = {**cls._legacy_params, **{k: _from_json(v) for k, v in params.items()}}
    try:
        est = cls(**params)
        est._import_state(doc["state"], tensors)
    except HeaderError as exc:
        raise ValueError(f"{path}: field {exc.field!r}: {exc.problem}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: the saved state does not rebuild a {cls.__name__}: {exc}"
        ) from exc
    return est
