"""DP KDE query speed: the projection at equal error, and query time across d.

Run through ``benchmarks/private.py --part kde-speed`` (data loading lives there). Every
contender runs on the same torch / BLAS thread count (``--threads``, default 1), 1,000
float32 queries, times are medians of interleaved calls.

1. ``equal_error``: at d = 2,048 on the real embeddings, n = 2,000 training rows, Laplace
   noise (pure ε-DP), public n, ε in ``EPSILONS``: the unprojected sketch (``D`` in
   ``D_GRID``) and the projected ones (``projection="fourier"`` and ``"gaussian"``, ``k`` in
   ``K_GRID``, ``D`` in ``D_GRID``). Per config and seed: the map error ``a`` (noiseless
   sketch through the public map minus the exact average KDE, per query), the exact noise
   s.d. ``σ`` and the measured error of the noisy release; the *expected* error
   ``mean_q E|a + σZ|`` is what "equal error" compares (the measured one varies ±10-20 %
   from seed to seed because one noise vector serves all queries).
2. ``across_d``: query time at fixed ``D`` and ``k`` for d in ``D_SWEEP``, on Gaussian random
   maps of the real 2,304-dimensional layer concatenation to ``d`` dimensions (rows rescaled
   to norm 1): the data only sets the values, the time depends on the shapes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from _common import markdown_table, time_interleaved
from snnk.private import exact_kernel, private_kernel_sum

EPSILONS = (0.1, 0.3, 1.0)
D_GRID = (128, 256, 512, 1024, 1536, 2048)
K_GRID = (64, 128, 256, 512)
D_SWEEP = (256, 512, 1024, 2048, 4096)
REFERENCE_D = 2048  # the sketch length of the other KDE tables


def _configs():
    out = [("full", None, D) for D in D_GRID]
    out += [(p, k, D) for p in ("fourier", "gaussian") for k in K_GRID for D in D_GRID]
    return out


def _name(c) -> str:
    p, k, D = c
    return f"full d, D={D}" if k is None else f"{p} k={k}, D={D}"


def _build(X, ell, eps, c, seed):
    p, k, D = c
    kw = {} if k is None else {"projection_dim": k, "projection": p}
    return private_kernel_sum(
        X,
        kernel="gaussian",
        lengthscale=ell,
        epsilon=eps,
        num_features=D,
        public_n=len(X),
        random_state=seed,
        public_seed=1000 + seed,
        **kw,
    )


def equal_error(Z, train, Qidx, n, seeds, expected_abs):
    """Rows ``(ε, config, expected err, measured err, s.e., ms)`` for every config."""
    X, Q = Z[train[:n]], Z[Qidx]
    Q32 = Q.astype(np.float32)
    ell = float(np.median(np.linalg.norm(Q[:300, None] - Q[None, 300:600], axis=2)))
    exact = exact_kernel("gaussian", ell, torch.tensor(X), torch.tensor(Q)).mean(0).numpy()
    configs = _configs()
    maps = {c: [] for c in configs}  # per seed: the map error per query
    for s in range(seeds):
        for c in configs:
            r = _build(X, ell, math.inf, c, s)  # eps = inf: the sketch is the statistic
            maps[c].append(r.query(Q) - exact)
    timed = {c: _build(X, ell, 1.0, c, 0) for c in configs}
    times = time_interleaved(
        {c: (lambda r=r: r.query(Q32)) for c, r in timed.items()}, repeats=7, pause=0.02
    )
    rows = []
    for eps in EPSILONS:
        for c in configs:
            meas, expd = [], []
            for s in range(seeds):
                r = _build(X, ell, eps, c, s)
                meas.append(float(np.abs(r.query(Q32) - exact).mean()))
                sigma = float(r.query_noise_std()[0])
                expd.append(float(expected_abs(maps[c][s], sigma).mean()))
            ms = times[c][0] * 1e6 / len(Q)
            rows.append((eps, c, float(np.mean(expd)), float(np.mean(meas)), _se(meas), ms))
            print(eps, _name(c), *(f"{v:.4f}" for v in rows[-1][2:]), flush=True)
    return rows


def _se(v) -> float:
    return float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def summarise(rows):
    """Per ε and projection, against the unprojected ``D = 2,048`` sketch (target: its
    expected error ``e``), the fastest projected config with: (1) the same ``D`` and expected
    error ``≤ 1.1 e`` (the within-10 % rule of the table above); (2) ``D ∈ {1,536, 2,048}``
    and expected error ``≤ e`` (no worse: the smaller ``D`` pays for the projection's error
    with less Laplace noise); (3) tuned: the fastest unprojected config on the ``D`` grid with
    error ``≤ e`` against the fastest projected one on the whole grid."""
    out = []
    for eps in EPSILONS:
        sub = [r for r in rows if r[0] == eps]
        ref = next(r for r in sub if r[1] == ("full", None, REFERENCE_D))
        e = ref[2]
        best_full = _fastest(r for r in sub if r[1][1] is None and r[2] <= e)
        for kind in ("fourier", "gaussian"):
            own = [r for r in sub if r[1][0] == kind]
            rules = (
                ("same D, ≤ 1.1x err", ref, [r for r in own if r[1][2] == REFERENCE_D], 1.1),
                ("D ≥ 1,536, ≤ err", ref, [r for r in own if r[1][2] >= 1536], 1.0),
                ("tuned D (both)", best_full, own, 1.0),
            )
            for label, base, cand, tol in rules:
                best = _fastest(r for r in cand if r[2] <= tol * e)
                out.append(_summary_row(eps, label, kind, base, best))
    return out


def _fastest(rows):
    rows = list(rows)
    return min(rows, key=lambda r: r[5]) if rows else None


def _summary_row(eps, label, kind, base, best):
    if best is None:
        head = [eps, label, _name(base[1]), f"{base[2]:.4f}", f"{base[5]:.1f}"]
        return [*head, f"no {kind} config", "", "", ""]
    return [
        eps,
        label,
        _name(base[1]),
        f"{base[2]:.4f} / {base[3]:.4f} ± {base[4]:.4f}",
        f"{base[5]:.1f}",
        _name(best[1]),
        f"{best[2]:.4f} / {best[3]:.4f} ± {best[4]:.4f}",
        f"{best[5]:.1f}",
        f"**{base[5] / best[5]:.1f}x**",
    ]


def across_d(H, train, Qidx, n, D=2048, ks=(64, 256)):
    """Rows ``(d, ms unprojected, ms fourier k..., ms gaussian k...)`` at fixed D and k."""
    flat = H[:, ::-1, :].reshape(H.shape[0], -1).astype(np.float64)
    gen = np.random.default_rng(7)
    rows = []
    for d in D_SWEEP:
        G = gen.normal(size=(flat.shape[1], d)) / math.sqrt(d)
        Z = flat @ G
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
        X, Q32 = Z[train[:n]], Z[Qidx].astype(np.float32)
        rels = {"full d": _build(X, 1.0, 1.0, ("full", None, D), 0)}
        for p in ("fourier", "gaussian"):
            for k in ks:
                rels[f"{p} k={k}"] = _build(X, 1.0, 1.0, (p, k, D), 0)
        t = time_interleaved(
            {name: (lambda r=r, q=Q32: r.query(q)) for name, r in rels.items()},
            repeats=7,
            pause=0.02,
        )
        rows.append([d] + [f"{t[name][0] * 1e6 / len(Q32):.1f}" for name in rels])
        print(*rows[-1], flush=True)
    return rows, ["d"] + [f"{name} (ms)" for name in rels]


def run(Z, H, train, Qidx, seeds, expected_abs):
    """``--part kde-speed``: print the three tables."""
    rows = equal_error(Z, train, Qidx, 2000, seeds, expected_abs)
    head = ["ε", "config", "expected err", "measured err", "s.e.", "ms / 1,000 queries"]
    body = [[r[0], _name(r[1]), *(f"{v:.4f}" for v in r[2:5]), f"{r[5]:.1f}"] for r in rows]
    print(markdown_table(head, body))
    head = [
        "ε",
        "comparison",
        "unprojected",
        "expected / measured err",
        "ms",
        "fastest projected config meeting the rule",
        "expected / measured err",
        "ms",
        "speed-up",
    ]
    print(markdown_table(head, summarise(rows)))
    sweep, head = across_d(H, train, Qidx, 2000)
    print(markdown_table(head, sweep))
