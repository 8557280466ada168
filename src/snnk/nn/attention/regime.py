r"""Regime checks: one :class:`AttentionRegimeWarning` naming the measured statistic.

Each estimator of softmax attention is faithful only in a regime of its inputs; outside it
the output degrades silently (it stays finite and in the convex hull of ``V``). The checks
here measure the statistic that governs the degradation, in one cheap pass:

``"favor+"``
    ``ρ = max_i ‖q_i‖²·scale``: a positive random feature's relative variance grows like
    ``e^{2ρ}`` (the variance of one feature is ``exp(2s)(exp(‖q'+k'‖²) − 1)``), so ``m``
    features estimate a row faithfully only while ``e^{2ρ}/m`` is small. Warns for
    ``ρ > FAVOR_MAX`` (``= 4``; trained transformers have ``ρ ≈ 5–14``).
``"hermite"``
    ``σ = max_i (q_iᵀ C q_i·scale²)^{1/2}``, the largest row standard deviation of the logits
    (``C`` the key covariance): the second-order expansion is faithful for ``σ ≲ 1`` and is
    tempered beyond. Warns for ``σ > HERMITE_MAX`` (``= 2``). The rows are evaluated only
    when the bound ``‖C‖_F·max_i ‖q_i‖²·scale²`` of ``σ²`` does not settle it.
``"softmax-free"``
    ``τ = std_j(‖k_j‖²·scale/2)``: the Gaussian kernel ``exp(−‖q − k‖²·scale/2)`` equals the
    softmax kernel times the per-key factor ``exp(−‖k‖²·scale/2)`` (the query factor cancels
    only with row normalisation, which SOFT does not do), so it weights the keys like
    softmax only while key norms are alike. Warns for ``τ > SOFTMAX_FREE_MAX`` (``= 1``).

``"nystrom"`` (snap form) has positive weights and no such regime (its error falls with
``m``); its ``"projection"`` form is documented as unstable on peaked attention.

:class:`~snnk.nn.attention.KernelAttention` warns at most once per module instance; the
functional API warns through :func:`warnings.warn`, which Python's default filter shows once
per call site. Silence with ``warnings.simplefilter("ignore", AttentionRegimeWarning)``.
"""

from __future__ import annotations

import warnings

import torch

#: thresholds of the statistics (see the module docstring)
FAVOR_MAX = 4.0
HERMITE_MAX = 2.0
SOFTMAX_FREE_MAX = 1.0
#: keys used for the key covariance of the ``"hermite"`` check
HERMITE_KEYS = 1024


class AttentionRegimeWarning(UserWarning):
    """A kernel-attention method used outside the regime where it estimates softmax."""


def regime_message(
    method: str,
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    *,
    query_norm: float | None = None,
) -> str | None:
    """The warning text when ``method`` is outside its regime on ``q, k``, else None.

    ``query_norm``: ``max_i ‖q_i‖`` when the caller has read it already (the input check
    of :func:`~snnk.nn.attention.kernel_attention` does); computed here otherwise.
    """
    if q.numel() == 0 or q.device.type == "meta" or torch.compiler.is_compiling():
        return None
    with torch.no_grad():
        if method in ("favor+", "hermite") and query_norm is None:
            query_norm = float(torch.linalg.vector_norm(q.detach().float(), dim=-1).amax())
        if method == "favor+":
            rho = query_norm**2 * scale
            if rho > FAVOR_MAX:
                return (
                    f"method='favor+' is outside its regime: max ‖q‖²·scale = {rho:.3g} > "
                    f"{FAVOR_MAX:g}; positive random features have relative variance "
                    f"~exp(2·{rho:.3g}), so the output is close to an average of V rather "
                    f"than softmax attention. Use method='hybrid' (exact window + learned "
                    f"features) or 'hermite'/'nystrom', or fit the features (fit_feature_map)"
                )
        elif method == "hermite":
            # the key covariance from at most HERMITE_KEYS evenly strided keys (a
            # warning needs the statistic's size, not its last digit): the check then
            # costs one L x E x E product, about 3 % of a forward + backward
            stride = -(-k.shape[-2] // HERMITE_KEYS)
            kk = k.detach()[..., ::stride, :].float()
            kc = kk - kk.mean(-2, keepdim=True)
            C = kc.mT @ kc / max(1, kk.shape[-2])
            # σ_i² = q_iᵀ C q_i·scale² <= ‖C‖₂·‖q_i‖²·scale² (‖C‖₂ <= ‖C‖_F): when this bound
            # of every row is under the threshold no row can pass it, and the exact rows
            # (one L x E x E product) are not needed; the decision is the same either way
            bound = float(torch.linalg.matrix_norm(C).amax()) * (query_norm * scale) ** 2
            if bound <= 0.999 * HERMITE_MAX**2:
                return None
            qq = q.detach().float()
            var = ((qq @ C) * qq).sum(-1).amax()
            sigma = float(var.clamp_min(0.0).sqrt()) * scale
            if sigma > HERMITE_MAX:
                return (
                    f"method='hermite' is outside its regime: the largest logit row standard "
                    f"deviation is {sigma:.3g} > {HERMITE_MAX:g}; its second-order expansion "
                    f"is tempered there (a softened attention). Use method='hybrid' or "
                    f"'nystrom' for peaked attention"
                )
        elif method == "softmax-free":
            half = k.detach().float().square().sum(-1) * (0.5 * scale)
            tau = float(half.std(-1, correction=0).amax()) if k.shape[-2] > 1 else 0.0
            if tau > SOFTMAX_FREE_MAX:
                return (
                    f"method='softmax-free' is outside its regime: the key norms vary, "
                    f"std of ‖k‖²·scale/2 = {tau:.3g} > {SOFTMAX_FREE_MAX:g}; its Gaussian "
                    f"kernel then weights keys by exp(-‖k‖²·scale/2) unlike softmax. Use "
                    f"method='nystrom' or 'hybrid' to imitate softmax attention"
                )
    return None


def warn_regime(message: str | None, stacklevel: int = 3) -> None:
    if message is not None:
        warnings.warn(message, AttentionRegimeWarning, stacklevel=stacklevel)
