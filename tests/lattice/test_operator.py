"""The structured Gram operator (reference qmc-dpp.md, Part F items 7-9).

Item 9 (time of first column + eigenvalues + one solve grows with slope <= 1.3 in log-log over
n = 2^12 ... 2^18, and >= 1000x faster than a dense Cholesky at 2^14) is a wall-clock property:
the project does not assert wall-clock time in unit tests, so ``benchmarks/lattice.py`` measures
and reports it. Here only the algebra is tested.
"""

import numpy as np
import pytest
import scipy.stats
import torch

from snnk.lattice import (
    DigitalNet,
    DSIKernel,
    Lattice,
    PointSet,
    SIKernel,
    StructuredGram,
    eigenvalues_from_column,
    fwht,
)

N = 2**10


def _pair(kind, d, alpha=2, seed=0, n=N):
    if kind == "lattice":
        return SIKernel(d, alpha=alpha), Lattice(d, seed=seed)(n)
    return DSIKernel(d, alpha=alpha), DigitalNet(d, seed=seed)(n)


def _vec(n, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["lattice", "net"])
@pytest.mark.parametrize("d", [1, 4])
def test_fast_matches_dense(kind, d):
    kernel, pts = _pair(kind, d)
    op = StructuredGram(kernel, pts, nugget=1e-6)
    dense = op.to_dense()
    v = _vec(N)
    kv = dense @ v
    assert torch.linalg.vector_norm(op.matvec(v) - kv) <= 1e-13 * kv.norm()
    x = op.solve(v)
    # normwise backward error ‖Kx − v‖ / (‖K‖ ‖x‖ + ‖v‖): small whatever the conditioning
    resid = torch.linalg.vector_norm(dense @ x - v)
    lam_max = torch.linalg.eigvalsh(dense).max()  # ‖K‖₂
    assert resid <= 1e-13 * (lam_max * x.norm() + v.norm())
    cond = float(op.eigenvalues.max() / op.eigenvalues.min())
    if cond < 1e6:  # forward error against the dense solve (d = 1, alpha = 2: cond ~ 3e9,
        ref = torch.linalg.solve(dense, v)  # where the dense solve itself is only ~1e-7 good)
        assert torch.linalg.vector_norm(x - ref) <= 1e-10 * ref.norm()
    logdet = torch.linalg.slogdet(dense)[1]
    assert abs(float(op.logdet() - logdet)) <= 1e-8 * abs(float(logdet))
    lam = torch.linalg.eigvalsh(dense)
    assert torch.allclose(torch.sort(op.eigenvalues).values, lam, atol=1e-9 * float(lam.max()))


@pytest.mark.parametrize("d", [1, 4])
def test_forward_solve_error_at_moderate_conditioning(d):
    kernel, pts = _pair("lattice", d, alpha=1)
    op = StructuredGram(kernel, pts, nugget=1e-6)
    v = _vec(N)
    ref = torch.linalg.solve(op.to_dense(), v)
    assert torch.linalg.vector_norm(op.solve(v) - ref) <= 1e-10 * ref.norm()


def test_lattice_eigenvalues_are_real_to_roundoff():
    kernel, pts = _pair("lattice", 4)
    from snnk.lattice import fftbr

    lam = N**0.5 * fftbr(kernel(pts, PointSet(pts.x[:1], None, pts.design, 0)))
    assert float(lam.imag.abs().max()) <= 1e-10 * float(lam.abs().max())


@pytest.mark.parametrize("kind", ["lattice", "net"])
def test_operator_batches_and_keeps_constant_eigenvector(kind):
    kernel, pts = _pair(kind, 3, n=256)
    op = StructuredGram(kernel, pts, nugget=1e-8)
    v = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = op.to_dense()
    assert torch.allclose(op.matvec(v), v @ dense.T, atol=1e-11)
    assert torch.allclose(op @ v[0, 0], dense @ v[0, 0], atol=1e-11)
    ones = torch.ones(256, dtype=torch.float64)
    assert torch.allclose(op.matvec(ones), op.eigenvalues[0] * ones, rtol=1e-12)


