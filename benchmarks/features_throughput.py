"""Throughput of Gaussian random Fourier features, against scikit-learn and the machine's limits.

Everything is measured in one process run so that the ratios compare like with like:
``time.perf_counter``, one untimed warm-up call, then the median of ``--repeats`` (7) calls.
Feature maps are built (and scikit-learn's samplers fitted) outside the timer; only the
transform of the whole input is timed, including the allocation of its output.

(a) snnk ``FourierFeatures`` (Gaussian kernel, samplers ``"orthogonal"`` and ``"iid"``, float32)
    against scikit-learn's ``RBFSampler`` on float32 input, ``n = 100,000``, ``d = 64``,
    ``D = 4,096``. Ratio = sklearn time / ours. Output dtypes are checked and reported
    (recent scikit-learn keeps float32). The projection GEMM alone (``X Wᵀ`` for ours,
    ``X @ random_weights_`` for sklearn, into preallocated outputs) is timed as well.
(b) ``sampler="structured"`` (SORF, Kronecker-factored Hadamard) against dense
    ``"orthogonal"`` at ``d = 1,024``, ``D = 8,192``, ``n = 20,000``, float32: time ratio; and
    the Gram relative Frobenius error ``‖ZZᵀ - K‖_F / ‖K‖_F`` of both on a 2,000-row subset in
    float64 (float64 maps with the same seeds, Gaussian lengthscale ``√d = 32``), mean over
    3 seeds, and the ratio structured / orthogonal.
(c) The machine's limits, measured in the same run: float32 GEMM GFLOP/s (4096³ matmul into
    a preallocated output), memory bandwidth (copy of a 512 MB buffer into a preallocated one,
    read + write bytes counted), ``torch.cos`` throughput into a preallocated output (on a
    cache-sized 1 MB block and on a 64 MB stream), and the first-touch rate of a fresh output
    buffer of the size of (a)'s output (allocation + page faults + one write: every transform
    pays it, and on this VM it is slow and erratic). For every map: projection GFLOP/s (dense
    Fourier: ``2·n·d·D/2`` flops; RBFSampler: ``2·n·d·D``; structured: the flops of its
    Hadamard GEMMs, plus the dense-equivalent rate) against the GEMM peak, output write
    bandwidth (``n·D·4`` bytes / time) against the copy bandwidth and the first-touch rate,
    and a simple floor ``flops/peak + n·D/(cos rate) + n·D·4/(first-touch rate)``.

Output: markdown tables on stdout, ``features_throughput.md`` and ``features_throughput.png``
in ``--out``. ``--quick`` shrinks every size for a smoke test (well under 20 s).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.kernel_approximation import RBFSampler

from _common import (
    DEFAULT_OUT,
    CpuMonitor,
    gaussian_data,
    machine_summary,
    markdown_table,
    prepare_out,
    time_interleaved,
    time_median,
    wait_for_quiet,
)
from snnk import features, kernels

F32, F64 = torch.float32, torch.float64


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the tables."""
    print(msg, file=sys.stderr, flush=True)


# -- (c) machine limits ---------------------------------------------------------------------------
@dataclass
class Limits:
    gemm_gflops: float
    copy_gbs: float
    cos_cache_gelems: float
    cos_stream_gelems: float
    first_touch_gbs: float  # fresh (never touched) output buffer, allocated and written once


