"""Immutable releases and their files (safetensors + JSON, validated on load).

A release is what gets published: public randomness (seed, layout), noisy statistics and the
privacy parameters. It never holds the data, a noiseless statistic or (unless declared
public) the exact number of records. Queries on a release are post-processing: unlimited and
free of budget.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from snnk._persist import Field, HeaderError, check_header
from snnk._utils.files import write_safetensors_atomic
from snnk._version import __version__

FORMAT = "snnk-dp-release"
FORMAT_VERSION = 1
META_KEY = "snnk"

_RELEASES: dict[str, type[Release]] = {}

_HEADER = (
    Field("format", (str,)),
    Field("format_version", (int,)),
    Field("snnk_version", (str,)),
    Field("class", (str,)),
    Field("params", (dict,)),
)


def readonly(a: Any) -> np.ndarray:
    arr = np.array(a, dtype=np.float64, copy=True)
    arr.flags.writeable = False
    return arr


class Release:
    """Base class of immutable releases.

    Subclasses declare ``_params`` (JSON scalars, with their types) and ``_arrays`` (name ->
    rank); both are stored and checked on load. Attributes cannot be set or deleted after
    construction and every array is a read-only NumPy copy.
    """

    _params: ClassVar[dict[str, tuple[type, ...]]] = {}
    _arrays: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _RELEASES[cls.__name__] = cls

    def __init__(self, params: dict[str, Any], arrays: dict[str, Any]):
        for k, v in params.items():
            object.__setattr__(self, k, v)
        for k, v in arrays.items():
            object.__setattr__(self, k, readonly(v))
        object.__setattr__(self, "_frozen", True)
        self._post_init()

    def _post_init(self) -> None:
        """Build private caches (e.g. the feature module) from public state."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def _cache(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def params(self) -> dict[str, Any]:
        """The public parameters of the release (JSON values)."""
        return {k: getattr(self, k) for k in self._params}

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the release (read-only), by name."""
        return {k: getattr(self, k) for k in self._arrays}

    def __reduce__(self):
        return (_rebuild, (type(self).__name__, self.params(), self.arrays()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({shown})"

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the release to ``path`` (one safetensors file with a JSON header), atomically."""
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "snnk_version": __version__,
            "class": type(self).__name__,
            "params": self.params(),
        }
        tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in self.arrays().items()}
        return write_safetensors_atomic(path, tensors, metadata={META_KEY: json.dumps(doc)})

    @classmethod
    def _check(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for name, types in cls._params.items():
            if name not in params:
                raise HeaderError(f"params.{name}", "missing")
            v = params[name]
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise HeaderError(f"params.{name}", f"expected {types}, got {v!r}")
            if isinstance(v, float) and not (math.isfinite(v) or name.endswith("epsilon")):
                raise HeaderError(f"params.{name}", f"not finite: {v!r}")
        extra = set(params) - set(cls._params)
        if extra:
            raise HeaderError("params", f"unexpected entries {sorted(extra)}")
        if set(arrays) != set(cls._arrays):
            raise HeaderError("tensors", f"expected {sorted(cls._arrays)}, found {sorted(arrays)}")
        for name, rank in cls._arrays.items():
            a = arrays[name]
            if a.ndim != rank or not np.isfinite(a).all():
                raise HeaderError(f"tensors.{name}", f"expected a finite array of rank {rank}")


def _rebuild(name: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> Release:
    return _RELEASES[name](params, arrays)


def load_release(path: str | os.PathLike[str]) -> Release:
    """Load a release written by :meth:`Release.save`. Reads tensors and JSON only; the header
    and every array are checked before anything is built (``ValueError`` naming the field)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no release file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a release file (safetensors): {exc}") from exc
    try:
        doc = json.loads(meta[META_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: missing or corrupt 'snnk' header: {exc}") from exc
    try:
        if not isinstance(doc, dict):
            raise HeaderError("header", "a JSON object is expected")
        check_header(doc, _HEADER)
        if doc["format"] != FORMAT or doc["format_version"] != FORMAT_VERSION:
            raise HeaderError(
                "format",
                f"expected {FORMAT!r} version {FORMAT_VERSION}, got "
                f"{doc['format']!r} version {doc['format_version']!r}",
            )
        cls = _RELEASES.get(doc["class"])
        if cls is None:
            raise HeaderError("class", f"unknown release class {doc['class']!r}")
        arrays = {}
        for k, t in tensors.items():
            if t.dtype != torch.float64:
                raise HeaderError(f"tensors.{k}", f"expected float64, got {t.dtype}")
            arrays[k] = t.numpy()
        cls._check(doc["params"], arrays)
        return cls(doc["params"], arrays)
    except HeaderError as exc:
        raise ValueError(f"{path}: field {exc.field!r}: {exc.problem}") from None
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: the saved state does not rebuild a release: {exc}") from exc
