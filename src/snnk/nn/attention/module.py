r"""The module, :class:`KernelAttention`: a drop-in for ``nn.MultiheadAttention``.

Constructor contract (stable; relied on by model conversion)
------------------------------------------------------------
``KernelAttention(embed_dim=H·E, num_heads=H, method, *, num_features=m, window=w, seed=s,
scale=None, ...)`` builds ``H`` heads of dimension ``E``. The existing call
``KernelAttention(embed_dim, num_heads, method="favor+", batch_first=True, ...)`` is unchanged.

Methods and their trainable parameters:

* ``"favor+"``, ``"nystrom"``, ``"hermite"``, ``"softmax-free"``, ``"linear"``: no attention
  parameters (``"favor+"`` holds its random draw as the buffer
  ``feature_map.projection.weight``).
* ``"hybrid"`` (``window`` default 64): exact softmax over keys with ``|i − j| < window``
  (causal: ``0 <= i − j < window``) plus a learned positive kernel for all other keys, one
  shared normaliser (:mod:`.hybrid`). ``window >= L`` is exact attention.
  With ``far_kernel="nystrom"`` the far keys use the snapped landmark kernel instead
  (``num_features`` query-weighted k-means landmarks per sequence with the second-moment
  factor and a rank-``value_rank`` first-order value correction, default 4; bidirectional
  only): the most faithful choice without training. ``module.feature_map`` is then a
  :class:`~snnk.nn.attention.learned.LearnedSnapMap` whose parameters (``weight (H, E, E)``,
  ``spread``, ``bias``, ``value_gain`` of shape ``(H,)``) start at the parameter-free
  estimator and are trained like the learned maps.
* ``"hedgehog"``: the learned kernel alone (``window`` must be 0 or None).

For both learned methods ``module.feature_map`` is a
:class:`~snnk.nn.attention.learned.LearnedFeatureMap` whose four ``nn.Parameter`` s
(``weight_q``, ``weight_k`` of shape ``(H, m, E)``, ``bias_q``, ``bias_k`` of shape
``(H, m)``; ``m = num_features``, even) are the only attention parameters;
:meth:`KernelAttention.feature_parameters` lists them (empty for the other methods). They
start at FAVOR+ features (an unbiased estimate of ``exp(qᵀk·scale)``), so an untrained
hybrid is already a sensible estimate; :func:`snnk.nn.attention.fit_feature_map` trains them
on captured ``q, k, v``.

Calls:

* ``forward(x, key=None, value=None, key_padding_mask=None, attn_mask=None,
  is_causal=None)``: ``(B, L, H·E)`` inputs through the module's own ``q/k/v/out``
  projections, as ``nn.MultiheadAttention``; returns ``(out, None)``.
* ``attend(q, k, v, key_padding_mask=None, attn_mask=None, is_causal=None)``: the attention
  alone on already projected per-head tensors ``q (B, H, L, E)``, ``k (B, H, S, E)``,
  ``v (B, H, S, Ev)`` (after any rotary embedding; no scaling applied beforehand: the logit
  scale is ``scale``, default ``1/√E``); returns ``(B, H, L, Ev)``. This is the entry point
  for converting a pretrained model, whose own projections stay in place.

Masks: ``key_padding_mask`` is bool ``(B, S)``, True = padding (``nn.MultiheadAttention``'s
convention); ``attn_mask`` must be the same for every query: bool ``(B, 1, S)`` / ``(B, H, 1,
S)`` with True = attend (SDPA's convention), or a float additive bias of those shapes (a
Hugging Face extended mask ``(B, 1, 1, S)`` with ``0``/``-inf``/large-negative entries works
as is). Bidirectional by default; ``is_causal=True`` (constructor default or per call) makes
query ``i`` see keys ``j <= i`` (methods ``"favor+"``, ``"linear"``, ``"hybrid"``,
``"hedgehog"``). A method outside its regime emits one
:class:`~snnk.nn.attention.regime.AttentionRegimeWarning` per module.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from snnk._utils import check_in, check_positive_int
from snnk._utils.random import make_generator, numpy_seed_from
from snnk.features import PositiveFeatures
from snnk.nn.attention.decoding import DecodingState
from snnk.nn.attention.functional import hybrid_attention, kernel_attention
from snnk.nn.attention.hybrid import FAR_KERNELS, check_window
from snnk.nn.attention.learned import LearnedFeatureMap, LearnedSnapMap
from snnk.nn.attention.methods import CAUSAL_METHODS, LEARNED_METHODS, METHODS
from snnk.nn.attention.regime import regime_message, warn_regime
from snnk.nn.attention.snap import VALUE_RANK


class KernelAttention(nn.Module):
    r"""Multi-head kernel attention, a drop-in for ``nn.MultiheadAttention``.

    ``out = W_o · concat_h kernel_attention(W_q^h x_q, W_k^h x_k, W_v^h x_v)``; see
    :func:`kernel_attention` for the methods. ``forward`` returns ``(output, None)`` like
    ``nn.MultiheadAttention`` with ``need_weights=False`` (attention weights are never formed).

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be divisible by ``num_heads``; the head dimension is the quotient.
    method : str, default "favor+"
        One of ``"favor+"``, ``"nystrom"``, ``"hermite"``, ``"softmax-free"``, ``"linear"``,
        ``"hybrid"``, ``"hedgehog"``; see the module docstring for the learned methods
        ``"hybrid"`` and ``"hedgehog"``.
    batch_first : bool, default True
        Inputs ``(B, L, embed_dim)``; False means ``(L, B, embed_dim)``.
    num_features : int, default 256
        Random features or landmarks (see :func:`kernel_attention`); the learned methods'
        feature count ``m`` (rounded up to even).
    window : int, optional
        ``"hybrid"`` only (default 64): keys at distance ``< window`` attend exactly.
    bias : bool, default True
    kdim, vdim : int, optional
        Key/value input widths (default ``embed_dim``).
    dropout : float, default 0.0
        Dropout on the output projection's input (attention weights do not exist).
    is_causal : bool, default False
        Default for ``forward``'s ``is_causal``.
    redraw_interval : int, optional
        ``"favor+"`` only: redraw the random features every ``redraw_interval`` forward calls
        in training mode (never in eval mode). Default None: never redraw implicitly;
        :meth:`resample` redraws on demand.
    seed : int, torch.Generator or None, default None
        Seeds the feature draws *and* the initial weights (the global RNG is never used).
    **attention_kwargs
        ``jitter``, ``pinv``, ``max_iter``, ``tol``, ``chunk_size``, ``landmarks``, ``scale``
        of :func:`kernel_attention` (the learned methods use ``chunk_size`` and ``scale``).

    Notes
    -----
    Buffers: ``feature_map.projection.weight`` (``"favor+"``), saved in ``state_dict``, and
    ``num_redraws``; the learned methods' ``feature_map.*`` parameters are in ``state_dict``
    too; loading a state dict reproduces outputs bit for bit.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        method: str = "favor+",
        batch_first: bool = True,
        *,
        num_features: int = 256,
        window: int | None = None,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        is_causal: bool = False,
        redraw_interval: int | None = None,
        seed: int | torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **attention_kwargs,
    ):
        super().__init__()
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}; the head "
                f"dimension is embed_dim // num_heads"
            )
        self.method = check_in(method, "method", METHODS + LEARNED_METHODS)
        self.window = self._check_window_option(method, window)
        if is_causal and method not in CAUSAL_METHODS + LEARNED_METHODS:
            raise ValueError(
                f"method={method!r} cannot be causal (its landmarks see the future); use one of "
                f"{list(CAUSAL_METHODS + LEARNED_METHODS)}"
            )
        unknown = set(attention_kwargs) - {
            "jitter",
            "pinv",
            "max_iter",
            "tol",
            "chunk_size",
            "landmarks",
            "scale",
            "nystrom_form",
            "far_kernel",
            "value_rank",
        }
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}")
        snap = self._check_far_kernel(method, is_causal, attention_kwargs)
        self.head_dim = embed_dim // num_heads
        self.batch_first, self.is_causal = bool(batch_first), bool(is_causal)
        self.num_features = check_positive_int(num_features, "num_features")
        if redraw_interval is not None:
            redraw_interval = check_positive_int(redraw_interval, "redraw_interval")
        self.redraw_interval = redraw_interval
        if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.attention_kwargs = attention_kwargs
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.generator, self.seed = make_generator(seed)
        fk = {"device": device if device is not None else "cpu", "dtype": dtype}
        # skip_init: nn.Linear would draw from the global RNG; reset_parameters draws instead.
        lin = nn.utils.skip_init
        self.q_proj = lin(nn.Linear, embed_dim, embed_dim, bias=bias, **fk)
        self.k_proj = lin(nn.Linear, self.kdim, embed_dim, bias=bias, **fk)
        self.v_proj = lin(nn.Linear, self.vdim, embed_dim, bias=bias, **fk)
        self.out_proj = lin(nn.Linear, embed_dim, embed_dim, bias=bias, **fk)
        self.feature_map = None
        if method == "favor+":
            self.feature_map = PositiveFeatures(
                self.head_dim,
                num_features,
                seed=numpy_seed_from(self.generator),
                dtype=dtype,
                device=device,
            )
        elif snap:
            self.feature_map = LearnedSnapMap(
                num_heads,
                self.head_dim,
                num_features,
                scale=attention_kwargs.get("scale"),
                value_rank=attention_kwargs.get("value_rank", VALUE_RANK),
                dtype=dtype,
                device=device,
            )
        elif method in LEARNED_METHODS:
            self.feature_map = LearnedFeatureMap(
                num_heads,
                self.head_dim,
                num_features + num_features % 2,
                scale=attention_kwargs.get("scale"),
                seed=numpy_seed_from(self.generator),
                dtype=dtype,
                device=device,
            )
        self._regime_warned = False
        self.register_buffer("num_redraws", torch.zeros((), dtype=torch.long, device=device))
        self._calls = 0
        self._init_weights()

    def reset_parameters(self) -> None:
        """Initialise everything: the ``"favor+"`` features, ``num_redraws`` and the
        projection weights (see :meth:`_init_weights`).

        With an int ``seed`` the generator restarts from it, so the module is bit-identical
        to a freshly built one: ``KernelAttention(..., device="meta")`` followed by
        ``to_empty(device="cpu")`` and ``reset_parameters()`` equals
        ``KernelAttention(..., device="cpu")``.
        """
        if self.seed is not None:
            self.generator = make_generator(self.seed)[0]
        if isinstance(self.feature_map, LearnedFeatureMap):
            self.feature_map.seed = numpy_seed_from(self.generator)
            self.feature_map.reset_parameters()
        elif isinstance(self.feature_map, LearnedSnapMap):
            self.feature_map.reset_parameters()
        elif self.feature_map is not None:
            self.feature_map.resample(numpy_seed_from(self.generator))
        with torch.no_grad():
            self.num_redraws.zero_()
        self._calls = 0
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform projection weights and zero biases, as ``nn.MultiheadAttention``,
        drawn from the module's generator."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            fan_in, fan_out = lin.weight.shape[1], lin.weight.shape[0]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = (torch.rand(lin.weight.shape, generator=self.generator) * 2 - 1) * bound
            with torch.no_grad():
                lin.weight.copy_(w.to(lin.weight.dtype))
                if lin.bias is not None:
                    lin.bias.zero_()

    def redraw_features(self, seed: int | torch.Generator | None = None) -> None:
        """Deprecated alias of :meth:`resample` (the redraw verb of every snnk module)."""
        warnings.warn(
            "KernelAttention.redraw_features is deprecated; use resample(seed)",
            FutureWarning,
            stacklevel=2,
        )
        self.resample(seed)

    def resample(self, seed: int | torch.Generator | None = None) -> None:
        """Draw new ``"favor+"`` features (in place, same shapes). Without ``seed`` the next
        seed comes from the module's own generator, so a sequence of redraws is reproducible.
        The learned methods' trained maps are left alone (use ``reset_parameters``).
        """
        if self.feature_map is None or isinstance(
            self.feature_map, LearnedFeatureMap | LearnedSnapMap
        ):
            return
        if seed is None:
            seed = numpy_seed_from(self.generator)
        self.feature_map.resample(seed)
        self.num_redraws += 1

    @staticmethod
    def _check_far_kernel(method: str, is_causal: bool, kwargs: dict) -> bool:
        """Whether the far keys use the snapped landmark kernel (``far_kernel="nystrom"``);
        ``far_kernel`` and ``value_rank`` checked against the method."""
        far = kwargs.get("far_kernel")
        if far is not None and method not in LEARNED_METHODS:
            raise ValueError(
                f"far_kernel applies to the methods {list(LEARNED_METHODS)}, not to "
                f"method={method!r}; drop far_kernel"
            )
        if far is not None:
            check_in(far, "far_kernel", FAR_KERNELS)
        if "value_rank" in kwargs and far != "nystrom":
            raise ValueError(
                "value_rank is the rank of the snapped far field's value correction; it "
                "needs far_kernel='nystrom'"
            )
        if far == "nystrom" and is_causal:
            raise ValueError(
                "far_kernel='nystrom' is bidirectional only (its clusters see every key); use "
                "far_kernel='learned' with is_causal=True"
            )
        return far == "nystrom"

    @staticmethod
    def _check_window_option(method: str, window) -> int | None:
        if method == "hybrid":
            return 64 if window is None else check_window(window)
        if method == "hedgehog":
            if window not in (None, 0):
                raise ValueError(
                    f"method='hedgehog' is the learned kernel without a window; got "
                    f"window={window!r}: use method='hybrid' for an exact window"
                )
            return 0
        if window is not None:
            raise ValueError(
                f"window={window!r} applies to method='hybrid' only, not to method={method!r}"
            )
        return None

    def feature_parameters(self) -> list[nn.Parameter]:
        """The trainable attention parameters (the learned feature maps; empty list for
        methods without them). Projections are not included."""
        if isinstance(self.feature_map, LearnedFeatureMap | LearnedSnapMap):
            return list(self.feature_map.parameters())
        return []

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, -1).transpose(1, 2)

    def _check_input(self, x, name: str, width: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            layout = "(B, L, E)" if self.batch_first else "(L, B, E)"
            raise ValueError(
                f"{name} must be a 3-d tensor shaped {layout} (batch_first={self.batch_first}), "
                f"got {getattr(x, 'shape', type(x).__name__)}"
            )
        if x.shape[-1] != width:
            raise ValueError(
                f"{name} has last dimension {x.shape[-1]}, expected {width} (embed_dim/kdim/vdim)"
            )
        if x.device != self.q_proj.weight.device:
            raise ValueError(
                f"{name} is on device {x.device} but the module is on "
                f"{self.q_proj.weight.device}; move one of them (module.to({str(x.device)!r}))"
            )
        dt = self.q_proj.weight.dtype
        if x.dtype != dt and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{name} has dtype {x.dtype} but the module's weights are {dt}; cast the input "
                f"({name}.to({dt})), the module (.to({x.dtype})), or run under torch.autocast"
            )
        return x if self.batch_first else x.transpose(0, 1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, all or nothing: entries of the wrong shape, and
        (with ``strict``) missing or unexpected keys, raise a ``ValueError`` naming them
        before anything is copied, and any later failure restores the previous state."""
        own = self.state_dict()
        wrong = [
            f"{key}: {tuple(val.shape)} (module holds {tuple(own[key].shape)})"
            for key, val in state_dict.items()
            if key in own and isinstance(val, torch.Tensor) and val.shape != own[key].shape
        ]
        missing = sorted(set(own) - set(state_dict)) if strict else []
        unexpected = sorted(set(state_dict) - set(own)) if strict else []
        if wrong or missing or unexpected:
            raise ValueError(
                f"state dict does not fit this KernelAttention (embed_dim={self.embed_dim}, "
                f"num_heads={self.num_heads}, method={self.method!r}, num_features="
                f"{self.num_features}): wrong shape {wrong}, missing {missing}, unexpected "
                f"{unexpected}; build the module with the arguments it was saved with"
            )
        backup = {key: val.detach().clone() for key, val in own.items()}
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except Exception:
            super().load_state_dict(backup, strict=False)
            raise

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool | None = None,
    ) -> tuple[torch.Tensor, None]:
        """``(B, L, E) -> ((B, L, E), None)``; ``key``/``value`` default to ``query``.

        ``key_padding_mask`` is ``(B, S)`` bool (True = padding); ``attn_mask`` may be
        ``(S,)``-style ``(1, S)`` or ``(B·H or B, 1, S)`` (see :func:`kernel_attention`).
        """
        if need_weights:
            raise ValueError(
                "KernelAttention never forms the L x S attention matrix; call it with "
                "need_weights=False (nn.MultiheadAttention's default is True)"
            )
        key = query if key is None else key
        value = key if value is None else value
        q_in = self._check_input(query, "query", self.embed_dim)
        k_in = self._check_input(key, "key", self.kdim)
        v_in = self._check_input(value, "value", self.vdim)
        B, S = k_in.shape[0], k_in.shape[1]
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.shape != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = {(B, S)}, got "
                    f"{getattr(key_padding_mask, 'shape', type(key_padding_mask).__name__)}"
                )
            key_padding_mask = key_padding_mask[:, None, :]
        if attn_mask is not None and isinstance(attn_mask, torch.Tensor):
            if attn_mask.ndim == 3 and attn_mask.shape[0] == B * self.num_heads:
                attn_mask = attn_mask.view(B, self.num_heads, *attn_mask.shape[1:])
            elif attn_mask.ndim == 3:
                attn_mask = attn_mask[:, None]
        if self.training and self.redraw_interval is not None:
            self._calls += 1
            if self._calls % self.redraw_interval == 0:
                self.resample()
        q = self._heads(self.q_proj(q_in))
        k = self._heads(self.k_proj(k_in))
        v = self._heads(self.v_proj(v_in))
        o = self._attend(q, k, v, key_padding_mask, attn_mask, is_causal)
        o = o.transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], self.embed_dim)
        o = F.dropout(o, self.dropout, self.training)
        out = self.out_proj(o)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        """Attention on projected heads: ``q (B, H, L, E)``, ``k (B, H, S, E)``,
        ``v (B, H, S, Ev)`` -> ``(B, H, L, Ev)`` (no projections; see the module docstring).

        ``key_padding_mask`` is bool ``(B, S)`` (True = padding); ``attn_mask`` a per-key
        mask or bias ``(B, 1, S)``, ``(B, 1, 1, S)`` or ``(B, H, 1, S)``.
        """
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != self.num_heads:
                raise ValueError(
                    f"attend needs {name} shaped (B, H, L, E) with H={self.num_heads} heads, "
                    f"got {getattr(t, 'shape', type(t).__name__)}"
                )
        if q.shape[-1] != self.head_dim:
            raise ValueError(
                f"attend needs head dimension E={self.head_dim}, got q {tuple(q.shape)}"
            )
        B, S = k.shape[0], k.shape[2]
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.shape != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S) = {(B, S)}, got "
                    f"{getattr(key_padding_mask, 'shape', type(key_padding_mask).__name__)}"
                )
            key_padding_mask = key_padding_mask[:, None, :]
        if isinstance(attn_mask, torch.Tensor) and attn_mask.ndim == 3:
            attn_mask = attn_mask[:, None]
        return self._attend(q, k, v, key_padding_mask, attn_mask, is_causal)

    def _attend(self, q, k, v, key_padding_mask, attn_mask, is_causal):
        causal = self.is_causal if is_causal is None else bool(is_causal)
        scale = self.attention_kwargs.get("scale")
        if not self._regime_warned:
            msg = regime_message(
                self.method, q, k, scale if scale is not None else self.head_dim**-0.5
            )
            if msg is not None:
                self._regime_warned = True
                warn_regime(msg, stacklevel=4)
        if self.method in LEARNED_METHODS:
            return hybrid_attention(
                q,
                k,
                v,
                self.feature_map,
                attn_mask=attn_mask,
                key_padding_mask=key_padding_mask,
                is_causal=causal,
                window=self.window,
                scale=scale,
                chunk_size=self.attention_kwargs.get("chunk_size"),
                num_features=self.num_features,
                far_kernel=self.attention_kwargs.get("far_kernel", "learned"),
            )
        return kernel_attention(
            q,
            k,
            v,
            self.method,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=causal,
            num_features=self.num_features,
            feature_map=self.feature_map,
            regime_warning=False,
            **self.attention_kwargs,
        )

    def decoding_state(self) -> DecodingState:
        """A fresh :class:`DecodingState` for :meth:`step` (causal methods only)."""
        if self.method in LEARNED_METHODS:
            raise ValueError(
                f"method={self.method!r} has no incremental decoding state yet; run the full "
                f"causal pass (forward with is_causal=True)"
            )
        return DecodingState(self.method, feature_map=self.feature_map)

    def step(self, x: torch.Tensor, state: DecodingState) -> torch.Tensor:
        """Causal self-attention for new tokens ``x`` (``(B, T, E)`` if ``batch_first``)
        given the state of all earlier tokens; updates ``state`` in place."""
        x_in = self._check_input(x, "x", self.embed_dim)
        q = self._heads(self.q_proj(x_in))
        k = self._heads(self.k_proj(x_in))
        v = self._heads(self.v_proj(x_in))
        o = state.step(q, k, v).transpose(1, 2).reshape(*x_in.shape[:2], self.embed_dim)
        out = self.out_proj(o)
        return out if self.batch_first else out.transpose(0, 1)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, method={self.method!r}, "
            f"num_features={self.num_features}, window={self.window}, "
            f"batch_first={self.batch_first}, "
            f"is_causal={self.is_causal}, redraw_interval={self.redraw_interval}, seed={self.seed}"
        )
