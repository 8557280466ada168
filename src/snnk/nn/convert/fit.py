r"""``fit_attention``: attention transfer, layer by layer, without labels.

For each converted layer ``l`` (in model order) the *exact* model runs on the batches and the
layer's projected ``q, k, v`` (and key padding) are captured where the layer calls its
attention function; the pass stops right after layer ``l``. The captured sequences are padded
to one length (padding masked) and handed to the per-layer trainer
:func:`snnk.nn.attention.fit_feature_map`, which trains only that layer's learned feature
maps (Adam, early stopping on held-out sequences, best parameters kept) so that the layer
reproduces its own softmax attention ``O = softmax(q kᵀ·scale + mask) v``; the default loss
is the squared relative output error ``‖Ô − O‖²_F / ‖O‖²_F`` per sequence and head
(LoLCATs' objective, normalised so every layer and head weighs alike). Inputs are
teacher-forced (every layer sees exact inputs, as in LoLCATs). Everything but the feature
maps stays bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from snnk._utils import check_positive, check_positive_int
from snnk.nn.convert.hf import StopForward
from snnk.nn.convert.linearize import AttentionCore, cores, linearize_config


@dataclass
class LayerFit:
    """What :func:`fit_attention` did to one layer: held-out error (the square root of the
    held-out loss; for ``loss="mse"`` the RMS over sequences and heads of
    ``‖Ô − O‖_F / ‖O‖_F``) before and after, and the Adam steps taken."""

    name: str
    error_before: float
    error_after: float
    steps: int
    stopped_early: bool


@dataclass
class FitReport:
    """Per-layer results of :func:`fit_attention`."""

    layers: list[LayerFit] = field(default_factory=list)

    def __str__(self) -> str:
        rows = [
            f"{f.name}: held-out error {f.error_before:.3f} -> {f.error_after:.3f} "
            f"({f.steps} steps{', stopped early' if f.stopped_early else ''})"
            for f in self.layers
        ]
        return "\n".join(rows)


def _run(model: nn.Module, batch) -> None:
    try:
        if isinstance(batch, Mapping):
            model(**batch)
        elif isinstance(batch, tuple | list):
            model(*batch)
        else:
            model(batch)
    except StopForward:
        pass


def _capture(model: nn.Module, core: AttentionCore, batches: list) -> list[tuple]:
    """``(q, k, v, key_padding_mask)`` of ``core``'s layer for every batch (exact model)."""
    seen: list[tuple] = []

    def grab(q, k, v, kpm):
        if k.shape[1] != q.shape[1]:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        seen.append(tuple(None if t is None else t.detach() for t in (q, k, v, kpm)))
        raise StopForward

    core.capture = grab
    try:
        with torch.no_grad():
            for batch in batches:
                _run(model, batch)
    finally:
        core.capture = None
    return seen


def _stack(captured: list[tuple]) -> tuple[torch.Tensor, ...]:
    """One ``(N, H, L, E)`` tensor per input, padded to the longest batch (padding masked)."""
    L = max(q.shape[-2] for q, _, _, _ in captured)
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for q, k, v, kpm in captured:
        pad = L - q.shape[-2]
        mask = torch.zeros(q.shape[0], q.shape[-2], dtype=torch.bool, device=q.device)
        mask = mask if kpm is None else kpm
        for i, t in enumerate((q, k, v)):
            parts[i].append(F.pad(t.float(), (0, 0, 0, pad)))
        parts[3].append(F.pad(mask, (0, pad), value=True))
    q, k, v, kpm = (torch.cat(p) for p in parts)
    return q, k, v, kpm if bool(kpm.any()) else None


def fit_attention(
    model: nn.Module,
    batches: Iterable,
    *,
    loss: str = "mse",
    lr: float = 1e-2,
    max_steps: int = 200,
    batch_size: int = 4,
    patience: int = 5,
    eval_every: int = 5,
    val_fraction: float = 0.25,
    seed: int = 0,
    verbose: bool = True,
) -> FitReport:
    r"""Train the learned feature maps of a linearized model to match its softmax attention.

    Parameters
    ----------
    model : torch.nn.Module
        A model converted by :func:`linearize` with ``method="hybrid"`` or ``"hedgehog"``.
    batches : iterable
        Unlabelled model inputs: dicts of keyword arguments (``input_ids``,
        ``attention_mask``, ...), tuples of positional arguments, or single tensors. Read
        once. They hold ``N`` sequences in all (at least 2: the last ``val_fraction`` of
        them, in a seeded random order, are held out).
    loss : {"mse", "xent"}, default "mse"
        Relative output error, or Hedgehog's soft cross-entropy of attention rows (see
        :func:`snnk.nn.attention.fit_feature_map`).
    lr, max_steps, batch_size : float, int, int
        Adam learning rate (LoLCATs' stage-1 rate), steps and sequences per step, per layer.
    patience, eval_every : int
        Stop a layer after ``patience`` held-out evaluations (every ``eval_every`` steps)
        without improvement; its best parameters are kept.
    val_fraction : float, default 0.25
    seed : int, default 0
        Order of the sequences (never the global RNG).
    verbose : bool, default True
        A tqdm progress bar, one step per layer.

    Returns
    -------
    FitReport
        Held-out error of every layer before and after (the square root of the loss).
    """
    from tqdm.auto import tqdm

    from snnk.nn.attention import fit_feature_map

    config = linearize_config(model)
    if config.method not in ("hybrid", "hedgehog"):
        raise ValueError(
            f"fit_attention trains learned feature maps; this model was linearized with "
            f"method={config.method!r}, which has none: linearize with method='hybrid' or "
            "'hedgehog'"
        )
    options = {
        "loss": loss,
        "lr": check_positive(lr, "lr"),
        "max_steps": check_positive_int(max_steps, "max_steps"),
        "batch_size": check_positive_int(batch_size, "batch_size"),
        "patience": check_positive_int(patience, "patience"),
        "eval_every": check_positive_int(eval_every, "eval_every"),
        "seed": seed,
    }
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise TypeError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty; pass a list of model inputs (unlabelled texts)")
    layers = cores(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    states = [(core, core.enabled, core.training) for _, core in layers]
    was_training = model.training
    report = FitReport()
    bar = tqdm(layers, disable=not verbose, desc="fit_attention")
    try:
        model.eval()
        model.requires_grad_(False)
        for _, core in layers:
            core.enabled = False  # the exact model produces the teacher and the inputs
        for name, core in bar:
            q, k, v, kpm = _stack(_capture(model, core, batches))
            if q.shape[0] < 2:
                raise ValueError(
                    f"batches hold {q.shape[0]} sequence; fit_attention needs at least 2 (one "
                    "to train on, one held out)"
                )
            for p in core.feature_parameters():
                p.requires_grad_(True)
            fit = fit_feature_map(
                core,
                q,
                k,
                v,
                key_padding_mask=kpm,
                validation_fraction=val_fraction,
                verbose=False,
                **options,
            )
            for p in core.feature_parameters():
                p.requires_grad_(False)
            done = LayerFit(
                name,
                math.sqrt(fit.initial_loss),
                math.sqrt(fit.best_loss),
                fit.steps,
                fit.stopped_early,
            )
            report.layers.append(done)
            bar.set_postfix(error=f"{done.error_before:.3f}->{done.error_after:.3f}")
    finally:
        bar.close()
        for core, enabled, training in states:
            core.enabled = enabled
            core.train(training)
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    return report