def gemm_gflops(size: int, repeats: int) -> float:
    """float32 ``size³`` matmul into a preallocated output: GFLOP/s (median)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    c = torch.empty(size, size)
    seconds, _ = time_median(lambda: torch.matmul(a, b, out=c), repeats)
    rate = 2.0 * size**3 / seconds / 1e9
    log(f"  GEMM {size}^3 float32: {seconds * 1e3:.1f} ms, {rate:.1f} GFLOP/s")
    return rate


def copy_bandwidth(megabytes: int, repeats: int) -> float:
    """GB/s of a float32 copy into a preallocated buffer, read + write bytes counted."""
    n = megabytes * (1 << 20) // 4
    src = torch.rand(n, generator=torch.Generator().manual_seed(1))
    dst = torch.empty(n)
    dst.copy_(src)  # fault every page in before timing
    seconds, _ = time_median(lambda: dst.copy_(src), repeats)
    rate = 2.0 * n * 4 / seconds / 1e9
    log(f"  copy {megabytes} MB float32: {seconds * 1e3:.1f} ms, {rate:.1f} GB/s (read + write)")
    return rate


def cos_throughput(elements: int, loops: int, repeats: int) -> float:
    """Gelem/s of ``torch.cos`` on float32 into a preallocated output."""
    x = torch.rand(elements, generator=torch.Generator().manual_seed(2)) * (2 * math.pi)
    y = torch.empty_like(x)

    def run() -> None:
        for _ in range(loops):
            torch.cos(x, out=y)

    seconds, _ = time_median(run, repeats)
    rate = elements * loops / seconds / 1e9
    log(f"  cos on {elements * 4 >> 20} MB float32: {rate:.2f} Gelem/s")
    return rate


def first_touch_rate(nbytes: float, repeats: int) -> float:
    """GB/s of allocating a fresh float32 buffer of ``nbytes`` and writing it once.

    This is what every transform pays for its output: the kernel maps and zeroes each page
    on first write (NumPy's allocator asks for transparent huge pages on large arrays; both
    snnk's ``empty_output`` and scikit-learn allocate through NumPy).
    """
    elements = int(nbytes) // 4

    def run() -> None:
        np.empty(elements, dtype=np.float32).fill(1.0)

    seconds, times = time_median(run, repeats)
    rate = elements * 4 / seconds / 1e9
    log(
        f"  first touch of a fresh {elements * 4 / 1e9:.2f} GB buffer: median "
        f"{seconds:.3f} s ({min(times):.3f}-{max(times):.3f}), {rate:.2f} GB/s"
    )
    return rate


def measure_limits(gemm_size: int, copy_mb: int, touch_bytes: float, repeats: int) -> Limits:
    return Limits(
        gemm_gflops(gemm_size, repeats),
        copy_bandwidth(copy_mb, repeats),
        cos_throughput(1 << 18, 64, repeats),  # 1 MB block, stays in cache
        cos_throughput(1 << 24, 1, repeats),  # 64 MB stream
        first_touch_rate(touch_bytes, repeats),
    )


# -- timed maps ---------------------------------------------------------------------------------
@dataclass
class MapResult:
    part: str
    name: str
    n: int
    d: int
    D: int
    seconds: float
    proj_flops: float  # flops the map actually spends on its projection
    dense_flops: float  # flops of the equivalent dense projection (same for dense maps)
    transcendentals: float  # cos/sin evaluations
    out_dtype: str = ""
    proj_seconds: float | None = None  # projection GEMM alone, when timed
    times: tuple[float, ...] = ()
    foreign: float = math.nan  # CPU-seconds used by other processes while this map was timed

    @property
    def out_bytes(self) -> float:
        return self.n * self.D * 4.0


def contest(
    results: list[MapResult],
    fns: dict[str, Callable[[], object]],
    repeats: int,
    quiet_max: float,
) -> str:
    """Time ``fns`` round-robin (same keys as the results' names) and fill in the results.

    Returns a note on the foreign load while they ran (the same for every contender).
    """
    quiet = wait_for_quiet(quiet_max, window=2.0 if quiet_max else 0.5)
    log(f"  {quiet}")
    monitor = CpuMonitor()
    with torch.no_grad():
        timings = time_interleaved(fns, repeats, pause=0.25 if quiet_max else 0.02)
    foreign = monitor.measure()["foreign"]
    for r in results:
        r.seconds, times = timings[r.name]
        r.times, r.foreign = tuple(times), foreign
        log(f"  {r.name}: median {r.seconds:.3f} s ({', '.join(f'{t:.3f}' for t in times)})")
    log(f"  other processes used {foreign:.1f} CPU-s meanwhile")
    return f"{quiet}; other processes used {foreign:.1f} CPU-s while timing"


def dtype_name(z: object) -> str:
    return str(z.dtype).replace("torch.", "")


def bench_vs_sklearn(
    n: int, d: int, D: int, repeats: int, quiet_max: float
) -> tuple[list[MapResult], str]:
    """(a): snnk FourierFeatures (orthogonal, iid) vs RBFSampler, float32."""
    lengthscale = math.sqrt(d)
    X = gaussian_data(n, d, seed=2, dtype=F32)
    Xn = X.numpy()
    kernel = kernels.Gaussian(lengthscale)
    m = D // 2
    results, fns, gemms = [], {}, {}
    for sampler in ("orthogonal", "iid"):
        phi = features.FourierFeatures(kernel, d, D, sampler=sampler, seed=0, dtype=F32)
        name = f"snnk FourierFeatures ({sampler})"
        with torch.no_grad():
            out_dtype = dtype_name(phi(X[:64]))
        results.append(
            MapResult(
                "a",
                name,
                n,
                d,
                D,
                math.nan,
                2.0 * n * d * m,
                2.0 * n * d * m,
                float(n * D),
                out_dtype,
            )
        )
        fns[name] = lambda phi=phi: phi(X)
        # the projection GEMM alone, into a preallocated output (no page faults timed)
        w_t, buf = phi.projection.weight.T, torch.empty(n, m, dtype=F32)
        gemms[name] = lambda w_t=w_t, buf=buf: torch.mm(X, w_t, out=buf)

    rbf = RBFSampler(gamma=1.0 / (2.0 * lengthscale**2), n_components=D, random_state=0)
    rbf.fit(Xn)
    name = "sklearn RBFSampler"
    out_dtype = dtype_name(rbf.transform(Xn[:64]))
    weights = rbf.random_weights_
    log(f"  RBFSampler weights {weights.dtype}, input {Xn.dtype}, output {out_dtype}")
    results.append(
        MapResult(
            "a", name, n, d, D, math.nan, 2.0 * n * d * D, 2.0 * n * d * D, float(n * D), out_dtype
        )
    )
    fns[name] = lambda: rbf.transform(Xn)
    buf = np.empty((n, D), dtype=weights.dtype)
    gemms[name] = lambda: np.matmul(Xn, weights, out=buf)

    note = contest(results, fns, repeats, quiet_max)
    gemm_times = time_interleaved(gemms, repeats, pause=0.25 if quiet_max else 0.02)
    for r in results:
        r.proj_seconds = gemm_times[r.name][0]
    return results, note


def structured_flops(n: int, d: int, m: int) -> float:
    """Flops of snnk's Kronecker-factored SORF projection of ``n`` rows to ``m`` outputs.

    ``p = 2^⌈log₂ d⌉ = p1·p2``; one shared transform plus two per block of ``p`` rows, each
    transform two small GEMMs costing ``2·p·(p1 + p2)`` flops per row.
    """
    p = 1 << max(0, (d - 1).bit_length())
    k = p.bit_length() - 1
    p1, p2 = 1 << ((k + 1) // 2), 1 << (k // 2)
    blocks = math.ceil(m / p)
    return float(n) * 2.0 * p * (p1 + p2) * (1 + 2 * blocks)


def gram_rel_error(Z: torch.Tensor, K: torch.Tensor) -> float:
    return float(
        torch.linalg.matrix_norm(torch.addmm(K, Z, Z.T, beta=-1.0)) / torch.linalg.matrix_norm(K)
    )


def bench_structured(
    n: int, d: int, D: int, subset: int, seeds: int, repeats: int, quiet_max: float
) -> tuple[list[MapResult], dict[str, list[float]], str]:
    """(b): structured vs dense orthogonal, time in float32 and Gram error in float64."""
    X = gaussian_data(n, d, seed=3, dtype=F32)
    kernel = kernels.Gaussian(math.sqrt(d))
    m = D // 2
    results, fns = [], {}
    for sampler in ("structured", "orthogonal"):
        phi = features.FourierFeatures(kernel, d, D, sampler=sampler, seed=0, dtype=F32)
        if sampler == "structured" and not getattr(phi.projection, "structured", True):
            log("  WARNING: the structured sampler fell back to dense blocks at this d")
        flops = structured_flops(n, d, m) if sampler == "structured" else 2.0 * n * d * m
        name = f"snnk FourierFeatures ({sampler})"
        with torch.no_grad():
            out_dtype = dtype_name(phi(X[:64]))
        results.append(
            MapResult("b", name, n, d, D, math.nan, flops, 2.0 * n * d * m, float(n * D), out_dtype)
        )
        fns[name] = lambda phi=phi: phi(X)
    note = contest(results, fns, repeats, quiet_max)

    Xs = X[:subset].to(F64)
    K = kernel(Xs)
    errors: dict[str, list[float]] = {"structured": [], "orthogonal": []}
    with torch.no_grad():
        for seed in range(seeds):
            for sampler in errors:
                phi = features.FourierFeatures(kernel, d, D, sampler=sampler, seed=seed, dtype=F64)
                errors[sampler].append(gram_rel_error(phi(Xs), K))
    log(f"  Gram errors (float64, {subset} rows): {errors}")
    return results, errors, note


# -- reporting ----------------------------------------------------------------------------------
def floor_seconds(r: MapResult, lim: Limits) -> float:
    """Projection at GEMM peak + transcendentals at the cos rate + first touch of the output."""
    return (
        r.proj_flops / (lim.gemm_gflops * 1e9)
        + r.transcendentals / (lim.cos_cache_gelems * 1e9)
        + r.out_bytes / (lim.first_touch_gbs * 1e9)
    )


def roofline_rows(results: list[MapResult], lim: Limits) -> list[list[str]]:
    rows = []
    for r in results:
        gflops = r.proj_flops / r.seconds / 1e9
        write_gbs = r.out_bytes / r.seconds / 1e9
        floor = floor_seconds(r, lim)
        proj = "—"
        if r.proj_seconds is not None:
            pg = r.proj_flops / r.proj_seconds / 1e9
            proj = f"{r.proj_seconds:.3f} s, {pg:.1f} ({100 * pg / lim.gemm_gflops:.0f}%)"
        dense_eq = r.dense_flops / r.seconds / 1e9
        rows.append(
            [
                f"({r.part}) {r.name}",
                f"{r.n:,} x {r.d} → {r.D:,}",
                r.out_dtype,
                f"{r.seconds:.3f} [{min(r.times):.3f}–{max(r.times):.3f}]",
                f"{r.proj_flops / 1e9:.1f}",
                f"{gflops:.1f} ({100 * gflops / lim.gemm_gflops:.0f}%)",
                f"{dense_eq:.1f}" if r.dense_flops != r.proj_flops else "=",
                proj,
                f"{write_gbs:.2f} ({100 * write_gbs / lim.copy_gbs:.0f}%, "
                f"{100 * write_gbs / lim.first_touch_gbs:.0f}%)",
                f"{floor:.3f}",
                f"{r.seconds / floor:.2f}",
                f"{r.foreign:.1f}",
            ]
        )
    return rows


ROOFLINE_HEADERS = [
    "map",
    "n x d → D",
    "out dtype",
    "time (s) median [min–max]",
    "proj GFLOP",
    "proj GFLOP/s (% GEMM peak)",
    "dense-equiv. GFLOP/s",
    "projection GEMM alone, preallocated out: time, GFLOP/s (% peak)",
    "output write GB/s (% copy BW, % first-touch rate)",
    "floor (s)",
    "time / floor",
    "other processes meanwhile (CPU-s, per part)",
]


def plot(a: list[MapResult], b: list[MapResult], lim: Limits, err_ratio: float, path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, res, title in (
        (axes[0], a, f"(a) n={a[0].n:,}, d={a[0].d}, D={a[0].D:,}, float32"),
        (axes[1], b, f"(b) n={b[0].n:,}, d={b[0].d}, D={b[0].D:,}, float32"),
    ):
        names = [r.name.replace("snnk FourierFeatures ", "snnk ") for r in res]
        times = [r.seconds for r in res]
        bars = ax.bar(names, times, color=["C0", "C1", "C2"][: len(res)])
        for bar, t in zip(bars, times, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, t, f"{t:.3f} s", ha="center", va="bottom")
        floors = [floor_seconds(r, lim) for r in res]
        ax.scatter(names, floors, marker="_", s=900, color="k", zorder=3, label="floor")
        ax.set_ylim(0, 1.3 * max(times))
        ax.legend(fontsize=8, loc="upper center")
        ax.set_ylabel("median transform time (s)")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    axes[1].set_xlabel(f"Gram error (float64) structured / orthogonal = {err_ratio:.3f}")
    allres = a + b
    labels = [f"({r.part}) {r.name.replace('snnk FourierFeatures ', 'snnk ')}" for r in allres]
    y = np.arange(len(allres))
    flops_pct = [100 * r.proj_flops / r.seconds / 1e9 / lim.gemm_gflops for r in allres]
    bw_pct = [100 * r.out_bytes / r.seconds / 1e9 / lim.copy_gbs for r in allres]
    axes[2].barh(y - 0.2, flops_pct, height=0.4, label="projection GFLOP/s, % of GEMM peak")
    axes[2].barh(y + 0.2, bw_pct, height=0.4, label="output write GB/s, % of copy bandwidth")
    axes[2].set_yticks(y, labels, fontsize=8)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("% of the measured machine limit")
    axes[2].set_title(
        f"(c) limits: GEMM {lim.gemm_gflops:.0f} GFLOP/s, copy {lim.copy_gbs:.1f} GB/s, "
        f"cos {lim.cos_cache_gelems:.2f} Gelem/s",
        fontsize=9,
    )
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, < 20 s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (created)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 7)")
    parser.add_argument(
        "--max-wait",
        type=float,
        default=180.0,
        help="seconds to wait, before each part, for other processes to go quiet (default 180)",
    )
    args = parser.parse_args(argv)
    out = prepare_out(args.out)
    if args.quick:
        repeats = args.repeats or 3
        a_size, b_size, subset, seeds = (4_000, 64, 512), (2_000, 256, 1_024), 500, 1
        gemm_size, copy_mb, quiet_max = 1024, 32, 0.0
    else:
        repeats = args.repeats or 7
        a_size, b_size, subset, seeds = (100_000, 64, 4_096), (20_000, 1_024, 8_192), 2_000, 3
        gemm_size, copy_mb, quiet_max = 4096, 512, args.max_wait

    header = machine_summary()
    log(header)
    t0 = time.perf_counter()
    monitor = CpuMonitor()
    log("(c) machine limits ...")
    note_c = wait_for_quiet(quiet_max, window=2.0 if quiet_max else 0.5)
    log(f"  {note_c}")
    lim = measure_limits(gemm_size, copy_mb, a_size[0] * a_size[2] * 4.0, repeats)
    log("(a) snnk vs scikit-learn RBFSampler ...")
    a, note_a = bench_vs_sklearn(*a_size, repeats, quiet_max)
    log("(b) structured vs orthogonal ...")
    b, errors, note_b = bench_structured(*b_size, subset, seeds, repeats, quiet_max)
    total = time.perf_counter() - t0
    load_note = monitor.report()
    log(load_note)

    orth_a, iid_a, sk = a
    st_b, or_b = b
    err_s, err_o = float(np.mean(errors["structured"])), float(np.mean(errors["orthogonal"]))
    summary = [
        ["(a) load while timing", note_a],
        ["(a) time sklearn RBFSampler / snnk orthogonal", f"{sk.seconds / orth_a.seconds:.2f}"],
        ["(a) time sklearn RBFSampler / snnk iid", f"{sk.seconds / iid_a.seconds:.2f}"],
        [
            "(a) output dtype snnk / sklearn (float32 input)",
            f"{orth_a.out_dtype} / {sk.out_dtype}",
        ],
        ["(b) load while timing", note_b],
        ["(b) time orthogonal / structured (speed-up)", f"{or_b.seconds / st_b.seconds:.2f}"],
        [
            f"(b) Gram rel. Frobenius error, structured (mean of {seeds} seeds)",
            ", ".join(f"{e:.4f}" for e in errors["structured"]) + f" → {err_s:.4f}",
        ],
        [
            f"(b) Gram rel. Frobenius error, orthogonal (mean of {seeds} seeds)",
            ", ".join(f"{e:.4f}" for e in errors["orthogonal"]) + f" → {err_o:.4f}",
        ],
        ["(b) error structured / orthogonal", f"{err_s / err_o:.3f}"],
        ["(c) load before measuring", note_c],
        [f"(c) float32 GEMM {gemm_size}³", f"{lim.gemm_gflops:.1f} GFLOP/s"],
        [f"(c) copy {copy_mb} MB (read + write)", f"{lim.copy_gbs:.1f} GB/s"],
        [
            "(c) torch.cos float32 (1 MB block / 64 MB stream)",
            f"{lim.cos_cache_gelems:.2f} / {lim.cos_stream_gelems:.2f} Gelem/s",
        ],
        [
            f"(c) first touch of a fresh {a_size[0] * a_size[2] * 4 / 1e9:.2f} GB output",
            f"{lim.first_touch_gbs:.2f} GB/s",
        ],
    ]
    sections = [
        "## Summary (ratios from one process run)",
        markdown_table(["quantity", "value"], summary),
        "## Per map, against the machine limits",
        f"Median of {repeats} timed calls after one warm-up, the maps of a part called "
        f"round-robin; whole transform including its "
        f"output allocation. proj GFLOP/s = projection flops / whole transform time. floor = "
        f"proj flops / GEMM peak + n·D / cos rate (1 MB block) + output bytes / first-touch "
        f"rate of a fresh buffer (page faults included: every transform allocates its output). "
        f"Total run {total:.0f} s. Shared machine: {load_note}; the last column is the CPU "
        f"time other processes used while that part's maps were being timed.",
        markdown_table(ROOFLINE_HEADERS, roofline_rows(a + b, lim)),
    ]
    body = "\n\n".join(sections)
    print(body)
    cmd = "python benchmarks/features_throughput.py" + (" --quick" if args.quick else "")
    (out / "features_throughput.md").write_text(
        f"# Feature throughput benchmark\n\n`{cmd}`\n\nMachine: {header}\n\n{body}\n",
        encoding="utf-8",
    )
    plot(a, b, lim, err_s / err_o, out / "features_throughput.png")
    log(f"total {total:.0f} s; wrote {out / 'features_throughput.md'} and .png")


if __name__ == "__main__":
    main()
