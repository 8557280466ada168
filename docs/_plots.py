"""Draw the figures of the documentation pages that no benchmark script draws.

``python docs/_plots.py`` (from the repository root, with matplotlib) rewrites
docs/kernels.png (kernel profiles), docs/nystrom.png (Nyström centres chosen by four
methods on clustered data; about 15 s) and docs/benchmarks_kernel_machines.png (drawn from
the tables of docs/benchmarks.md, measured 2026-11-23).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter

from snnk import features, kernels

DOCS = Path(__file__).resolve().parent
F64 = torch.float64


def kernel_profiles() -> None:
    r = torch.linspace(0, 4, 400, dtype=F64)[:, None]
    zero = torch.zeros(1, 1, dtype=F64)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, k in [
        ("Gaussian", kernels.Gaussian()),
        ("Matérn ν=2.5", kernels.Matern(2.5)),
        ("Matérn ν=1.5", kernels.Matern(1.5)),
        ("Matérn ν=0.5 (exp(−r))", kernels.Matern(0.5)),
    ]:
        a.plot(r[:, 0], k(r, zero)[:, 0], label=name)
    a.set(xlabel="‖x − y‖ / ℓ", ylabel="k(x, y)", title="shift-invariant kernels (ℓ = 1)")
    a.legend()
    a.grid(alpha=0.3)
    theta = torch.linspace(0, torch.pi, 400, dtype=F64)
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    Y = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    for order in (0, 1, 2):
        b.plot(theta, kernels.ArcCosine(order)(Y, x)[:, 0], label=f"ArcCosine(order={order})")
    b.plot(theta, kernels.Softmax(1.0)(Y, x)[:, 0] / torch.e, label="Softmax(T=1) / e")
    b.set(
        xlabel="angle θ between unit vectors x and y",
        title="dot-product kernels (‖x‖ = ‖y‖ = 1)",
    )
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS / "kernels.png", dpi=110)


def nystrom_centres() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [1500, 300, 60, 20]
    means = torch.tensor([[0.0, 0.0], [4.0, 1.0], [1.0, 4.5], [5.0, 5.0]], dtype=F64)
    X = torch.cat(
        [
            means[i] + (0.9 if i == 0 else 0.4) * torch.randn(s, 2, dtype=F64, generator=g)
            for i, s in enumerate(sizes)
        ]
    )
    k = kernels.Gaussian(lengthscale=0.7)
    K = k(X)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharex=True, sharey=True)
    for ax, method in zip(axes, ["uniform", "kmeans++", "rpcholesky", "kdpp"], strict=True):
        nys = features.NystromFeatures(k, 24, centers=method, seed=0).fit(X)
        Z = nys(X)
        err = float(torch.linalg.norm(Z @ Z.T - K) / torch.linalg.norm(K))
        ax.scatter(X[:, 0], X[:, 1], s=2, c="0.7")
        C = nys.centers
        ax.scatter(C[:, 0], C[:, 1], s=40, c="C3", marker="x")
        ax.set_title(f'centers="{method}"\nGram error {err:.3f}')
    fig.suptitle("24 Nyström centres on clustered data (n = 1,880, Gaussian ℓ = 0.7)", y=1.0)
    fig.tight_layout()
    fig.savefig(DOCS / "nystrom.png", dpi=100, bbox_inches="tight")


def kernel_machines() -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.3))
    points = [  # label, fit (s), test RMSE on draw 0, snnk's
        ("sklearn RBFSampler+Ridge (f64)", 3.47, 0.4521, False),
        ("RandomFeatureRidge, paired (f64)", 2.21, 0.4812, True),
        ("RandomFeatureRidge, paired (f32)", 1.31, 0.4812, True),
        ("sklearn Nystroem+Ridge (f64)", 9.32, 0.3534, False),
        ("NystromRidge (f64)", 3.03, 0.3489, True),
        ("NystromRidge (f32)", 2.71, 0.3489, True),
        ("sklearn KernelRidge (exact)", 74.8, 0.28368, False),
        ("KernelRidgeCG M=4000 (exact)", 57.6, 0.2837, True),
    ]
    for i, (label, t, rmse, ours) in enumerate(points):
        a.scatter(t, rmse, marker="o" if ours else "s", s=60, color=f"C{i}", label=label)
    a.set_xscale("log")
    a.xaxis.set_minor_formatter(NullFormatter())
    a.xaxis.set_major_formatter(ScalarFormatter())
    a.set_xticks([1, 2, 5, 10, 20, 50, 100])
    a.set(
        xlabel="fit time (s, log)",
        ylabel="test RMSE (draw 0)",
        title="reference problem: n = 20,000, d = 20, D = M = 2,000\n"
        "(circles: snnk, squares: scikit-learn)",
    )
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=7.5, loc="upper right")
    m = [500, 1000, 2000, 3000, 4000, 5000]
    nystrom = [0.7302, 0.5944, 0.3991, 0.3103, 0.2804, 0.2451]
    fourier = [17.6390, 12.6416, 7.9398, 4.7694, 2.9558]
    b.plot(m, nystrom, "o-", label="RandomFeatureGP, Nyström features")
    b.plot(m[:-1], fourier, "s-", label="RandomFeatureGP, Fourier features")
    b.axhline(0.2442, color="k", ls="--", label="exact GP (GPyTorch)")
    b.set_yscale("log")
    b.set(
        xlabel="number of features (n = 5,000 training rows)",
        ylabel="test NLPD (log)",
        title="GP at the exact GP's hyper-parameters",
    )
    b.grid(alpha=0.3, which="both")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "benchmarks_kernel_machines.png", dpi=100)


if __name__ == "__main__":
    kernel_profiles()
    nystrom_centres()
    kernel_machines()
