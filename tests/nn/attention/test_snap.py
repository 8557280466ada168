"""The snapped-landmark far field (SnapMap, LearnedSnapMap) against dense float64 references."""

import math

import pytest
import torch

from snnk.nn.attention import fit_feature_map, hybrid_attention
from snnk.nn.attention.learned import LearnedSnapMap
from snnk.nn.attention.snap import SnapMap, attention_mass, weighted_kmeans

E = 8


def qkv(B=2, H=3, L=40, std=0.7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [std * torch.randn(B, H, L, E, generator=g, dtype=dtype) for _ in range(3)]


def clustered(H=2, L=96, clusters=6, spread=0.8, seed=0):
    """Keys in Gaussian clusters of unequal spreads (up to ``spread``), values that mostly
    depend on the cluster, queries of larger norm (a peaked softmax)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    centres = 1.5 * torch.randn(H, clusters, E, generator=g, dtype=f64)
    spreads = spread * torch.rand(H, clusters, 1, generator=g, dtype=f64)
    values = torch.randn(H, clusters, E, generator=g, dtype=f64)
    lab = torch.randint(clusters, (H, L), generator=g)[..., None].expand(H, L, E)
    noise = torch.randn(H, L, E, generator=g, dtype=f64)
    k = centres.gather(1, lab) + spreads.expand(H, clusters, E).gather(1, lab) * noise
    q = 1.5 * torch.randn(H, L, E, generator=g, dtype=f64)
    v = values.gather(1, lab) + 0.1 * torch.randn(H, L, E, generator=g, dtype=f64)
    return q, k, v


def dense(fmap, q, k, v, w, pad=None):
    """softmax over [window logits ; far log-kernel of the bound map], bidirectional."""
    L = q.shape[-2]
    s = q @ k.mT / math.sqrt(E)
    kap = torch.logsumexp(
        fmap.log_features(q, "query").unsqueeze(-2) + fmap.log_features(k, "key").unsqueeze(-3),
        -1,
    )
    i = torch.arange(L)
    win = (i[:, None] - i[None, :]).abs() < w
    logw = torch.where(win, s, kap)
    if pad is not None:
        logw = logw.masked_fill(pad[..., None, None, :], -math.inf)
    return torch.softmax(logw, -1) @ v


def exact(q, k, v):
    return torch.softmax(q @ k.mT / math.sqrt(E), -1) @ v


def err(o, O):
    return float(((o - O).norm(dim=(-2, -1)) / O.norm(dim=(-2, -1))).mean())


@pytest.mark.parametrize("window", [0, 5, 16])
def test_matches_dense_reference_with_trained_parameters(window):
    q, k, v = qkv()
    fm = LearnedSnapMap(3, E, 12, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        fm.weight.normal_(0, 1.0, generator=g)
        fm.spread.uniform_(0.5, 1.5, generator=g)
        fm.bias.normal_(0, 0.5, generator=g)
    out = fm(q, k, v, window=window, chunk_size=7)
    ref = dense(fm.bind(q, k, None, 7), q, k, v, window)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_every_key_its_own_landmark_is_exact():
    q, k, v = qkv(L=24)
    out = LearnedSnapMap(3, E, 24, dtype=torch.float64)(q, k, v, window=3)
    torch.testing.assert_close(out, exact(q, k, v), rtol=1e-9, atol=1e-9)
    # through the functional hook as well (its landmarks are not weighted by queries)
    out = hybrid_attention(q, k, v, window=3, far_kernel="nystrom", num_features=24)
    torch.testing.assert_close(out, exact(q, k, v), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_second_moment_factor_corrects_the_cluster_masses(seed):
    """Separated Gaussian clusters of unequal spreads: with the factor
    ``exp(s²qᵀdiag(S)q/2)`` the row log-normaliser ``log Σ_j κ(q_i, k_j)`` is much closer
    to ``log Σ_j exp(s·q_iᵀk_j)`` than plain clustered attention's (Jensen's underestimate)."""
    q, k, _ = clustered(L=400, clusters=4, seed=seed)
    sc = 1 / math.sqrt(E)
    truth = torch.logsumexp(q @ k.mT * sc, -1)
    gaps = {}
    for spread in (False, True):
        fmap = SnapMap(k, None, 4, sc, 64, spread=spread)
        lq, lk = fmap.log_features(q, "query"), fmap.log_features(k, "key")
        est = torch.logsumexp(lq.unsqueeze(-2) + lk.unsqueeze(-3), -1).logsumexp(-1)
        gaps[spread] = float((est - truth).abs().mean())
    assert gaps[True] < 0.7 * gaps[False], gaps


@pytest.mark.parametrize("seed", [0, 1])
def test_query_weighted_clusters_beat_plain_kmeans_on_a_sink(seed):
    """One key that every query attends to: weighted k-means gives it its own cluster."""
    q, k, v = clustered(L=128, clusters=4, spread=0.8, seed=seed)
    direction = q.mean(-2, keepdim=True)
    k[..., 7:8, :] = 3.0 * direction / direction.norm(dim=-1, keepdim=True) * math.sqrt(E)
    v[..., 7:8, :] = 5.0
    O = exact(q, k, v)
    sc = 1 / math.sqrt(E)
    plain = err(dense(SnapMap(k, None, 8, sc, 32), q, k, v, 0), O)
    weighted = err(dense(SnapMap(k, None, 8, sc, 32, q=q), q, k, v, 0), O)
    assert weighted < 0.7 * plain, (weighted, plain)


def test_attention_mass_is_the_column_sum_of_sampled_rows():
    q, k, _ = qkv(L=50)
    lw = torch.zeros(2, 3, 50, dtype=torch.float64)
    lw[..., -5:] = -math.inf
    got = attention_mass(q, k, lw, 0.3, rows=10, chunk=7)
    idx = (torch.arange(10) * 50) // 10
    ref = torch.softmax(q[..., idx, :] @ k.mT * 0.3 + lw.unsqueeze(-2), -1).sum(-2)
    torch.testing.assert_close(got, ref)
    assert float(got[..., -5:].abs().max()) == 0.0


def test_weighted_kmeans_ignores_weightless_keys():
    k = torch.tensor([[0.0], [0.1], [10.0], [10.1], [1e6]], dtype=torch.float64)
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    C, alive = weighted_kmeans(k, w, 2, 3, 2)
    assert bool(alive.all())
    torch.testing.assert_close(C.sort(0).values, torch.tensor([[0.05], [10.05]], dtype=C.dtype))


def test_gradcheck_float64():
    q, k, v = qkv(B=1, H=2, L=11, seed=3)
    fm = LearnedSnapMap(2, E, 4, dtype=torch.float64)
    with torch.no_grad():
        fm.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    q.requires_grad_(True)
    v.requires_grad_(True)

    def f(q, v, weight, spread, bias):
        state = {"weight": weight, "spread": spread, "bias": bias}
        kwargs = {"window": 3, "chunk_size": 4}
        return torch.func.functional_call(fm, state, (q, k, v), kwargs)

    params = [p.detach().clone().requires_grad_(True) for p in (fm.weight, fm.spread, fm.bias)]
    assert torch.autograd.gradcheck(f, (q, v, *params), eps=1e-6, atol=1e-6)


def test_padded_keys_change_nothing():
    q, k, v = qkv(L=30)
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[0, -6:] = True
    fm = LearnedSnapMap(3, E, 8, dtype=torch.float64)
    out = fm(q, k, v, window=4, key_padding_mask=pad)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, -6:] = 1e3
    v2[0, :, -6:] = -1e3
    torch.testing.assert_close(fm(q, k2, v2, window=4, key_padding_mask=pad), out)
    torch.testing.assert_close(out, dense(fm.bind(q, k, _lw(pad), 64), q, k, v, 4, pad))


def _lw(pad):
    lw = torch.zeros(pad.shape, dtype=torch.float64).masked_fill(pad, -math.inf)
    return lw.unsqueeze(-2).expand(pad.shape[0], 3, pad.shape[1])


def test_float32_and_half_inputs():
    q, k, v = qkv(dtype=torch.float32)
    fm = LearnedSnapMap(3, E, 8)
    out = fm(q, k, v, window=4)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    half = fm(q.bfloat16(), k.bfloat16(), v.bfloat16(), window=4)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, rtol=0.1, atol=0.1)


def test_state_dict_round_trip_and_reset():
    fm = LearnedSnapMap(3, E, 8)
    with torch.no_grad():
        fm.bias.fill_(0.3)
    other = LearnedSnapMap(3, E, 8)
    other.load_state_dict(fm.state_dict())
    assert torch.equal(other.bias, fm.bias)
    fm.reset_parameters()
    assert float(fm.bias.detach().abs().max()) == 0.0
    torch.testing.assert_close(fm.query_map().detach(), torch.eye(E).expand(3, E, E))


def test_hostile_inputs():
    q, k, v = qkv()
    fm = LearnedSnapMap(3, E, 8, dtype=torch.float64)
    bad = q.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="q contains"):
        fm(bad, k, v)
    bad = v.clone()
    bad[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="v contains"):
        fm(q, k, bad)
    with pytest.raises(TypeError, match="k must be a floating"):
        fm(q, k.long(), v)
    with pytest.raises(ValueError, match="H = 3"):
        fm(q[:, :2], k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="window"):
        fm(q, k, v, window=-1)
    with pytest.raises(ValueError, match="key_padding_mask"):
        fm(q, k, v, key_padding_mask=torch.zeros(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_landmarks"):
        LearnedSnapMap(3, E, 0)
    # empty batch and a one-row sequence
    assert fm(q[:0], k[:0], v[:0]).shape == (0, 3, 40, E)
    torch.testing.assert_close(fm(q[..., :1, :], k[..., :1, :], v[..., :1, :]), v[..., :1, :])


def test_transfer_starts_from_the_estimator_and_never_ends_worse():
    torch.manual_seed(0)  # unused by the code under test; guards against hidden global draws
    qs, ks, vs = zip(*(clustered(H=2, L=32, seed=s) for s in range(4)), strict=True)
    q, k, v = torch.stack(qs).float(), torch.stack(ks).float(), torch.stack(vs).float()
    fm = LearnedSnapMap(2, E, 8)
    with torch.no_grad():
        fm.bias.fill_(-3.0)  # far keys weighed e^-3 too little: training must undo it
    rep = fit_feature_map(
        fm, q, k, v, window=4, max_steps=20, lr=0.15, batch_size=2, eval_every=4, verbose=False
    )
    assert rep.best_loss <= rep.initial_loss  # the best parameters are kept
    assert rep.best_loss < 0.3 * rep.initial_loss, rep
    assert float(fm.bias.detach().max()) > -2.0
    names = {n for n, p in fm.named_parameters()}
    assert names == {"weight", "spread", "bias"}
    with pytest.raises(ValueError, match="bidirectionally"):
        fit_feature_map(fm, q, k, v, is_causal=True, verbose=False)
    with pytest.raises(ValueError, match="bidirectionally"):
        fit_feature_map(fm, q, k, v, loss="xent", verbose=False)


def test_hybrid_attention_takes_a_learned_snap_map():
    """hybrid_attention(far_kernel="nystrom") uses a passed LearnedSnapMap (at its initial
    parameters it is the parameter-free estimator, bit for bit; trained parameters move the
    output) and refuses another map type naming the argument."""
    q, k, v = qkv(L=48)
    fmap = LearnedSnapMap(3, E, 8, dtype=torch.float64)
    kw = dict(window=4, num_features=8, far_kernel="nystrom")
    plain = hybrid_attention(q, k, v, **kw)
    assert torch.equal(hybrid_attention(q, k, v, fmap, **kw), plain)
    with torch.no_grad():
        fmap.bias.fill_(1.0)
    assert not torch.allclose(hybrid_attention(q, k, v, fmap, **kw), plain)
    with pytest.raises(TypeError, match="feature_map must be a snnk.nn.attention.LearnedSnapMap"):
        hybrid_attention(q, k, v, torch.nn.Linear(2, 2), **kw)
    with pytest.raises(ValueError, match="feature_map has num_heads=2"):
        hybrid_attention(q, k, v, LearnedSnapMap(2, E, 8, dtype=torch.float64), **kw)
