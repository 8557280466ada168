"""NNGP / NTK kernels of infinitely wide fully connected networks.

Reference values: neural-tangents 0.6.5 in float64 (``jax_enable_x64``), network
``Dense(512, 1.5, 0.1) → φ → Dense(512, 1.5, 0.1) → φ → Dense(1, 1.5, 0.1)``, NTK
parameterisation (/work/shared/reference/infinite-width.md §9).
"""

from __future__ import annotations

import math

import pytest
import torch

from snnk.kernels import NNGP, NTK, ArcCosine, fully_connected_kernels, make_kernel
from snnk.kernels._nngp_maps import diag_expectations, expectations

F64 = torch.float64
X1 = torch.tensor([[1, 2, 0.5], [0.3, -1, 2], [-0.7, 0.2, 0.1]], dtype=F64)
X2 = torch.tensor([[0.5, 0.5, -1], [2, 0, 1]], dtype=F64)
NT_VALUES = {
    "relu": (
        [[1.6860816205, 3.3309280371], [0.8851331651, 3.3425210391], [0.3678743514, 0.5512660944]],
        [[3.0302141532, 6.5267691703], [0.7116388526, 6.6648962838], [0.3819422868, 0.4466272565]],
    ),
    "erf": (
        [
            [0.3416654477, 0.4694294327],
            [-0.8410093839, 0.4980688033],
            [-0.2908854522, -0.6779712345],
        ],
        [
            [1.0183282413, 1.4479143808],
            [-2.9983739563, 1.5476520842],
            [-0.9169103186, -2.2542731874],
        ],
    ),
    "gelu": (
        [[1.1710145628, 2.8306506991], [0.4209543473, 2.8472844109], [0.0828698189, 0.1092765460]],
        [[2.3245283377, 5.9304500799], [0.1777707258, 6.0901659328], [0.0125932821, -0.1161437361]],
    ),
    "leaky_relu": (
        [[1.6006248552, 3.2374706842], [0.4710394495, 3.2629962340], [0.2745463577, 0.3139870245]],
        [
            [3.0753521004, 6.7729142856],
            [-0.1880362226, 6.9390153420],
            [0.2092204936, -0.0604201927],
        ],
    ),
}
NT_NET = {"depth": 2, "weight_variance": 1.5**2, "bias_variance": 0.1**2, "negative_slope": 0.1}


@pytest.mark.parametrize("activation", sorted(NT_VALUES))
def test_values_match_neural_tangents(activation):
    nngp_ref, ntk_ref = (torch.tensor(v, dtype=F64) for v in NT_VALUES[activation])
    nngp = NNGP(activation=activation, **NT_NET)(X1, X2)
    ntk = NTK(activation=activation, **NT_NET)(X1, X2)
    # the 10-digit rounding of the fixture is the limit
    torch.testing.assert_close(nngp, nngp_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ntk, ntk_ref, rtol=1e-9, atol=1e-10)
    both = fully_connected_kernels(X1, X2, activation=activation, **NT_NET)
    torch.testing.assert_close(both[0], nngp, rtol=0, atol=0)
    torch.testing.assert_close(both[1], ntk, rtol=0, atol=0)


def test_hand_check_one_relu_layer():
    x = torch.eye(2, dtype=F64)
    c = 1.0 / (4.0 * math.pi)
    torch.testing.assert_close(NNGP(1)(x), torch.tensor([[0.25, c], [c, 0.25]], dtype=F64))
    torch.testing.assert_close(NTK(1)(x), torch.tensor([[0.5, c], [c, 0.5]], dtype=F64))


