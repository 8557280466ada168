r"""Where an estimator computes: the ``device=`` plumbing shared by every estimator.

One place for the four things a ``device`` needs (scikit-learn's conventions kept):

* :func:`fit_device` - the checked ``torch.device`` of ``est.device`` (``"cpu"``, ``"cuda"``,
  ``"cuda:1"``, a ``torch.device``; ``None`` is the CPU). Call it at the start of ``fit``: a
  device that cannot fit (the meta device, CUDA on a machine without one) is a ``ValueError``
  naming ``device`` before any work.
* :func:`to_device` - NumPy arrays and tensors onto the compute device in the compute dtype
  (``torch.from_numpy`` then one ``.to``: never a tensor on torch's *default* device, so a fit
  inside ``with torch.device("meta")`` or ``torch.set_default_device`` is unaffected).
* :func:`as_output` - a result back in the caller's kind: NumPy in, NumPy out; a torch tensor
  in, a tensor out on *the input's* device (labels that are text stay NumPy).
* :func:`block_elements` - the element budget of one row block on a device: the library's
  one memory budget (:data:`snnk._utils.blocks.BLOCK_ELEMENTS`) on the CPU, and a share of
  the free memory (``torch.cuda.mem_get_info``) on a CUDA device.

Modules holding random matrices are drawn on the CPU (their ``torch.Generator`` is a CPU
generator, so a CUDA fit draws the same matrices as a CPU fit) inside :func:`on_cpu`, then
moved with :func:`move_module`. After a fit, modules stay on the fit device and prediction
computes where the fitted state lives (:func:`state_device`): a model fitted on a GPU,
saved and loaded on a CPU-only machine predicts on the CPU (``device`` is a parameter, not
state, and a load never needs the fit device). Fitted arrays are NumPy (CPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from snnk._utils import check_device, on_cpu
from snnk._utils.blocks import BLOCK_ELEMENTS

__all__ = [
    "CUDA_MEMORY_SHARE",
    "as_output",
    "block_elements",
    "fit_device",
    "move_module",
    "on_cpu",
    "state_device",
    "to_device",
]

#: the share of a CUDA device's free memory one row block (and its products) may take
CUDA_MEMORY_SHARE = 16

_CPU = torch.device("cpu")


def fit_device(est: Any) -> torch.device:
    """The checked ``torch.device`` of ``est.device`` (a ``ValueError`` / ``TypeError``
    naming ``device`` and the fix when it cannot fit; see
    :func:`snnk._utils.check_device`)."""
    return check_device(getattr(est, "device", "cpu"), "device")


def to_device(x: Any, device: torch.device | str, dtype: torch.dtype | None = None):
    """``x`` (NumPy array, tensor, or anything ``np.asarray`` takes) as a tensor on
    ``device`` in ``dtype`` (``None``: keep the dtype). No copy when it is already there."""
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if not arr.flags.writeable or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()
        x = torch.from_numpy(arr)
    return x.to(device=device, dtype=dtype)


def as_output(result: Any, like: Any) -> Any:
    """``result`` (NumPy array or tensor) in the kind of the caller's input ``like``.

    ``like`` a torch tensor: a tensor on ``like.device`` (a NumPy array of text or objects,
    e.g. string class labels, has no tensor form and stays NumPy). Otherwise a NumPy array
    (a tensor is detached and copied to the CPU). Values are unchanged either way."""
    if isinstance(like, torch.Tensor):
        if isinstance(result, np.ndarray):
            if result.dtype.kind in "OUSV":
                return result
            return torch.from_numpy(np.ascontiguousarray(result)).to(like.device)
        if isinstance(result, torch.Tensor):
            return result.to(like.device)
        return result
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().numpy()
    return result


def state_device(*state: Any) -> torch.device:
    """The device of the first tensor or module (with tensors) among ``state``; the CPU when
    there is none. Prediction computes there (a loaded model: the CPU)."""
    for item in state:
        if isinstance(item, torch.Tensor):
            return item.device
        if isinstance(item, torch.nn.Module):
            for t in item.state_dict().values():
                if isinstance(t, torch.Tensor):
                    return t.device
    return _CPU


def block_elements(
    device: torch.device | str, base: int = BLOCK_ELEMENTS, itemsize: int = 8
) -> int:
    """Elements one row block may hold on ``device``.

    The CPU: ``base`` (the library's one memory budget). A CUDA device: ``1/CUDA_MEMORY_SHARE``
    of its free memory now (``torch.cuda.mem_get_info``) in elements of ``itemsize`` bytes,
    and never less than ``base``: GPU throughput grows with the block."""
    device = torch.device(device)
    if device.type != "cuda":
        return base
    free, _ = torch.cuda.mem_get_info(device)
    return max(base, int(free) // (CUDA_MEMORY_SHARE * max(1, itemsize)))


def move_module(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module`` with its parameters and buffers on ``device`` (in place; returned)."""
    return module.to(device=torch.device(device))
