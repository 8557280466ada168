"""Kernel attention (issue #6): ours against torch SDPA, performer-pytorch and nystrom-attention.

Protocol of the attention reference, section 5.1: one attention core, forward + backward,
B=1, H=8, head dim 64, float32, q, k, v ~ N(0, 1) with ``requires_grad``, ``out.backward(g)``
with a random ``g``; projections excluded; 1 thread. Every (method, L) runs in a **fresh
subprocess**: after one untimed warm-up call at L=256 (so that lazily loaded library code
is not counted), peak memory is the growth of ``ru_maxrss`` (RSS high-water mark) across the
first full-size forward+backward after the inputs and ``g`` are allocated (it includes the
input gradients and the output); time is the median of repeated forward+backward calls (the
first, measured call included when a call takes longer than ``--long`` seconds, to bound the
run). The methods are swept ``--rounds`` times per length, interleaved, and the timed calls of
all rounds are pooled (the machine is noisy: the same call varies by up to ~25 %).

Errors: relative Frobenius error against exact softmax attention computed in float64, at
L = 1,024, mean of 3 seeds, for unit logits (entries ~ N(0, 1)) and logit std 2 (entries
~ N(0, 2)), next to uniform attention ("mean of V"); on random inputs (section 5.3) and on the
clustered inputs of section 5.4 (16 centres per head, q and k of a token = its centre +
0.3·N(0, I), rescaled to unit-variance entries).

Usage::

    python benchmarks/attention.py                 # speed/memory table + errors
    python benchmarks/attention.py --lengths 1024 4096 --skip-errors
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from snnk.nn import kernel_attention

H, D = 8, 64
#: length of the untimed warm-up call made in every worker before measuring
WARMUP_L = 256
OUT = Path(__file__).resolve().parent / "results"

#: name -> (kind, feature/landmark count); kind picks the implementation
METHODS = {
    "sdpa": ("sdpa", 0),
    "performer-256": ("performer", 256),
    "package-nystrom-256": ("package-nystrom", 256),
    "package-nystrom-64": ("package-nystrom", 64),
    "ours-favor+-256": ("favor+", 256),
    "ours-nystrom-256": ("nystrom", 256),
    "ours-nystrom-64": ("nystrom", 64),
    "ours-hermite-256": ("hermite", 256),
    "ours-softmax-free-256": ("softmax-free", 256),
    "ours-linear": ("linear", 0),
}
#: our method -> the package at equal feature/landmark count
PAIRS = {
    "ours-favor+-256": "performer-256",
    "ours-nystrom-256": "package-nystrom-256",
    "ours-nystrom-64": "package-nystrom-64",
}


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_fn(kind: str, m: int, q, k, v):
    """A closure computing the attention output from the leaves ``q, k, v``."""
    if kind == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if kind == "performer":
        from performer_pytorch import FastAttention

        attn = FastAttention(dim_heads=D, nb_features=m, causal=False)
        return lambda: attn(q, k, v)
    if kind == "package-nystrom":
        from nystrom_attention import NystromAttention

        attn = NystromAttention(
            dim=H * D, dim_head=D, heads=H, num_landmarks=m, pinv_iterations=6, residual=False
        )
        attn.to_qkv = torch.nn.Identity()
        attn.to_out = torch.nn.Identity()

        def run():
            x = torch.cat([t.transpose(1, 2).reshape(1, t.shape[2], H * D) for t in (q, k, v)], -1)
            out = attn(x)
            return out.reshape(1, -1, H, D).transpose(1, 2)

        return run
    return lambda: kernel_attention(q, k, v, kind, num_features=max(m, 1))


def worker(name: str, L: int, repeats: int, long_s: float) -> dict:
    torch.set_num_threads(1)
    kind, m = METHODS[name]
    # Warm-up at a small length so that code loaded lazily on first use (oneDNN/MKL/LAPACK
    # kernels, whose pages count in the RSS) is not booked as the method's working memory.
    wgen = torch.Generator().manual_seed(0)
    small = [torch.randn(1, H, WARMUP_L, D, generator=wgen).requires_grad_() for _ in range(3)]
    make_fn(kind, m, *small)().sum().backward()
    del small
    gen = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(1, H, L, D, generator=gen).requires_grad_() for _ in range(3))
    g = torch.randn(1, H, L, D, generator=gen)
    fn = make_fn(kind, m, q, k, v)
    base = maxrss_mib()
    t0 = time.perf_counter()
    fn().backward(g)
    first = time.perf_counter() - t0
    peak = maxrss_mib() - base
    times = [first] if first > long_s else []
    n = 1 if first > long_s else repeats
    for _ in range(n):
        for t in (q, k, v):
            t.grad = None
        t0 = time.perf_counter()
        fn().backward(g)
        times.append(time.perf_counter() - t0)
    return {
        "method": name,
        "L": L,
        "time_s": statistics.median(times),
        "times": times,
        "peak_mib": peak,
    }


def error_inputs(kind: str, var: float, gen: torch.Generator, L: int):
    """``q, k, v`` of shape ``(1, H, L, D)``: random (section 5.3) or clustered (5.4)."""
    if kind == "random":
        q, k, v = (torch.randn(1, H, L, D, generator=gen) for _ in range(3))
    else:
        centres = torch.randn(1, H, 16, D, generator=gen)
        label = torch.randint(0, 16, (1, H, L, 1), generator=gen).expand(1, H, L, D)
        own = centres.gather(2, label)
        q = own + 0.3 * torch.randn(1, H, L, D, generator=gen)
        k = own + 0.3 * torch.randn(1, H, L, D, generator=gen)
        q, k = q / q.std(), k / k.std()
        v = torch.randn(1, H, L, D, generator=gen)
    return q * math.sqrt(var), k * math.sqrt(var), v


def errors(seeds: int = 3, kinds: tuple[str, ...] = ("random", "clustered")) -> list[dict]:
    """Relative errors at L=1,024 of every method and setting against exact softmax."""
    torch.set_num_threads(2)
    L = 1024
    rows = []
    settings = [("uniform", "uniform", 0, {})]
    settings += [("performer", f"performer-{m}", m, {}) for m in (64, 256)]
    for it in (6, 12):
        for m in (64, 256):
            settings.append(("package-nystrom", f"package-nystrom-{m}-it{it}", m, {"it": it}))
    settings += [("favor+", f"ours-favor+-{m}", m, {}) for m in (64, 256, 1024)]
    settings += [("nystrom", f"ours-nystrom-{m}", m, {}) for m in (32, 64, 128, 256)]
    settings += [("nystrom", "ours-nystrom-256-newton", 256, {"pinv": "newton"})]
    settings += [("nystrom", f"ours-nystrom-256-jitter{j}", 256, {"jitter": j}) for j in (1e-5,)]
    settings += [("nystrom", f"ours-nystrom-{m}-pool", m, {"landmarks": "pool"}) for m in (64, 256)]
    settings += [("hermite", f"ours-hermite-{m}", m, {}) for m in (66, 128, 256)]
    settings += [("hermite", "ours-hermite-256-jitter1e-08", 256, {"jitter": 1e-8})]
    settings += [("softmax-free", f"ours-softmax-free-{m}", m, {}) for m in (64, 256)]
    settings += [("linear", "ours-linear", 0, {})]
    for kind_in, var in [(kind_in, var) for kind_in in kinds for var in (1.0, 2.0)]:
        acc: dict[str, list[float]] = {}
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(1000 + seed)
            q, k, v = error_inputs(kind_in, var, gen, L)
            exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            for kind, label, m, opts in settings:
                with torch.no_grad():
                    if kind == "uniform":
                        out = v.mean(-2, keepdim=True).expand_as(v)
                    elif kind == "package-nystrom":
                        from nystrom_attention import NystromAttention

                        attn = NystromAttention(
                            dim=H * D,
                            dim_head=D,
                            heads=H,
                            num_landmarks=m,
                            pinv_iterations=opts["it"],
                            residual=False,
                        )
                        attn.to_qkv = torch.nn.Identity()
                        attn.to_out = torch.nn.Identity()
                        x = torch.cat(
                            [t.transpose(1, 2).reshape(1, L, H * D) for t in (q, k, v)], -1
                        )
                        out = attn(x).reshape(1, L, H, D).transpose(1, 2)
                    elif kind == "performer":
                        torch.manual_seed(seed)  # the package draws from the global RNG
                        out = make_fn("performer", m, q, k, v)()
                    else:
                        out = kernel_attention(
                            q, k, v, kind, num_features=max(m, 1), seed=seed, **opts
                        )
                err = torch.linalg.norm(out.double() - exact) / torch.linalg.norm(exact)
                acc.setdefault(label, []).append(float(err))
        for label, vals in acc.items():
            rows.append(
                {
                    "inputs": kind_in,
                    "logit_std": round(math.sqrt(var), 3) if var != 2.0 else 2.0,
                    "method": label,
                    "error": statistics.mean(vals),
                    "sd": statistics.pstdev(vals),
                }
            )
    return rows


def run_worker(name: str, L: int, a: argparse.Namespace) -> dict:
    """One (method, L) measurement in a fresh single-threaded process."""
    cmd = [sys.executable, __file__, "--worker", name, str(L)]
    cmd += ["--repeats", str(a.repeats), "--long", str(a.long)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"method": name, "L": L, "error": proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(old: dict, new: dict) -> dict:
    """Pool the timed calls of two rounds (median over all) and keep the larger peak."""
    if "error" in new:
        return old
    times = old["times"] + new["times"]
    peak = max(old["peak_mib"], new["peak_mib"])
    return {**old, "time_s": statistics.median(times), "times": times, "peak_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "L"))
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="sweeps over the methods per length, interleaved (noisy machines); the time is "
        "the median over all timed calls",
    )
    p.add_argument("--long", type=float, default=20.0, help="seconds above which 2 calls suffice")
    p.add_argument("--skip-errors", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--plot",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "attention.png",
        help="figure of time against L and error against m (from the results in --out)",
    )
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from --out")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), a.repeats, a.long)))
        return
    if a.plot_only:
        plot(a.out, a.plot)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    if not a.skip_speed:
        path = a.out / "attention_speed.jsonl"
        for L in a.lengths:
            rows: dict[str, dict] = {}
            for rnd in range(a.rounds):
                for name in a.methods:
                    if rnd and ("error" in rows[name] or rows[name]["time_s"] > a.long):
                        continue  # one round is enough for a configuration this slow
                    row = run_worker(name, L, a)
                    with path.open("a") as f:
                        f.write(json.dumps({**row, "round": rnd}) + "\n")
                    print(json.dumps(row), flush=True)
                    rows[name] = row if rnd == 0 else merge_rounds(rows[name], row)
            results += list(rows.values())
        print_speed(results)
    if not a.skip_errors:
        rows = errors()
        (a.out / "attention_errors.json").write_text(json.dumps(rows, indent=1))
        print("\n| inputs | method | logit std | rel. error (mean of 3 seeds) | sd |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['inputs']} | {r['method']} | {r['logit_std']} | {r['error']:.3f} "
                f"| {r['sd']:.3f} |"
            )
    plot(a.out, a.plot)


def plot(results: Path, path: Path) -> None:
    """Time against L (speed results) and error against m (error results), where present."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = {}
    spath = results / "attention_speed.jsonl"
    if spath.exists():
        for line in spath.read_text().splitlines():
            r = json.loads(line)
            if "times" in r:
                speed.setdefault(r["method"], {}).setdefault(r["L"], []).extend(r["times"])
    epath = results / "attention_errors.json"
    errors = json.loads(epath.read_text()) if epath.exists() else []
    kinds = list(dict.fromkeys(r["inputs"] for r in errors))
    fig, axes = plt.subplots(1, 1 + len(kinds), figsize=(5.5 * (1 + len(kinds)), 4.5))
    axes = list(axes) if len(kinds) else [axes]
    ax = axes[0]
    for name, by_len in speed.items():
        Ls = sorted(by_len)
        ax.plot(Ls, [statistics.median(by_len[L]) for L in Ls], "o-", label=name, ms=3)
    ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="s per fwd+bwd")
    ax.set_title("time, B=1, H=8, E=64, fp32, 1 thread")
    ax.legend(fontsize=6)
    ax.grid(True, alpha=0.3)
    pattern = re.compile(r"^(.*?)-(\d+)(-it6|-pool)?$")
    for ax, kind in zip(axes[1:], kinds, strict=True):
        for std, style in ((1.0, "-"), (2.0, "--")):
            rows = [r for r in errors if r["inputs"] == kind and r["logit_std"] == std]
            curves: dict[str, list] = {}
            for r in rows:
                if r["method"] == "uniform":
                    ax.axhline(r["error"], color="grey", ls=style, lw=1)
                    continue
                hit = pattern.match(r["method"])
                if hit:
                    family = hit.group(1) + (hit.group(3) or "")
                    curves.setdefault(family, []).append((int(hit.group(2)), r["error"]))
            ax.set_prop_cycle(None)
            for family, pts in curves.items():
                if len(pts) > 1:
                    pts.sort()
                    lab = f"{family} (std {std:g})"
                    ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, label=lab)
        ax.set(xscale="log", yscale="log", xlabel="features / landmarks m")
        ax.set_ylabel("relative error vs exact softmax, L=1,024")
        ax.set_title(f"{kind} inputs (grey: uniform attention)")
        ax.legend(fontsize=5, ncol=2)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure: {path}")


