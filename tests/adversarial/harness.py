"""What every adversarial case asserts: a correct result, or a clear error.

A *clear error* is a ``ValueError`` or ``TypeError`` (``FileNotFoundError`` for a missing
file) raised by snnk itself — not by torch, NumPy or safetensors deep inside — whose message
names the offending argument. A *correct result* is finite where the input is finite and
matches a float64 or exact reference.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch

CLEAR = (ValueError, TypeError, FileNotFoundError)


def _raised_by_snnk(exc: BaseException) -> bool:
    """The innermost frame of the traceback that is not a re-raise belongs to snnk."""
    frames = traceback.extract_tb(exc.__traceback__)
    files = [f.filename for f in frames]
    snnk = [i for i, f in enumerate(files) if "/snnk/" in f and "/tests/" not in f]
    if not snnk:
        return False
    # the exception was created in snnk code (the last frame), or snnk re-raised it with a
    # message of its own (``raise ... from``)
    return snnk[-1] == len(files) - 1 or exc.__cause__ is not None or exc.__suppress_context__


def expect_error(fn: Callable[[], Any], *names: str, kinds=CLEAR) -> BaseException:
    """``fn()`` raises one of ``kinds`` from snnk's own code, and names one of ``names``."""
    with pytest.raises(kinds) as info:
        fn()
    exc = info.value
    msg = str(exc)
    assert _raised_by_snnk(exc), f"raised from outside snnk (a raw error): {exc!r}"
    assert any(n in msg for n in names), f"the message names none of {names}: {msg}"
    return exc


def expect_finite(out: Any) -> None:
    """Every floating tensor/array in ``out`` is finite."""
    if isinstance(out, tuple | list):
        for o in out:
            expect_finite(o)
        return
    t = torch.as_tensor(out)
    if t.is_floating_point() and t.device.type != "meta":
        assert torch.isfinite(t).all(), "non-finite output from finite input"


def expect_close(out: Any, ref: Any, *, rtol: float, atol: float = 0.0) -> None:
    out_t = torch.as_tensor(out).double()
    ref_t = torch.as_tensor(ref).double()
    expect_finite(out_t)
    torch.testing.assert_close(out_t, ref_t, rtol=rtol, atol=atol)


def correct_or_clear(fn: Callable[[], Any], check: Callable[[Any], None], *names: str) -> str:
    """Either ``check(fn())`` holds, or ``fn()`` raises a clear error naming ``names``.

    Returns ``"result"`` or ``"error"`` (the suite reports how many of each).
    """
    try:
        out = fn()
    except CLEAR as exc:
        assert _raised_by_snnk(exc), f"raised from outside snnk (a raw error): {exc!r}"
        msg = str(exc)
        assert any(n in msg for n in names), f"the message names none of {names}: {msg}"
        return "error"
    check(out)
    return "result"
