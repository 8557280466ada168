"""Cross-check against QMCPy (optional dependency: skipped when it is not installed).

Same points (QMCPy's random shift / scrambled matrices and digital shift fed to our designs),
same kernel values, transforms, eigenvalues and solves. The DSI kernel of order 4 differs by
~1e-8: QMCPy truncates the Walsh sum in K̃₄ at 2^{-3a} < 1e-8, we sum every bit float64 resolves
(the brute-force Walsh-series test in test_kernels.py checks ours).
"""

import numpy as np
import pytest
import torch

qp = pytest.importorskip("qmcpy")

from snnk.lattice import (  # noqa: E402
    DigitalNet,
    DSIKernel,
    Lattice,
    SIKernel,
    StructuredGram,
    fftbr,
    fwht,
    ifftbr,
)

D = 4
ALPHA = [1, 2, 3, 4]
GAMMA = [1.0 / j**2 for j in range(1, D + 1)]


def _our_net(dn):
    mats = torch.from_numpy(dn.gen_mats[0].astype(np.int64))
    shift = torch.from_numpy(dn.rshift[0].astype(np.int64))
    return DigitalNet(dn.d, generating_matrices=mats, randomize="none", t=dn.t, shift=shift)


def test_same_points():
    lat = qp.Lattice(D, seed=11)
    ours = Lattice(D, shift=torch.from_numpy(lat.shift[0]))
    assert np.abs(ours(1024).x.numpy() - lat(1024)).max() <= 1e-15
    dn = qp.DigitalNetB2(D, seed=11)
    net = _our_net(dn)
    assert np.array_equal(net(1024).bits.numpy().astype(np.uint64), dn(1024, return_binary=True))
    assert np.array_equal(
        net(1024, 1024).bits.numpy().astype(np.uint64), dn(2048, return_binary=True)[1024:]
    )
    plain = qp.DigitalNetB2(6, randomize="false")(256, return_binary=True, warn=False)
    assert np.array_equal(DigitalNet(6, randomize="none", t=32)(256).bits.numpy(), plain)


def test_golden_kernel_values_match():
    lat = qp.Lattice(D, seed=11)
    x = lat(8)
    qk = qp.KernelShiftInvar(d=D, alpha=ALPHA, scale=10, lengthscales=GAMMA)
    ours = SIKernel(D, alpha=ALPHA, weights=GAMMA, scale=10)
    xt = torch.from_numpy(x)
    assert abs(float(ours.diag()) - 91.23444453396341) <= 1e-10
    assert np.abs(ours(xt[:, None], xt[None]).numpy() - qk(x[:, None], x[None])).max() <= 1e-10
    dn = qp.DigitalNetB2(D, seed=11)
    xb = dn(8, return_binary=True)
    qd = qp.KernelDigShiftInvar(d=D, t=dn.t, alpha=ALPHA, scale=10, lengthscales=GAMMA)
    ourd = DSIKernel(D, alpha=ALPHA, weights=GAMMA, scale=10, t=dn.t)
    bits = _our_net(dn)(8).bits
    assert abs(float(ourd.diag()) - 34.490370029184525) <= 1e-10
    gram = ourd(bits[:, None], bits[None]).numpy()
    assert np.abs(gram - qd(xb[:, None], xb[None])).max() <= 1e-8  # K̃₄ truncation, see above


@pytest.mark.parametrize("alpha", [1, 2, 3])
def test_dsi_columns_match_to_1e_10(alpha):
    dn = qp.DigitalNetB2(D, seed=3)
    xb = dn(1024, return_binary=True)
    qd = qp.KernelDigShiftInvar(d=D, t=dn.t, alpha=alpha, scale=10, lengthscales=GAMMA)
    bits = _our_net(dn)(1024).bits
    ours = DSIKernel(D, alpha=alpha, weights=GAMMA, scale=10)(bits, bits[:1]).numpy()
    assert np.abs(ours - qd(xb, xb[:1])).max() <= 1e-10


def test_transforms_match():
    from qmcpy.fast_transform import fftbr as q_fftbr
    from qmcpy.fast_transform import fwht as q_fwht
    from qmcpy.fast_transform import ifftbr as q_ifftbr

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1024)) + 1j * rng.standard_normal((3, 1024))
    xt = torch.from_numpy(x)
    assert np.abs(fftbr(xt).numpy() - q_fftbr(x)).max() <= 1e-12
    assert np.abs(ifftbr(xt).numpy() - q_ifftbr(x)).max() <= 1e-12
    assert np.abs(fwht(xt.real).numpy() - q_fwht(x.real)).max() <= 1e-12


@pytest.mark.parametrize("kind", ["lattice", "net"])
def test_eigenvalues_and_solve_match(kind):
    n = 1024
    y = np.random.default_rng(1).standard_normal(n)
    if kind == "lattice":
        lat = qp.Lattice(D, seed=5)
        x = lat(n)
        qk = qp.KernelShiftInvar(d=D, alpha=2)
        from qmcpy.fast_transform import fftbr as q_ft
        from qmcpy.fast_transform import ifftbr as q_ift

        lam = np.sqrt(n) * q_ft(qk(x, x[:1]))
        sol = q_ift(q_ft(y) / lam).real
        op = StructuredGram(
            SIKernel(D, alpha=2), Lattice(D, shift=torch.from_numpy(lat.shift[0]))(n)
        )
        lam = lam.real
    else:
        dn = qp.DigitalNetB2(D, seed=5)
        xb = dn(n, return_binary=True)
        qk = qp.KernelDigShiftInvar(d=D, t=dn.t, alpha=2)
        from qmcpy.fast_transform import fwht as q_ft

        lam = np.sqrt(n) * q_ft(qk(xb, xb[:1]))
        sol = q_ft(q_ft(y) / lam)
        op = StructuredGram(DSIKernel(D, alpha=2), _our_net(dn)(n))
    assert np.abs(op.eigenvalues.numpy() - lam).max() <= 1e-10 * np.abs(lam).max()
    ours = op.solve(torch.from_numpy(y)).numpy()
    assert np.abs(ours - sol).max() <= 1e-10 * np.abs(sol).max()
