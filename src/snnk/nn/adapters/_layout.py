"""Where adapters go in each supported Hugging Face architecture (no transformers import)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

#: adapter placements: two per block (after attention and feed-forward) or one (feed-forward)
PLACEMENTS = ("houlsby", "pfeiffer")


@dataclass(frozen=True)
class _Layout:
    """Where things sit in one architecture (paths relative to the base model / a block).

    Each field lists candidate paths; the first that exists is used (transformers 5 renamed
    some ViT modules).
    """

    blocks: tuple[str, ...]
    attention_site: tuple[str, ...]
    ffn_site: tuple[str, ...]
    ffn_in: tuple[tuple[str, str], ...]
    norm: str


_BERT = _Layout(
    blocks=("encoder.layer",),
    attention_site=("attention.output.dropout",),
    ffn_site=("output.dropout",),
    ffn_in=(("intermediate.dense", "intermediate.intermediate_act_fn"),),
    norm="post",
)
ARCHITECTURES: dict[str, _Layout] = {
    "bert": _BERT,  # also MiniLM checkpoints such as all-MiniLM-L6-v2
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": _Layout(
        blocks=("transformer.layer",),
        attention_site=("attention.out_lin",),
        ffn_site=("ffn.dropout",),
        ffn_in=(("ffn.lin1", "ffn.activation"),),
        norm="post",
    ),
    "vit": _Layout(
        blocks=("layers", "encoder.layer"),
        attention_site=("attention.o_proj", "attention.output.dropout"),
        ffn_site=("mlp.fc2", "output.dropout"),
        ffn_in=(
            ("mlp.fc1", "mlp.activation_fn"),
            ("intermediate.dense", "intermediate.intermediate_act_fn"),
        ),
        norm="pre",
    ),
}

#: ``model.config.model_type`` values that :func:`add_adapters` and :func:`uptrain` accept
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def architecture(
    model: nn.Module, *, changes_structure: bool = False
) -> tuple[nn.Module, nn.Module, str, _Layout]:
    """``(model, base model, model_type, layout)``; raises for unsupported models."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if changes_structure and unwrap(model) is not model:
        raise ValueError(
            f"model is wrapped in {type(model).__name__}, which has already registered the "
            "parameters it synchronises; change the model first, then wrap it "
            "(add_adapters / uptrain / load_adapters on the bare model, then "
            "DistributedDataParallel(model))"
        )
    model = unwrap(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            "SNNK adapters support Hugging Face models with config.model_type in "
            f"{list(SUPPORTED_ARCHITECTURES)} (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MiniLM "
            f"checkpoints, which are 'bert', and ViT); got {type(model).__name__} with "
            f"model_type={model_type!r}"
        )
    base = getattr(model, "base_model", model)
    return model, base, model_type, ARCHITECTURES[model_type]


def first_path(root: nn.Module, candidates: tuple[str, ...], what: str) -> str:
    for path in candidates:
        try:
            root.get_submodule(path)
        except AttributeError:
            continue
        return path
    raise ValueError(
        f"could not find the {what} in {type(root).__name__} (looked for {list(candidates)}); "
        "this transformers version lays the model out differently"
    )


def layer_blocks(base: nn.Module, layout: _Layout) -> list[nn.Module]:
    return list(base.get_submodule(first_path(base, layout.blocks, "list of blocks")))


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition(".")
    return parent, name
