"""NNGP / NTK kernels of infinitely wide CNNs (global average pooling or flatten readout).

Reference values: neural-tangents 0.6.5 in float64 (``jax_enable_x64``), network
``[Conv(3x3, W_std=1.3, b_std=0.2) → ReLU] x 2 → GlobalAvgPool → Dense(1, 1.3, 0.2)``, NTK
parameterisation, inputs ``X[i,h,w,c] = sin(off + 1 + i + 0.7h + 0.3w + 1.3c)``
(/work/shared/reference/infinite-width.md §9.4; the CIRCULAR NTK and second NNGP row were
generated the same way with neural-tangents 0.6.5 + jax 0.4.38).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from snnk.kernels import (
    NNGP,
    NTK,
    ConvNNGP,
    ConvNTK,
    Gaussian,
    convolutional_kernels,
)

F64 = torch.float64
NET = {"depth": 2, "weight_variance": 1.3**2, "bias_variance": 0.2**2}
NT_SAME = (
    [[0.2503972964, 0.2285749753, 0.1978294026], [0.2628600400, 0.2764664788, 0.2360750511]],
    [[0.4295555232, 0.3362868442, 0.2452428336], [0.4617206684, 0.4970107210, 0.3608050159]],
)
NT_CIRCULAR = (
    [[0.4635843953, 0.4022475588, 0.3478258526], [0.4926020853, 0.5256139775, 0.4281932685]],
    [[0.8401546965, 0.5977539503, 0.4387744222], [0.9304311051, 1.0371935644, 0.6842898740]],
)


def _nt_images(n: int, off: float) -> torch.Tensor:
    """§9.4 inputs (NHWC there), returned as (n, C, H, W) float64."""
    i, h, w, c = np.meshgrid(np.arange(n), np.arange(4), np.arange(4), np.arange(2), indexing="ij")
    X = np.sin(off + 1 + i + 0.7 * h + 0.3 * w + 1.3 * c)
    return torch.from_numpy(X).permute(0, 3, 1, 2).contiguous()


def _images(n: int, C: int = 2, H: int = 4, W: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, H, W, generator=g, dtype=F64)


@pytest.mark.parametrize(("padding", "ref"), [("same", NT_SAME), ("circular", NT_CIRCULAR)])
def test_values_match_neural_tangents(padding, ref):
    X1, X2 = _nt_images(2, 0.0), _nt_images(3, 0.5)
    nngp_ref, ntk_ref = (torch.tensor(v, dtype=F64) for v in ref)
    nngp, ntk = convolutional_kernels(X1, X2, padding=padding, **NET)
    # the 10-digit rounding of the fixture is the limit (the kernels agree with NT to 1e-15)
    torch.testing.assert_close(nngp, nngp_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(ntk, ntk_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(ConvNNGP(padding=padding, **NET)(X1, X2), nngp, rtol=0, atol=0)
    torch.testing.assert_close(ConvNTK(padding=padding, **NET)(X1, X2), ntk, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_one_by_one_images_are_the_dense_kernel(activation, depth):
    # a 1x1 convolution of 1x1 images is a dense layer and pooling is the identity
    X = _images(5, C=7, H=1, W=1, seed=1)
    Y = _images(3, C=7, H=1, W=1, seed=2)
    p = {"depth": depth, "activation": activation, "weight_variance": 1.7, "bias_variance": 0.3}
    for readout in ("gap", "flatten"):
        for conv, dense in ((ConvNNGP, NNGP), (ConvNTK, NTK)):
            ref = dense(**p)(X.flatten(1), Y.flatten(1))
            got = conv(filter_size=1, readout=readout, **p)(X, Y)
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_depth_zero_is_the_readout_of_the_input_kernel():
    X, Y = _images(4), _images(3, seed=3)
    ref_gap = NNGP(depth=0, weight_variance=1.5, bias_variance=0.2)(X.mean((2, 3)), Y.mean((2, 3)))
    ref_flat = NNGP(depth=0, weight_variance=1.5, bias_variance=0.2)(X.flatten(1), Y.flatten(1))
    for cls in (ConvNNGP, ConvNTK):
        k = cls(depth=0, weight_variance=1.5, bias_variance=0.2)
        torch.testing.assert_close(k(X, Y), ref_gap, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(k.diag(X), k(X).diagonal(), rtol=1e-13, atol=1e-13)
        flat = cls(depth=0, readout="flatten", weight_variance=1.5, bias_variance=0.2)
        torch.testing.assert_close(flat(X, Y), ref_flat, rtol=1e-13, atol=1e-13)


def test_one_by_one_filter_flatten_is_the_position_average_of_dense_kernels():
    # 1x1 filters keep positions independent: flatten = mean over s of the dense NNGP of
    # (x_s, y_s) with the readout's σ_b² added once
    X, Y = _images(3, C=4), _images(2, C=4, seed=5)
    p = {"depth": 2, "activation": "erf", "weight_variance": 1.4}
    got = ConvNNGP(filter_size=1, readout="flatten", bias_variance=0.0, **p)(X, Y)
    xs, ys = X.flatten(2).permute(2, 0, 1), Y.flatten(2).permute(2, 0, 1)  # (P, n, C)
    ref = NNGP(**p)(xs, ys).mean(0)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("readout", ["gap", "flatten"])
@pytest.mark.parametrize("cls", [ConvNNGP, ConvNTK])
@pytest.mark.parametrize("padding", ["same", "circular"])
def test_symmetric_psd_and_diag(readout, cls, padding):
    X = _images(9, C=2, H=4, W=4, seed=7)
    k = cls(depth=3, weight_variance=2.0, bias_variance=0.1, padding=padding, readout=readout)
    K = k(X)
    assert torch.equal(K, K.T)
    eig = torch.linalg.eigvalsh(K)
    assert eig.min() > -1e-12 * eig.max()
    torch.testing.assert_close(k.diag(X), K.diagonal(), rtol=1e-12, atol=0)
    # x = x′ entries pinned to the per-image recursion; K(X, X) (not pinned) agrees closely
    torch.testing.assert_close(k(X, X), K, rtol=1e-7, atol=0)


@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_tiled_equals_untiled(readout):
    X, Y = _images(7, seed=8), _images(5, seed=9)
    nngp, ntk = convolutional_kernels(X, depth=2, readout=readout, block_rows=100)
    for block_rows in (1, 2, 3):
        n2, t2 = convolutional_kernels(X, depth=2, readout=readout, block_rows=block_rows)
        torch.testing.assert_close(n2, nngp, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(t2, ntk, rtol=1e-14, atol=1e-15)
    ref = ConvNTK(depth=2, readout=readout)(X, Y, block_rows=100)
    for block_rows in (1, 3):
        got = ConvNTK(depth=2, readout=readout)(X, Y, block_rows=block_rows)
        torch.testing.assert_close(got, ref, rtol=1e-14, atol=1e-15)


def test_quadrature_matches_closed_form_and_generic_activations_run():
    X = _images(4, H=3, W=3, seed=10)
    closed = ConvNTK(depth=2, activation="erf", bias_variance=0.1)(X)
    quad = ConvNTK(depth=2, activation="erf", bias_variance=0.1, method="quadrature")(X)
    torch.testing.assert_close(quad, closed, rtol=1e-8, atol=1e-10)
    K = ConvNNGP(depth=2, activation=torch.sin, quadrature_degree=60)(X)
    assert torch.isfinite(K).all() and torch.allclose(K, K.T)


def _random_cnn_features(X, width, depth, sw2, sb2, gen, filter_size=3):
    """Pooled last hidden layer of a random NTK-parameterised CNN (same padding)."""
    a = X
    for _ in range(depth):
        c_in = a.shape[1]
        W = torch.randn(width, c_in, filter_size, filter_size, generator=gen)
        b = torch.randn(width, generator=gen)
        fan = c_in * filter_size * filter_size
        z = torch.nn.functional.conv2d(a, W, padding="same") * math.sqrt(sw2 / fan)
        a = torch.relu(z + math.sqrt(sb2) * b.view(1, -1, 1, 1))
    return a.mean((2, 3))  # (n, width)


def test_nngp_matches_random_wide_cnns():
    # K̂ = σ_w² ⟨GAP a(x), GAP a(x′)⟩ / n + σ_b² (readout marginalised), averaged over S draws;
    # pass if every entry is within 4 standard errors of the draws + 2/n relative (the O(1/n)
    # finite-width bias of depth 2), for each of two seeds
    X = _images(4, C=2, H=4, W=4, seed=11)
    sw2, sb2, width, draws = 2.0, 0.1, 256, 64
    ref = ConvNNGP(depth=2, weight_variance=sw2, bias_variance=sb2)(X)
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        est = []
        for _ in range(draws):
            F = _random_cnn_features(X.float(), width, 2, sw2, sb2, gen)
            est.append(sw2 * (F @ F.T) / width + sb2)
        est = torch.stack(est).double()
        mean, se = est.mean(0), est.std(0) / math.sqrt(draws)
        assert (mean - ref).abs().le(4 * se + 2 * ref.abs() / width).all()
        # and not trivially: the standard error is small against the kernel
        assert (se / ref.abs()).max() < 0.05


def test_ntk_matches_jacobians_of_random_wide_cnns():
    # empirical NTK J(x) J(x′)ᵀ of [Conv → ReLU] x 2 → GAP → Dense at initialisation, every
    # weight and bias trained (NTK parameterisation); 4 standard errors + 2/n relative bias
    X = _images(3, C=2, H=4, W=4, seed=12)
    sw2, sb2, width, draws = 2.0, 0.1, 256, 64
    ref = ConvNTK(depth=2, weight_variance=sw2, bias_variance=sb2)(X)
    gen = torch.Generator().manual_seed(3)
    est = []
    for _ in range(draws):
        params, shapes = [], [(width, 2), (width, width)]
        for c_out, c_in in shapes:
            params += [torch.randn(c_out, c_in, 3, 3, generator=gen)]
            params += [torch.randn(c_out, generator=gen)]
        params += [torch.randn(1, width, generator=gen)]
        params += [torch.randn(1, generator=gen)]
        params = [p.requires_grad_(True) for p in params]

        def net(x, params=params):
            a = x
            for W, b in zip(params[0:4:2], params[1:4:2], strict=True):
                fan = W.shape[1] * 9
                z = torch.nn.functional.conv2d(a, W, padding="same") * math.sqrt(sw2 / fan)
                a = torch.relu(z + math.sqrt(sb2) * b.view(1, -1, 1, 1))
            pooled = a.mean((2, 3))
            return pooled @ params[4].T * math.sqrt(sw2 / width) + math.sqrt(sb2) * params[5]

        out = net(X.float())[:, 0]
        rows = [torch.cat([g.flatten() for g in torch.autograd.grad(o, params, retain_graph=True)])
                for o in out]  # fmt: skip
        J = torch.stack(rows)
        est.append(J @ J.T)
    est = torch.stack(est).double()
    mean, se = est.mean(0), est.std(0) / math.sqrt(draws)
    assert (mean - ref).abs().le(4 * se + 2 * ref.abs() / width).all()
    assert (se / ref.abs()).max() < 0.05


def test_input_forms_and_config():
    X = _images(4, C=1, H=5, W=3, seed=13)
    k = ConvNTK(depth=2, filter_size=(3, 2), image_shape=(1, 5, 3))
    K = k(X)
    torch.testing.assert_close(k(X[:, 0]), K, rtol=0, atol=0)
    torch.testing.assert_close(k(X.flatten(1)), K, rtol=0, atol=0)
    torch.testing.assert_close(k(X.flatten(1).numpy()), K, rtol=0, atol=0)
    cfg = k.get_config()
    assert cfg["name"] == "conv_ntk"
    rebuilt = ConvNTK(**{key: v for key, v in cfg.items() if key != "name"})
    assert rebuilt == k and torch.equal(rebuilt(X), K)
    # composes on flat rows (what estimators pass)
    Xf = X.flatten(1)
    summed = (k + Gaussian(lengthscale=2.0))(Xf)
    torch.testing.assert_close(summed, K + Gaussian(lengthscale=2.0)(Xf), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close((k + Gaussian()).diag(Xf), K.diagonal() + 1.0, rtol=1e-12, atol=0)


def test_dtypes_and_autograd():
    X = _images(3, C=1, H=3, W=3, seed=14)
    ref = ConvNNGP(depth=2, activation="erf")(X)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        got = ConvNNGP(depth=2, activation="erf")(X.to(dtype))
        assert got.dtype == dtype and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=2e-2)
    Xg = X[:2].clone().requires_grad_(True)
    Y = X[2:]
    for cls in (ConvNNGP, ConvNTK):
        k = cls(depth=2, activation="erf", bias_variance=0.1)
        assert torch.autograd.gradcheck(lambda x, k=k: k(x, Y), (Xg,))
        (g,) = torch.autograd.grad(k(Xg).sum(), Xg)
        assert torch.isfinite(g).all()


def test_hostile_inputs():
    k = ConvNNGP(depth=1)
    X = _images(3)
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="X"):
        k(bad)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="Y"):
        k(X, bad)
    with pytest.raises(TypeError, match="X"):
        k(torch.ones(2, 1, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="X"):
        k(torch.ones(2, 1, 1, 3, 3, dtype=F64))
    with pytest.raises(ValueError, match="image_shape"):
        k(torch.ones(2, 9, dtype=F64))
    with pytest.raises(ValueError, match="image_shape"):
        ConvNNGP(image_shape=(1, 3, 3))(torch.ones(2, 10, dtype=F64))
    with pytest.raises(ValueError, match="Y"):
        k(X, _images(2, C=3))
    with pytest.raises(ValueError, match="empty"):
        k(torch.ones(0, 1, 3, 3, dtype=F64))
    with pytest.raises(ValueError, match="block_rows"):
        k(X, block_rows=0)
    for bad_opts in (
        {"padding": "valid"},
        {"readout": "max"},
        {"filter_size": 0},
        {"filter_size": (3, 3, 3)},
        {"depth": -1},
        {"weight_variance": -1.0},
        {"image_shape": (3,)},
    ):
        with pytest.raises(ValueError):
            ConvNNGP(**bad_opts)
    # one image, and huge / tiny scales: finite or a ValueError saying what to do
    one = k(X[:1])
    assert one.shape == (1, 1) and torch.isfinite(one).all()
    tiny = ConvNTK(depth=2, bias_variance=0.0)(X * 1e-150)
    assert torch.isfinite(tiny).all()
    with pytest.raises(ValueError, match="overflow"):
        ConvNTK(depth=2)(X * 1e160)


@pytest.mark.parametrize("filter_size", [3, (5, 6), (2, 3)])
def test_circular_pooled_kernel_is_shift_invariant(filter_size):
    # circular convolutions commute with cyclic shifts and pooling forgets them, so a random
    # network's output (hence its NNGP and NTK) is invariant to shifting either image; filters
    # larger than the 3 x 4 image wrap several times
    X, Y = _images(3, H=3, W=4, seed=15), _images(2, H=3, W=4, seed=16)
    rolled = torch.roll(X, shifts=(1, 3), dims=(2, 3))
    for cls in (ConvNNGP, ConvNTK):
        k = cls(depth=2, filter_size=filter_size, padding="circular", bias_variance=0.1)
        torch.testing.assert_close(k(rolled, Y), k(X, Y), rtol=1e-12, atol=1e-13)
        same = cls(depth=2, filter_size=filter_size, padding="same", bias_variance=0.1)
        assert not torch.allclose(same(rolled, Y), same(X, Y), rtol=1e-6)
