r"""Kernel attention: linear-complexity attention with the call shape of SDPA.

Every method writes attention as *feature attention*: with query features ``Φ_q`` and key
features ``Φ_k`` of width ``m`` and an optional ``m x m`` inner matrix ``M``,

``out = Φ_q M (Φ_kᵀ V) / Φ_q M (Φ_kᵀ 1)``          (normalised methods)

so nothing of size ``L x S`` is formed; time is ``O((L + S)·m·E)`` and memory ``O(chunk·m)``.

Methods
-------
``"favor+"``
    Positive orthogonal random features (Choromanski et al., 2021) from
    :class:`snnk.features.PositiveFeatures`: ``E[φ(q)ᵀφ(k)] = exp(qᵀk·scale)`` exactly, so
    numerator and normaliser are unbiased; their ratio is a consistent (ratio-)estimator of
    softmax attention. Stabilisation is exact: key log-features are shifted by their maximum
    over keys *per feature* ``c_j`` and query log-features by ``+c_j`` and then by their row
    maximum, so every ``exp`` lies in ``(0, 1]`` and the shifts cancel between numerator and
    normaliser. No epsilon is ever added (an epsilon floor turns the estimator into uniform
    attention). Variance: for one i.i.d. feature it is ``exp(2s)(exp(‖q'+k'‖²) − 1)`` with
    ``q' = q·scale^{1/2}``; it grows like ``exp(2‖q'‖²)``, so the estimator is faithful only for
    small logits (roughly ``‖q'‖² ≲ 2``); beyond that it is a different (trainable) operator.
``"nystrom"``
    Landmark estimate of the softmax kernel ``exp(qᵀk·scale)`` with ``m`` landmarks ``Z``
    (adaptive average pooling of the keys followed by Lloyd (k-means) steps; masked keys
    excluded; ``landmarks="pool"`` skips the Lloyd steps). Default form ``"snap"``: every key
    is replaced by its nearest landmark, ``κ̂(q, k_j) = exp(qᵀz_{c(j)}·scale)``, so the
    weights are positive, the output stays in the convex hull of ``V``, it is exact when
    every key is a landmark and its error falls with ``m`` (clustered attention). Form
    ``"projection"`` (``nystrom_form="projection"``, the classic Nyström method):
    ``K̂ = K(Q, Z) (K(Z, Z) + λ D²)⁻¹ K(Z, K)``, the RKHS projection onto the landmarks'
    span, then row normalisation, computed in the Gaussian form
    ``exp(qᵀz) = G(q, z)·e^{‖q‖²/2}·e^{‖z‖²/2}`` with an exact (Cholesky) or Newton–Schulz
    regularised inverse. Its weights are signed: on the activations of a pretrained
    encoder (``‖q‖²·scale ≈ 5–100``) the rows amplify by ``‖u_i‖₁ ≈ 10³–10⁴`` and the
    output leaves the hull of ``V`` by orders of magnitude (errors 9–87 against a
    mean-of-V baseline of 0.78, docs/attention.md); no jitter cures it. Biased,
    deterministic, not causal (landmarks pool the future).
``"hermite"``
    Second-order Hermite expansion of softmax attention around each row's mean logit, with
    the quadratic term compressed by Nyström. With ``t_ij = q'·(k_j' − k̄')`` (``x' =
    x·scale^{1/2}``, ``k̄`` the mean of the unmasked keys), ``exp(s_ij) ∝ exp(t_ij)`` within a
    row and, for Gaussian ``t``, the L²-optimal quadratic approximation of ``exp(t)`` is
    ``1 + t + (t² − E t²)/2`` (Hermite polynomials). The weights are
    ``w_ij = 1 + t_ij + ½(t̂²_ij − mean_j t̂²_ij)`` where ``t̂²`` projects ``(q'⊗q')·(k̃'⊗k̃')``
    onto the squares of ``m − 1 − E`` landmarks (evenly spaced unmasked keys, centred, unit
    norm): ``t̂²(q, k) = a(q)ᵀ (G + λI)⁻¹ a(k)`` with ``a(x)_l = (x'·u_l)²`` and
    ``G = (U Uᵀ)^{∘2}``. So ``m = 1 + E + landmarks`` features in all; both correction terms sum
    to zero over the keys, so the normaliser is exactly the number (total weight) of the
    unmasked keys and no division can blow up. Deterministic; biased: the remainder is third
    order in the logits (exact at ``q = 0``), so it is faithful when the logits of a row are
    small or roughly Gaussian (random or freshly initialised projections: best of all
    methods at unit logits, see docs/benchmarks.md) and poor when a row's logits are
    multi-modal (clustered keys; use ``"nystrom"`` there). Weights can be negative. Float
    ``attn_mask`` biases weight the keys exactly (means and normaliser included); the
    landmarks and the centring of the quadratic features use the plain mean of the unmasked
    keys. Not causal (the key mean and landmarks use the whole sequence).
``"softmax-free"``
    SOFT (Lu et al., 2021): Gaussian-kernel attention ``G(q, k) = exp(−‖q − k‖²·scale/2)``
    with ``m`` landmarks by adaptive average pooling of the keys (``m`` fixed, so cost stays
    linear in ``L``), Nyström reconstruction ``G(Q, Z) D^{-1/2} (A + λI)⁻¹ D^{-1/2} G(Z, K) V``
    with ``A = G(Z, Z)`` and ``D = diag(A 1)`` (SOFT's symmetric normalisation); no row
    normalisation. The inverse uses the analytic gradient ``−A⁻¹ Ḡ A⁻¹`` once (never
    back-propagated through iterations). Not causal.
``"linear"``
    Linear attention of Katharopoulos et al. (2020), ``φ(x) = elu(x) + 1``; a different
    operator from softmax (not an estimator of it). Causal.

``"hybrid"``
    Exact softmax over a sliding window of ``window`` keys plus a learned positive kernel
    for all other keys, one shared normaliser (LoLCATs eq. 7, Based's window + linear
    layers merged): :func:`hybrid_attention`, :mod:`.hybrid`. Causal and bidirectional;
    ``window >= L`` is exact attention. The kernel is a :class:`LearnedFeatureMap`, or with
    ``far_kernel="nystrom"`` (bidirectional) the snapped landmark far field of
    :mod:`.snap` (query-weighted key clusters, second-moment factor, rank-4 first-order
    value correction), trainable as a :class:`LearnedSnapMap`.
``"hedgehog"``
    The learned kernel alone (Hedgehog, Zhang et al., ICLR 2024): linear attention with
    trainable ``exp`` feature maps per head (``window = 0`` of the hybrid).

Learned feature maps (:mod:`.learned`): per head ``log φ(x) = x Wᵀ + b − γ‖x‖²/2`` with
separate trainable ``W``, ``b`` for queries and keys, initialised at antithetic FAVOR+
features (an unbiased estimate of ``exp(qᵀk·scale)``); :func:`fit_feature_map`
(:mod:`.transfer`) fits them to a layer's own softmax attention from captured ``q, k, v``
(attention transfer, no labels). Regime warnings: :mod:`.regime`.

Causal mode (``"favor+"``, ``"linear"``) runs chunk by chunk over the sequence, carrying the
prefix sums ``S = Σ φ(k_j) v_jᵀ`` and ``z = Σ φ(k_j)`` (with a running per-feature maximum for
``"favor+"``, rescaled like an online softmax); :class:`DecodingState` carries the same three
tensors for incremental decoding in ``O(m·E)`` memory per step.

Memory: forward and backward go through a custom autograd function that stores only the
inputs and the ``m x E`` sums, and recomputes the features chunk by chunk in backward.
Half-precision inputs (and autocast) are computed in float32 and cast back.

Package layout: :mod:`.functional` (:func:`kernel_attention`), :mod:`.module`
(:class:`KernelAttention`), :mod:`.decoding` (:class:`DecodingState`), :mod:`.methods` (one
class of hooks per method), :mod:`.engine` (the chunked autograd functions), :mod:`.backward`
(the hand-written backwards), :mod:`.landmarks`, :mod:`.chunk` (chunk-level pieces); the
``m x m`` inverse is :func:`snnk.solvers.inverse.spd_inverse`.
"""

