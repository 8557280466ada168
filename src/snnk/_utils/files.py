"""Atomic file writes: a file is either the old one or the complete new one, never half."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def check_writable_path(path: str | os.PathLike[str], name: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` whose folder exists, or a clear error."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {path!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{name}: folder {str(path.parent)!r} does not exist; create it first "
            f"(e.g. Path({str(path.parent)!r}).mkdir(parents=True))"
        )
    if path.is_dir():
        raise IsADirectoryError(f"{name}: {str(path)!r} is a folder; give a file name")
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX and Windows, so readers see the old file or the whole new
    one; if ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = check_writable_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line endings) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8", newline="\n"))


def write_safetensors_atomic(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (contiguous CPU copies) and string ``metadata`` as one safetensors
    file, atomically."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(flat, str(p), metadata=metadata))
