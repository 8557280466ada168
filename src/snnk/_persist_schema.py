"""The schema of an snnk model file, checked before anything is built.

A model file (:mod:`snnk._persist`) holds a JSON header and named tensors. Three layers of
checks run, in this order, and each problem raises :class:`HeaderError` naming the field:

1. the header document's structure (:data:`HEADER_SCHEMA`: keys and JSON types);
2. the hyper-parameters, against the estimator's scikit-learn ``_parameter_constraints``
   (types *and* ranges), then its own ``_check_params()`` when it has one;
3. the fitted state, against what the class declares about it: arrays
   (:class:`ArraySpec`: dtype kinds, dimensions, sizes named so that they agree across
   arrays, hyper-parameters and values, value ranges, class labels sorted and unique) and
   scalar values (:class:`ValueSpec`: JSON types, ranges, choices, kernels that build).

A class declares its state in the class attributes ``_persist_arrays`` (tensor key pattern
-> :class:`ArraySpec`) and ``_persist_values`` (attribute -> :class:`ValueSpec`); the
declarations of every class of its MRO are merged, and :data:`CLASS_SCHEMAS` adds those of
library classes by qualified name. The module tensors of a rebuilt skeleton are compared
key by key (shape, dtype, finite values) by :func:`check_module_state` before they load.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "CLASS_SCHEMAS",
    "HEADER_SCHEMA",
    "ArraySpec",
    "ClassSchema",
    "Field",
    "HeaderError",
    "ValueSpec",
    "check_header",
    "check_module_state",
    "check_param_names",
    "check_params",
    "check_state",
    "declared_state",
]


class HeaderError(Exception):
    """A model file's header disagrees with the schema (``field``: where, ``problem``: what)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


# -- 1. the header document ----------------------------------------------------------------------
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
    # how a table's columns become the estimator's inputs (``snnk fit``), checked in full by
    # the reader that applies it (:mod:`snnk._cli_preprocess`)
    Field("preprocessing", (dict,), required=False),
)

#: JSON types a saved scalar attribute or hyper-parameter may be built from
_JSON_SCALARS = (str, int, float, bool, type(None))


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


def _is_labels(value: Any) -> bool:
    return isinstance(value, dict) and "__array__" in value


def _check_json(field: str, value: Any) -> None:
    """A saved value holds JSON scalars, lists and string-keyed objects only (a kernel is an
    object ``{"__kernel__": {...}}``; a label array ``{"__array__": [...], "dtype": ...}``)."""
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
            ok = ok and all(isinstance(v, _JSON_SCALARS) for v in value["__array__"])
            try:
                ok = ok and isinstance(dtype, str) and np.dtype(dtype).kind in "OUS"
            except TypeError:
                ok = False
            if not ok:
                raise HeaderError(
                    field, "a label array must be {'__array__': [labels...], 'dtype': 'U…'}"
                )
        for k, v in value.items():
            _check_json(f"{field}.{k}", v)
    elif not isinstance(value, _JSON_SCALARS):
        raise HeaderError(field, f"unexpected {type(value).__name__}")


# -- 2. the hyper-parameters ---------------------------------------------------------------------
def _accepts_bool(constraints: list) -> bool:
    return any(c == "boolean" or c is bool or c == "verbose" for c in constraints)


def check_param_names(cls: type, params: dict[str, Any]) -> None:
    """Every saved hyper-parameter (JSON form) is a parameter of ``cls`` of JSON values."""
    allowed = set(cls().get_params(deep=False))
    for name, value in params.items():
        if name not in allowed:
            raise HeaderError(f"params.{name}", f"not a parameter of {cls.__name__}")
        _check_json(f"params.{name}", value)


def check_params(cls: type, params: dict[str, Any]) -> None:
    """Hyper-parameters (JSON already converted: kernels built) against ``cls``'s scikit-learn
    ``_parameter_constraints`` one by one, then ``cls(**params)._check_params()`` when the
    class has it (the estimator's own rules; an instance only stores its parameters)."""
    constraints = getattr(cls, "_parameter_constraints", None) or {}
    if constraints:
        from sklearn.utils._param_validation import validate_parameter_constraints

        for name, value in params.items():
            if constraints.get(name, "no_validation") == "no_validation":
                continue
            if isinstance(value, bool) and not _accepts_bool(constraints[name]):
                raise HeaderError(f"params.{name}", f"expected a number or a string, got {value}")
            try:
                validate_parameter_constraints(
                    {name: constraints[name]}, {name: value}, caller_name=cls.__name__
                )
            except (TypeError, ValueError) as exc:
                raise HeaderError(f"params.{name}", str(exc)) from None
    check = getattr(cls, "_check_params", None)
    if check is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated aliases of old files
            cls(**params)._check_params()
    except (TypeError, ValueError) as exc:
        raise HeaderError("params", str(exc)) from None


