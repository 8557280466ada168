"""SI / DSI kernels and the designs (reference qmc-dpp.md, Part F items 4-6)."""

import math

import pytest
import scipy.integrate
import scipy.special
import torch

from snnk.lattice import DigitalNet, DSIKernel, Lattice, SIKernel, dsi_factor, si_factor

GAMMA = [1.0 / j**2 for j in range(1, 5)]


def test_si_closed_forms_alpha_1_and_2():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)[:-1]
    k1 = 2 * math.pi**2 * (t**2 - t + 1 / 6)
    k2 = -(2 * math.pi**4 / 3) * (t**4 - 2 * t**3 + t**2 - 1 / 30)
    assert float((si_factor(t, 1) - k1).abs().max()) <= 1e-14 * 10
    assert float((si_factor(t, 2) - k2).abs().max()) <= 1e-14 * 10


@pytest.mark.parametrize("alpha,tol", [(1, 1.1e-3), (2, 1e-10), (3, 1e-12)])
def test_si_matches_truncated_fourier_series(alpha, tol):
    t = torch.rand(200, generator=torch.Generator().manual_seed(alpha), dtype=torch.float64)
    k = torch.arange(1, 2001, dtype=torch.float64)
    series = 2 * (torch.cos(2 * math.pi * k * t[:, None]) / k ** (2 * alpha)).sum(-1)
    assert float((si_factor(t, alpha) - series).abs().max()) <= tol


@pytest.mark.parametrize("alpha", [1, 2, 3, 4, 5])
def test_si_value_at_zero_and_zero_mean(alpha):
    zero = si_factor(torch.zeros(1, dtype=torch.float64), alpha)
    assert float(zero) == pytest.approx(2 * scipy.special.zeta(2 * alpha), rel=1e-14)
    integral, _ = scipy.integrate.quad(
        lambda s: float(si_factor(torch.tensor(s, dtype=torch.float64), alpha)), 0, 1
    )
    assert abs(integral) <= 1e-12 * float(zero)


def _mu(k: torch.Tensor, alpha: int) -> torch.Tensor:
    """Dick's weight: the sum of the ``alpha`` largest 1-bit positions (1-based) of k."""
    total, count = torch.zeros_like(k), torch.zeros_like(k)
    for pos in range(16, 0, -1):
        bit = (k >> (pos - 1)) & 1
        take = bit * (count < alpha)
        total += take * pos
        count += bit
    return total


def test_dsi_matches_brute_force_walsh_sums():
    t = 16
    xb = torch.randint(0, 2**t, (40,), generator=torch.Generator().manual_seed(0))
    # (at x = 0 and at tiny x the positive tail Σ_{k≥2^16} 2^{-μ(k)} ≈ 1.4e-4 does not cancel)
    xb = torch.cat([xb, torch.tensor([2**15, 2**16 - 1, 12345])])
    k = torch.arange(1, 2**t, dtype=torch.int64)
    rev = torch.zeros_like(xb)
    for b in range(t):  # digit x_{b+1} (b-th after the point) pairs with bit b of k
        rev |= ((xb >> (t - 1 - b)) & 1) << b
    anded = rev[:, None] & k[None, :]
    par = torch.zeros_like(anded)
    for b in range(t):
        par ^= (anded >> b) & 1
    wal = (1 - 2 * par).to(torch.float64)
    for alpha in (2, 3, 4):
        series = (wal * 2.0 ** (-_mu(k, alpha).to(torch.float64))).sum(-1)
        err = (dsi_factor(xb, alpha, t) - series).abs().max()
        assert float(err) <= 1e-4, alpha


def test_dsi_alpha_1_formula():
    t = 20
    xb = torch.randint(1, 2**t, (300,), generator=torch.Generator().manual_seed(1))
    expected = [1 - 3 * 2.0 ** math.floor(math.log2(v / 2**t)) for v in xb.tolist()]
    assert torch.allclose(dsi_factor(xb, 1, t), torch.tensor(expected, dtype=torch.float64))
    assert float(dsi_factor(torch.tensor([0]), 1, t)) == 1.0


def test_dsi_factor_integrates_to_zero_over_a_fine_grid():
    t = 12
    xb = torch.arange(2**t)
    for alpha in (1, 2, 3, 4):  # the mean over all 2^t cells is the k = 0 Walsh coefficient
        assert abs(float(dsi_factor(xb, alpha, t).mean())) < 1e-3


