r"""The module, :class:`KernelAttention`: a drop-in for ``nn.MultiheadAttention``."""

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
from snnk.nn.attention.functional import kernel_attention
from snnk.nn.attention.methods import CAUSAL_METHODS, METHODS


class KernelAttention(nn.Module):
    r"""Multi-head kernel attention, a drop-in for ``nn.MultiheadAttention``.

    ``out = W_o · concat_h kernel_attention(W_q^h x_q, W_k^h x_k, W_v^h x_v)``; see
    :func:`kernel_attention` for the methods. ``forward`` returns ``(output, None)`` like
    ``nn.MultiheadAttention`` with ``need_weights=False`` (attention weights are never formed).

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be divisible by ``num_heads``; the head dimension is the quotient.
    method : {"favor+", "nystrom", "hermite", "softmax-free", "linear"}, default "favor+"
    batch_first : bool, default True
        Inputs ``(B, L, embed_dim)``; False means ``(L, B, embed_dim)``.
    num_features : int, default 256
        Random features or landmarks (see :func:`kernel_attention`).
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
        ``jitter``, ``pinv``, ``max_iter``, ``tol``, ``chunk_size``, ``landmarks`` of
        :func:`kernel_attention`.

    Buffers: ``feature_map.projection.weight`` (``"favor+"``), saved in ``state_dict``, and
    ``num_redraws``; loading a state dict reproduces outputs bit for bit.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        method: str = "favor+",
        batch_first: bool = True,
        *,
        num_features: int = 256,
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
        self.method = check_in(method, "method", METHODS)
        if is_causal and method not in CAUSAL_METHODS:
            raise ValueError(
                f"method={method!r} cannot be causal (its landmarks see the future); use one of "
                f"{list(CAUSAL_METHODS)}"
            )
        unknown = set(attention_kwargs) - {
            "jitter",
            "pinv",
            "max_iter",
            "tol",
            "chunk_size",
            "landmarks",
        }
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}")
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
        if self.feature_map is not None:
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
        """
        if self.feature_map is None:
            return
        if seed is None:
            seed = numpy_seed_from(self.generator)
        self.feature_map.resample(seed)
        self.num_redraws += 1

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
        causal = self.is_causal if is_causal is None else bool(is_causal)
        q = self._heads(self.q_proj(q_in))
        k = self._heads(self.k_proj(k_in))
        v = self._heads(self.v_proj(v_in))
        o = kernel_attention(
            q,
            k,
            v,
            self.method,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=causal,
            num_features=self.num_features,
            feature_map=self.feature_map,
            **self.attention_kwargs,
        )
        o = o.transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], self.embed_dim)
        o = F.dropout(o, self.dropout, self.training)
        out = self.out_proj(o)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def decoding_state(self) -> DecodingState:
        """A fresh :class:`DecodingState` for :meth:`step` (causal methods only)."""
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
            f"num_features={self.num_features}, batch_first={self.batch_first}, "
            f"is_causal={self.is_causal}, redraw_interval={self.redraw_interval}, seed={self.seed}"
        )