# -- 3. the fitted state -------------------------------------------------------------------------
@dataclass(frozen=True)
class ArraySpec:
    """What an estimator declares about one saved array (``_persist_arrays``).

    ``kinds``: allowed NumPy dtype kinds (``"f"`` floating, ``"i"``/``"u"`` integer, ``"b"``
    bool, ``"U"``/``"S"`` text labels); ``ndim``: number of dimensions; ``dims``: per
    dimension a name, so that sizes agree across arrays and with integer hyper-parameters or
    values of the same name, an int (a fixed size) or ``None`` (any size); with ``ndim=None``
    they name the leading dimensions only; ``required``: the
    array must be in every file of the class; ``low`` (with ``low_open``): a lower bound of
    every entry; ``finite``: floating entries must be finite; ``labels``: class labels, at
    least two, sorted and unique (as ``np.unique`` returns them).
    """

    kinds: str = "f"
    ndim: int | None = None
    dims: tuple[str | int | None, ...] | None = None
    required: bool = False
    low: float | None = None
    low_open: bool = False
    finite: bool = True
    labels: bool = False


@dataclass(frozen=True)
class ValueSpec:
    """What an estimator declares about one saved scalar attribute (``_persist_values``).

    ``kinds``: any of ``"int"``, ``"real"`` (an int or a float), ``"bool"``, ``"str"``,
    ``"none"``, ``"kernel"`` (a kernel configuration that builds); ``low`` (with
    ``low_open``): a lower bound; ``finite``: reals must be finite (NaN is always refused);
    ``choices``: the allowed strings; ``when_true``: named sizes a ``True`` value fixes (e.g.
    ``_y_1d`` fixes ``n_outputs`` to 1).
    """

    kinds: tuple[str, ...]
    required: bool = False
    low: float | None = None
    low_open: bool = False
    finite: bool = True
    choices: tuple[str, ...] | None = None
    when_true: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ClassSchema:
    """The declared state of a class that does not declare it itself (:data:`CLASS_SCHEMAS`)."""

    arrays: dict[str, ArraySpec] = field(default_factory=dict)
    values: dict[str, ValueSpec] = field(default_factory=dict)


_POSITIVE = ValueSpec(("real",), required=True, low=0.0, low_open=True)
_COUNT = ValueSpec(("int",), low=0)
_N_FEATURES = ValueSpec(("int",), required=True, low=1)
_KERNEL = ValueSpec(("kernel",), required=True)
_Y_1D = ValueSpec(("bool",), required=True, when_true=(("n_outputs", 1),))

#: the state of library estimators whose modules do not declare it, by qualified class name
CLASS_SCHEMAS: dict[str, ClassSchema] = {
    "snnk.models._nystrom_base.KernelExpansion": ClassSchema(
        values={
            "n_features_in_": _N_FEATURES,
            "kernel_": _KERNEL,
            "n_iter_": _COUNT,
            "_y_1d": _Y_1D,
        }
    ),
    "snnk.models.nystrom.NystromRidge": ClassSchema(
        arrays={
            "attr.centers_": ArraySpec(ndim=2, dims=("n_centers", "n_features_in_"), required=True),
            "attr.center_indices_": ArraySpec(kinds="iu", ndim=1, dims=("n_centers",), low=0),
            "attr.dual_coef_": ArraySpec(ndim=2, dims=("n_centers", "n_outputs"), required=True),
            "attr.intercept_": ArraySpec(ndim=1, dims=("n_outputs",)),
        },
        values={"solver_": ValueSpec(("str",), choices=("direct", "cg"))},
    ),
    "snnk.models.nystrom.KernelRidgeCG": ClassSchema(
        arrays={
            "attr.X_fit_": ArraySpec(ndim=2, dims=("n_samples", "n_features_in_"), required=True),
            "attr.dual_coef_": ArraySpec(ndim=2, dims=("n_samples", "n_outputs"), required=True),
        }
    ),
    "snnk.models.gp.RandomFeatureGP": ClassSchema(
        arrays={
            "attr.coef_": ArraySpec(ndim=1, dims=("num_features_",), required=True),
            "attr.cholesky_": ArraySpec(
                ndim=2, dims=("num_features_", "num_features_"), required=True
            ),
            "attr._X_opt": ArraySpec(ndim=2, dims=("n_opt", "n_features_in_")),
            "attr._y_opt": ArraySpec(ndim=1, dims=("n_opt",)),
            "attr._centers_opt": ArraySpec(ndim=2, dims=(None, "n_features_in_")),
        },
        values={
            "n_features_in_": _N_FEATURES,
            "num_features_": _N_FEATURES,
            "y_mean_": ValueSpec(("real",), required=True),
            "y_scale_": _POSITIVE,
            "lengthscale_": _POSITIVE,
            "amplitude_": _POSITIVE,
            "noise_": _POSITIVE,
            "kernel_": _KERNEL,
            "n_iter_": _COUNT,
            "log_marginal_likelihood_": ValueSpec(("real", "none"), finite=False),
        },
    ),
}


