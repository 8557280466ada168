r"""The attention methods: each one a small class of named hooks that the engine calls.

A method writes attention as feature attention (see :mod:`snnk.nn.attention`): it maps
key and query chunks to log-features (``log_domain``) or features, names the key shift
(``stab``), and turns the key sums ``S = Σ φ_k vᵀ`` and ``z = Σ φ_k`` into the inner
products ``(B, b)`` (:meth:`AttentionMethod.finish`). Hooks:

``key_map(k, Z)`` / ``query_map(q, Z)``
    log-features or features of a chunk of rows, given the landmarks ``Z`` (or None).
``affine(Z)``
    ``(P, const)`` of the affine form ``t(x) = x Pᵀ + const − γ‖x‖²/2`` (only when
    ``has_affine``); the engine then evaluates features as one GEMM per chunk and uses the
    hand-written :func:`~snnk.nn.attention.backward.affine_backward`.
``inner(Z)`` / ``finish(Z, S, z)``
    the ``m x m`` inner matrix ``M`` and the map ``(S, z) -> (M S, M z)`` (``has_finish``
    when it depends on ``Z`` or is not the identity).
``backward(ctx, g)``
    the backward pass of the non-causal engine.

Attributes: ``log_domain``, ``normalize`` (divide by ``Φ_q M Φ_kᵀ 1``), ``stab`` (``"feature"``:
key maximum per feature, ``"scalar"``: over keys and features, None), ``num_landmarks``,
``landmarks`` (the rule of :class:`~snnk.nn.attention.landmarks.Landmarks`), ``key_sq`` /
``query_sq`` / ``gamma`` (the ``−γ‖x‖²/2`` term of the affine form), ``max_log`` (a bound
of the log-features, enforced against cancellation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from snnk.features import PositiveFeatures
from snnk.nn.attention.backward import affine_backward, autograd_backward, hermite_backward
from snnk.nn.attention.chunk import row_sq_norms
from snnk.solvers.inverse import SPD_INVERSE_METHODS, spd_inverse

METHODS = ("favor+", "nystrom", "hermite", "softmax-free", "linear")
CAUSAL_METHODS = ("favor+", "linear")
#: methods with trainable per-head feature maps (:class:`.learned.LearnedFeatureMap`); both
#: run causal and bidirectional. ``"hedgehog"`` is ``"hybrid"`` with ``window=0``
LEARNED_METHODS = ("hybrid", "hedgehog")
PINV_METHODS = SPD_INVERSE_METHODS
LANDMARKS = ("kmeans", "pool")
#: landmark rule of each landmark method when ``landmarks`` is not given
DEFAULT_LANDMARKS = {"nystrom": "kmeans", "softmax-free": "pool"}


class AttentionMethod:
    """Base of the methods: defaults of every hook (see the module docstring)."""

    name = ""
    log_domain = True
    normalize = True
    stab: str | None = None
    has_affine = False
    has_finish = False
    key_sq = False
    query_sq = False
    num_landmarks = 0
    landmarks = "pool"
    #: Lloyd steps of ``"kmeans"`` landmarks
    lloyd_steps = 1
    #: upper bound of the log-features, when the method has one (``"softmax-free"``: 0); the
    #: expanded affine form can exceed it by cancellation for inputs far from the origin
    max_log: float | None = None

    def __init__(self, scale: float):
        self.scale = scale
        self.r = math.sqrt(scale)
        self.gamma = 1.0

    def key_map(self, x: torch.Tensor, Z: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def query_map(self, x: torch.Tensor, Z: torch.Tensor | None) -> torch.Tensor:
        return self.key_map(x, Z)

    def affine(self, Z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"method {self.name!r} has no affine form")

    def inner(self, Z: torch.Tensor) -> torch.Tensor | None:
        return None

    def finish(self, Z, Ssum, zsum):
        """``(B, b)`` from the key sums: ``(M Σ φ_k vᵀ, M Σ φ_k)`` (``M = I`` without
        :meth:`inner`)."""
        M = self.inner(Z)
        if M is None:
            return Ssum, zsum
        return M @ Ssum, (M @ zsum.unsqueeze(-1))[..., 0]

    def backward(self, ctx, g):
        return affine_backward(ctx, g) if self.has_affine else autograd_backward(ctx, g)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class FavorPlus(AttentionMethod):
    r"""``"favor+"``: positive random features of ``exp(qᵀk·scale)`` (a
    :class:`~snnk.features.PositiveFeatures` on ``x' = x·scale^{1/2}``)."""

    name = "favor+"
    stab = "feature"
    has_affine = True
    key_sq = True

    def __init__(self, scale: float, feature_map: PositiveFeatures):
        super().__init__(scale)
        self.feature_map = feature_map
        # γ of the feature map's affine form (1/T) for x' = r·x: γ·r² = scale/T
        self.gamma = scale / feature_map.temperature

    def key_map(self, x, Z):
        return self.feature_map.log_features(x * self.r)

    def affine(self, Z):
        # log φ(x') = x'Aᵀ + b − ‖x'‖²/(2T) with x' = r·x (PositiveFeatures.affine_form)
        A, b, _ = self.feature_map.affine_form()
        return A * self.r, b


class Linear(AttentionMethod):
    """``"linear"``: ``φ(x) = elu(x) + 1`` (Katharopoulos et al., 2020)."""

    name = "linear"
    log_domain = False

    def key_map(self, x, Z):
        return F.elu(x) + 1.0


class LandmarkMethod(AttentionMethod):
    """Methods with ``m`` landmarks ``Z`` and a regularised inverse of their Gram matrix."""

    def __init__(
        self,
        scale: float,
        num_landmarks: int,
        *,
        jitter: float = 1e-3,
        pinv: str = "solve",
        max_iter: int = 100,
        tol: float = 1e-10,
        landmarks: str | None = None,
    ):
        super().__init__(scale)
        self.num_landmarks = num_landmarks
        self.jitter, self.pinv, self.max_iter, self.tol = jitter, pinv, max_iter, tol
        if landmarks is not None:
            self.landmarks = landmarks

    def gram(self, Z: torch.Tensor) -> torch.Tensor:
        """Gaussian Gram matrix ``exp(−‖z_a' − z_b'‖²/2)`` of the scaled landmarks
        ``z' = r·z`` (the unit-lengthscale :class:`snnk.kernels.Gaussian`), centred before
        the expansion ``‖a‖² + ‖b‖² − 2aᵀb`` so that offsets do not cancel digits; computed
        here, without value checks, so that it traces under ``torch.compile``."""
        Zs = Z * self.r
        Zs = Zs - Zs.mean(-2, keepdim=True)
        sq = row_sq_norms(Zs)
        d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (Zs @ Zs.mT)
        return torch.exp(-0.5 * d2.clamp_min(0.0))

    def reg_inverse(self, A: torch.Tensor) -> torch.Tensor:
        """``(A + λI)⁻¹`` by :func:`snnk.solvers.spd_inverse` (analytic gradient); a failed
        inverse is reported as a ``ValueError`` naming the options that fix it."""
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        try:
            return spd_inverse(A + self.jitter * eye, self.pinv, self.max_iter, self.tol)
        except RuntimeError as exc:  # Newton–Schulz without convergence, or Cholesky failure
            raise ValueError(
                f"method={self.name!r}: the regularised inverse of the {A.shape[-1]} x "
                f"{A.shape[-1]} landmark Gram matrix failed with pinv={self.pinv!r}, "
                f"jitter={self.jitter:g} ({exc}); use pinv='solve', raise max_iter or tol, or "
                f"raise jitter"
            ) from exc

    def affine(self, Z):
        # x'ᵀz' − ‖z'‖²/2 with x' = r·x, z' = r·Z
        return Z * self.scale, -0.5 * self.scale * row_sq_norms(Z)


class Nystrom(LandmarkMethod):
    """``"nystrom"``: the Nyström projection of ``exp(qᵀk·scale)`` onto the landmarks, in the
    Gaussian form (the ``e^{‖x‖²/2}`` factor cancels in the row normalisation)."""

    name = "nystrom"
    stab = "scalar"
    has_affine = True
    has_finish = True
    landmarks = "kmeans"

    def key_map(self, x, Z):
        # log of exp(xᵀz)·e^{-‖z‖²/2} on scaled inputs
        Zs = Z * self.r
        return (x * self.r) @ Zs.mT - 0.5 * row_sq_norms(Zs).unsqueeze(-2)

    def inner(self, Z):
        return self.reg_inverse(self.gram(Z))


class NystromSnap(LandmarkMethod):
    r"""``"nystrom"`` (default form ``"snap"``): every key snapped to its nearest landmark.

    ``κ̂(q, k_j) = exp(qᵀz_{c(j)}·scale)`` with ``c(j)`` the landmark nearest to ``k_j``:
    key features are one-hot (``φ_k(k) = e_{c(k)}``), query features ``exp(qᵀZᵀ·scale)``,
    so ``Ô_i = Σ_l e^{q_iᵀz_l·scale} n_l v̄_l / Σ_l e^{q_iᵀz_l·scale} n_l`` (``n_l``, ``v̄_l``:
    size and value mean of cluster ``l``): positive weights, output in the convex hull of
    ``V``, exact when every key is its own landmark (``m = S``), error falling with ``m`` as
    the clusters shrink (clustered attention, Vyas et al., 2020). It replaces the projection
    ``K(Q, Z) K(Z, Z)⁻¹ K(Z, K)`` (``nystrom_form="projection"``), whose signed weights
    amplify by ``‖u_i‖₁ ≈ 10³–10⁴`` on pretrained activations (see ``docs/attention.md``).
    """

    name = "nystrom"
    stab = "scalar"
    landmarks = "kmeans"
    #: k-means steps: on MiniLM activations (L = 2,048, m = 256) 1 step gives 0.42, 3 steps
    #: 0.34, 5 steps 0.33 (relative output error)
    lloyd_steps = 5

    def key_map(self, x, Z):
        with torch.no_grad():
            lab = (row_sq_norms(Z).unsqueeze(-2) - 2.0 * (x @ Z.mT)).argmin(-1, keepdim=True)
            out = torch.full(
                (*lab.shape[:-1], Z.shape[-2]), float("-inf"), dtype=x.dtype, device=x.device
            )
            return out.scatter_(-1, lab, 0.0)

    def query_map(self, x, Z):
        return (x * self.scale) @ Z.mT


class SoftmaxFree(LandmarkMethod):
    """``"softmax-free"`` (SOFT): Gaussian-kernel attention with SOFT's symmetric
    normalisation ``D^{-1/2} (A + λI)⁻¹ D^{-1/2}``, no row normalisation."""

    name = "softmax-free"
    normalize = False
    max_log = 0.0
    has_affine = True
    has_finish = True
    key_sq = True
    query_sq = True

    def __init__(self, scale: float, num_landmarks: int, **kwargs):
        super().__init__(scale, num_landmarks, **kwargs)
        self.gamma = scale

    def key_map(self, x, Z):
        # log G(x, z) = -‖x - z‖²/2 (≤ 0: no stabilisation needed, no row shift)
        xs, Zs = x * self.r, Z * self.r
        d2 = row_sq_norms(xs).unsqueeze(-1) + row_sq_norms(Zs).unsqueeze(-2) - 2.0 * (xs @ Zs.mT)
        return -0.5 * d2.clamp_min(0.0)

    def inner(self, Z):
        A = self.gram(Z)
        dinv = A.sum(-1).rsqrt()
        return dinv.unsqueeze(-1) * self.reg_inverse(A) * dinv.unsqueeze(-2)


class Hermite(LandmarkMethod):
    """``"hermite"``: second-order Hermite expansion around each row's mean logit, the
    quadratic term compressed by Nyström onto ``m − 1 − E`` selected keys.

    ``Z = [selected keys; key mean]``. Quadratic features use the centred landmarks at unit
    norm: the quadratic kernel is homogeneous, so their scale does not change the
    projection, and the Gram matrix has a unit diagonal (a scale-free jitter).
    """

    name = "hermite"
    log_domain = False
    has_finish = True
    landmarks = "select"

    def directions(self, Z: torch.Tensor) -> torch.Tensor:
        return F.normalize(Z[..., :-1, :] - Z[..., -1:, :], dim=-1)

    @staticmethod
    def polynomial(xs, U, half: bool):
        """Features ``[1, x', c·p²]`` (``c = ½`` for queries, 1 for keys) and ``p = x'Uᵀ``."""
        p = xs @ U.mT
        quad = 0.5 * p.square() if half else p.square()
        return torch.cat([torch.ones_like(xs[..., :1]), xs, quad], -1), p

    #: ``(G + λI)⁻¹ ā`` (``ā`` the key mean of the quadratic key features), set by
    #: :meth:`finish`: ``a(q)ᵀ`` times it is the row's mean squared logit ``σ̂²``
    mean_quad: torch.Tensor | None = None
    #: whether some query row may have ``σ̂ > 1`` (decided once per call by :meth:`finish`;
    #: False only when a bound shows that every tempering factor is exactly 1)
    tempered: bool | None = None

    def __init__(self, scale: float, num_landmarks: int, *, query_norm=None, **kwargs):
        super().__init__(scale, num_landmarks, **kwargs)
        #: ``max_i ‖q_i‖`` of the call's queries, when known (:meth:`finish` bounds ``σ̂``)
        self.query_norm = query_norm

    def key_map(self, x, Z):
        return self.polynomial((x - Z[..., -1:, :]) * self.r, self.directions(Z), False)[0]

    def query_features(self, xs: torch.Tensor, U: torch.Tensor, need_p: bool = True):
        """Tempered query features ``f = [1, αx', (αp)²/2]`` with ``p = x'Uᵀ``.

        Returns ``(f, αp, αx', α)`` (``αp`` is None unless ``need_p``: only the backward
        uses it). The factor ``α = 1/max(1, σ̂)`` (detached) uses ``σ̂²``,
        the row's estimated mean squared (centred) logit. The expansion
        ``1 + t + (t² − E t²)/2`` is faithful for ``σ ≲ 1``; beyond, its weights grow like
        ``σ²`` and the output leaves the hull of ``V`` (1e5·max|V| at logits near 1e3).
        Queries are scaled by ``α`` there: the row becomes the expansion at temperature ``σ̂``
        (a softened attention) and its weights ``((αt + 1)² + 1 − α² E t²)/2`` stay
        non-negative up to the Nyström error. ``p`` and ``p²`` are formed once: ``σ̂²`` is
        ``p² · (G + λI)⁻¹ā``, one matrix-vector product per row block. When :meth:`finish`
        has shown ``σ̂ < 1`` for every row (:attr:`tempered` False), every ``α`` is 1 and
        the scaling is skipped (the same features, without three passes per block).
        """
        p = xs @ U.mT
        sq = p.square()
        one = torch.ones_like(xs[..., :1])
        if self.mean_quad is None or self.tempered is False:
            return torch.cat([one, xs, 0.5 * sq], -1), p, xs, 1.0
        with torch.no_grad():
            var = sq.detach() @ self.mean_quad.unsqueeze(-1)
            alpha = var.clamp_min(1.0).rsqrt()
        xs = xs * alpha
        f = torch.cat([one, xs, (0.5 * alpha.square()) * sq], -1)
        return f, (p * alpha if need_p else None), xs, alpha

    def _may_temper(self, U: torch.Tensor, mean: torch.Tensor) -> bool:
        """False when no query row can have ``σ̂ > 1`` (every ``α`` is then exactly 1).

        ``σ̂_i² = p_i² · w = x_i'ᵀ M x_i'`` with ``M = Uᵀ diag(w) U`` (``w`` = :attr:`mean_quad`),
        so ``σ̂_i² <= ‖M‖_F·‖x_i'‖² = ‖M‖_F·scale·‖q_i‖²``; below 0.99 (a margin for the
        rounding of ``σ̂²``) the factor ``clamp_min(σ̂², 1)^{-1/2}`` is 1 in every row.
        """
        if self.query_norm is None or torch.compiler.is_compiling():
            return True
        M = (U.mT * mean.unsqueeze(-2)) @ U
        bound = float(torch.linalg.matrix_norm(M).amax()) * self.scale * self.query_norm**2
        return not bound <= 0.99

    def query_map(self, x, Z):
        return self.query_features(x * self.r, self.directions(Z), need_p=False)[0]

    def finish(self, Z, Ssum, zsum):
        E = Z.shape[-1]
        n = zsum[..., :1]
        safe = torch.where(n > 0, n, torch.ones_like(n))
        S0 = Ssum[..., :1, :]
        # Centre the linear and quadratic sums on the (weighted) key mean: subtracting
        # z_w·S0/n makes Σ_j ω_j φ_w(k_j) = 0 for every feature w > 0, so the normaliser
        # is exactly n (the total key weight) and the estimate is a Hermite expansion
        # around each row's mean logit.
        cen = Ssum[..., 1:, :] - zsum[..., 1:].unsqueeze(-1) * (S0 / safe.unsqueeze(-1))
        U = self.directions(Z)
        inv = self.reg_inverse((U @ U.mT).square())
        quad = inv @ cen[..., E:, :]
        mean = (inv @ (zsum[..., 1 + E :] / safe).unsqueeze(-1))[..., 0]
        self.mean_quad = mean.detach()
        if self.tempered is None:  # once per call (backward calls finish again)
            with torch.no_grad():
                self.tempered = self._may_temper(U.detach(), self.mean_quad)
        B = torch.cat([S0, cen[..., :E, :], quad], -2)
        b = torch.cat([n, torch.zeros_like(zsum[..., 1:])], -1)
        return B, b

    def backward(self, ctx, g):
        return hermite_backward(ctx, g)


_LANDMARK_CLASSES = {"nystrom": Nystrom, "hermite": Hermite, "softmax-free": SoftmaxFree}
#: forms of ``"nystrom"``: the convex snapped estimate (default) or the signed projection
NYSTROM_FORMS = ("snap", "projection")


def make_method(
    method: str,
    scale: float,
    *,
    feature_map: PositiveFeatures | None = None,
    num_landmarks: int = 1,
    jitter: float = 1e-3,
    pinv: str = "solve",
    max_iter: int = 100,
    tol: float = 1e-10,
    landmarks: str | None = None,
    nystrom_form: str = "snap",
    query_norm: float | None = None,
) -> AttentionMethod:
    """The method object for ``method`` (arguments already validated by the caller);
    ``query_norm`` (``max_i ‖q_i‖``, when known) lets ``"hermite"`` skip its tempering where
    a bound shows it is the identity."""
    if method == "favor+":
        return FavorPlus(scale, feature_map)
    if method == "linear":
        return Linear(scale)
    cls = _LANDMARK_CLASSES[method]
    if method == "nystrom" and nystrom_form == "snap":
        cls = NystromSnap
    extra = {"query_norm": query_norm} if cls is Hermite else {}
    return cls(
        scale,
        num_landmarks,
        jitter=jitter,
        pinv=pinv,
        max_iter=max_iter,
        tol=tol,
        landmarks=landmarks,
        **extra,
    )
