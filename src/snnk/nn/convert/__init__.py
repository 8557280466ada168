r"""Converting pretrained transformers to kernel (linear-cost) attention, reversibly.

:func:`linearize` swaps the softmax attention of every self-attention module of a Hugging Face
model (transformers >= 5: BERT family encoders, GPT-2 and other decoders) for
:class:`~snnk.nn.KernelAttention`'s attention on the module's own projected queries, keys
and values; :func:`unlinearize` gives the exact original model back (same modules,
``state_dict`` and outputs, bit for bit). For pretrained models use ``method="hybrid"``:

.. math::

    \hat o_i = \frac{\sum_{|i-j|<w} e^{s_{ij} - c_i} v_j + e^{-c_i}\,\phi_q(q_i)^\top
    \sum_{|i-j|\ge w} \phi_k(k_j) v_j^\top}{\sum_{|i-j|<w} e^{s_{ij} - c_i}
    + e^{-c_i}\,\phi_q(q_i)^\top \sum_{|i-j|\ge w} \phi_k(k_j)},

exact softmax inside a window of ``w`` keys and a learned positive kernel for the rest, one
shared normaliser; :func:`fit_attention` trains the feature maps ``φ_q, φ_k`` (and nothing
else) on unlabelled batches so that every layer reproduces its own softmax attention.
:func:`save_linearized` / :func:`load_linearized` store a conversion as JSON + safetensors.

Modules: ``hf`` (finding attention modules, the attention function registered in
transformers), ``linearize``, ``fit`` (attention transfer), ``persist``.
"""

from snnk.nn.convert.fit import FitReport, LayerFit, fit_attention
from snnk.nn.convert.linearize import (
    CONVERT_METHODS,
    AttentionCore,
    LinearizeConfig,
    feature_parameters,
    linearize,
    linearize_config,
    unlinearize,
)
from snnk.nn.convert.persist import load_linearized, save_linearized

__all__ = [
    "CONVERT_METHODS",
    "AttentionCore",
    "FitReport",
    "LayerFit",
    "LinearizeConfig",
    "feature_parameters",
    "fit_attention",
    "linearize",
    "linearize_config",
    "load_linearized",
    "save_linearized",
    "unlinearize",
]
