"""Save and load fitted estimators as one safetensors file with a JSON header: never pickle.

The public face of :mod:`snnk._persist`, which holds the implementation below the models
(so that the models can use it without an import circle): a model file holds every fitted
array as a named tensor and, in the safetensors metadata under the key ``"snnk"``, a JSON
document with the estimator class, its hyper-parameters and its non-array fitted
attributes. Loading reads tensors and JSON only, checks the header against a schema before
anything is built, and so a model file from an untrusted source cannot execute code; it can
only be rejected (``ValueError`` naming the file and the field).
"""

from __future__ import annotations

from snnk._persist import (
    FORMAT,
    FORMAT_VERSION,
    ArraySpec,
    PersistMixin,
    load_model,
    save_model,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "ArraySpec", "PersistMixin", "load_model", "save_model"]