def test_golden_diagonal_values():
    si = SIKernel(4, alpha=[1, 2, 3, 4], weights=GAMMA, scale=10)
    closed = 10 * math.prod(
        1 + g * 2 * scipy.special.zeta(2 * a) for g, a in zip(GAMMA, (1, 2, 3, 4), strict=True)
    )
    assert float(si.diag()) == pytest.approx(91.23444453396341, rel=1e-13)
    assert float(si.diag()) == pytest.approx(closed, rel=1e-13)
    dsi = DSIKernel(4, alpha=[1, 2, 3, 4], weights=GAMMA, scale=10)
    zero = (1, 1.5, 25 / 18, 407 / 294)
    assert float(dsi.diag()) == pytest.approx(34.490370029184525, rel=1e-13)
    assert float(dsi.diag()) == pytest.approx(
        10 * math.prod(1 + g * z for g, z in zip(GAMMA, zero, strict=True))
    )
    # the diagonal is the same at every point
    x = Lattice(4, seed=3)(8)
    assert torch.allclose(si(x.x, x.x), si.diag().expand(8), rtol=1e-14)
    net = DigitalNet(4, seed=3)(8)
    assert torch.allclose(dsi(net, net), dsi.diag().expand(8), rtol=1e-14)


def test_kernels_are_symmetric_psd_and_integrate_to_scale():
    for design, kern in ((Lattice(2, seed=0), SIKernel(2)), (DigitalNet(2, seed=0), DSIKernel(2))):
        p = design(64)
        data = p.bits if p.bits is not None else p.x
        g = kern(data[:, None], data[None])
        assert torch.allclose(g, g.T, atol=1e-14)
        assert float(torch.linalg.eigvalsh(g).min()) > -1e-10
        # ∫ K(x, z) dx = S: the QMC average over a full design equals the integral exactly
        # for these matched pairs only up to aliasing, so use many points of a finer design
        fine = design(2**14)
        fdata = fine.bits if fine.bits is not None else fine.x
        assert float(kern(fdata, data[5:6]).mean()) == pytest.approx(1.0, abs=5e-3)


def test_lattice_prefixes_are_lattices_and_nets_are_stratified():
    lat = Lattice(3, randomize="none")
    x = lat(1024).x
    assert torch.allclose((x * 1024).round(), x * 1024, atol=1e-9)  # on the 1/n grid
    g = lat.generating_vector.to(torch.float64)
    j = (x[:, 0] * 1024).round() % 1024  # first component of g is 1
    assert torch.allclose(x, (j[:, None] * g / 1024) % 1.0, atol=1e-12)
    net = DigitalNet(5, seed=2)(1024)
    for col in range(5):
        cells = torch.floor(net.x[:, col] * 1024).long()
        assert torch.equal(torch.sort(cells).values, torch.arange(1024))
    with pytest.raises(ValueError, match="powers of two"):
        lat(1000)
    with pytest.raises(ValueError, match="powers of two"):
        lat(8, 4)
    assert torch.equal(lat(8, 8).x, lat(16).x[8:])


def test_designs_use_their_generator_only():
    state = torch.random.get_rng_state()
    a, b = DigitalNet(3, seed=5)(16), DigitalNet(3, seed=5)(16)
    assert torch.equal(a.bits, b.bits)
    assert not torch.equal(a.bits, DigitalNet(3, seed=6)(16).bits)
    assert torch.equal(Lattice(3, seed=1).shift, Lattice(3, seed=1).shift)
    assert torch.equal(state, torch.random.get_rng_state())


def test_dsi_kernel_accepts_floats_bits_and_point_sets_alike():
    net = DigitalNet(3, seed=4, t=52)(64)
    k = DSIKernel(3, alpha=[1, 2, 3], t=52)
    from_bits = k(net.bits[:, None], net.bits[None])
    assert torch.equal(k(net.x[:, None], net.x[None]), from_bits)  # x = bits / 2^52 exactly
    assert torch.equal(k(net, net), torch.diagonal(from_bits))
    with pytest.raises(ValueError, match="t=52"):
        DSIKernel(3)(net, net)
    with pytest.raises(ValueError, match="alpha"):
        DSIKernel(2, alpha=5)
    with pytest.raises(ValueError, match="weights"):
        SIKernel(2, weights=[1.0, -1.0])
