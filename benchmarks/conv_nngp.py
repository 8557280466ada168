"""Convolutional NNGP / NTK (global average pooling): snnk against neural-tangents and baselines.

Sections (``--sections``, default both):

``nt``
    NNGP + NTK Gram matrices of ``[Conv(3x3, SAME) → φ] x depth → GlobalAvgPool → Dense``
    (σ_w² = 2, σ_b² = 0.01, NTK parameterisation), ReLU and erf, depth 1 and 2, on the first
    n = 100 / 200 / 500 of scikit-learn's 8x8 digits (pixels / 16): snnk
    (:func:`snnk.kernels.convolutional_kernels`, torch float64, its default tiles) against
    neural-tangents 0.6.5 (``stax`` ``kernel_fn`` under ``nt.batch`` with 10 x 10 image
    pairs per batch, its fastest of 10 / 25 / 50 / 100 at n = 100; ``jax_enable_x64``) in the
    same process, timed interleaved (median of repeats); values compared entrywise (max |Δ|
    / max |K|). Skipped with a message when neural-tangents cannot be imported.
``digits``
    Kernel regression on all 1,797 digits (stratified 60 / 20 / 20 train / validation /
    test split, seed 0): one-hot least squares ``(K + αI)⁻¹ Y`` with the ridge ``α`` (and the
    Gaussian lengthscale) chosen on the validation set, then refit on train + validation;
    test accuracy. The conv NNGP (GAP, ReLU, depth 1-3) against the fully connected NNGP
    (ReLU, depth 1-3) and the Gaussian kernel on the 64 pixels; the time of each Gram matrix
    (all 1,797 x 1,797 pairs) is stated.

Run: ``flock /tmp/snnk-cpu.lock python benchmarks/conv_nngp.py [--quick] [--sections nt digits]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_summary, markdown_table, time_interleaved
from infinite_width import _import_nt
from snnk.kernels import NNGP, ConvNNGP, Gaussian, convolutional_kernels

SW2, SB2 = 2.0, 0.01
NT_BATCH = 10


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 1, 8, 8) in [0, 1], labels)`` of scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).reshape(-1, 1, 8, 8), data.target


# -- neural-tangents -------------------------------------------------------------------------------
def _nt_kernel_fn(nt, depth: int, activation: str):
    stax = nt.stax
    act = {"relu": stax.Relu(), "erf": stax.Erf()}[activation]
    layers = []
    for _ in range(depth):
        layers += [
            stax.Conv(1, (3, 3), padding="SAME", W_std=math.sqrt(SW2), b_std=math.sqrt(SB2)),
            act,
        ]
    layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=math.sqrt(SW2), b_std=math.sqrt(SB2))]
    _, _, kernel_fn = stax.serial(*layers)
    return nt.batch(kernel_fn, batch_size=NT_BATCH, store_on_device=False)


def section_nt(quick: bool) -> str:
    got = _import_nt()
    if got is None:
        return "neural-tangents was not available: section skipped.\n"
    _, nt = got
    images, _ = load_digit_images()
    sizes = [100, 200] if quick else [100, 200, 500]
    rows = []
    for n in sizes:
        X = torch.from_numpy(images[:n])
        Xj = np.ascontiguousarray(images[:n].transpose(0, 2, 3, 1))  # NHWC
        for activation in ("relu", "erf"):
            for depth in (1, 2):
                kfn = _nt_kernel_fn(nt, depth, activation)

                def ours(X=X, depth=depth, activation=activation):
                    return convolutional_kernels(
                        X,
                        depth=depth,
                        activation=activation,
                        weight_variance=SW2,
                        bias_variance=SB2,
                    )

                def theirs(Xj=Xj, kfn=kfn):
                    k = kfn(Xj, None, ("nngp", "ntk"))
                    return np.asarray(k[0]), np.asarray(k[1])

                a, b = ours(), theirs()
                errs = []
                for mine, ref in zip(a, b, strict=True):
                    ref = torch.from_numpy(np.array(ref))
                    errs.append(float((mine - ref).abs().max() / ref.abs().max()))
                del a, b
                reps = 1 if n >= 500 else 3
                t = time_interleaved({"snnk": ours, "nt": theirs}, repeats=reps, warmup=0)
                ts, tn = t["snnk"][0], t["nt"][0]
                rows.append(
                    [
                        n,
                        activation,
                        depth,
                        f"{errs[0]:.1e}",
                        f"{errs[1]:.1e}",
                        f"{ts:.2f}",
                        f"{tn:.2f}",
                        f"{tn / ts:.1f}",
                    ]
                )
                print(rows[-1], flush=True)
    return markdown_table(
        ["n", "φ", "depth", "NNGP max|Δ|/max|K|", "NTK max|Δ|/max|K|", "snnk s", "NT s", "NT/snnk"],
        rows,
    )


# -- kernel regression on the digits ---------------------------------------------------------------
def split(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 60 / 20 / 20 index split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    va, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    return tr, va, te


def ridge_accuracy(K: np.ndarray, y: np.ndarray, tr, va, te) -> tuple[float, float, float]:
    """``(validation accuracy, test accuracy, α)``: one-hot least squares, α on validation
    (relative to the mean diagonal of the training kernel), refit on train + validation."""
    Y = np.eye(10)[y]
    scale = float(np.mean(np.diag(K)[tr]))
    best = (-1.0, None)
    Ktr = K[np.ix_(tr, tr)]
    w, V = np.linalg.eigh(Ktr)
    VY = V.T @ Y[tr]
    for rel in 10.0 ** np.arange(-8, 1.5, 0.5):
        a = rel * scale
        coef = V @ (VY / (w + a)[:, None])
        acc = float(np.mean((K[np.ix_(va, tr)] @ coef).argmax(1) == y[va]))
        best = max(best, (acc, a), key=lambda t: t[0])
    acc_va, a = best
    fit = np.concatenate([tr, va])
    coef = np.linalg.solve(K[np.ix_(fit, fit)] + a * np.eye(len(fit)), Y[fit])
    acc_te = float(np.mean((K[np.ix_(te, fit)] @ coef).argmax(1) == y[te]))
    return acc_va, acc_te, a


def section_digits(quick: bool) -> str:
    images, y = load_digit_images()
    if quick:
        images, y = images[:600], y[:600]
    tr, va, te = split(y)
    X = torch.from_numpy(images)
    flat = X.flatten(1)
    rows = []

    def add(name, fn):
        start = time.perf_counter()
        K = fn().numpy()
        elapsed = time.perf_counter() - start
        acc_va, acc_te, a = ridge_accuracy(K, y, tr, va, te)
        rows.append([name, f"{acc_va:.4f}", f"{acc_te:.4f}", f"{a:.2g}", f"{elapsed:.1f}"])
        print(rows[-1], flush=True)
        return acc_va, acc_te

    bar = sys.stderr.isatty()  # a progress bar in a terminal, none in a log file
    for depth in (1, 2, 3):
        k = ConvNNGP(depth=depth, weight_variance=SW2, bias_variance=SB2)
        add(f"conv NNGP (GAP, 3x3, ReLU), depth {depth}", lambda k=k: k(X, verbose=bar))
    for depth in (1, 2, 3):
        k = NNGP(depth=depth, weight_variance=SW2, bias_variance=SB2)
        add(f"fully connected NNGP (ReLU), depth {depth}", lambda k=k: k(flat))
    # Gaussian kernel: lengthscale chosen on validation among multiples of the median distance
    sub = flat[tr[:500]]
    median = float(torch.cdist(sub, sub).median())
    best = None
    for mult in (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0):
        ls = mult * median
        start = time.perf_counter()
        K = Gaussian(lengthscale=ls)(flat).numpy()
        elapsed = time.perf_counter() - start
        acc_va, acc_te, a = ridge_accuracy(K, y, tr, va, te)
        if best is None or acc_va > best[0]:
            best = (acc_va, acc_te, a, ls, elapsed)
    acc_va, acc_te, a, ls, elapsed = best
    rows.append(
        [
            f"Gaussian (lengthscale {ls:.2f} on validation)",
            f"{acc_va:.4f}",
            f"{acc_te:.4f}",
            f"{a:.2g}",
            f"{elapsed:.1f}",
        ]
    )
    print(rows[-1], flush=True)
    return markdown_table(
        ["kernel", "validation acc.", "test acc.", "ridge α", "Gram time (s)"], rows
    ) + (
        f"\n\n{len(y)} digits: {len(tr)} train / {len(va)} validation / {len(te)} test; the "
        f"Gram time is the whole {len(y)} x {len(y)} matrix."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--sections", nargs="+", default=["nt", "digits"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of both torch and XLA (default 1: on a loaded 2-core VM extra "
        "threads only add synchronisation; both libraries get the same number)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'}"
        + f" intra_op_parallelism_threads={args.threads}"
    )
    print(machine_summary())
    print(f"threads: torch {torch.get_num_threads()}, XLA {args.threads}")
    out = []
    if "nt" in args.sections:
        out.append("## Conv NNGP/NTK (GAP) vs neural-tangents\n\n" + section_nt(args.quick))
    if "digits" in args.sections:
        out.append(
            "## Kernel regression on the 8x8 digits (accuracy)\n\n" + section_digits(args.quick)
        )
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