@pytest.mark.parametrize("kind", ["lattice", "net"])
def test_doubling_update_equals_a_fresh_operator(kind):
    kernel, pts = _pair(kind, 4, n=512)
    op = StructuredGram(kernel, pts, nugget=1e-7)
    new = pts.design(512, 512)
    big = op.extend(new).extend(pts.design(1024, 1024))
    fresh = StructuredGram(kernel, pts.design(2048), nugget=1e-7)
    scale = float(fresh.eigenvalues.abs().max())
    assert torch.allclose(big.eigenvalues, fresh.eigenvalues, atol=1e-12 * scale, rtol=0)
    v = _vec(2048)
    assert torch.allclose(big.matvec(v), fresh.matvec(v), rtol=1e-12, atol=1e-12 * scale)
    ref = fresh.solve(v)  # small eigenvalues carry the 1e-12 * max|λ| roundoff, relatively
    assert torch.linalg.vector_norm(big.solve(v) - ref) <= 1e-6 * ref.norm()
    with pytest.raises(ValueError, match="n_start"):
        op.extend(pts.design(1024, 1024))
    with pytest.raises(ValueError, match="same design"):
        op.extend(Lattice(4, seed=9)(512, 512) if kind == "lattice" else DigitalNet(4)(512, 512))


def _nus(bits: torch.Tensor, t: int, seed: int) -> torch.Tensor:
    """Owen's nested uniform scramble of t-bit integers: digit b is flipped by a random bit
    chosen independently for every prefix of the b previous original digits."""
    gen = torch.Generator().manual_seed(seed)
    flips: dict = {}
    out = torch.zeros_like(bits)
    for i, j in np.ndindex(*bits.shape):
        v, r = int(bits[i, j]), 0
        for b in range(t):
            key = (j, b, v >> (t - b))
            if key not in flips:
                flips[key] = int(torch.randint(0, 2, (1,), generator=gen))
            digit = ((v >> (t - 1 - b)) & 1) ^ flips[key]
            r |= digit << (t - 1 - b)
        out[i, j] = r
    return out


def test_nus_breaks_the_structure_and_is_refused():
    t, n = 32, 64
    plain = DigitalNet(2, randomize="none", t=t)(n)
    nus = _nus(plain.bits, t, seed=0)
    kernel = DSIKernel(2, t=t)
    dense = kernel(nus[:, None], nus[None])
    lam = eigenvalues_from_column(dense[:, 0], "net")
    v = _vec(n)
    fast = fwht(lam * fwht(v))
    gap = torch.linalg.vector_norm(fast - dense @ v) / torch.linalg.vector_norm(dense @ v)
    assert float(gap) > 1e-3  # so the guard below is needed
    with pytest.raises(ValueError, match="PointSet generated by"):
        StructuredGram(kernel, nus)
    forged = PointSet(nus.double() / 2**t, nus, plain.design, 0)
    with pytest.raises(ValueError, match="not those its design generates"):
        StructuredGram(kernel, forged)


def test_halton_and_other_arrays_are_refused():
    x = torch.from_numpy(scipy.stats.qmc.Halton(2, seed=0).random(64))
    with pytest.raises(ValueError, match="Halton"):
        StructuredGram(SIKernel(2), x)
    design = Lattice(2, seed=0)
    with pytest.raises(ValueError, match="not those its design generates"):
        StructuredGram(SIKernel(2), PointSet(x, None, design, 0))


def test_non_power_of_two_and_mismatches_are_refused():
    design = Lattice(2, seed=0)
    pts = design(1024)
    with pytest.raises(ValueError, match="power of two"):
        StructuredGram(SIKernel(2), PointSet(pts.x[:1000], None, design, 0))
    with pytest.raises(ValueError, match="n_start"):
        StructuredGram(SIKernel(2), design(512, 512))
    with pytest.raises(ValueError, match="SIKernel"):
        StructuredGram(DSIKernel(2), pts)
    with pytest.raises(ValueError, match="DSIKernel"):
        StructuredGram(SIKernel(2), DigitalNet(2, seed=0)(64))
    with pytest.raises(ValueError, match="dimension"):
        StructuredGram(SIKernel(3), pts)
    with pytest.raises(ValueError, match="nugget"):
        StructuredGram(SIKernel(2), pts, nugget=-1.0)


def test_logdet_refuses_indefinite_matrix():
    kernel, pts = _pair("lattice", 1, alpha=3, n=2**12)
    op = StructuredGram(kernel, pts)  # no nugget: roundoff makes some eigenvalues <= 0
    if bool((op.eigenvalues <= 0).any()):
        with pytest.raises(ValueError, match="nugget"):
            op.logdet()
    else:
        assert torch.isfinite(op.logdet())


def test_dtype_float32_points():
    pts = Lattice(2, seed=0, dtype=torch.float32)(256)
    kernel = SIKernel(2, dtype=torch.float32)
    op = StructuredGram(kernel, pts, nugget=1e-3)
    assert op.eigenvalues.dtype == torch.float32
    v = torch.ones(256)
    assert op.solve(v).dtype == torch.float32
