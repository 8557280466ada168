"""Structured Gram algebra on lattices and digital nets: snnk.lattice vs QMCPy vs dense Cholesky.

What is timed (float64, CPU, one process; points generated beforehand and shared):

1. **Gram algebra**, for a shifted lattice with the SI kernel (alpha = 2) and an LMS+DS Sobol'
   net with the DSI kernel (alpha = 2), d in {1, 4, 16}, n = 2^10 ... 2^20, nugget 1e-8:
   first kernel column + eigenvalues + one solve + log-det.

   * ``snnk``: :class:`snnk.lattice.StructuredGram` (``eigenvalues``, ``solve``, ``logdet``);
   * ``qmcpy``: QMCPy 2.4's kernel on the same points, ``√n·fftbr`` / ``fwht``, ``ifftbr`` /
     ``fwht`` solve and ``Σ log λ`` (its documented recipe), on the identical point set;
   * ``dense``: Cholesky + triangular solves + log-det of the prebuilt n x n Gram (building it
     is not timed, which favours dense), in the sweep for n <= 2^12 (``--dense-max``) and
     timed once more at d = 4 for n = 2^13 and 2^14 (``--dense-once``; 2^14 needs 2 GiB).

   The three contenders of one configuration run interleaved (round robin after one warm-up;
   median of 3 rounds, of 5 for n <= 2^14 where calls take milliseconds; for n < 2^14 one
   timed call runs the work 2^14 / n times back to back and its time is divided by that, so
   that cold caches after the pause do not dominate millisecond calls). Reported: times,
   ratios, the relative difference of the solves, and the log-log slope of the snnk time over
   n = 2^12 ... 2^18 (least squares).

2. **Fast GP**: ``FastGP(...).fit()`` (L-BFGS on the per-dimension log-weights, profiled
   scale and mean) for n = 2^10 ... 2^18 in d = 4 on a smooth periodic function (lattice) and a
   smooth non-periodic one (net); fit time and relative L2 error on 1000 uniform test points.

Output: markdown tables on stdout and in ``--out/lattice.md``, the log-log plot ``--plot``
(default ``docs/lattice.png``). ``--quick`` shrinks the sizes for a smoke test.
Run heavy timings one at a time on a shared machine: ``flock /tmp/snnk-cpu.lock python
benchmarks/lattice.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import DEFAULT_OUT, time_interleaved
from snnk.lattice import DigitalNet, DSIKernel, FastGP, Lattice, SIKernel, StructuredGram

NUGGET = 1e-8


def _qmcpy():
    try:
        import qmcpy
        from qmcpy.fast_transform import fftbr, fwht, ifftbr
    except ImportError:
        return None
    return qmcpy, fftbr, ifftbr, fwht


def contenders(kind: str, d: int, m: int, y: torch.Tensor, qp, dense_max: int):
    """The timed callables of one configuration and a check of their answers."""
    n = 2**m
    if kind == "lattice":
        design, kernel = Lattice(d, seed=m), SIKernel(d, alpha=2)
    else:
        design, kernel = DigitalNet(d, seed=m), DSIKernel(d, alpha=2)
    pts = design(n)

    def ours():
        op = StructuredGram(kernel, pts, nugget=NUGGET)
        return op.solve(y), op.logdet()

    fns = {"snnk": ours}
    if qp is not None:
        qmcpy, fftbr, ifftbr, fwht = qp
        ynp = y.numpy()
        if kind == "lattice":
            qk = qmcpy.KernelShiftInvar(d=d, alpha=2)
            xnp = pts.x.numpy()

            def theirs():
                lam = math.sqrt(n) * fftbr(qk(xnp, xnp[:1])) + NUGGET
                return ifftbr(fftbr(ynp) / lam).real, np.log(np.abs(lam)).sum()
        else:
            qk = qmcpy.KernelDigShiftInvar(d=d, t=design.t, alpha=2)
            xb = pts.bits.numpy().astype(np.uint64)

            def theirs():
                lam = math.sqrt(n) * fwht(qk(xb, xb[:1])) + NUGGET
                return fwht(fwht(ynp) / lam), np.log(np.abs(lam)).sum()

        fns["qmcpy"] = theirs
    if m <= dense_max:
        gram = dense_gram(kernel, pts)

        def dense():
            chol = torch.linalg.cholesky(gram)
            sol = torch.cholesky_solve(y[:, None], chol)[:, 0]
            return sol, 2 * torch.log(torch.diagonal(chol)).sum()

        fns["dense"] = dense
    return fns


def dense_gram(kernel, pts) -> torch.Tensor:
    """The n x n Gram plus nugget, built in row blocks (the (rows, n, d) factors stay small)."""
    n, d = pts.n, pts.d
    data = pts.bits if pts.bits is not None else pts.x
    out = torch.empty(n, n, dtype=torch.float64)
    step = max(1, (1 << 23) // (n * d))
    for i in range(0, n, step):
        out[i : i + step] = kernel(data[i : i + step, None], data[None])
    out.diagonal().add_(NUGGET)
    return out


def agreement(results: dict) -> dict:
    """Relative difference of each contender's solve from snnk's."""
    ref = np.asarray(results["snnk"][0])
    return {
        k: float(np.linalg.norm(np.asarray(v[0]) - ref) / np.linalg.norm(ref))
        for k, v in results.items()
        if k != "snnk"
    }


def slope(ns, ts) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def run_algebra(args, qp) -> list[dict]:
    rows = []
    for kind in ("lattice", "net"):
        for d in args.dims:
            for m in range(args.m_min, args.m_max + 1):
                y = torch.randn(
                    2**m, generator=torch.Generator().manual_seed(m), dtype=torch.float64
                )
                fns = contenders(kind, d, m, y, qp, args.dense_max)
                answers = {k: f() for k, f in fns.items()}
                # millisecond calls are noisier on a shared machine: more rounds there, and
                # below 2^14 each timed call repeats the work (a lone ~1 ms call after the
                # pause measures cold caches and dispatch, not the algorithm)
                inner = max(1, 2 ** (14 - m))
                timed = {k: _repeated(f, inner) for k, f in fns.items()}
                timing = time_interleaved(timed, repeats=5 if m <= 14 else 3, warmup=1, pause=0.05)
                row = {"kind": kind, "d": d, "m": m}
                row.update({k: v[0] / inner for k, v in timing.items()})
                row.update({f"diff_{k}": v for k, v in agreement(answers).items()})
                rows.append(row)
                print(_fmt_row(row), flush=True)
    return rows


def _repeated(fn, times: int):
    """``fn`` called ``times`` times in a row (the timed unit for small n)."""

    def run():
        for _ in range(times):
            out = fn()
        return out

    return run


def _fmt_row(r: dict) -> str:
    parts = [f"{r['kind']:7s} d={r['d']:2d} n=2^{r['m']:<2d}", f"snnk {r['snnk'] * 1e3:9.2f} ms"]
    for k in ("qmcpy", "dense"):
        if k in r:
            parts.append(
                f"{k} {r[k] * 1e3:10.2f} ms (x{r[k] / r['snnk']:7.1f}, diff {r['diff_' + k]:.1e})"
            )
    return " | ".join(parts)


def dense_once(kind: str, d: int, m: int) -> tuple[float, float]:
    """One timed dense Cholesky + solve + log-det at n = 2^m (building excluded) and ours."""
    fns = contenders(kind, d, m, torch.ones(2**m, dtype=torch.float64), None, m)
    t = time.perf_counter()
    fns["dense"]()
    dense = time.perf_counter() - t
    fast = time_interleaved({"snnk": fns["snnk"]}, repeats=3)["snnk"][0]
    return dense, fast


def run_gp(args) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    xt = torch.rand(1000, 4, generator=gen, dtype=torch.float64)
    two_pi = 2 * math.pi

    def periodic(x):
        return torch.exp(
            0.3 * torch.sin(two_pi * x[:, 0])
            + 0.2 * torch.cos(two_pi * (x[:, 1] + x[:, 2] - x[:, 3]))
        )

    def smooth(x):
        return torch.exp(0.5 * x.sum(1)) * torch.sin(3 * x[:, 0] + 1)

    for kind, f in (("lattice", periodic), ("net", smooth)):
        for m in range(args.gp_min, args.gp_max + 1, 2):
            pts = (Lattice if kind == "lattice" else DigitalNet)(4, seed=1)(2**m)
            y = f(pts.x)
            t = time.perf_counter()
            gp = FastGP(pts, y, nugget=1e-8).fit(max_iter=50)
            fit = time.perf_counter() - t
            err = float(torch.linalg.vector_norm(gp.predict(xt) - f(xt)) / f(xt).norm())
            row = {"kind": kind, "m": m, "fit_s": fit, "rel_err": err}
            rows.append(row)
            print(f"GP {kind:7s} n=2^{m:<2d} fit {fit:7.2f} s  rel L2 error {err:.2e}", flush=True)
    return rows


def summarize(rows, gp_rows, d14, args) -> str:
    lines = [
        "## Gram algebra: first column + eigenvalues + one solve + log-det (median of 3, ms)",
        "",
    ]
    lines.append(
        "| design | d | n | snnk | qmcpy | dense | qmcpy/snnk | dense/snnk | diff qmcpy "
        "| diff dense |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, de = r.get("qmcpy"), r.get("dense")
        lines.append(
            f"| {r['kind']} | {r['d']} | 2^{r['m']} | {r['snnk'] * 1e3:.2f} | "
            + (f"{q * 1e3:.2f}" if q else "-")
            + " | "
            + (f"{de * 1e3:.1f}" if de else "-")
            + " | "
            + (f"{q / r['snnk']:.1f}" if q else "-")
            + " | "
            + (f"{de / r['snnk']:.0f}" if de else "-")
            + " | "
            + (f"{r['diff_qmcpy']:.1e}" if q else "-")
            + " | "
            + (f"{r['diff_dense']:.1e}" if de else "-")
            + " |"
        )
    lines += ["", "## log-log slope of the snnk time over n = 2^12 ... 2^18", ""]
    for kind in ("lattice", "net"):
        for d in args.dims:
            sel = [r for r in rows if r["kind"] == kind and r["d"] == d and 12 <= r["m"] <= 18]
            if len(sel) >= 2:
                s = slope([2 ** r["m"] for r in sel], [r["snnk"] for r in sel])
                lines.append(f"- {kind}, d = {d}: slope {s:.2f}")
    slower = [r for r in rows if "qmcpy" in r and r["snnk"] > r["qmcpy"]]
    lines += [
        "",
        f"snnk slower than QMCPy in {len(slower)} of {sum('qmcpy' in r for r in rows)} "
        "configurations",
    ]
    for (kind, m), (dense, fast) in d14.items():
        lines.append(
            f"- n = 2^{m}, d = 4, {kind} (timed once): dense Cholesky {dense:.2f} s, snnk "
            f"{fast * 1e3:.2f} ms, ratio {dense / fast:.0f}x"
        )
    lines += [
        "",
        "## Fast GP fit (d = 4, L-BFGS on log-weights)",
        "",
        "| design | n | fit (s) | rel. L2 error |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {g['kind']} | 2^{g['m']} | {g['fit_s']:.2f} | {g['rel_err']:.2e} |" for g in gp_rows
    ]
    return "\n".join(lines)


def plot(rows, path: Path, dims) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"snnk": "-", "qmcpy": "--", "dense": ":"}
    for ax, kind in zip(axes, ("lattice", "net"), strict=True):
        for d in dims:
            for who, ls in styles.items():
                sel = [r for r in rows if r["kind"] == kind and r["d"] == d and who in r]
                if sel:
                    ax.loglog(
                        [2 ** r["m"] for r in sel],
                        [r[who] for r in sel],
                        ls,
                        marker="o",
                        ms=3,
                        label=f"{who} d={d}",
                    )
        ax.set_title(f"{'lattice + SI' if kind == 'lattice' else 'Sobol LMS+DS + DSI'} (alpha = 2)")
        ax.set_xlabel("n")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("column + eigenvalues + solve + log-det (s)")
    axes[1].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--dims", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--m-min", type=int, default=10)
    p.add_argument("--m-max", type=int, default=20)
    p.add_argument("--dense-max", type=int, default=12, help="largest log2 n of the dense sweep")
    p.add_argument(
        "--dense-once",
        type=int,
        nargs="*",
        default=[13, 14],
        help="log2 n at which a dense Cholesky is timed once more (d = 4); 2^14 needs 2 GiB",
    )
    p.add_argument("--gp-min", type=int, default=10)
    p.add_argument("--gp-max", type=int, default=18)
    p.add_argument("--no-gp", action="store_true")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (QMCPy/NumPy use one)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--plot", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "lattice.png"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.m_max, args.dense_max, args.gp_max, args.dims = 12, 11, 12, [1, 4]
        args.dense_once = []
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"python {sys.version.split()[0]}"
    )
    qp = _qmcpy()
    print("QMCPy:", "not installed (skipped)" if qp is None else qp[0].__version__)
    rows = run_algebra(args, qp)
    d14 = {(k, m): dense_once(k, 4, m) for m in args.dense_once for k in ("lattice", "net")}
    gp_rows = [] if args.no_gp else run_gp(args)
    text = summarize(rows, gp_rows, d14, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lattice.md").write_text(text + "\n")
    plot(rows, args.plot, args.dims)
    print(f"wrote {args.out / 'lattice.md'} and {args.plot}")


if __name__ == "__main__":
    main()
