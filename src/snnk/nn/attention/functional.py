r"""The functional API, :func:`kernel_attention`, and the validation of its inputs."""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch

from snnk._utils import (
    check_finite,
    check_in,
    check_positive,
    check_positive_int,
    compute_dtype,
)
from snnk.features import PositiveFeatures
from snnk.nn.attention.engine import CausalFeatureAttention, FeatureAttention, run_engine
from snnk.nn.attention.global_fast import fast_path_applies, learned_global, linear_global
from snnk.nn.attention.hybrid import (
    FAR_KERNELS,
    SnapMap,
    check_window,
    default_block,
    hybrid_forward,
)
from snnk.nn.attention.learned import LearnedFeatureMap, LearnedSnapMap
from snnk.nn.attention.methods import (
    CAUSAL_METHODS,
    DEFAULT_LANDMARKS,
    LANDMARKS,
    METHODS,
    NYSTROM_FORMS,
    PINV_METHODS,
    make_method,
)
from snnk.nn.attention.regime import regime_message, warn_regime

#: elements of one ``(batch, chunk, m)`` feature block (512 KiB in float32: it fits the L2
#: cache, and forward+backward keep peak memory at or below SDPA's from L = 4,096 on)
_CHUNK_ELEMENTS = 1 << 17


class InputStats(NamedTuple):
    """What the input check read on its way (None: not read, e.g. on meta or while
    ``torch.compile`` traces)."""

    #: ``max(max|q|, max|k|)`` (only when asked for: ``"softmax-free"``'s cancellation bound)
    magnitude: float | None
    #: ``max_i ‖q_i‖`` (when ``magnitude`` is not asked for)
    query_norm: float | None