def declared_state(cls: type) -> tuple[dict[str, ArraySpec], dict[str, ValueSpec]]:
    """The array and value declarations of ``cls``, merged over its MRO (a subclass's entry
    wins) together with :data:`CLASS_SCHEMAS`."""
    arrays: dict[str, ArraySpec] = {}
    values: dict[str, ValueSpec] = {}
    for klass in reversed(cls.__mro__):
        table = CLASS_SCHEMAS.get(f"{klass.__module__}.{klass.__qualname__}", ClassSchema())
        arrays.update(vars(klass).get("_persist_arrays", {}))
        arrays.update(table.arrays)
        values.update(vars(klass).get("_persist_values", {}))
        values.update(table.values)
    return arrays, values


def _check_names(cls: type, state: dict[str, Any]) -> None:
    """Every saved attribute is a fitted name of ``cls``: ``name_`` (public) or one of its
    ``_persist_private``; never a method, a property or a dunder; each saved once."""
    seen: set[str] = set()
    for part in ("arrays", "modules", "values"):
        for name in state[part]:
            where = f"state.{part}.{name}"
            public = name.isidentifier() and name.endswith("_") and not name.startswith("_")
            if not (public or name in cls._persist_private) or hasattr(cls, name):
                raise HeaderError(where, f"{name!r} is not a fitted attribute of {cls.__name__}")
            if name in seen:
                raise HeaderError(where, f"{name!r} is saved twice")
            seen.add(name)


def _range_problem(x: float, low: float | None, low_open: bool, finite: bool) -> str | None:
    if math.isnan(x) or (finite and not math.isfinite(x)):
        return "must be finite" if finite else "must not be NaN"
    if low is not None and (x <= low if low_open else x < low):
        return f"must be {'>' if low_open else '>='} {low:g}"
    return None


