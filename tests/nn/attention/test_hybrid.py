"""The window + kernel hybrid (``"hybrid"``/``"hedgehog"``) against dense float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

from snnk.nn.attention import KernelAttention, LearnedFeatureMap, hybrid_attention
from snnk.nn.attention.hybrid import _far_sums

E = 8


def qkv(B=2, H=3, L=37, std=0.7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [std * torch.randn(B, H, L, E, generator=g, dtype=dtype) for _ in range(3)]


def dense(fm, q, k, v, w, causal, pad=None):
    """softmax over [window logits ; far log-kernel] with -inf for excluded keys."""
    L = q.shape[-2]
    s = q @ k.mT / math.sqrt(E)
    lq, lk = fm.log_features(q, "query"), fm.log_features(k, "key")
    kap = torch.logsumexp(lq.unsqueeze(-2) + lk.unsqueeze(-3), -1)
    i = torch.arange(L)
    d = i[:, None] - i[None, :]
    if causal:
        win, far = (d >= 0) & (d < w), d >= w
    else:
        win = d.abs() < w
        far = ~win
    neg = torch.tensor(-math.inf, dtype=s.dtype)
    logw = torch.where(win, s, torch.where(far, kap, neg))
    if pad is not None:
        logw = logw.masked_fill(pad[:, None, None, :], -math.inf)
    return torch.softmax(logw, -1) @ v


@pytest.fixture(scope="module")
def fmap():
    return LearnedFeatureMap(3, E, 16, seed=1, dtype=torch.float64)


@pytest.mark.parametrize("causal", [False, True])
def test_window_covering_the_sequence_is_exact_softmax(causal):
    q, k, v = qkv()
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    for w in (37, 100):
        out = hybrid_attention(q, k, v, window=w, is_causal=causal, num_features=16)
        torch.testing.assert_close(out, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("w", [0, 1, 3, 10])
@pytest.mark.parametrize("chunk", [None, 5, 16])
def test_hybrid_matches_the_dense_reference(fmap, causal, w, chunk):
    """Every window and chunk size (37 rows: not divisible), causal and bidirectional;
    ``w = 0`` is the pure kernel part."""
    q, k, v = qkv()
    out = hybrid_attention(q, k, v, fmap, window=w, is_causal=causal, chunk_size=chunk)
    torch.testing.assert_close(out, dense(fmap, q, k, v, w, causal), rtol=1e-10, atol=1e-12)


def test_causal_hybrid_does_not_look_ahead(fmap):
    """Outputs before a perturbed token do not change (up to rounding: the key features'
    stabilising shift is a maximum over all keys)."""
    q, k, v = qkv(L=30)
    out = hybrid_attention(q, k, v, fmap, window=4, is_causal=True, chunk_size=8)
    k2, v2 = k.clone(), v.clone()
    k2[..., 17:, :] += 5.0
    v2[..., 17:, :] -= 3.0
    out2 = hybrid_attention(q, k2, v2, fmap, window=4, is_causal=True, chunk_size=8)
    torch.testing.assert_close(out[..., :17, :], out2[..., :17, :], rtol=1e-13, atol=1e-14)
    assert not torch.allclose(out[..., 17:, :], out2[..., 17:, :])


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_small(causal):
    """L = 9, w = 3, m = 4 in float64 (blocks of 3 so the checkpointed blocks interact)."""
    fm = LearnedFeatureMap(2, 3, 4, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    q, k, v = (
        (0.5 * torch.randn(1, 2, 9, 3, generator=g, dtype=torch.float64)).requires_grad_()
        for _ in range(3)
    )

    def f(q, k, v):
        return hybrid_attention(q, k, v, fm, window=3, is_causal=causal, chunk_size=3)

    assert torch.autograd.gradcheck(f, (q, k, v), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_feature_map_gradients_equal_the_dense_reference(causal):
    fm = LearnedFeatureMap(3, E, 16, seed=2, dtype=torch.float64)
    q, k, v = qkv(L=20, seed=4)
    g = torch.randn((*q.shape[:-1], E), generator=torch.Generator().manual_seed(9), dtype=q.dtype)
    grads = []
    for fn in (
        lambda: hybrid_attention(q, k, v, fm, window=4, is_causal=causal, chunk_size=6),
        lambda: dense(fm, q, k, v, 4, causal),
    ):
        fm.zero_grad()
        (fn() * g).sum().backward()
        grads.append([p.grad.clone() for p in fm.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("causal", [False, True])
def test_padded_batch_equals_unpadded_sequences(fmap, causal):
    q, k, v = qkv(B=2, L=24)
    pad = torch.zeros(2, 24, dtype=torch.bool)
    pad[1, 17:] = True
    out = hybrid_attention(
        q, k, v, fmap, window=5, is_causal=causal, key_padding_mask=pad[:, None], chunk_size=8
    )
    alone = hybrid_attention(
        q[1:, :, :17], k[1:, :, :17], v[1:, :, :17], fmap, window=5, is_causal=causal
    )
    torch.testing.assert_close(out[1:, :, :17], alone, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, dense(fmap, q, k, v, 5, causal, pad), rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_give_zero_not_nan(fmap):
    q, k, v = qkv(B=1, L=10)
    pad = torch.ones(1, 1, 10, dtype=torch.bool)
    out = hybrid_attention(q, k, v, fmap, window=3, key_padding_mask=pad)
    assert torch.equal(out, torch.zeros_like(out))


def test_nystrom_far_kernel_with_every_key_a_landmark_is_exact():
    q, k, v = qkv(L=24)
    exact = F.scaled_dot_product_attention(q, k, v)
    out = hybrid_attention(q, k, v, window=3, far_kernel="nystrom", num_features=24)
    torch.testing.assert_close(out, exact, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="far_kernel"):
        hybrid_attention(q, k, v, window=3, far_kernel="nystrom", is_causal=True)


def test_half_inputs_are_computed_in_float32(fmap):
    q, k, v = qkv(L=40, dtype=torch.float32)
    fm = LearnedFeatureMap(3, E, 16, seed=1)
    ref = hybrid_attention(q, k, v, fm, window=6)
    for dt in (torch.float16, torch.bfloat16):
        out = hybrid_attention(q.to(dt), k.to(dt), v.to(dt), fm, window=6)
        assert out.dtype == dt and torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "kw, exc, name",
    [
        ({"window": -1}, ValueError, "window"),
        ({"window": 1.5}, TypeError, "window"),
        ({"window": True}, TypeError, "window"),
        ({"far_kernel": "taylor"}, ValueError, "far_kernel"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"feature_map": "favor"}, TypeError, "feature_map"),
        ({"scale": -1.0}, ValueError, "scale"),
    ],
)
def test_bad_options_name_the_argument(kw, exc, name):
    q, k, v = qkv(L=8)
    with pytest.raises(exc, match=name):
        hybrid_attention(q, k, v, **kw)


def test_hostile_tensors():
    q, k, v = qkv(L=8)
    bad = q.clone()
    bad[0, 0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="query"):
        hybrid_attention(bad, k, v)
    with pytest.raises(ValueError, match="num_heads"):
        hybrid_attention(q, k, v, LearnedFeatureMap(5, E, 8, seed=0, dtype=torch.float64))
    with pytest.raises(ValueError, match="L=8 and S=6"):
        hybrid_attention(q, k[..., :6, :], v[..., :6, :], window=2)
    with pytest.raises(TypeError, match="floating"):
        hybrid_attention(q.long(), k.long(), v.long())


def test_module_contract_and_state_dict_round_trip():
    m = KernelAttention(24, 3, "hybrid", window=4, num_features=16, seed=0)
    params = m.feature_parameters()
    assert [tuple(p.shape) for p in params] == [(3, 16, 8), (3, 16, 8), (3, 16), (3, 16)]
    assert all(p.requires_grad for p in params)
    x = torch.randn(2, 11, 24, generator=torch.Generator().manual_seed(0))
    out = m(x)[0]
    twin = KernelAttention(24, 3, "hybrid", window=4, num_features=16, seed=1)
    twin.load_state_dict(m.state_dict())
    assert torch.equal(twin(x)[0], out)
    m.reset_parameters()
    assert torch.equal(m(x)[0], KernelAttention(24, 3, "hybrid", window=4, num_features=16,
                                                seed=0)(x)[0])  # fmt: skip
    q = torch.randn(2, 3, 11, 8, generator=torch.Generator().manual_seed(1))
    assert m.attend(q, q, q, is_causal=True).shape == (2, 3, 11, 8)
    with pytest.raises(ValueError, match="H=3"):
        m.attend(q[:, :2], q[:, :2], q[:, :2])
    assert KernelAttention(24, 3, "favor+").feature_parameters() == []
    assert KernelAttention(24, 3, "hedgehog", num_features=8).window == 0


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"method": "favor+", "window": 4}, "window"),
        ({"method": "hedgehog", "window": 4}, "window"),
        ({"method": "hybrid", "window": -2}, "window"),
        ({"method": "hybrid", "num_features": 0}, "num_features"),
    ],
)
def test_module_bad_options(kw, name):
    with pytest.raises(ValueError, match=name):
        KernelAttention(24, 3, **kw)


@pytest.mark.parametrize("causal", [False, True])
def test_far_sums_of_blocks_finite_and_not(causal):
    """The far state of query block t, ``Σ_{u < lo_t} x_u (+ Σ_{u > hi_t} x_u)``, as one
    0/1 matrix product of the block sums; with an infinite block sum (where ``0·∞`` would
    give NaN) the prefix/suffix sums: ∞ exactly where a sum includes it, no NaN."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 6, 3, 4, generator=g, dtype=torch.float64)
    lo = [max(0, t - 1) for t in range(6)]
    hi = None if causal else [min(5, t + 1) for t in range(6)]

    def ref(x):
        parts = []
        for t in range(6):
            s = x[:, : lo[t]].sum(1)
            parts.append(s if hi is None else s + x[:, hi[t] + 1 :].sum(1))
        return torch.stack(parts, 1)

    torch.testing.assert_close(_far_sums(x, -3, lo, hi), ref(x), rtol=1e-14, atol=1e-14)
    z = x[..., 0]
    torch.testing.assert_close(_far_sums(z, -2, lo, hi), ref(z), rtol=1e-14, atol=1e-14)
    x[0, 3, 1, 2] = math.inf
    got = _far_sums(x, -3, lo, hi)
    assert not bool(got.isnan().any())
    torch.testing.assert_close(got, ref(x), rtol=1e-14, atol=1e-14)
    assert bool(got[0, :, 1, 2].isinf().any())