@pytest.mark.parametrize("cls", [NNGP, NTK])
@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh"])
def test_diag_blocks_batches_and_symmetry(cls, activation):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(2, 7, 4, generator=g, dtype=F64)
    k = cls(depth=3, activation=activation, weight_variance=1.7, bias_variance=0.2)
    K = k(X)
    assert K.shape == (2, 7, 7)
    # quadrature (tanh) conditions on u: symmetric to its accuracy at these variances only
    tol = 1e-3 * float(K.abs().max()) if activation == "tanh" else 1e-12
    torch.testing.assert_close(K, K.mT, rtol=tol, atol=tol)
    torch.testing.assert_close(
        K.diagonal(dim1=-2, dim2=-1), k.diag(X), rtol=max(tol, 1e-8), atol=tol
    )
    torch.testing.assert_close(k(X, block_rows=2), K, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(k(X[1]), K[1], rtol=1e-13, atol=1e-14)
    # positive semi-definite
    eig = torch.linalg.eigvalsh(K)
    assert float(eig.min()) >= -1e-10 * float(eig.max())


def test_psd_deep_and_composition():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 5, generator=g, dtype=F64)
    for k in (NNGP(10, "relu", 2.0, 0.05), NTK(10, "erf", 3.0, 0.1), NTK(4, "gelu", 1.0, 0.0)):
        K = k(X)
        eig = torch.linalg.eigvalsh(K)
        assert float(eig.min()) >= -1e-10 * float(eig.max()), k
    k = NNGP(2) + 0.5 * NTK(2, "erf")
    torch.testing.assert_close(k(X), NNGP(2)(X) + 0.5 * NTK(2, "erf")(X))
    assert make_kernel(**k.get_config()) == k


