"""The schema of the column transform saved in a model file (``"preprocessing"``).

:func:`check_spec` checks the JSON that ``snnk fit`` saved (:mod:`snnk._cli_preprocess`)
field by field before ``snnk predict`` builds anything from it, and raises
:class:`~snnk._persist_schema.HeaderError` naming the first bad field, e.g.
``preprocessing.numeric.0.scale``; the model file reader turns it into a ``ValueError``
naming the file too.
"""

from __future__ import annotations

import math
from typing import Any

from snnk._cli_preprocess import (
    ENTRY_FIELDS,
    KINDS,
    MISSING,
    OPTIONAL_FIELDS,
    SPEC_VERSION,
    TASKS,
    TIME_PARTS,
    output_names,
)
from snnk._persist_schema import HeaderError

__all__ = ["check_spec"]


def _check_field(where: str, value: Any, kind: str) -> None:
    def real(v):
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    if kind == "name" and not (isinstance(value, str) and value):
        raise HeaderError(where, f"expected a column name (a non-empty string), got {value!r}")
    if kind == "real" and not real(value):
        raise HeaderError(where, f"expected a finite number, got {value!r}")
    if kind == "positive" and not (real(value) and value > 0):
        raise HeaderError(where, f"expected a positive finite number, got {value!r}")
    if kind == "text" and not isinstance(value, str):
        raise HeaderError(where, f"expected a string, got {value!r}")
    if kind == "part" and value not in TIME_PARTS:
        raise HeaderError(where, f"expected one of {TIME_PARTS}, got {value!r}")
    if kind == "texts":
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise HeaderError(where, f"expected a non-empty list of strings, got {value!r}")
        if value != sorted(set(value)):
            raise HeaderError(where, "categories must be sorted and unique")


def _check_entry(where: str, entry: Any, kind: str) -> None:
    fields, optional = ENTRY_FIELDS[kind], OPTIONAL_FIELDS.get(kind, {})
    if not isinstance(entry, dict):
        raise HeaderError(where, f"expected an object, got {type(entry).__name__}")
    for key in sorted(set(entry) ^ set(fields)):
        if key not in optional:
            problem = "missing" if key in fields else "unexpected field"
            raise HeaderError(f"{where}.{key}", problem)
    if any(k in entry for k in optional) and not all(k in entry for k in optional):
        raise HeaderError(where, f"{sorted(optional)} come together")
    for key, what in {**fields, **optional}.items():
        if key in entry:
            _check_field(f"{where}.{key}", entry[key], what)
    if kind == "numeric" and not entry["low"] <= entry["high"]:
        raise HeaderError(f"{where}.low", f"low {entry['low']} is above high {entry['high']}")
    if kind != "numeric" and entry["fill"] not in entry["categories"]:
        raise HeaderError(f"{where}.fill", f"{entry['fill']!r} is not one of the categories")


def check_spec(spec: Any, estimator: Any = None) -> None:
    """Check a saved spec field by field; raise :class:`HeaderError` naming the first bad
    field (``preprocessing.numeric.0.scale``). With ``estimator``, the number of model
    inputs the spec gives must be its ``n_features_in_``."""
    top = "preprocessing"
    if not isinstance(spec, dict):
        raise HeaderError(top, "expected an object")
    if spec.get("version") != SPEC_VERSION:
        raise HeaderError(f"{top}.version", f"expected {SPEC_VERSION}, got {spec.get('version')!r}")
    for key, choices in (("task", TASKS), ("missing", MISSING)):
        if spec.get(key) not in choices:
            raise HeaderError(f"{top}.{key}", f"expected one of {choices}, got {spec.get(key)!r}")
    _check_field(f"{top}.target", spec.get("target"), "name")
    ignored = spec.get("ignored")
    if not (isinstance(ignored, dict) and all(isinstance(v, str) for v in ignored.values())):
        raise HeaderError(f"{top}.ignored", "expected an object of column -> reason strings")
    rng = spec.get("target_range")
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2):
            raise HeaderError(f"{top}.target_range", f"expected [low, high] or null, got {rng!r}")
        for i, v in enumerate(rng):
            _check_field(f"{top}.target_range.{i}", v, "real")
    seen = {spec["target"]}
    for kind in KINDS:
        entries = spec.get(kind)
        if not isinstance(entries, list):
            raise HeaderError(f"{top}.{kind}", f"expected a list, got {entries!r}")
        for i, entry in enumerate(entries):
            _check_entry(f"{top}.{kind}.{i}", entry, kind)
            if entry["name"] in seen:
                raise HeaderError(f"{top}.{kind}.{i}.name", f"{entry['name']!r} used twice")
            seen.add(entry["name"])
    n_inputs = len(output_names(spec))
    if n_inputs == 0:
        raise HeaderError(top, "no feature column")
    expected = getattr(estimator, "n_features_in_", n_inputs)
    if estimator is not None and n_inputs != expected:
        raise HeaderError(top, f"gives {n_inputs} model inputs, but the model takes {expected}")
