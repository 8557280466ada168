"""Tiny randomly initialised Hugging Face models for the adapter and conversion tests: two
layers, hidden size 32, four heads, vocabulary 97. Nothing is downloaded."""

from __future__ import annotations

import torch


def tiny_bert(seed: int = 0, *, positions: int = 64, head: str | None = None, spiky=False):
    """A ``BertModel`` (``head="classification"``: ``BertForSequenceClassification`` with two
    labels) in eval mode. ``spiky`` scales the query and key weights by 6 and 3, giving
    pretrained-like attention (logit rows with a std of a few units)."""
    import transformers

    labels = {"num_labels": 2} if head == "classification" else {}
    config = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=positions,
        **labels,
    )
    torch.manual_seed(seed)
    cls = transformers.BertForSequenceClassification if head else transformers.BertModel
    model = cls(config).eval()
    if spiky:
        with torch.no_grad():
            for layer in model.encoder.layer:
                layer.attention.self.query.weight.mul_(6.0)
                layer.attention.self.key.weight.mul_(3.0)
    return model


def tiny_gpt2(seed: int = 0, *, positions: int = 64, **config):
    """A ``GPT2LMHeadModel`` in eval mode (``config``: further ``GPT2Config`` fields)."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=positions, **config
    )
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()
