r"""Attention transfer for one layer: fit learned feature maps to the layer's own softmax.

:func:`fit_feature_map` trains only the parameters of a
:class:`~snnk.nn.attention.learned.LearnedFeatureMap` (the four ``nn.Parameter`` s of a
``"hybrid"`` / ``"hedgehog"`` :class:`~snnk.nn.attention.KernelAttention`) so that the
hybrid (window ``w``, ``w = 0``: linear only) reproduces exact softmax attention on captured
``q, k, v`` of that layer. No labels are needed: the teacher is ``softmax(q kᵀ·scale) V``
of the same inputs. Losses:

``"mse"`` (default)
    ``mean_{sequence, head} ‖Ô − O‖²_F / ‖O‖²_F``: the squared relative output error, the
    LoLCATs objective normalised per head so that heads and layers of different output
    norms weigh alike.
``"xent"``
    Hedgehog's soft cross-entropy of attention rows, ``−Σ_j a_ij log â_ij`` averaged over
    ``query_sample`` sampled query rows per sequence (equal to ``KL(a_i‖â_i)`` plus the
    teacher's entropy), with ``â`` the hybrid's weights (window ``e^{s}``, far keys ``κ``,
    one normaliser). Costs ``O(rows·S·m)``.

Early stopping: the sequences are split into training and held-out parts (``N = 1``: the
query rows are split instead); the held-out loss is evaluated every ``eval_every`` steps and
training stops after ``patience`` evaluations without improvement; the best parameters are
restored. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from snnk._utils import check_in, check_positive, check_positive_int
from snnk._utils.random import make_generator
from snnk.nn.attention.functional import hybrid_attention
from snnk.nn.attention.hybrid import check_window, default_block, hybrid_forward
from snnk.nn.attention.learned import LearnedFeatureMap, LearnedSnapMap

LOSSES = ("mse", "xent")


@dataclass
class TransferReport:
    """What :func:`fit_feature_map` did: losses are the held-out loss at each evaluation."""

    steps: int = 0
    initial_loss: float = math.nan
    best_loss: float = math.nan
    best_step: int = 0
    val_losses: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    stopped_early: bool = False


def _teacher(q, k, v, scale, lw, causal):
    """Exact softmax attention (rows whose keys are all masked give 0, as the student)."""
    L = q.shape[-2]
    mask = torch.zeros(L, L, dtype=q.dtype, device=q.device)
    if causal:
        mask = mask.masked_fill(
            torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), float("-inf")
        )
    if lw is not None:
        mask = mask + lw.unsqueeze(-2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.nan_to_num(out, nan=0.0)


def _hybrid_rows_log(fmap, q, k, rows, window, causal, scale, lw):
    """Log-weights ``log â`` of the query rows ``rows`` over all keys, ``(N, H, r, S)``."""
    qr = q[..., rows, :]
    S = k.shape[-2]
    lq = fmap.log_features(qr, "query")
    lk = fmap.log_features(k, "key")
    if lw is not None:
        lk = lk + lw.unsqueeze(-1)
    ck = lk.detach().amax(-2, keepdim=True).clamp_min(-1e30)
    t = lq + ck
    ct = t.detach().amax(-1, keepdim=True)
    kap = torch.exp(t - ct) @ torch.exp(lk - ck).mT
    tiny = torch.finfo(kap.dtype).tiny
    logk = torch.log(kap.clamp_min(tiny)) + ct
    d = rows.unsqueeze(-1) - torch.arange(S, device=q.device).unsqueeze(-2)
    if causal:
        win, allowed = (d >= 0) & (d < window), d >= 0
    else:
        win, allowed = d.abs() < window, torch.ones_like(d, dtype=torch.bool)
    s = (qr @ k.mT) * scale
    if lw is not None:
        s = s + lw.unsqueeze(-2)
    out = torch.where(win, s, logk)
    return out.masked_fill(~allowed, float("-inf"))


def _snap_out(fmap, q, k, v, lw, window, idx, cache):
    """The snapped hybrid of the sequences ``idx``; each sequence's clusters (which do not
    depend on the parameters) are computed once and kept in ``cache``."""
    block = default_block(window, q.shape[-2])
    outs = []
    for n, i in enumerate(idx.tolist()):
        lwn = None if lw is None else lw[n]
        if i not in cache:
            cache[i] = fmap.bind(q[n], k[n], lwn, block)
        outs.append(
            hybrid_forward(q[n], k[n], v[n], lwn, cache[i], window, False, fmap.scale, block)
        )
    return torch.stack(outs)


def _loss(fmap, batch, window, causal, scale, kind, rows, gen, query_sample=128):
    q, k, v, lw, O = batch[:5]
    if isinstance(fmap, LearnedSnapMap):
        o = _snap_out(fmap, q, k, v, lw, window, *batch[5:])
        if rows is not None:
            o, O = o[..., rows, :], O[..., rows, :]
        num = (o - O).square().sum((-2, -1))
        den = O.square().sum((-2, -1)).clamp_min(1e-30)
        return (num / den).mean()
    if kind == "mse":
        o = hybrid_attention(
            q,
            k,
            v,
            fmap,
            key_padding_mask=None if lw is None else ~torch.isfinite(lw),
            is_causal=causal,
            window=window,
            scale=scale,
        )
        if rows is not None:
            o, O = o[..., rows, :], O[..., rows, :]
        num = (o - O).square().sum((-2, -1))
        den = O.square().sum((-2, -1)).clamp_min(1e-30)
        return (num / den).mean()
    L = q.shape[-2]
    pool = rows if rows is not None else torch.arange(L, device=q.device)
    r = pool
    if gen is not None and pool.numel() > query_sample:
        idx = torch.randperm(pool.numel(), generator=gen)[:query_sample]
        r = pool[idx.to(pool.device)]
    logp = _hybrid_rows_log(fmap, q, k, r, window, causal, scale, lw).log_softmax(-1)
    s = (q[..., r, :] @ k.mT) * scale
    if lw is not None:
        s = s + lw.unsqueeze(-2)
    if causal:
        s = s.masked_fill(r.unsqueeze(-1) < torch.arange(L, device=q.device), float("-inf"))
    a = s.softmax(-1)
    return -(a * logp.clamp_min(-1e4)).sum(-1).mean()


def _resolve(feature_map, window, is_causal, scale):
    """The map to train and the window/causal/scale defaults of a module."""
    from snnk.nn.attention.module import KernelAttention

    if isinstance(feature_map, KernelAttention):
        mod = feature_map
        if not isinstance(mod.feature_map, LearnedFeatureMap | LearnedSnapMap):
            raise ValueError(
                f"fit_feature_map needs a learned method ('hybrid' or 'hedgehog'), got a "
                f"KernelAttention with method={mod.method!r}"
            )
        window = mod.window if window is None else window
        is_causal = mod.is_causal if is_causal is None else is_causal
        scale = mod.attention_kwargs.get("scale") if scale is None else scale
        feature_map = mod.feature_map
    if isinstance(feature_map, LearnedSnapMap):
        return feature_map, check_window(64 if window is None else window), is_causal, scale
    if not isinstance(feature_map, LearnedFeatureMap):
        raise TypeError(
            f"feature_map must be a LearnedFeatureMap, a LearnedSnapMap or a "
            f"'hybrid'/'hedgehog' KernelAttention, got {type(feature_map).__name__}"
        )
    return feature_map, check_window(0 if window is None else window), is_causal, scale


def _check_activations(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(
                f"{name} must be a 4-d tensor (N, H, L, E) of captured activations, got "
                f"{getattr(t, 'shape', type(t).__name__)}"
            )
        if not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"{name} must be float32 or float64 (cast captured half activations with "
                f".float()), got {t.dtype}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf; capture finite activations")
    if q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q, k must share one shape and v its first three dimensions, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def fit_feature_map(
    feature_map,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    is_causal: bool | None = None,
    key_padding_mask: torch.Tensor | None = None,
    loss: str = "mse",
    max_steps: int = 200,
    lr: float = 1e-2,
    batch_size: int = 4,
    validation_fraction: float = 0.25,
    patience: int = 5,
    eval_every: int = 5,
    query_sample: int = 128,
    scale: float | None = None,
    seed: int | torch.Generator | None = 0,
    verbose: bool = True,
) -> TransferReport:
    r"""Fit a learned feature map to one layer's softmax attention (attention transfer).

    Parameters
    ----------
    feature_map : LearnedFeatureMap, LearnedSnapMap or KernelAttention
        The map to train (a ``"hybrid"``/``"hedgehog"`` module gives its ``feature_map``,
        ``window`` and ``is_causal`` defaults). Only its parameters change. A
        :class:`~snnk.nn.attention.learned.LearnedSnapMap` (the snapped-landmark far field,
        bidirectional, ``loss="mse"``) starts from the parameter-free estimator; each
        sequence's clusters are computed once.
    q, k, v : Tensors of shape ``(N, H, L, E)``, ``(N, H, L, E)``, ``(N, H, L, Ev)``
        Captured per-head queries, keys and values of ``N`` sequences (after projections
        and rotary embeddings, before scaling), detached.
    window : int, optional
        Exact window of the hybrid being fitted (default: the module's, else 0; 64 for a
        LearnedSnapMap).
    is_causal : bool, optional
        Causal attention (default: the module's, else False).
    key_padding_mask : bool Tensor of shape ``(N, L)``, optional
        True marks padding: padded keys leave teacher and student; padded query rows count
        (their teacher rows are well defined).
    loss : {"mse", "xent"}, default "mse"
        See :mod:`snnk.nn.attention.transfer`.
    max_steps, lr, batch_size : Adam steps, learning rate and sequences per step.
    validation_fraction : float in (0, 1), default 0.25
        Held-out share of the sequences (of the query rows when ``N = 1``).
    patience, eval_every : int
        Early stopping: evaluations without improvement, and steps between evaluations.
    query_sample : int, default 128
        Query rows per sequence and step for ``loss="xent"``.
    scale : float, optional
        Logit scale, default ``1/√E``.
    seed : int, torch.Generator or None
        Order of the batches and row samples (never the global RNG).
    verbose : bool, default True
        Progress bar (tqdm) with the held-out loss.

    Returns
    -------
    TransferReport
    """
    feature_map, window, is_causal, scale = _resolve(feature_map, window, is_causal, scale)
    causal = bool(is_causal)
    kind = check_in(loss, "loss", LOSSES)
    if isinstance(feature_map, LearnedSnapMap) and (causal or kind != "mse"):
        raise ValueError(
            f"a LearnedSnapMap is fitted bidirectionally with loss='mse' (its clusters see "
            f"every key), got is_causal={is_causal}, loss={loss!r}"
        )
    _check_activations(q, k, v)
    if q.shape[1] != feature_map.num_heads or q.shape[-1] != feature_map.head_dim:
        raise ValueError(
            f"q has H={q.shape[1]} heads of dim {q.shape[-1]} but the feature map is for "
            f"num_heads={feature_map.num_heads}, head_dim={feature_map.head_dim}"
        )
    max_steps = check_positive_int(max_steps, "max_steps")
    lr = check_positive(lr, "lr")
    batch_size = check_positive_int(batch_size, "batch_size")
    patience = check_positive_int(patience, "patience")
    eval_every = check_positive_int(eval_every, "eval_every")
    query_sample = check_positive_int(query_sample, "query_sample")
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    N, _, L, E = q.shape
    scale = 1.0 / math.sqrt(E) if scale is None else check_positive(scale, "scale")
    gen = make_generator(seed)[0]
    lw = None
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (N, L):
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape (N, L) = {(N, L)}, got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        lw = (
            torch.zeros(N, 1, L, dtype=q.dtype, device=q.device)
            .masked_fill(key_padding_mask[:, None, :], float("-inf"))
            .expand(N, q.shape[1], L)
        )
    with torch.no_grad():
        O = _teacher(q, k, v, scale, lw, causal)
    if N >= 2:
        n_val = min(N - 1, max(1, round(N * validation_fraction)))
        perm = torch.randperm(N, generator=gen)
        tr_idx, va_idx = perm[n_val:], perm[:n_val]
        tr_rows = va_rows = None
    else:
        tr_idx = va_idx = torch.zeros(1, dtype=torch.long)
        perm = torch.randperm(L, generator=gen).to(q.device)
        n_val = max(1, round(L * validation_fraction))
        va_rows, tr_rows = perm[:n_val].sort().values, perm[n_val:].sort().values

    cache: dict = {}

    def take(idx):
        idx = idx.to(q.device)
        return (q[idx], k[idx], v[idx], None if lw is None else lw[idx], O[idx], idx, cache)

    val_batch = take(va_idx)
    params = list(feature_map.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    report = TransferReport()

    def evaluate() -> float:
        with torch.no_grad():
            return float(_loss(feature_map, val_batch, window, causal, scale, kind, va_rows, None))

    report.initial_loss = report.best_loss = evaluate()
    best = copy.deepcopy(feature_map.state_dict())
    bad = 0
    from tqdm.auto import tqdm

    bar = tqdm(range(1, max_steps + 1), disable=not verbose, desc="fit_feature_map")
    for step in bar:
        pick = tr_idx[torch.randint(len(tr_idx), (min(batch_size, len(tr_idx)),), generator=gen)]
        value = _loss(
            feature_map, take(pick), window, causal, scale, kind, tr_rows, gen, query_sample
        )
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        report.steps = step
        report.train_losses.append(float(value.detach()))
        if step % eval_every == 0 or step == max_steps:
            val = evaluate()
            report.val_losses.append(val)
            if val < report.best_loss:
                report.best_loss, report.best_step, bad = val, step, 0
                best = copy.deepcopy(feature_map.state_dict())
            else:
                bad += 1
            bar.set_postfix(val=f"{val:.4g}", best=f"{report.best_loss:.4g}")
            if bad >= patience:
                report.stopped_early = True
                break
    feature_map.load_state_dict(best)
    return report