def test_known_limits():
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64)
    # depth 1, ReLU, σ_w² = 1, σ_b² = 0: half the arc-cosine kernel of x/√d
    torch.testing.assert_close(NNGP(1)(X, Y), ArcCosine(1)(X, Y) / (2 * 5), rtol=1e-12, atol=0)
    # NTK of one ReLU layer: Σ + Σ̇ ⊙ Θ¹ with Σ̇ = k₀/2
    lin = X @ Y.T / 5
    torch.testing.assert_close(
        NTK(1)(X, Y), ArcCosine(1)(X, Y) / 10 + ArcCosine(0)(X, Y) / 2 * lin, rtol=1e-12, atol=0
    )
    # depth 0: the affine kernel
    torch.testing.assert_close(NNGP(0, weight_variance=2.0, bias_variance=0.3)(X, Y), 2 * lin + 0.3)
    # zero weight variance: the bias variance everywhere (both kernels)
    for cls in (NNGP, NTK):
        K = cls(5, "erf", weight_variance=0.0, bias_variance=0.7)(X, Y)
        torch.testing.assert_close(K, torch.full_like(K, 0.7), rtol=0, atol=1e-15)
    # identical inputs: ReLU Σ̇ = 1/2 and K̃ = q/2
    q = torch.tensor([0.3, 2.0, 1e-3], dtype=F64)
    k, kd = expectations("relu", q, q, q)
    torch.testing.assert_close(k, q / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(kd, torch.full((3,), 0.5, dtype=F64), rtol=0, atol=1e-8)


def _relu_polar(q11, q22, q12):
    """E[relu(u)relu(v)] and P(u>0, v>0) by adaptive 1-D quadrature in polar coordinates
    (independent of the arc-cosine closed form): u = a z₁, v = b z₁ + c z₂."""
    from scipy.integrate import quad

    a = math.sqrt(q11)
    b = q12 / a
    c = math.sqrt(max(q22 - b * b, 0.0))
    kinks = sorted({math.pi / 2, 3 * math.pi / 2, math.atan2(-b, c) % (2 * math.pi)})
    kinks += [(t + math.pi) % (2 * math.pi) for t in kinks]

    def relu_pair(t):
        return max(a * math.cos(t), 0.0) * max(b * math.cos(t) + c * math.sin(t), 0.0)

    def step_pair(t):
        return float(a * math.cos(t) > 0 and b * math.cos(t) + c * math.sin(t) > 0)

    opts = {"points": sorted(kinks), "limit": 200, "epsabs": 1e-14, "epsrel": 1e-13}
    # radial integrals: ∫ r³ e^{-r²/2} dr = 2 and ∫ r e^{-r²/2} dr = 1
    k = quad(relu_pair, 0, 2 * math.pi, **opts)[0] * 2 / (2 * math.pi)
    kd = quad(step_pair, 0, 2 * math.pi, **opts)[0] / (2 * math.pi)
    return k, kd


@pytest.mark.parametrize("q", [(1.2, 0.8, 0.5), (4.0, 3.0, 3.4), (9.0, 9.0, -4.0), (0.3, 2.0, 0.0)])
def test_relu_closed_form_vs_quadrature(q):
    q11, q22, q12 = (torch.tensor([[v]], dtype=F64) for v in q)
    k, kd = expectations("relu", q11, q22, q12)
    k_ref, kd_ref = _relu_polar(*q)
    assert abs(float(k) - k_ref) <= 1e-8 * max(1.0, abs(k_ref))
    assert abs(float(kd) - kd_ref) <= 1e-8


@pytest.mark.parametrize("activation", ["erf", "gelu"])
@pytest.mark.parametrize("q", [(1.2, 0.8, 0.5), (0.5, 1.5, -0.6), (2.0, 2.0, 1.9)])
def test_smooth_closed_forms_vs_gauss_hermite(activation, q):
    q11, q22, q12 = (torch.tensor([[v]], dtype=F64) for v in q)
    k, kd = expectations(activation, q11, q22, q12)
    kq, kdq = expectations(activation, q11, q22, q12, method="quadrature", degree=150)
    assert abs(float(k - kq)) <= 1e-8 * max(1.0, abs(float(k)))
    assert abs(float(kd - kdq)) <= 1e-8 * max(1.0, abs(float(kd)))
    qd = q11[0]
    kdg, kddg = diag_expectations(activation, qd)
    kdq2, kddq2 = diag_expectations(activation, qd, method="quadrature", degree=150)
    assert abs(float(kdg - kdq2)) <= 1e-8 and abs(float(kddg - kddq2)) <= 1e-8


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh"])
def test_price_theorem_and_autograd(activation):
    """∂K̃/∂q₁₂ = Σ̇ by central differences and by autograd (finite at x = x′)."""
    q11 = torch.tensor([[1.3]], dtype=F64)
    q22 = torch.tensor([[0.9]], dtype=F64)
    for c in (0.4, -0.7):
        q12 = torch.tensor([[c]], dtype=F64, requires_grad=True)
        k, kd = expectations(activation, q11, q22, q12, degree=120)
        (grad,) = torch.autograd.grad(k.sum(), q12)
        h = 1e-5
        kp, _ = expectations(activation, q11, q22, q12.detach() + h, degree=120)
        km, _ = expectations(activation, q11, q22, q12.detach() - h, degree=120)
        fd = (kp - km) / (2 * h)
        assert abs(float((fd - kd).detach())) <= 1e-7, (activation, c)
        assert abs(float((grad - kd).detach())) <= 1e-10
    # gradients of the whole kernel are finite on the diagonal (x = x′), where √ and atan2
    # meet their singular points
    X = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    X.requires_grad_(True)
    K = NTK(3, activation, 2.0, 0.1)(X)
    (gX,) = torch.autograd.grad(K.sum(), X)
    assert torch.isfinite(gX).all()


def test_atan2_form_no_nan_in_float32():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(300, 20, generator=g) * 30
    K = NNGP(3, "relu", 2.0)(X)
    assert K.dtype == torch.float32 and torch.isfinite(K).all()
    K64 = NNGP(3, "relu", 2.0)(X.double())
    assert float(((K.double() - K64).abs() / K64.abs().amax()).max()) < 1e-4


@pytest.mark.parametrize("weight_variance", [0.0, 1e-201, 2.0, 1e3])
def test_erf_in_place_layer_matches_atan2_form(weight_variance):
    """The in-place erf layer (ρ = q₁₂/√((q₁₁+½)(q₂₂+½)), asin ρ, Σ̇ from √(1 − ρ²), the
    constant 2σ_w²/π folded into the square root unless 1/c² is not a normal number) equals
    the atan2 form that the autograd path takes; it stays finite where ρ rounds to ±1."""
    g = torch.Generator().manual_seed(6)
    X = torch.randn(9, 4, generator=g, dtype=F64)
    Y = torch.randn(5, 4, generator=g, dtype=F64)
    opts = {"depth": 2, "activation": "erf", "weight_variance": weight_variance}
    for scale in (1e-8, 1.0, 1e4):
        for Yarg in (None, Y * scale):
            fast = fully_connected_kernels(X * scale, Yarg, bias_variance=0.1, **opts)
            Xg = (X * scale).requires_grad_(True)
            slow = fully_connected_kernels(Xg, Yarg, bias_variance=0.1, **opts)
            for a, b in zip(fast, slow, strict=True):
                torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
    # q ≈ 1e24: ρ rounds to 1 on the diagonal; the clamp to 1 − ε keeps Σ̇ finite
    for K in fully_connected_kernels(X * 1e12, bias_variance=0.1, **opts):
        assert torch.isfinite(K).all()


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_ntk_diagonal_follows_diagonal_recursion_at_large_scale(activation):
    """At x = x′ the angle forms lose about q·ε (1 − ρ² or q₁₁q₂₂ − q₁₂² cancels): the
    NTK's diagonal takes σ_w² Σ̇ from the diagonal formulas, so ``k(X)`` keeps ``k.diag(X)``
    to rounding at q ≈ 1e8 (the angle form alone was off by ~1e-7 relative for erf), and
    the erf diagonal Σ̇ = (4/π)/√(1 + 4q) has no cancellation of its own."""
    X = torch.randn(7, 4, generator=torch.Generator().manual_seed(8), dtype=F64) * 1e4
    k = NTK(3, activation, 2.0, 0.1)
    for rows in (None, 3):
        torch.testing.assert_close(k(X, block_rows=rows).diagonal(), k.diag(X), rtol=1e-13, atol=0)
    q = torch.tensor([1e12], dtype=F64)
    kd = diag_expectations("erf", q)[1]
    torch.testing.assert_close(kd, (2 / math.pi) / torch.sqrt(q + 0.25), rtol=1e-14, atol=0)


def test_callable_activation_and_quadrature_tanh():
    X = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    a = NTK(2, "tanh", 1.5, 0.1, quadrature_degree=80)(X)
    b = NTK(2, torch.tanh, 1.5, 0.1, quadrature_degree=80)(X)  # derivative by autograd
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bad_options():
    with pytest.raises(ValueError, match="depth"):
        NNGP(depth=-1)
    with pytest.raises(ValueError, match="activation"):
        NNGP(activation="swishy")
    with pytest.raises(TypeError, match="activation"):
        NNGP(activation=3)
    with pytest.raises(ValueError, match="weight_variance"):
        NNGP(weight_variance=-1.0)
    with pytest.raises(ValueError, match="closed form"):
        NNGP(activation="tanh", method="closed")
    with pytest.raises(ValueError, match="quadrature_degree"):
        NNGP(quadrature_degree=1000)
    with pytest.raises(ValueError, match="X"):
        NNGP()(torch.tensor([[float("nan"), 1.0]]))
    X = torch.randn(4, 3)
    for dtype in (torch.float16, torch.bfloat16):
        K = NTK(2)(X.to(dtype))
        assert K.dtype == dtype and torch.isfinite(K.float()).all()
    assert NTK(2)(X[:1]).shape == (1, 1)
    with pytest.raises(ValueError, match="X"):
        NTK(2)(X[:0], X)


# -- Monte-Carlo definitions ---------------------------------------------------------------------
def _sample_last_layer(X, depth, act, sw2, sb2, width, draws, gen):
    """Post-activations of the last hidden layer of ``draws`` finite networks of ``width``
    units, sampled exactly: given the layer below ``A`` (``n x width``), the pre-activations of
    the ``width`` units are i.i.d. ``N(0, σ_w² A Aᵀ/width + σ_b²)`` (the rows of ``W`` are
    independent), so no ``width x width`` matrix is ever drawn."""
    n, d = X.shape
    phi = {"relu": torch.relu, "erf": torch.erf}[act]
    cov = (sw2 * (X @ X.T) / d + sb2).expand(draws, n, n)
    for layer in range(depth):
        L = torch.linalg.cholesky(cov + 1e-12 * torch.eye(n, dtype=F64))
        Z = L @ torch.randn(draws, n, width, generator=gen, dtype=F64)
        A = phi(Z)
        if layer < depth - 1:
            cov = sw2 * (A @ A.mT) / width + sb2
    return A


@pytest.mark.parametrize("act,depth", [("relu", 1), ("relu", 2), ("erf", 2), ("relu", 3)])
def test_nngp_monte_carlo(act, depth):
    """Empirical readout covariance σ_w²⟨a(x), a(x′)⟩/n + σ_b² of random networks of width
    4,096 over 64 draws, within 4 standard errors (+ a 2/n bias allowance for depth ≥ 2)."""
    X = torch.cat([X1, X2])
    sw2, sb2, width, draws = 2.25, 0.01, 4096, 64
    gen = torch.Generator().manual_seed(10 + depth)
    A = _sample_last_layer(X, depth, act, sw2, sb2, width, draws, gen)
    est = sw2 * (A @ A.mT) / width + sb2  # (draws, n, n)
    mean, se = est.mean(0), est.std(0) / math.sqrt(draws)
    K = NNGP(depth, act, sw2, sb2)(X)
    bias = 0.0 if depth == 1 else 2.0 / width
    assert ((mean - K).abs() <= 4 * se + bias * K.abs()).all()


def _one_layer_ntk_mc(X, act, sw2, sb2, width, draws, gen):
    """Jacobian products ∂f(x)/∂p · ∂f(x′)/∂p of one-hidden-layer networks at initialisation
    (``torch.func.jacrev`` over every weight and bias, ``vmap`` over the draws)."""
    from torch.func import jacrev, vmap

    n, d = X.shape
    phi = {"relu": torch.relu, "erf": torch.erf}[act]
    sw, sb = math.sqrt(sw2), math.sqrt(sb2)

    def f(params, x):
        z = sw / math.sqrt(d) * x @ params["W1"].T + sb * params["b1"]
        return sw / math.sqrt(width) * phi(z) @ params["w2"] + sb * params["b2"]

    def ntk(params):
        J = jacrev(f)(params, X)
        flat = torch.cat([J[k].reshape(n, -1) for k in sorted(J)], dim=1)
        return flat @ flat.T

    params = {
        "W1": torch.randn(draws, width, d, generator=gen, dtype=F64),
        "b1": torch.randn(draws, width, generator=gen, dtype=F64),
        "w2": torch.randn(draws, width, generator=gen, dtype=F64),
        "b2": torch.randn(draws, generator=gen, dtype=F64),
    }
    return vmap(ntk)(params)


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_ntk_monte_carlo_jacobian(act):
    """Empirical NTK (Jacobian products over all parameters) of one-hidden-layer networks of
    width 4,096 over 64 draws, within 4 standard errors of the NTK."""
    X = torch.cat([X1, X2])
    sw2, sb2 = 2.25, 0.01
    est = _one_layer_ntk_mc(X, act, sw2, sb2, 4096, 64, torch.Generator().manual_seed(7))
    mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
    K = NTK(1, act, sw2, sb2)(X)
    assert ((mean - K).abs() <= 4 * se).all()


def test_ntk_monte_carlo_two_layers():
    """Two hidden ReLU layers of width 1,024, 64 draws: empirical NTK by backpropagation
    (the Jacobian of each dense layer is δ aᵀ, so Θ̂ = Σ_ℓ (σ_w²/n_in)(δ·δ′)(a·a′) + σ_b²(δ·δ′))."""
    X = torch.cat([X1, X2])
    n, d = X.shape
    sw2, sb2, width, draws = 2.0, 0.04, 1024, 64
    sw, sb = math.sqrt(sw2), math.sqrt(sb2)
    gen = torch.Generator().manual_seed(8)
    ests = []
    for _ in range(draws):
        W1 = torch.randn(width, d, generator=gen, dtype=F64)
        W2 = torch.randn(width, width, generator=gen, dtype=torch.float32)  # products in f32
        w3 = torch.randn(width, generator=gen, dtype=F64)
        b1, b2 = (torch.randn(width, generator=gen, dtype=F64) for _ in range(2))
        z1 = sw / math.sqrt(d) * X @ W1.T + sb * b1
        a1 = torch.relu(z1)
        z2 = sw / math.sqrt(width) * (a1.float() @ W2.T).double() + sb * b2
        a2 = torch.relu(z2)
        d3 = torch.ones(n, 1, dtype=F64)  # ∂f/∂z3
        d2 = (sw / math.sqrt(width)) * w3 * (z2 > 0)  # ∂f/∂z2, (n, width)
        d1 = (sw / math.sqrt(width)) * (d2.float() @ W2).double() * (z1 > 0)
        theta = torch.zeros(n, n, dtype=F64)
        for delta, a, fan in ((d3, a2, width), (d2, a1, width), (d1, X, d)):
            dd = delta @ delta.T
            theta += sw2 / fan * dd * (a @ a.T) + sb2 * dd
        ests.append(theta)
    est = torch.stack(ests)
    mean, se = est.mean(0), est.std(0) / math.sqrt(draws)
    K = NTK(2, "relu", sw2, sb2)(X)
    assert ((mean - K).abs() <= 4 * se + 2.0 / width * K.abs()).all()
    # and close in Frobenius norm (per-draw relative sd ≈ 2.5/√n: SE ≈ 1 % here)
    assert float(torch.linalg.norm(mean - K) / torch.linalg.norm(K)) < 0.03


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "erf", "gelu"])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_blocks_written_in_place_match_one_block(activation, depth):
    """The row-block path writes the last layer straight into the output (and the first
    layer as one GEMM of augmented inputs): the same values as one block, and the diagonal
    of the NNGP ``k(X)`` still equals ``k.diag(X)`` bit for bit (the NTK's to rounding: its
    x = x′ entries take σ_w² Σ̇ from the diagonal formula, in a fused update)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(11, 5, generator=g, dtype=F64)
    Y = torch.randn(6, 5, generator=g, dtype=F64)
    opts = {"depth": depth, "activation": activation, "weight_variance": 1.7, "bias_variance": 0.2}
    for Yarg in (None, Y):
        whole = fully_connected_kernels(X, Yarg, **opts)
        blocks = fully_connected_kernels(X, Yarg, block_rows=4, **opts)
        for a, b in zip(whole, blocks, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-13, atol=1e-14)
    for cls in (NNGP, NTK):
        k = cls(**opts)
        K = k(X, block_rows=4)
        if cls is NNGP:
            assert torch.equal(K.diagonal(), k.diag(X))
        torch.testing.assert_close(K.diagonal(), k.diag(X), rtol=1e-14, atol=1e-14)
        # the affine first layer against its definition σ_w²⟨x, y⟩/d + σ_b²
        if depth == 0:
            ref = 1.7 * (X @ Y.T) / 5 + 0.2
            torch.testing.assert_close(k(X, Y, block_rows=4), ref, rtol=1e-14, atol=1e-14)
