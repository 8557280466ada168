r"""SNNK adapters and uptraining for Hugging Face transformers (spec sections 5 and 6.2).

An **SNNK adapter** is a bottleneck adapter whose down-projection and nonlinearity are one
SNNK layer and whose up-projection is a zero-initialised per-channel gate:

.. math::

    a(x) = x + v \odot \Phi(x) \Psi^\top, \qquad
    \Phi(x) = D^{-1/2}\,\mathrm{ReLU}(G x) \in \mathbb{R}^D,

with a fixed random ``G ∈ R^{D×H}`` (orthogonal Gaussian rows, a persistent buffer), a
trainable ``Ψ ∈ R^{H×D}`` and a trainable gate ``v ∈ R^H`` that starts at zero, so the adapted
model equals the base model exactly at initialisation. It trains ``H·D + H`` numbers per
adapter: 6,912 for ``H = 768``, ``D = 8``, i.e. 165,888 for the 24 adapters of BERT-base.

:func:`add_adapters` places two adapters per block (Houlsby placement), at the output of the
attention block and of the feed-forward block, inside the residual branch:

* post-LN BERT family: ``LayerNorm(a(dropout(dense(h))) + residual)``;
* pre-LN ViT: ``h + a(o_proj(attention(LN(h))))`` and ``h + a(fc2(GELU(fc1(LN(h)))))`` (in
  transformers 5 the block's dropout, shared by both branches, follows the adapter; it is 0 in
  ViT checkpoints).

:func:`uptrain` replaces the first feed-forward layer ``GELU(W x + b)`` of the last ``k``
blocks by an :class:`~snnk.nn.SNNKLinear` initialised from ``W, b``.

transformers is never imported here: models are recognised by ``model.config.model_type`` and
their module layout, so ``import snnk`` does not need the ``snnk[hf]`` extra.

The package's modules: ``adapter`` (the :class:`SNNKAdapter` module and how it is attached),
``insert`` (:func:`add_adapters`, :func:`uptrain`, all or nothing), ``persist``
(:func:`save_adapters` / :func:`load_adapters`: atomic files, checked before the model is
touched), ``config`` / ``named`` / ``pretrained`` (PEFT-level named adapters:
:class:`AdapterConfig` with ``target_modules``, :func:`add_adapter`, :func:`set_adapter`,
:func:`disable_adapters`, :func:`delete_adapter`, :func:`unload_adapters`,
:func:`save_pretrained` / :func:`from_pretrained`), ``folder`` (the checked JSON + safetensors
folder format shared with :mod:`snnk.nn.convert`).
"""

from snnk.nn.adapters._layout import PLACEMENTS, SUPPORTED_ARCHITECTURES
from snnk.nn.adapters.adapter import AdaptedDropout, AdaptedLinear, SNNKAdapter
from snnk.nn.adapters.config import AdapterConfig
from snnk.nn.adapters.insert import UptrainReport, add_adapters, trainable_parameters, uptrain
from snnk.nn.adapters.named import (
    AdapterSlot,
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    enable_adapters,
    list_adapters,
    set_adapter,
    unload_adapters,
)
from snnk.nn.adapters.persist import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_state_dict,
    load_adapters,
    save_adapters,
)
from snnk.nn.adapters.pretrained import from_pretrained, save_pretrained

__all__ = [
    "CONFIG_NAME",
    "PLACEMENTS",
    "SUPPORTED_ARCHITECTURES",
    "WEIGHTS_NAME",
    "AdaptedDropout",
    "AdaptedLinear",
    "AdapterConfig",
    "AdapterSlot",
    "SNNKAdapter",
    "UptrainReport",
    "active_adapters",
    "adapter_state_dict",
    "add_adapter",
    "add_adapters",
    "delete_adapter",
    "disable_adapters",
    "enable_adapters",
    "from_pretrained",
    "list_adapters",
    "load_adapters",
    "save_adapters",
    "save_pretrained",
    "set_adapter",
    "trainable_parameters",
    "unload_adapters",
    "uptrain",
]