from snnk.features import PositiveFeatures
from snnk.nn.attention.decoding import DecodingState
from snnk.nn.attention.functional import hybrid_attention, kernel_attention
from snnk.nn.attention.learned import LearnedFeatureMap, LearnedSnapMap
from snnk.nn.attention.methods import (
    CAUSAL_METHODS,
    LANDMARKS,
    LEARNED_METHODS,
    METHODS,
    PINV_METHODS,
    AttentionMethod,
    make_method,
)
from snnk.nn.attention.module import KernelAttention
from snnk.nn.attention.regime import AttentionRegimeWarning
from snnk.nn.attention.transfer import TransferReport, fit_feature_map
from snnk.solvers.inverse import newton_schulz_inverse, spd_inverse

__all__ = [
    "CAUSAL_METHODS",
    "LANDMARKS",
    "LEARNED_METHODS",
    "METHODS",
    "PINV_METHODS",
    "AttentionMethod",
    "AttentionRegimeWarning",
    "DecodingState",
    "KernelAttention",
    "LearnedFeatureMap",
    "LearnedSnapMap",
    "PositiveFeatures",
    "TransferReport",
    "fit_feature_map",
    "hybrid_attention",
    "kernel_attention",
    "make_method",
    "newton_schulz_inverse",
    "spd_inverse",
]
