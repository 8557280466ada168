"""One checked folder format: a JSON config beside a safetensors file, both written atomically.

Shared by :func:`snnk.nn.adapters.save_pretrained` and :func:`snnk.nn.convert.save_linearized`.
The JSON records the format name and version, the snnk version, the tensor names and the
SHA-256 of the safetensors file, so a truncated, tampered or mismatched file is refused with a
``ValueError`` before any model is touched. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from snnk._utils.files import write_safetensors_atomic, write_text_atomic
from snnk._version import __version__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_folder_path(path: object, name: str = "path") -> Path:
    """``path`` as a :class:`~pathlib.Path` that is not an existing file."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a folder path (str or os.PathLike), got {path!r}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{name}: {str(folder)!r} is a file; give a folder path")
    return folder


def write_folder(
    folder: Path,
    config_name: str,
    weights_name: str,
    config: dict,
    tensors: dict[str, torch.Tensor],
    fmt: str,
    version: int,
) -> Path:
    """Write ``tensors`` then ``config`` (with format, version, tensor list and checksum).

    The weights go first, so a reader that finds the new config also finds its weights; each
    file is replaced atomically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    weights = write_safetensors_atomic(folder / weights_name, flat, metadata={"format": fmt})
    record = dict(config)
    record.update(
        format=fmt,
        format_version=version,
        snnk_version=__version__,
        tensors=sorted(flat),
        sha256=_sha256(weights),
    )
    write_text_atomic(folder / config_name, json.dumps(record, indent=2) + "\n")
    return folder


def read_folder(
    folder: Path, config_name: str, weights_name: str, fmt: str, version: int
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and tensors of a folder written by :func:`write_folder`, every check done.

    Raises
    ------
    ValueError
        A file is missing, is not valid JSON / safetensors, belongs to another format or a
        newer version, does not match its checksum (truncated or edited), lists other tensors
        than the file holds, or holds non-float or non-finite values.
    """
    from safetensors import safe_open

    config_file, weights_file = folder / config_name, folder / weights_name
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(
            f"{str(folder)!r} is not a folder written by snnk ({fmt}): expected {config_name} "
            f"and {weights_name} in it"
        )
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); save again") from err
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        raise ValueError(f"{config_file} is not an snnk {fmt!r} config")
    got = saved.get("format_version")
    if not isinstance(got, int) or isinstance(got, bool) or not 1 <= got <= version:
        raise ValueError(
            f"{config_file} has format_version={got!r}; this snnk reads versions 1 to {version} "
            "(upgrade snnk to read files written by a newer version)"
        )
    listed, digest = saved.get("tensors"), saved.get("sha256")
    if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
        raise ValueError(f"{config_file}: 'tensors' must be a list of tensor names; save again")
    if digest != _sha256(weights_file):
        raise ValueError(
            f"{weights_file} does not match the SHA-256 recorded in {config_name}: the file "
            "was truncated, edited, or comes from another save; save again"
        )
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own types for damaged files
        raise ValueError(f"{weights_file} is not a readable safetensors file ({err})") from err
    if meta.get("format") != fmt or sorted(tensors) != sorted(listed):
        raise ValueError(
            f"{weights_file} does not hold the tensors its config lists (format "
            f"{meta.get('format')!r}): the two files are from different saves"
        )
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise ValueError(f"{weights_file}: {key!r} has dtype {value.dtype}, not a float")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{weights_file}: {key!r} holds NaN or Inf values")
    return saved, tensors


def copy_into(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], folder) -> None:
    """Copy the ``tensors`` read from ``folder`` into the model's ``own`` tensors (same
    names), after checking that the names and every shape match.

    Raises
    ------
    ValueError
        Naming ``folder`` and the first missing, unexpected or mis-shaped tensor; nothing is
        copied then.
    """
    wrong = sorted(set(own) ^ set(tensors))
    if wrong:
        raise ValueError(
            f"{folder}: the saved tensors do not match this model (missing or unexpected: "
            f"{wrong[:4]})"
        )
    bad = [k for k in own if own[k].shape != tensors[k].shape]
    if bad:
        raise ValueError(
            f"{folder}: {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the model needs "
            f"{tuple(own[bad[0]].shape)}"
        )
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value)
