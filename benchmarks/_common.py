"""Shared helpers of the benchmark scripts: timing, test data, tables and machine info.

Nothing here is part of the ``snnk`` package; the scripts in this folder import it as a
sibling module (``python benchmarks/<script>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

#: default output folder of every benchmark: ``benchmarks/results`` next to the scripts
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def time_median(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    The result of every call is dropped before the next call starts, so a function that
    allocates a large output never holds two of them at once.
    """
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, pause: float = 0.25
) -> dict[str, tuple[float, list[float]]]:
    """Median wall time of each function, calling them round-robin.

    On a shared machine a burst of foreign load then hits every contender about equally, so
    their ratios stay meaningful; the starting function rotates from round to round. An
    untimed ``pause`` precedes every call: thread pools spin for a while after their work
    (OpenBLAS under NumPy for about 0.1 s, OpenMP under torch), and a torch call right after
    a NumPy one would otherwise share the cores with the previous pool's spinning threads.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            time.sleep(pause)
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def sphere(n: int, d: int, radius: float, seed: int) -> torch.Tensor:
    """``n`` points drawn uniformly on the sphere of ``radius`` in ``R^d`` (float64).

    The generator is offset so the data never shares a stream with the feature maps'
    seeds ``0, 1, 2, ...``.
    """
    g = torch.Generator().manual_seed(7_919 * (seed + 1) + 104_729)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return radius * x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def gaussian_data(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` standard-normal points in ``R^d`` from a dedicated generator."""
    g = torch.Generator().manual_seed(15_485_863 + seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than 2 points)."""
    pts = [
        (math.log(x), math.log(y))
        for x, y in zip(xs, ys, strict=True)
        if y is not None and math.isfinite(y) and y > 0
    ]
    if len(pts) < 2:
        return math.nan
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


def fmt(x: float | None, digits: int = 2) -> str:
    """Compact scientific formatting for tables (``—`` for missing values)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}e}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are converted with ``str``."""
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_summary() -> str:
    """One line describing the machine and the software the numbers depend on."""
    import sklearn

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}, Python {platform.python_version()}; "
        f"1-min load average at start {load:.2f}"
    )


def prepare_out(path: str | os.PathLike[str]) -> Path:
    """Create the output folder (and parents) and return it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


class CpuMonitor:
    """CPU time spent by *other* processes (and stolen by the hypervisor) during a run.

    The benchmarks run on a shared machine: this says how much the numbers may be polluted.
    Linux only (``/proc/stat``); elsewhere every field stays NaN.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()
        self._t0 = time.perf_counter()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        busy = (user + nice + system + irq + softirq + steal) / hz
        own = os.times()
        return busy, steal / hz, own.user + own.system

    def measure(self) -> dict[str, float]:
        """Seconds since construction: ``wall``, ``own``, ``foreign`` and ``steal`` CPU time."""
        end = self._snapshot()
        wall = time.perf_counter() - self._t0
        if self._start is None or end is None:
            return {"wall": wall, "own": math.nan, "foreign": math.nan, "steal": math.nan}
        busy = end[0] - self._start[0]
        steal = end[1] - self._start[1]
        own = end[2] - self._start[2]
        return {"wall": wall, "own": own, "foreign": max(0.0, busy - own - steal), "steal": steal}

    def report(self) -> str:
        m = self.measure()
        return (
            f"wall {m['wall']:.0f} s; CPU time of this process {m['own']:.0f} s, of other "
            f"processes {m['foreign']:.1f} s ({100 * m['foreign'] / m['wall']:.0f}% of one core "
            f"on average), stolen by the hypervisor {m['steal']:.1f} s"
        )


def wait_for_quiet(max_seconds: float = 180.0, threshold: float = 0.15, window: float = 2.0) -> str:
    """Sleep until other processes use less than ``threshold`` of one core over ``window`` s.

    Gives up after ``max_seconds``; returns a note for the report.
    """
    waited = 0.0
    while True:
        monitor = CpuMonitor()
        time.sleep(window)
        m = monitor.measure()
        waited += m["wall"]
        load = m["foreign"] / m["wall"]
        if not math.isfinite(load) or load < threshold or waited >= max_seconds:
            break
    state = "quiet" if not math.isfinite(load) or load < threshold else "NOT quiet"
    return f"waited {waited:.0f} s for a quiet machine ({state}: other load {100 * load:.0f}%)"


def reference_problem(
    n_train: int = 20_000, n_test: int = 5_000, d: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel-ridge problem of ``shared/reference/kernel-machines.md`` section 3.

    ``X ~ N(0, I_d)`` (d >= 20) and ``y = sin(1.5 x0) + 0.5 x1 x2 + cos(Σ x3..x7 / 2)
    + 0.3 tanh(Σ x8..x19 / 3) + 0.1 ε`` (std of y about 1.03; exact Gaussian KRR with
    lengthscale 4 and α = 1e-2 reaches test RMSE about 0.27). Returns float64
    ``(X_train, y_train, X_test, y_test)``.
    """
    if d < 20:
        raise ValueError("the reference target uses the first 20 coordinates; d must be >= 20")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_test, d))
    y = reference_target(X, rng.standard_normal(n_train + n_test))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def reference_target(X: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """``sin(1.5 x0) + 0.5 x1 x2 + cos(Σ x3..x7 / 2) + 0.3 tanh(Σ x8..x19 / 3) + 0.1 ε``
    (the target of :func:`reference_problem`), in ``X``'s dtype."""
    return (
        np.sin(1.5 * X[:, 0])
        + 0.5 * X[:, 1] * X[:, 2]
        + np.cos(X[:, 3:8].sum(1) / 2)
        + 0.3 * np.tanh(X[:, 8:20].sum(1) / 3)
        + 0.1 * eps
    ).astype(X.dtype, copy=False)