def check_qkv(q, k, v, magnitude: bool = False, query_norm: bool = False) -> InputStats:
    """Validate the three inputs; return what the value check read (:class:`InputStats`).

    Each tensor is read once. ``magnitude``: q and k by an ``aminmax`` (their largest entry);
    else ``query_norm``: q by its row norms (``max_i ‖q_i‖``, which the regime checks and
    ``"hermite"``'s tempering bound use); otherwise q, like k, by a sum
    (:func:`snnk._utils.all_finite`, the cheapest pass). NaN and Inf propagate through all
    three, so a non-finite input is named either way.
    """
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(
                f"{name} must have shape (..., L, E) with at least 2 dimensions, got shape "
                f"{tuple(t.shape)}; add a sequence dimension with {name}.unsqueeze(-2)"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"query and key must have the same head dimension E (last dimension), got "
            f"query {tuple(q.shape)} and key {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"key and value must have the same sequence length S (dimension -2), got key "
            f"{tuple(k.shape)} and value {tuple(v.shape)}"
        )
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(
            f"query, key and value must have the same batch dimensions, got {tuple(q.shape)}, "
            f"{tuple(k.shape)} and {tuple(v.shape)}; expand them to one batch shape first"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"query, key and value must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"query, key and value must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    # one read pass per tensor and call (skipped on meta and while torch.compile traces): a
    # NaN key otherwise turns every normaliser into NaN and rows silently into 0
    if magnitude:
        mags = _magnitude(q, "query"), _magnitude(k, "key")
        stats = InputStats(None if None in mags else max(mags), None)
    elif query_norm:
        stats = InputStats(None, _row_norm_max(q, "query"))
        check_finite(k, "key")
    else:
        stats = InputStats(None, None)
        check_finite(q, "query")
        check_finite(k, "key")
    check_finite(v, "value")
    if k.shape[-2] == 0:
        raise ValueError(
            f"key and value have no rows (S = 0, key shape {tuple(k.shape)}): attention over "
            f"zero keys is undefined (softmax of an empty row); pass at least one key, or "
            f"skip the call for empty sequences"
        )
    return stats


def _readable(t: torch.Tensor) -> bool:
    return t.numel() > 0 and t.device.type != "meta" and not torch.compiler.is_compiling()


def _magnitude(t: torch.Tensor, name: str) -> float | None:
    """``max |t|`` after checking ``t`` is finite, in one read pass (None: not read)."""
    if not _readable(t):
        return None
    lo, hi = torch.aminmax(t.detach())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        check_finite(t, name)  # raises, counting the NaN and Inf entries
    return max(-lo, hi)


def _row_norm_max(t: torch.Tensor, name: str) -> float | None:
    """``max_i ‖t_i‖`` over the rows (last dimension) after checking ``t`` is finite, in one
    read pass (None: not read). A non-finite result is a NaN/Inf entry or an overflow of
    the norm (then ``inf`` is returned: every bound built on it fails safe)."""
    if not _readable(t):
        return None
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    top = float(torch.linalg.vector_norm(t.detach(), dim=-1, dtype=acc).amax())
    if not math.isfinite(top):
        check_finite(t, name)  # raises, counting the NaN and Inf entries
        return math.inf
    return top


def _cancellation_free(spec, magnitude: float | None, E: int, dtype: torch.dtype) -> bool:
    """Whether the expanded affine logits cannot exceed ``spec.max_log`` by more than 1e-3.

    The expansion ``γ(qᵀz − ‖q‖²/2 − ‖z‖²/2)`` of ``−γ‖q − z‖²/2`` rounds with an error of
    at most ``2·eps·γ·E·(max|q| + max|k|)²`` (landmarks are means of keys); below 1e-3 the
    bound is met up to that (``exp`` of it ≤ 1.001) and the clamp pass can be skipped.
    Typical attention inputs (``γ = 1/√E``, entries of order 1) are 1e5 times inside.
    """
    if spec.max_log is None or magnitude is None:
        return False
    eps = torch.finfo(dtype).eps
    return 2.0 * eps * spec.gamma * E * (2.0 * magnitude) ** 2 <= 1e-3


def _key_log_weights(
    attn_mask, key_padding_mask, k: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """Per-key additive log-weights ``(..., S)``: ``-inf`` drops a key, 0 keeps it."""
    S = k.shape[-2]
    batch = k.shape[:-2]
    lw = None
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(
                "key_padding_mask must be a bool tensor (True marks a padded key to ignore, as "
                f"in nn.MultiheadAttention), got {getattr(m, 'dtype', type(m).__name__)}; "
                "use mask.bool()"
            )
        if m.ndim == 0 or m.shape[-1] != S or not _broadcastable(m.shape[:-1], batch):
            raise ValueError(
                f"key_padding_mask must have shape (..., S) with S={S} keys and leading "
                f"dimensions that broadcast to the batch shape {tuple(batch)} of key, got "
                f"{tuple(m.shape)}; for inputs (B, H, S, E) pass mask[:, None, :]"
            )
        lw = torch.zeros(m.shape, dtype=dtype, device=k.device).masked_fill(m, float("-inf"))
    if attn_mask is not None:
        m = attn_mask
        if not isinstance(m, torch.Tensor) or not (m.dtype == torch.bool or m.is_floating_point()):
            raise TypeError(
                "attn_mask must be a bool tensor (True = take part in attention, as in "
                "scaled_dot_product_attention) or a float tensor of additive biases, got "
                f"{getattr(m, 'dtype', type(m).__name__)}"
            )
        if m.ndim < 2 or m.shape[-1] != S or not _broadcastable(m.shape[:-2], batch):
            raise ValueError(
                f"attn_mask must have shape (..., 1, S) with S={S} keys and leading dimensions "
                f"that broadcast to {tuple(batch)}, got {tuple(m.shape)}"
            )
        if m.shape[-2] != 1:
            raise ValueError(
                f"kernel attention supports only masks that are the same for every query, "
                f"shape (..., 1, S); got attn_mask of shape {tuple(m.shape)}. Use "
                f"is_causal=True for a causal mask, key_padding_mask for padding; arbitrary "
                f"(L, S) masks need exact attention (scaled_dot_product_attention)"
            )
        m = m[..., 0, :]
        if m.is_floating_point() and m.device.type != "meta" and not torch.compiler.is_compiling():
            if bool(torch.isnan(m).any()):
                raise ValueError(
                    "attn_mask contains NaN biases; use -inf to drop a key and finite values "
                    "to bias it"
                )
        add = (
            torch.zeros(m.shape, dtype=dtype, device=k.device).masked_fill(~m, float("-inf"))
            if m.dtype == torch.bool
            else m.to(dtype)
        )
        lw = add if lw is None else lw + add
    return None if lw is None else torch.broadcast_to(lw, (*batch, S)).detach()


def _no_autocast(device: torch.device):
    """Autocast off on ``device`` (the work runs in the compute dtype); a no-op on meta,
    which has no autocast backend and needs none for shape propagation."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def _broadcastable(a, b) -> bool:
    try:
        return torch.broadcast_shapes(a, b) == tuple(b)
    except RuntimeError:
        return False


def _default_chunk(batch_numel: int, m: int) -> int:
    return max(64, _CHUNK_ELEMENTS // max(1, batch_numel * m))


def kernel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    method: str = "favor+",
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    num_features: int = 256,
    seed: int | torch.Generator | None = 0,
    feature_map: PositiveFeatures | None = None,
    jitter: float = 1e-3,
    pinv: str = "solve",
    max_iter: int = 100,
    tol: float = 1e-10,
    chunk_size: int | None = None,
    landmarks: str | None = None,
    regime_warning: bool = True,
    nystrom_form: str = "snap",
) -> torch.Tensor:
    r"""Linear-complexity attention with the call shape of ``scaled_dot_product_attention``.

    Parameters
    ----------
    q : Tensor of shape ``(..., L, E)``
    k : Tensor of shape ``(..., S, E)``
    v : Tensor of shape ``(..., S, Ev)``
        Same batch dimensions, dtype and device.
    method : {"favor+", "nystrom", "hermite", "softmax-free", "linear"}, default "favor+"
        See :mod:`snnk.nn.attention` for the estimator behind each method.
    attn_mask : Tensor of shape ``(..., 1, S)``, optional
        As in SDPA: bool (True = the key takes part) or float (added to the logits; ``-inf``
        drops the key). Only masks that are the same for every query can be linearised.
    key_padding_mask : bool Tensor of shape ``(..., S)``, optional
        As in ``nn.MultiheadAttention``: True marks a padded key. Masked keys are removed
        from the numerator *and* the normaliser (and from the landmarks).
    is_causal : bool, default False
        Query ``i`` sees keys ``j <= i`` (needs ``L == S``); only ``"favor+"`` and
        ``"linear"`` (landmark methods see the future and raise).
    scale : float, optional
        Logit scale, default ``1/√E`` (softmax of ``qᵀk·scale``; for ``"softmax-free"``
        the kernel is ``exp(−‖q − k‖²·scale/2)``).
    num_features : int, default 256
        ``m``: random features (``"favor+"``), landmarks (``"nystrom"``,
        ``"softmax-free"``; capped at ``S``) or the total feature width of ``"hermite"``
        (``1 + E`` plus ``m − 1 − E`` quadratic landmarks, capped at ``S``; needs
        ``m >= E + 2``). Ignored by ``"linear"``.
    seed : int, torch.Generator or None, default 0
        Draw of the ``"favor+"`` projection when ``feature_map`` is not given.
    feature_map : PositiveFeatures, optional
        ``"favor+"`` features to use (``in_features = E``); modules pass theirs.
    jitter : float, default 1e-3
        ``λ`` added to the unit-diagonal landmark Gram matrix before inversion (the
        Gaussian Gram matrix, or ``G`` of ``"hermite"``).
    pinv : {"solve", "newton"}, default "solve"
        Exact SPD inverse (Cholesky, float64) or Newton–Schulz with a convergence check
        (raises if ``tol`` is not met within ``max_iter``).
    chunk_size : int, optional
        Rows per chunk (default: about 2¹⁷ feature elements per block, at least 64 rows).
        Without it, a bidirectional ``"linear"`` call that needs no gradient runs on whole
        sequences (:mod:`snnk.nn.attention.global_fast`; same values to rounding).
    landmarks : {"kmeans", "pool"}, optional
        Landmarks of ``"nystrom"`` (default ``"kmeans"``) and ``"softmax-free"`` (default
        ``"pool"``, SOFT's rule): adaptive average pooling of the keys, or one Lloyd (k-means)
        step from the pooled landmarks, which puts landmarks where the keys cluster (one
        more pass over the keys). Errors at L = 1,024 with 256 landmarks: random keys 0.541
        (pool) / 0.549 (kmeans); clustered keys at logit std 2: 2.7 (pool, row sums near 0)
        / 0.156 (kmeans); see docs/benchmarks.md.
    nystrom_form : {"snap", "projection"}, default "snap"
        ``"nystrom"`` only. ``"snap"``: every key replaced by its nearest landmark (positive
        weights, output in the convex hull of ``V``, exact at ``m = S``);
        ``"projection"``: the classic Nyström projection ``K(Q,Z)(K(Z,Z) + λI)⁻¹K(Z,K)``
        (signed weights; diverges on peaked pretrained attention, see ``docs/attention.md``).
    regime_warning : bool, default True
        Emit an :class:`~snnk.nn.attention.regime.AttentionRegimeWarning` naming the
        measured statistic when the method is outside its regime (see
        :mod:`snnk.nn.attention.regime`).

    Returns
    -------
    Tensor of shape ``(..., L, Ev)`` in ``q``'s dtype.
    """
    check_in(method, "method", METHODS)
    stats = check_qkv(
        q,
        k,
        v,
        magnitude=method == "softmax-free",
        query_norm=method == "hermite" or (method == "favor+" and regime_warning),
    )
    if is_causal and method not in CAUSAL_METHODS:
        raise ValueError(
            f"method={method!r} cannot be causal: its landmarks are computed from the "
            f"whole sequence, so every output would see future tokens. Use method='favor+' or "
            f"'linear' with is_causal=True"
        )
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"is_causal=True needs as many queries as keys, got L={q.shape[-2]} and "
            f"S={k.shape[-2]}; for decoding one token at a time use DecodingState"
        )
    E = q.shape[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else check_positive(scale, "scale")
    num_features = check_positive_int(num_features, "num_features")
    if regime_warning:
        warn_regime(regime_message(method, q, k, scale, query_norm=stats.query_norm))
    check_in(nystrom_form, "nystrom_form", NYSTROM_FORMS)
    check_in(pinv, "pinv", PINV_METHODS)
    jitter = check_positive(jitter, "jitter")
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_positive(tol, "tol")
    if landmarks is not None and method not in DEFAULT_LANDMARKS:
        raise ValueError(
            f"landmarks={landmarks!r} applies to {sorted(DEFAULT_LANDMARKS)} only, not to "
            f"method={method!r}"
        )
    rule = check_in(landmarks or DEFAULT_LANDMARKS.get(method, "pool"), "landmarks", LANDMARKS)
    num_landmarks = num_features
    if method == "hermite":
        num_landmarks = num_features - E - 1
        if num_landmarks < 1:
            raise ValueError(
                f"method='hermite' uses 1 + E + (quadratic landmarks) features, so num_features "
                f"must be at least E + 2 = {E + 2} for head dimension E={E}; got "
                f"num_features={num_features}"
            )
    if method == "favor+":
        feature_map = _favor_map(feature_map, E, num_features, seed, q.device)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    out_dtype = q.dtype
    work = compute_dtype(q.dtype)
    with _no_autocast(q.device):
        qw, kw, vw = q.to(work), k.to(work), v.to(work)
        lw = _key_log_weights(attn_mask, key_padding_mask, kw, work)
        if (
            method == "linear"
            and not is_causal
            and chunk_size is None
            and fast_path_applies(max(q.shape[-2], k.shape[-2]), E, qw, kw, vw)
        ):
            return linear_global(qw, kw, vw, lw).to(out_dtype)
        spec = make_method(
            method,
            scale,
            feature_map=feature_map,
            num_landmarks=num_landmarks,
            jitter=jitter,
            pinv=pinv,
            max_iter=max_iter,
            tol=tol,
            landmarks=rule if method in DEFAULT_LANDMARKS else None,
            nystrom_form=nystrom_form,
            query_norm=stats.query_norm,
        )
        if _cancellation_free(spec, stats.magnitude, E, work):
            spec.max_log = None  # the bound holds without the clamp pass
        width = feature_map.num_features if method == "favor+" else num_features
        batch = math.prod(q.shape[:-2])
        chunk = chunk_size or _default_chunk(batch, width if method != "linear" else E)
        fn = CausalFeatureAttention if is_causal else FeatureAttention
        out = run_engine(fn, qw, kw, vw, lw, spec, chunk)
    return out.to(out_dtype)


#: default ``"favor+"`` feature maps by (E, num_features, seed, device): drawn once, so that
#: repeated calls do not redraw (an orthogonal draw is a QR per call) and compiled code finds
#: them ready (a draw cannot be traced)
_DEFAULT_MAPS: dict[tuple, PositiveFeatures] = {}
_MAX_DEFAULT_MAPS = 16


def _favor_map(feature_map, E: int, num_features: int, seed, device) -> PositiveFeatures:
    """The ``"favor+"`` feature map: ``feature_map`` checked, or the default draw for ``seed``."""
    if feature_map is not None:
        if not isinstance(feature_map, PositiveFeatures):
            raise TypeError(
                f"feature_map must be a snnk.features.PositiveFeatures, got "
                f"{type(feature_map).__name__}"
            )
        if feature_map.in_features != E:
            raise ValueError(
                f"feature_map has in_features={feature_map.in_features} but the head "
                f"dimension E of query/key is {E}"
            )
        ref = next(feature_map.buffers())
        if ref.device != device:
            raise ValueError(
                f"feature_map is on device {ref.device} but query is on {device}; move it "
                f"with feature_map.to({str(device)!r})"
            )
        return feature_map
    key = None
    if isinstance(seed, int) and not isinstance(seed, bool):
        key = (E, num_features, seed, str(device), torch.get_default_dtype())
    if key is not None and key in _DEFAULT_MAPS:
        return _DEFAULT_MAPS[key]
    if torch.compiler.is_compiling():
        raise ValueError(
            "method='favor+' draws its random features when feature_map is not given, which "
            "torch.compile cannot trace; pass feature_map=PositiveFeatures(E, num_features, "
            "seed=...) built outside the compiled function (KernelAttention holds one), or "
            "call kernel_attention once eagerly with an int seed"
        )
    fmap = PositiveFeatures(E, num_features, seed=seed, device=device)
    if key is not None:
        if len(_DEFAULT_MAPS) >= _MAX_DEFAULT_MAPS:
            _DEFAULT_MAPS.pop(next(iter(_DEFAULT_MAPS)))
        _DEFAULT_MAPS[key] = fmap
    return fmap


def hybrid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: LearnedFeatureMap | None = None,
    attn_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    *,
    window: int = 64,
    num_features: int = 64,
    scale: float | None = None,
    seed: int | torch.Generator | None = 0,
    chunk_size: int | None = None,
    far_kernel: str = "learned",
) -> torch.Tensor:
    r"""Exact softmax in a sliding window plus kernel attention for the other keys, one
    shared normaliser (see :mod:`snnk.nn.attention.hybrid`).

    Parameters
    ----------
    q, k, v : Tensors of shape ``(..., H, L, E)``, ``(..., H, S, E)``, ``(..., H, S, Ev)``
        ``H`` must equal ``feature_map.num_heads`` (3-d inputs are one batch of heads).
    feature_map : LearnedFeatureMap or LearnedSnapMap, optional
        The kernel of the far keys; default: a fresh FAVOR+-initialised map with
        ``num_features`` features drawn from ``seed`` (not trained). With
        ``far_kernel="nystrom"``: a trained :class:`LearnedSnapMap` (query map ``A``,
        second-moment weight ``α``, far/window balance ``β``, value gain ``γ`` per head), or
        None for the parameter-free snapped landmarks.
    attn_mask, key_padding_mask : optional
        As in :func:`kernel_attention` (per-key masks and float biases ``(..., 1, S)`` /
        bool ``(..., S)``); masked keys leave the window and the kernel sums alike.
    is_causal : bool, default False
        Query ``i`` sees keys ``j <= i`` (needs ``L == S``).
    window : int, default 64
        ``w``: keys with ``|i − j| < w`` (causal: ``0 <= i − j < w``) attend exactly.
        ``w >= L`` is exact softmax attention, ``w = 0`` pure kernel attention. ``w > 0``
        needs ``L == S`` (positions are shared).
    scale : float, optional
        Logit scale of the window part, default ``1/√E`` (the map carries its own).
    chunk_size : int, optional
        Rows per block (raised to ``window``; default ``max(window, 64)``). Without it, a
        bidirectional ``window = 0`` call with the learned kernel that needs no gradient runs
        on whole sequences (:mod:`snnk.nn.attention.global_fast`; same values to rounding).
    far_kernel : {"learned", "nystrom"}, default "learned"
        Kernel of the far keys: ``feature_map`` (trainable), or ``"nystrom"``: every far
        key snapped to the nearest of ``num_features`` landmarks of the keys (k-means
        weighted by the softmax mass that evenly spaced queries put on each key), with the
        cluster's second moment ``κ = exp(scale·qᵀz_c + ½ scale² Σ_d q_d² S_{c,d})``, and a
        capped rank-4 first-order correction of each cluster's values,
        ``v̄_c + scale·U_c V_c q`` (:mod:`snnk.nn.attention.snap`; bidirectional only).

    Returns
    -------
    Tensor of shape ``(..., H, L, Ev)`` in ``q``'s dtype.
    """
    check_qkv(q, k, v)
    window = check_window(window)
    if q.ndim < 3:
        raise ValueError(
            f"hybrid_attention needs inputs shaped (..., H, L, E) with a head dimension, got "
            f"query {tuple(q.shape)}; use q.unsqueeze(0) for one head"
        )
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    if (window > 0 or is_causal) and L != S:
        raise ValueError(
            f"window={window} and is_causal={is_causal} need as many queries as keys (shared "
            f"positions), got L={L} and S={S}; use window=0 for cross-attention"
        )
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
    scale = 1.0 / math.sqrt(E) if scale is None else check_positive(scale, "scale")
    check_in(far_kernel, "far_kernel", FAR_KERNELS)
    if far_kernel == "nystrom":
        if is_causal:
            raise ValueError(
                "far_kernel='nystrom' cannot be causal (its landmarks see every key); use "
                "far_kernel='learned' with is_causal=True"
            )
        num_features = check_positive_int(num_features, "num_features")
        if feature_map is not None and not isinstance(feature_map, LearnedSnapMap):
            raise TypeError(
                f"with far_kernel='nystrom', feature_map must be a "
                f"snnk.nn.attention.LearnedSnapMap (or None), got {type(feature_map).__name__}"
            )
    elif feature_map is None:
        num_features = check_positive_int(num_features, "num_features")
        feature_map = LearnedFeatureMap(
            q.shape[-3],
            E,
            num_features + num_features % 2,
            scale=scale,
            seed=seed,
            device=q.device,
        )
    elif not isinstance(feature_map, LearnedFeatureMap):
        raise TypeError(
            f"feature_map must be a snnk.nn.attention.LearnedFeatureMap, got "
            f"{type(feature_map).__name__}"
        )
    if feature_map is not None and (
        feature_map.num_heads != q.shape[-3] or feature_map.head_dim != E
    ):
        raise ValueError(
            f"feature_map has num_heads={feature_map.num_heads}, head_dim="
            f"{feature_map.head_dim} but query has H={q.shape[-3]} heads of dim E={E} "
            f"(shape (..., H, L, E) = {tuple(q.shape)})"
        )
    block = default_block(window, L)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        block = max(1, min(max(window, chunk_size), max(L, 1)))
    work = compute_dtype(q.dtype)
    with _no_autocast(q.device):
        qw, kw, vw = q.to(work), k.to(work), v.to(work)
        lw = _key_log_weights(attn_mask, key_padding_mask, kw, work)
        if (
            far_kernel == "learned"
            and not hasattr(feature_map, "value_terms")  # no far-field value correction
            and window == 0
            and not is_causal
            and chunk_size is None
            and fast_path_applies(
                max(L, S), feature_map.num_features, qw, kw, vw, *feature_map.parameters()
            )
        ):
            return learned_global(qw, kw, vw, lw, feature_map).to(q.dtype)
        if far_kernel == "nystrom" and feature_map is not None:
            feature_map = feature_map.bind(qw, kw, lw, block)
        elif far_kernel == "nystrom":
            feature_map = SnapMap(kw, lw, num_features, scale, block, q=qw)
        out = hybrid_forward(qw, kw, vw, lw, feature_map, window, bool(is_causal), scale, block)
    return out.to(q.dtype)