def print_speed(results: list[dict]) -> None:
    """Markdown tables: time/memory, then ratios to SDPA and to the matching package."""
    ok = {(r["method"], r["L"]): r for r in results if "time_s" in r}
    lengths = sorted({r["L"] for r in results})
    names = list(dict.fromkeys(r["method"] for r in results))
    print("\n| method | " + " | ".join(f"L={L}" for L in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for n in names:
        cells = []
        for L in lengths:
            r = ok.get((n, L))
            cells.append(
                "failed" if r is None else f"{r['time_s']:.3f} s / {r['peak_mib']:.0f} MiB"
            )
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\nspeed-up over SDPA (time) and memory relative to SDPA:")
    for n in names:
        cells = []
        for L in lengths:
            r, s = ok.get((n, L)), ok.get(("sdpa", L))
            if r and s:
                ratio = s["time_s"] / r["time_s"]
                cells.append(f"{ratio:.1f}x / {r['peak_mib'] / max(s['peak_mib'], 1e-9):.2f}")
            else:
                cells.append("-")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\nours against the package at equal features/landmarks (package time / our time):")
    for ours, pkg in PAIRS.items():
        cells = []
        for L in lengths:
            r, s = ok.get((ours, L)), ok.get((pkg, L))
            cells.append(f"{s['time_s'] / r['time_s']:.1f}x" if r and s else "-")
        print(f"| {ours} vs {pkg} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
