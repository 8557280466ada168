"""Speed regression check: the timed operations of every benchmark, old tree against new.

Each round runs every workload once in a fresh process for the old source tree and once for
the new one, alternating which goes first; after ``--rounds`` rounds it prints, per workload,
the median time of each side and the ratio new/old. Both sides see the same data, sizes,
seeds and thread count, in the same session on the same machine.

The workloads are the operations the benchmarks of ``docs/benchmarks.md`` time, at the sizes
they use where those fit in a few seconds:

* kernel estimation (section 1): exact Gram matrices (Gaussian, Matérn) in float32/float64;
* feature-map throughput (section 2): Fourier (orthogonal, structured) and arc-cosine maps;
* bundling (section 3): ``BundledClassifier`` fit on scikit-learn's digits;
* kernel machines (section 4): ``RandomFeatureRidge`` (fixed alpha and GCV), the classifier
  (squared and logistic loss), ``NystromRidge``, ``KernelRidgeCG``, ``RandomFeatureGP``;
* adapters (section 5): ``SNNKLinear`` forward + backward;
* kernel attention (section 6): ``kernel_attention`` forward + backward for every method.

Usage::

    python benchmarks/regression.py --old HEAD~5          # a git revision of this repository
    python benchmarks/regression.py --old-src /path/to/old/src --rounds 3

Short steps that allocate large blocks (``SNNKLinear``, attention) also measure glibc's
heap state: whether a freed multi-MB block is trimmed back to the system (and its pages
faulted in again by the next call) depends on everything the process allocated before,
which differs between the trees although the steps run the same operations.
``--fixed-malloc`` gives both children the same malloc thresholds (no trimming), so the
ratio compares the code alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# -- the workloads (run inside the child process) ------------------------------------------------


def _time(fn, repeat: int = 3, budget: float = 1.0) -> float:
    """Best of at least ``repeat`` calls, repeated until ``budget`` seconds are spent.

    The minimum is the estimate least moved by other jobs on a shared machine; short
    workloads (a few ms) get many calls, long ones ``repeat``.
    """
    fn()  # warm-up (allocations, lazy imports, first-call dispatch)
    best = []
    start = time.perf_counter()
    while len(best) < repeat or (time.perf_counter() - start < budget and len(best) < 50):
        t = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t)
    return min(best)


def _workloads():
    import warnings

    import numpy as np
    import torch

    warnings.simplefilter("ignore")
    from snnk import features, kernels

    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    out = {}

    # 1. kernel estimation: exact Gram matrices
    X32 = torch.randn(3000, 20, generator=g)
    X64 = X32.double()
    out["gram gaussian f32 3000x3000 d=20"] = lambda: kernels.Gaussian(4.0)(X32)
    out["gram gaussian f64 3000x3000 d=20"] = lambda: kernels.Gaussian(4.0)(X64)
    out["gram matern1.5 f64 3000x3000 d=20"] = lambda: kernels.Matern(1.5, 4.0)(X64)

    # 2. feature-map throughput
    Xi = torch.randn(8192, 784, generator=g)
    four = features.FourierFeatures(kernels.Gaussian(10.0), 784, 2048, seed=0)
    struct = features.FourierFeatures(
        kernels.Gaussian(10.0), 784, 2048, sampler="structured", seed=0
    )
    arc = features.ArcCosineFeatures(784, 2048, 1, seed=0)
    out["fourier orthogonal 8192x784->2048"] = lambda: four(Xi)
    out["fourier structured 8192x784->2048"] = lambda: struct(Xi)
    out["arccosine 8192x784->2048"] = lambda: arc(Xi)

    # 3. bundling
    from sklearn.datasets import load_digits

    from snnk.models import (
        BundledClassifier,
        KernelRidgeCG,
        NystromRidge,
        RandomFeatureClassifier,
        RandomFeatureGP,
        RandomFeatureRidge,
    )

    Xd, yd = load_digits(return_X_y=True)
    Xd = Xd / 16.0
    out["bundled classifier digits"] = lambda: BundledClassifier(random_state=0).fit(Xd, yd)

    # 4. kernel machines (reference problem of section 4: d = 20)
    n, d = 20_000, 20
    Xr = rng.standard_normal((n, d))
    yr = np.sin(Xr[:, 0]) + 0.1 * rng.standard_normal(n)
    yc = (Xr[:, 0] + Xr[:, 1] > 0).astype(int) + (Xr[:, 2] > 1)
    rf = dict(kernel="gaussian", lengthscale=4.0, num_features=2048, random_state=0)
    out["rf ridge n=20k D=2048 alpha=1e-2"] = lambda: RandomFeatureRidge(alpha=1e-2, **rf).fit(
        Xr, yr
    )
    out["rf ridge n=20k D=2048 alpha=gcv"] = lambda: RandomFeatureRidge(alpha="gcv", **rf).fit(
        Xr, yr
    )
    out["rf classifier squared n=20k D=2048"] = lambda: RandomFeatureClassifier(
        loss="squared", alpha=1e-2, **rf
    ).fit(Xr, yc)
    rf_small = dict(rf, num_features=512)
    out["rf classifier log n=5k D=512"] = lambda: RandomFeatureClassifier(
        loss="log", alpha=1e-2, **rf_small
    ).fit(Xr[:5000], yc[:5000])
    ny = dict(kernel="gaussian", lengthscale=4.0, alpha=1e-2, num_centers=1000, random_state=0)
    out["nystrom ridge n=20k M=1000"] = lambda: NystromRidge(**ny).fit(Xr, yr)
    Xk, yk = Xr[:5000], yr[:5000]
    out["kernel ridge CG n=5k M=500"] = lambda: KernelRidgeCG(**dict(ny, num_centers=500)).fit(
        Xk, yk
    )
    Xg, yg = Xr[:2000], yr[:2000]
    out["rf GP n=2k M=256"] = lambda: RandomFeatureGP(num_features=256, random_state=0).fit(Xg, yg)
    # like for like: the former default optimiser on both trees (the default changed to
    # "profile", a different algorithm that finds another optimum on this problem)
    out["rf GP n=2k M=256 lbfgs"] = lambda: RandomFeatureGP(
        num_features=256, optimizer="lbfgs", random_state=0
    ).fit(Xg, yg)

    # 5. adapters: an SNNK layer forward + backward
    from snnk.nn import SNNKLinear, kernel_attention

    layer = SNNKLinear(512, 512, activation="relu", num_features=64, seed=0)
    xa = torch.randn(4096, 512, generator=g)

    def snnk_step():
        layer.zero_grad()
        layer(xa).square().mean().backward()

    out["SNNKLinear relu 4096x512 fwd+bwd"] = snnk_step

    # 6. kernel attention forward + backward
    q, k, v = (torch.randn(1, 4, 4096, 64, generator=g) * 0.5 for _ in range(3))
    for method in ("favor+", "nystrom", "hermite", "softmax-free", "linear"):
        # hermite needs 1 + E + landmarks features (E = 64)
        feats = {} if method == "linear" else {"num_features": 128 if method == "hermite" else 64}

        def att(method=method, feats=feats):
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            kernel_attention(qq, kk, vv, method, **feats).square().mean().backward()

        out[f"attention {method} L=4096 fwd+bwd"] = att
    # like for like: the former Nyström algorithm on both trees (the default form became
    # "snap"; trees without the option have only the projection form)
    import inspect

    if "nystrom_form" in inspect.signature(kernel_attention).parameters:
        proj = {"num_features": 64, "nystrom_form": "projection"}
    else:
        proj = {"num_features": 64}

    def att_projection():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        kernel_attention(qq, kk, vv, "nystrom", **proj).square().mean().backward()

    out["attention nystrom projection L=4096 fwd+bwd"] = att_projection
    return out


def child(names: list[str] | None) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("SNNK_BENCH_THREADS", "2")))
    work = _workloads()
    res = {}
    for name, fn in work.items():
        if names and not any(s in name for s in names):
            continue
        try:
            res[name] = _time(fn)
        except Exception as exc:  # report, do not stop the other workloads
            res[name] = f"error: {type(exc).__name__}: {exc}"[:200]
    print(json.dumps(res))


# -- the driver ----------------------------------------------------------------------------------


def _export(rev: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="snnk-old-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src/snnk"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


#: glibc malloc settings of ``--fixed-malloc``: large blocks from the heap, never trimmed, so
#: that a block freed by one call serves the next without fresh (zeroed) pages
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 25), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _run(src: Path, names: list[str], fixed_malloc: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    if fixed_malloc:
        env.update(FIXED_MALLOC)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *names]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"benchmark child failed ({src}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", help="git revision of the old tree (default HEAD~1)")
    ap.add_argument("--old-src", type=Path, help="the old tree's src/ folder instead of --old")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=[], help="substrings of workload names")
    ap.add_argument("--child", nargs="*", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the raw times here")
    ap.add_argument(
        "--fixed-malloc",
        action="store_true",
        help="same glibc malloc thresholds in both children (no heap trimming): removes the "
        "page faults that depend on each process's allocation history, not on the code",
    )
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return
    old_src = args.old_src or _export(args.old or "HEAD~1")
    new_src = ROOT / "src"
    times: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        order = [("old", old_src), ("new", new_src)]
        if r % 2:
            order.reverse()
        for side, src in order:
            for name, t in _run(src, args.only, args.fixed_malloc).items():
                if isinstance(t, str):
                    errors[f"{side} {name}"] = t
                    continue
                times.setdefault(name, {"old": [], "new": []})[side].append(t)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'workload':<40} {'old (s)':>9} {'new (s)':>9} {'new/old':>8}")
    worst = 0.0
    for name, t in times.items():
        if not t["old"] or not t["new"]:
            continue
        o, n = statistics.median(t["old"]), statistics.median(t["new"])
        worst = max(worst, n / o)
        print(f"{name:<40} {o:>9.4f} {n:>9.4f} {n / o:>8.3f}")
    print(f"worst ratio new/old: {worst:.3f}")
    for k, v in errors.items():
        print(f"{k}: {v}")
    if args.json:
        args.json.write_text(json.dumps({"times": times, "errors": errors}, indent=1))


if __name__ == "__main__":
    main()