def _check_value(where: str, value: Any, spec: ValueSpec) -> None:
    kinds = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "real": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "none": lambda v: v is None,
        "kernel": lambda v: isinstance(v, dict) and set(v) == {"__kernel__"},
    }
    if not any(kinds[k](value) for k in spec.kinds):
        raise HeaderError(where, f"expected {' or '.join(spec.kinds)}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        problem = _range_problem(float(value), spec.low, spec.low_open, spec.finite)
        if problem:
            raise HeaderError(where, f"{problem}, got {value!r}")
    if spec.choices is not None and isinstance(value, str) and value not in spec.choices:
        raise HeaderError(where, f"expected one of {spec.choices}, got {value!r}")
    if isinstance(value, dict):
        from snnk.kernels import make_kernel

        try:
            make_kernel(**value["__kernel__"])
        except (TypeError, ValueError, KeyError) as exc:
            raise HeaderError(where, f"not a valid kernel configuration: {exc}") from None


class _Sizes:
    """Named sizes seen so far, and where each was first seen (for the message)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, str]] = {}

    def add(self, name: str, size: int, where: str) -> str | None:
        """Record ``name = size``; return a problem when it was seen with another size."""
        old = self.seen.setdefault(name, (size, where))
        if old[0] != size:
            return f"{name} is {old[0]} in this file ({old[1]})"
        return None


def _labels_array(where: str, value: dict[str, Any]) -> np.ndarray:
    try:
        arr = np.array(value["__array__"], dtype=np.dtype(value["dtype"]))
    except (TypeError, ValueError) as exc:
        raise HeaderError(where, f"not a label array: {exc}") from None
    return arr


def _array_kind(a: torch.Tensor | np.ndarray) -> str:
    if isinstance(a, np.ndarray):
        return a.dtype.kind
    if a.is_complex():
        return "c"
    return "b" if a.dtype == torch.bool else "f" if a.is_floating_point() else "i"


def _check_array(where: str, a: torch.Tensor | np.ndarray, spec: ArraySpec, sizes: _Sizes):
    kind = _array_kind(a)
    if kind not in spec.kinds:
        raise HeaderError(where, f"dtype {a.dtype} is not of the kinds {spec.kinds!r}")
    if spec.ndim is not None and a.ndim != spec.ndim:
        raise HeaderError(where, f"expected {spec.ndim} dimensions, got shape {tuple(a.shape)}")
    if len(spec.dims or ()) > a.ndim:
        raise HeaderError(where, f"expected at least {len(spec.dims)} dimensions, got {a.ndim}")
    for axis, name in enumerate(spec.dims or ()):
        size = int(a.shape[axis])
        if isinstance(name, int) and size != name:
            raise HeaderError(where, f"dimension {axis} is {size}, expected {name}")
        problem = sizes.add(name, size, where) if isinstance(name, str) else None
        if problem:
            raise HeaderError(where, f"dimension {axis} is {size}, but {problem}")
    if isinstance(a, np.ndarray):
        arr = a
    else:  # every float dtype (half ones too) is exact in float64
        arr = (a.double() if a.is_floating_point() else a).numpy()
    if kind in "fiu" and arr.size:
        if spec.finite and kind == "f" and not np.isfinite(arr).all():
            raise HeaderError(where, "holds NaN or infinite values")
        if spec.low is not None and (arr <= spec.low if spec.low_open else arr < spec.low).any():
            raise HeaderError(where, f"entries must be {'>' if spec.low_open else '>='} {spec.low}")
    if spec.labels:
        if arr.ndim != 1 or arr.size < 2:
            raise HeaderError(where, f"expected at least 2 class labels, got {arr.tolist()!r}")
        try:
            ordered = bool(np.all(arr[1:] > arr[:-1]))
        except TypeError:  # labels of types that do not compare
            ordered = False
        if not ordered:
            raise HeaderError(
                where, f"class labels must be sorted and unique, got {arr.tolist()!r}"
            )


def check_state(
    cls: type, params: dict[str, Any], state: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Check a header's ``state`` (already of the right JSON types, see :func:`check_header`)
    and the tensors against the declarations of ``cls`` (:func:`declared_state`), with the
    sizes named by integer hyper-parameters and values."""
    for name, value in state["values"].items():
        _check_json(f"state.values.{name}", value)
    _check_names(cls, state)
    expected = {f"attr.{name}" for name in state["arrays"]}
    for key in sorted(expected - set(tensors)):
        raise HeaderError(f"tensors.{key}", "missing")
    prefixes = tuple(f"module.{m}." for m in state["modules"])
    for key in tensors:
        if key not in expected and not key.startswith(prefixes):
            raise HeaderError(f"tensors.{key}", "no array or module of the header holds it")
    arrays, values = declared_state(cls)
    sizes = _Sizes()
    for name, value in params.items():
        if _has_type(value, (int,)):
            sizes.add(name, value, f"params.{name}")
    for name, spec in values.items():
        where = f"state.values.{name}"
        if name in state["arrays"] or name in state["modules"]:
            raise HeaderError(where, f"{name} must be a value in state.values, not an array")
        if name not in state["values"]:
            if spec.required:
                raise HeaderError(where, f"missing ({cls.__name__} needs it)")
            continue
        value = state["values"][name]
        _check_value(where, value, spec)
        for size_name, size in spec.when_true if value is True else ():
            sizes.add(size_name, size, where)
    for name, value in state["values"].items():
        where = f"state.values.{name}"
        problem = sizes.add(name, value, where) if _has_type(value, (int,)) else None
        if problem:
            raise HeaderError(f"state.values.{name}", f"{value} disagrees: {problem}")
    found: dict[str, tuple[str, Any]] = {k: (f"tensors.{k}", t) for k, t in tensors.items()}
    for name, value in state["values"].items():
        key = f"attr.{name}"
        if any(fnmatch.fnmatchcase(key, p) for p in arrays):
            if not _is_labels(value):
                raise HeaderError(f"state.values.{name}", f"expected an array, got {value!r}")
            found[key] = (f"state.values.{name}", _labels_array(f"state.values.{name}", value))
    for pattern, spec in arrays.items():
        keys = sorted(k for k in found if fnmatch.fnmatchcase(k, pattern))
        if spec.required and not keys:
            raise HeaderError(f"tensors.{pattern}", f"missing ({cls.__name__} needs it)")
        for key in keys:
            _check_array(found[key][0], found[key][1], spec, sizes)


def check_module_state(name: str, module: torch.nn.Module, saved: dict[str, torch.Tensor]):
    """The saved ``state_dict`` of a rebuilt module has its keys, shapes and dtypes, and
    finite floating values (a load would otherwise cast or fail deep inside torch)."""
    own = module.state_dict()
    for key in sorted(set(own) ^ set(saved)):
        problem = "missing" if key in own else "not a tensor of the rebuilt module"
        raise HeaderError(f"tensors.module.{name}.{key}", problem)
    for key, t in own.items():
        s = saved[key]
        if s.shape != t.shape or s.dtype != t.dtype:
            raise HeaderError(
                f"tensors.module.{name}.{key}",
                f"expected {t.dtype} of shape {tuple(t.shape)}, got {s.dtype} of "
                f"shape {tuple(s.shape)}",
            )
        if s.is_floating_point() and not bool(torch.isfinite(s).all()):
            raise HeaderError(f"tensors.module.{name}.{key}", "holds NaN or infinite values")
