"""Kernel attention (issue #6): accuracy against exact attention, gradients, causality,
incremental decoding, masks, half precision, determinism and input validation.

Statistical tests use several seeds and state their margins; all sizes are small so the file
runs in seconds.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from snnk.features import PositiveFeatures
from snnk.nn import DecodingState, KernelAttention, kernel_attention
from snnk.nn.attention import METHODS, newton_schulz_inverse

CAUSAL = ("favor+", "linear")


def qkv(L=64, E=16, H=2, std=1.0, seed=0, dtype=torch.float64, S=None):
    g = torch.Generator().manual_seed(seed)
    S = L if S is None else S
    q = torch.randn(1, H, L, E, generator=g, dtype=dtype) * std
    k = torch.randn(1, H, S, E, generator=g, dtype=dtype) * std
    v = torch.randn(1, H, S, E, generator=g, dtype=dtype)
    return q, k, v


def nf(method, m, E=16):
    """``num_features`` giving ``m`` landmarks/features: ``"hermite"`` also has 1 + E."""
    return E + 1 + m if method == "hermite" else m


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def uniform(v, like):
    return v.mean(-2, keepdim=True).expand_as(like)


def elu_reference(q, k, v, causal=False):
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    A = fq @ fk.mT
    if causal:
        A = A.tril()
    return (A @ v) / A.sum(-1, keepdim=True)


def soft_reference(q, k, v, m):
    """Dense SOFT formula: G(Q,Z) D^-1/2 (A + λI)^-1 D^-1/2 G(Z,K) V, Z = pooled keys."""
    s = 1 / math.sqrt(q.shape[-1])
    Z = F.adaptive_avg_pool1d(k.flatten(0, 1).mT, m).mT.reshape(*k.shape[:2], m, -1)

    def G(a, b):
        return torch.exp(-0.5 * s * torch.cdist(a, b).square())

    A = G(Z, Z)
    d = A.sum(-1).rsqrt()
    inv = torch.linalg.inv(A + 1e-3 * torch.eye(m, dtype=A.dtype))
    return G(q, Z) @ (d[..., :, None] * inv * d[..., None, :]) @ (G(Z, k) @ v)


# ---------------------------------------------------------------------------------------------
# Accuracy against exact attention
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_favor_estimates_softmax_for_small_logits(seed):
    # ‖q'‖² = E·std²/√E = 0.25: the regime where the estimator's variance is small.
    q, k, v = qkv(L=128, E=16, std=0.25, seed=seed)
    exact = F.scaled_dot_product_attention(q, k, v)
    few = rel(kernel_attention(q, k, v, "favor+", num_features=16, seed=seed), exact)
    many = rel(kernel_attention(q, k, v, "favor+", num_features=1024, seed=seed), exact)
    # Uniform attention is ~0.25 off here; 1024 features must be far better and beat 16.
    assert many < 0.05, many
    assert many < few


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nystrom_estimates_softmax(seed):
    q, k, v = qkv(L=256, E=16, std=0.5, seed=seed)
    exact = F.scaled_dot_product_attention(q, k, v)
    err = rel(
        kernel_attention(q, k, v, "nystrom", nystrom_form="projection", num_features=64), exact
    )
    base = rel(uniform(v, exact), exact)
    assert err < 0.25 * base, (err, base)
    # Every key a landmark: the Nyström projection is exact up to the jitter.
    full = rel(
        kernel_attention(
            q, k, v, "nystrom", nystrom_form="projection", num_features=256, jitter=1e-8
        ),
        exact,
    )
    assert full < 1e-4, full


def hermite_reference(q, k, v, m, keep=None, jitter=1e-3):
    """Dense second-order Hermite estimate around each row's mean logit (the docstring's).

    ``w_ij = 1 + t_ij + ½(t̂²_ij − mean_j t̂²_ij)`` with ``t = q'·(k' − k̄')`` and ``t̂²`` the
    Nyström projection of ``t²`` onto the squares of ``m`` evenly spaced unmasked keys.
    """
    S, r = k.shape[-2], q.shape[-1] ** -0.25
    keep = torch.ones(S, dtype=torch.bool) if keep is None else keep
    idx = keep.nonzero()[:, 0]
    n = len(idx)
    sel = idx[torch.floor((torch.arange(m, dtype=torch.float64) + 0.5) * n / m).long()]
    kbar = k[..., idx, :].mean(-2, keepdim=True)
    U = F.normalize(k[..., sel, :] - kbar, dim=-1)
    qs, kc = q * r, (k[..., idx, :] - kbar) * r
    G = (U @ U.mT).square() + jitter * torch.eye(m, dtype=q.dtype)
    quad = (qs @ U.mT).square() @ torch.linalg.solve(G, (kc @ U.mT).square().mT)
    W = 1 + qs @ kc.mT + 0.5 * (quad - quad.mean(-1, keepdim=True))
    return (W @ v[..., idx, :]) / n


def test_hermite_matches_its_dense_formula():
    q, k, v = qkv(L=40, S=70, std=0.8)
    out = kernel_attention(q, k, v, "hermite", num_features=16 + 1 + 12, chunk_size=16)
    torch.testing.assert_close(out, hermite_reference(q, k, v, 12), rtol=1e-8, atol=1e-10)
    keep = torch.ones(70, dtype=torch.bool)
    keep[[3, 4, 5, 30, 31, 60, 61, 62, 63]] = False
    out = kernel_attention(
        q, k, v, "hermite", num_features=16 + 1 + 12, key_padding_mask=~keep, chunk_size=16
    )
    torch.testing.assert_close(out, hermite_reference(q, k, v, 12, keep), rtol=1e-8, atol=1e-10)
    # The normaliser is exact: the weights of every row sum to the number of keys.
    ones = torch.ones_like(v)
    out = kernel_attention(q, k, ones, "hermite", num_features=29, key_padding_mask=~keep)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=1e-12, atol=1e-12)


def test_hermite_is_exact_to_second_order():
    """With E=4 the quadratic space has 10 dimensions: 10 landmarks span it, and the error
    against softmax is the Hermite remainder, third order in the logits."""
    errs = []
    for std in (0.4, 0.2):
        q, k, v = qkv(L=128, E=4, std=std, seed=4)
        exact = F.scaled_dot_product_attention(q, k, v)
        out = kernel_attention(q, k, v, "hermite", num_features=1 + 4 + 10, jitter=1e-12)
        lin = kernel_attention(q, k, v, "hermite", num_features=1 + 4 + 1, jitter=1e-12)
        errs.append(rel(out, exact))
        assert rel(out, exact) < 0.2 * rel(lin, exact)
    # Halving q and k quarters the logits: a third-order remainder shrinks 4³ = 64 times
    # (measured 64; a second-order one, like the linear term alone, only 16 times).
    assert errs[1] < errs[0] / 40, errs


def test_hermite_needs_room_for_its_features():
    q, k, v = qkv(L=8, E=16)
    with pytest.raises(ValueError, match="at least E \\+ 2 = 18"):
        kernel_attention(q, k, v, "hermite", num_features=17)


def kmeans_landmarks(k, m, keep):
    """Reference: pooled (masked) landmarks, then one Lloyd step; empty clusters stay."""
    S = k.shape[-2]
    idx = torch.arange(S)
    Z = []
    for i in range(m):
        seg = (idx >= i * S // m) & (idx < -((-(i + 1) * S) // m)) & keep
        Z.append(k[..., seg, :].mean(-2) if seg.any() else torch.zeros_like(k[..., 0, :]))
    Z = torch.stack(Z, -2)
    lab = torch.cdist(k, Z).argmin(-1)
    out = Z.clone()
    for i in range(m):
        member = (lab == i) & keep
        for h in range(k.shape[1]):
            if member[0, h].any():
                out[0, h, i] = k[0, h, member[0, h]].mean(-2)
    return out


def nystrom_reference(q, k, v, Z, keep, jitter=1e-3):
    """Dense regularised Nyström softmax attention with landmarks ``Z`` (docstring formula)."""
    r = q.shape[-1] ** -0.25
    qs, ks, Zs = q * r, k[..., keep, :] * r, Z * r
    dz = Zs.square().sum(-1)
    A = torch.exp(Zs @ Zs.mT) + jitter * torch.diag_embed(torch.exp(dz))
    W = torch.exp(qs @ Zs.mT) @ torch.linalg.solve(A, torch.exp(Zs @ ks.mT))
    return (W @ v[..., keep, :]) / W.sum(-1, keepdim=True)


def test_nystrom_kmeans_landmarks_match_their_dense_formula():
    q, k, v = qkv(L=30, S=40, std=0.6, seed=2)
    k[..., 30:, :] += 1.5  # a far group
    keep = torch.ones(40, dtype=torch.bool)
    keep[[0, 1, 17, 18, 19]] = False
    opts = {"num_features": 8, "key_padding_mask": ~keep, "chunk_size": 7}
    out = kernel_attention(q, k, v, "nystrom", nystrom_form="projection", **opts)
    Z = kmeans_landmarks(k, 8, keep)
    torch.testing.assert_close(out, nystrom_reference(q, k, v, Z, keep), rtol=1e-7, atol=1e-9)
    pooled = kernel_attention(
        q, k, v, "nystrom", nystrom_form="projection", landmarks="pool", **opts
    )
    assert not torch.allclose(pooled, out)


def two_groups():
    """Keys in two groups: segment 0 is group A, segment 1 group B, segment 2 half and half,
    so with 3 landmarks the third pooled one lies between the groups and gets no member."""
    g = torch.Generator().manual_seed(0)
    e = torch.zeros(8, dtype=torch.float64)
    e[0] = 1.0
    side = torch.tensor([1.0] * 8 + [-1.0] * 8 + [1.0, -1.0] * 4, dtype=torch.float64)
    k = side[:, None] * e + 0.05 * torch.randn(24, 8, generator=g, dtype=torch.float64)
    k = k.expand(1, 1, 24, 8).contiguous()
    q = 0.5 * torch.randn(1, 1, 10, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 1, 24, 8, generator=g, dtype=torch.float64)
    return q, k, v, torch.ones(24, dtype=torch.bool)


def test_kmeans_landmark_without_members_keeps_its_pooled_value():
    q, k, v, keep = two_groups()
    Z = kmeans_landmarks(k, 3, keep)
    assert torch.allclose(Z[..., 2, :], k[..., 16:, :].mean(-2))  # no members: pooled value
    out = kernel_attention(
        q, k, v, "nystrom", nystrom_form="projection", num_features=3, chunk_size=5
    )
    torch.testing.assert_close(out, nystrom_reference(q, k, v, Z, keep), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["nystrom", "hermite"])
def test_landmarks_follow_each_batch_elements_mask(method):
    """Masks of shape (B, 1, S) broadcast over heads: every batch element gets the landmarks
    of its own unmasked keys (checked against the dense formulas one element at a time)."""
    g = torch.Generator().manual_seed(0)
    B, H, L, S, E = 2, 3, 17, 23, 8
    q = 0.7 * torch.randn(B, H, L, E, generator=g, dtype=torch.float64)
    k = 0.7 * torch.randn(B, H, S, E, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, S, E, generator=g, dtype=torch.float64)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, 18:] = True
    pad[1, [0, 1, 2, 10]] = True
    m = 1 + E + 6 if method == "hermite" else 5
    form = {"nystrom_form": "projection"} if method == "nystrom" else {}
    out = kernel_attention(
        q, k, v, method, num_features=m, key_padding_mask=pad[:, None], chunk_size=4, **form
    )
    for b in range(B):
        x = (q[b : b + 1], k[b : b + 1], v[b : b + 1])
        if method == "hermite":
            ref = hermite_reference(*x, 6, ~pad[b])
        else:
            ref = nystrom_reference(*x, kmeans_landmarks(x[1], 5, ~pad[b]), ~pad[b])
        torch.testing.assert_close(out[b : b + 1], ref, rtol=1e-8, atol=1e-10)


def test_landmarks_option_is_checked():
    q, k, v = qkv(L=8)
    with pytest.raises(ValueError, match="landmarks"):
        kernel_attention(q, k, v, "favor+", landmarks="kmeans")
    with pytest.raises(ValueError, match="landmarks"):
        kernel_attention(q, k, v, "nystrom", nystrom_form="projection", landmarks="random")


def test_linear_matches_its_dense_formula():
    q, k, v = qkv(L=50, S=70, std=1.0)
    out = kernel_attention(q, k, v, "linear", chunk_size=16)
    torch.testing.assert_close(out, elu_reference(q, k, v), rtol=1e-10, atol=1e-12)


def test_softmax_free_matches_its_dense_formula():
    q, k, v = qkv(L=60, S=64, std=0.7)
    out = kernel_attention(q, k, v, "softmax-free", num_features=16, chunk_size=24)
    torch.testing.assert_close(out, soft_reference(q, k, v, 16), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["favor+", "nystrom", "softmax-free", "linear"])
def test_chunk_size_does_not_change_the_result(method):
    q, k, v = qkv(L=100, std=0.7)
    a = kernel_attention(q, k, v, method, num_features=nf(method, 32), chunk_size=17)
    b = kernel_attention(q, k, v, method, num_features=nf(method, 32), chunk_size=1000)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# The "mean of V" guard and the logit-std-2 ceiling (L = 1,024, head dim 64)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stress():
    """Reference section 5.3 inputs: 8 heads, L=1024, d=64, unit logits and logit std 2."""
    out = {}
    for var in (1.0, 2.0):
        q, k, v = qkv(L=1024, E=64, H=8, std=math.sqrt(var), seed=11, dtype=torch.float32)
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        out[var] = (q, k, v, exact, rel(uniform(v, exact), exact))
    return out


@pytest.mark.parametrize("m", [64, 256])
def test_nystrom_beats_mean_of_v_at_unit_logits(stress, m):
    q, k, v, exact, base = stress[1.0]
    err = rel(
        kernel_attention(q, k, v, "nystrom", nystrom_form="projection", num_features=m), exact
    )
    assert err < 0.9 * base, (err, base)


@pytest.mark.parametrize("m", [128, 256])
def test_hermite_beats_mean_of_v_at_unit_logits(stress, m):
    q, k, v, exact, base = stress[1.0]
    err = rel(kernel_attention(q, k, v, "hermite", num_features=m), exact)
    assert err < 0.9 * base, (err, base)
    if m == 256:
        # Acceptance bar of the attention issue: <= 0.50 at <= 256 features (0.472 in the
        # benchmark's mean of 3 seeds; one draw of 8 heads varies by about +-0.01).
        assert err < 0.50, err


@pytest.mark.parametrize(
    "opts",
    [
        {"num_features": 66},
        {"num_features": 128},
        {"num_features": 256},
        {"num_features": 256, "jitter": 1e-8},
        {"num_features": 256, "jitter": 1.0},
    ],
)
def test_hermite_never_worse_than_uniform_at_logit_std_2(stress, opts):
    q, k, v, exact, base = stress[2.0]
    err = rel(kernel_attention(q, k, v, "hermite", **opts), exact)
    assert err < base, (opts, err, base)


@pytest.mark.parametrize(
    "opts",
    [
        {"num_features": 32},
        {"num_features": 64},
        {"num_features": 256},
        {"num_features": 256, "pinv": "newton"},
        {"num_features": 256, "jitter": 1e-6},
        {"num_features": 256, "jitter": 1e-1},
    ],
)
def test_nystrom_never_worse_than_uniform_at_logit_std_2(stress, opts):
    q, k, v, exact, base = stress[2.0]
    err = rel(kernel_attention(q, k, v, "nystrom", nystrom_form="projection", **opts), exact)
    assert err < base, (opts, err, base)


@pytest.fixture(scope="module")
def clustered():
    """Reference section 5.4 inputs (16 centres per head), L=512, logit std 2."""
    g = torch.Generator().manual_seed(5)
    L, E, H = 512, 64, 4
    centres = torch.randn(1, H, 16, E, generator=g, dtype=torch.float64)
    own = centres.gather(2, torch.randint(0, 16, (1, H, L, 1), generator=g).expand(1, H, L, E))
    q = own + 0.3 * torch.randn(1, H, L, E, generator=g, dtype=torch.float64)
    k = own + 0.3 * torch.randn(1, H, L, E, generator=g, dtype=torch.float64)
    q, k = q / q.std() * math.sqrt(2), k / k.std() * math.sqrt(2)
    v = torch.randn(1, H, L, E, generator=g, dtype=torch.float64)
    exact = F.scaled_dot_product_attention(q, k, v)
    return q, k, v, exact, rel(uniform(v, exact), exact)


@pytest.mark.parametrize("m", [64, 256])
def test_nystrom_kmeans_landmarks_on_clustered_keys(clustered, m):
    """Pooled landmarks fall between clusters: rows whose cluster has no landmark get
    Nyström row sums near zero (error 2.7 to 66 at these settings); one Lloyd step puts
    landmarks inside the clusters (0.16-0.19 in the benchmark)."""
    q, k, v, exact, base = clustered
    err = rel(
        kernel_attention(q, k, v, "nystrom", nystrom_form="projection", num_features=m), exact
    )
    assert err < 0.4 * base, (err, base)


def test_favor_is_not_collapsed_to_uniform(stress):
    """The estimator has no epsilon floor: it never returns the mean of V in disguise.

    At unit logits and head dim 64 its variance (exp(‖q'+k'‖²) ≈ e^16 per feature) makes it
    a different operator (see docs/benchmarks.md); what must hold is that it stays an
    attention over the keys and, at small logits, tracks softmax (tests above).
    """
    q, k, v, exact, _ = stress[1.0]
    out = kernel_attention(q, k, v, "favor+", num_features=256)
    assert torch.isfinite(out).all()
    assert rel(out, uniform(v, exact)) > 0.5


# ---------------------------------------------------------------------------------------------
# Gradients (float64, L = 64)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,causal", [(m, False) for m in METHODS] + [(m, True) for m in CAUSAL]
)
def test_gradcheck(method, causal):
    q, k, v = (t.requires_grad_() for t in qkv(L=64, E=4, H=2, std=0.5, seed=3))
    mask = torch.zeros(1, 1, 64, dtype=torch.bool)
    mask[..., 50:] = True

    def f(q, k, v):
        return kernel_attention(
            q, k, v, method, num_features=nf(method, 12, E=4), is_causal=causal, chunk_size=24,
            key_padding_mask=mask,
        )  # fmt: skip

    # fast_mode checks random directional derivatives: same check, far fewer evaluations.
    assert torch.autograd.gradcheck(f, (q, k, v), atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradcheck_landmark_rules():
    """Pooled landmarks with overlapping segments (64 keys, 12 landmarks), and k-means with
    a landmark that has no members (it keeps its pooled value and gradient)."""
    q, k, v = (t.requires_grad_() for t in qkv(L=64, E=4, H=2, std=0.5, seed=3))

    def f(q, k, v):
        return kernel_attention(
            q,
            k,
            v,
            "nystrom",
            nystrom_form="projection",
            num_features=12,
            landmarks="pool",
            chunk_size=24,
        )

    assert torch.autograd.gradcheck(f, (q, k, v), atol=1e-6, rtol=1e-5, fast_mode=True)
    q, k, v, _ = two_groups()
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def g(q, k, v):
        return kernel_attention(
            q, k, v, "nystrom", nystrom_form="projection", num_features=3, chunk_size=5
        )

    assert torch.autograd.gradcheck(g, (q, k, v), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Causality and incremental decoding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", CAUSAL)
def test_causal_by_perturbation(method):
    q, k, v = qkv(L=90, std=0.8)
    out = kernel_attention(q, k, v, method, is_causal=True, chunk_size=32)
    t = 41
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[..., t:, :] += torch.randn(x[..., t:, :].shape, dtype=x.dtype) * 3
    out2 = kernel_attention(q2, k2, v2, method, is_causal=True, chunk_size=32)
    torch.testing.assert_close(out[..., :t, :], out2[..., :t, :], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out[..., t:, :], out2[..., t:, :])


def test_causal_linear_matches_dense_formula():
    q, k, v = qkv(L=70)
    out = kernel_attention(q, k, v, "linear", is_causal=True, chunk_size=16)
    torch.testing.assert_close(out, elu_reference(q, k, v, causal=True), rtol=1e-10, atol=1e-12)


def test_causal_favor_estimates_causal_softmax():
    q, k, v = qkv(L=128, std=0.25)
    out = kernel_attention(q, k, v, "favor+", is_causal=True, num_features=1024)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel(out, exact) < 0.05


@pytest.mark.parametrize("method", CAUSAL)
def test_incremental_decoding_equals_full_pass(method):
    q, k, v = qkv(L=40, std=0.8)
    fm = PositiveFeatures(16, 32, seed=5) if method == "favor+" else None
    full = kernel_attention(q, k, v, method, is_causal=True, feature_map=fm, chunk_size=16)
    state = DecodingState(method, feature_map=fm)
    steps = [state.step(q[..., :1, :], k[..., :1, :], v[..., :1, :])]
    steps += [state.step(q[..., 1:7, :], k[..., 1:7, :], v[..., 1:7, :])]  # several at once
    for i in range(7, 40):
        steps.append(state.step(q[..., i : i + 1, :], k[..., i : i + 1, :], v[..., i : i + 1, :]))
    torch.testing.assert_close(torch.cat(steps, -2), full, rtol=1e-9, atol=1e-11)
    assert state.length == 40 and state.S.shape == (1, 2, fm.num_features if fm else 16, 16)


def test_module_step_equals_causal_forward():
    attn = KernelAttention(32, 4, "favor+", num_features=32, seed=0, is_causal=True).double()
    x = torch.randn(2, 12, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full, _ = attn(x)
    state = attn.decoding_state()
    steps = torch.cat([attn.step(x[:, i : i + 1], state) for i in range(12)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method", ["nystrom", "hermite", "softmax-free"])
def test_landmark_methods_refuse_causal(method):
    q, k, v = qkv(L=8)
    with pytest.raises(ValueError, match="cannot be causal"):
        kernel_attention(q, k, v, method, is_causal=True)
    with pytest.raises(ValueError, match="causal"):
        DecodingState(method)
    with pytest.raises(ValueError, match="causal"):
        KernelAttention(16, 2, method, is_causal=True)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_masked_keys_have_no_influence(method):
    q, k, v = qkv(L=48, S=64, std=0.7)
    mask = torch.zeros(1, 1, 64, dtype=torch.bool)
    mask[..., 40:] = True
    m = nf(method, 8)
    out = kernel_attention(q, k, v, method, key_padding_mask=mask, num_features=m)
    k2, v2 = k.clone(), v.clone()
    k2[..., 40:, :] = torch.randn(k2[..., 40:, :].shape, dtype=k.dtype) * 5
    v2[..., 40:, :] = 1e3
    out2 = kernel_attention(q, k2, v2, method, key_padding_mask=mask, num_features=m)
    torch.testing.assert_close(out, out2, rtol=1e-10, atol=1e-12)
    # The same through an SDPA-style boolean attn_mask (True = attend).
    out3 = kernel_attention(q, k2, v2, method, attn_mask=~mask[..., None, :], num_features=m)
    torch.testing.assert_close(out, out3, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", CAUSAL)
def test_padding_removes_keys_from_the_normaliser(method):
    """Masking the tail equals attending to the truncated sequence (normaliser included)."""
    q, k, v = qkv(L=32, S=64, std=0.5)
    fm = PositiveFeatures(16, 64, seed=1)
    mask = torch.zeros(1, 1, 64, dtype=torch.bool)
    mask[..., 40:] = True
    out = kernel_attention(q, k, v, method, key_padding_mask=mask, feature_map=fm)
    ref = kernel_attention(q, k[..., :40, :], v[..., :40, :], method, feature_map=fm)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_float_mask_matches_sdpa_bias_for_favor():
    q, k, v = qkv(L=64, std=0.25)
    bias = torch.zeros(1, 1, 1, 64, dtype=torch.float64)
    bias[..., :10] = float("-inf")
    bias[..., 10:20] = 1.0
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = kernel_attention(q, k, v, "favor+", attn_mask=bias, num_features=2048)
    assert rel(out, exact) < 0.05


@pytest.mark.parametrize("method,m", [("nystrom", 64), ("hermite", 15)])
def test_float_mask_matches_sdpa_bias_for_landmark_methods(method, m):
    """Additive biases weight the keys exactly; masked (-inf) keys leave the landmarks."""
    q, k, v = qkv(L=128, E=4, std=0.3, seed=1)
    bias = torch.zeros(1, 1, 1, 128, dtype=torch.float64)
    bias[..., :10] = float("-inf")
    bias[..., 10:40] = 1.0
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    form = {"nystrom_form": "projection"} if method == "nystrom" else {}
    out = kernel_attention(q, k, v, method, attn_mask=bias, num_features=m, jitter=1e-10, **form)
    # ignoring the bias would be 0.44 off; measured 4e-4 (nystrom) and 5e-4 (hermite)
    assert rel(out, exact) < 0.005


# ---------------------------------------------------------------------------------------------
# Half precision on the stress inputs (reference section 5.3)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_is_finite_on_stress_inputs(stress, method, dtype):
    q, k, v, _, _ = stress[2.0]
    q, k, v = (t[:, :2, :256].clone().requires_grad_() for t in (q, k, v))
    ex = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    m = nf(method, 64, E=64)
    ref = rel(kernel_attention(q, k, v, method, num_features=m), ex)
    qh, kh, vh = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    out = kernel_attention(qh, kh, vh, method, num_features=m)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (qh, kh, vh))
    assert rel(out, ex) <= 1.5 * ref + 0.02
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = kernel_attention(q, k, v, method, num_features=m)
    assert torch.isfinite(out_ac).all()


def test_large_logits_do_not_overflow():
    q, k, v = qkv(L=64, E=16, std=8.0, dtype=torch.float32)  # logits of std 16
    for method in METHODS:
        out = kernel_attention(q, k, v, method, num_features=nf(method, 16))
        assert torch.isfinite(out).all()
    for method in CAUSAL:
        assert torch.isfinite(kernel_attention(q, k, v, method, is_causal=True)).all()


# ---------------------------------------------------------------------------------------------
# Determinism, state_dict, redraw policy
# ---------------------------------------------------------------------------------------------
def test_determinism_under_a_seed():
    q, k, v = qkv(L=32, std=0.5)
    a = kernel_attention(q, k, v, "favor+", seed=7)
    b = kernel_attention(q, k, v, "favor+", seed=7)
    c = kernel_attention(q, k, v, "favor+", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    m1 = KernelAttention(32, 4, "favor+", seed=3)
    m2 = KernelAttention(32, 4, "favor+", seed=3)
    x = torch.randn(2, 10, 32)
    assert torch.equal(m1(x)[0], m2(x)[0])


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_is_bit_exact(method):
    src = KernelAttention(32, 4, method, num_features=nf(method, 16, E=8), seed=1)
    dst = KernelAttention(32, 4, method, num_features=nf(method, 16, E=8), seed=2)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(2, 20, 32)
    assert torch.equal(src(x)[0], dst(x)[0])
    assert all(not n.startswith("feature_map") for n, _ in src.named_parameters())


def test_redraw_policy_is_explicit_and_reproducible():
    a = KernelAttention(16, 2, "favor+", num_features=8, seed=0, redraw_interval=2)
    b = KernelAttention(16, 2, "favor+", num_features=8, seed=0, redraw_interval=2)
    w0 = a.feature_map.projection.weight.clone()
    x = torch.randn(1, 5, 16)
    a.eval()
    for _ in range(3):
        a(x)
    assert torch.equal(a.feature_map.projection.weight, w0)  # never in eval mode
    a.train()
    a(x)
    assert torch.equal(a.feature_map.projection.weight, w0)
    a(x)
    assert not torch.equal(a.feature_map.projection.weight, w0) and int(a.num_redraws) == 1
    with pytest.warns(FutureWarning, match="resample"):
        b.redraw_features()
    assert torch.equal(a.feature_map.projection.weight, b.feature_map.projection.weight)
    plain = KernelAttention(16, 2, "favor+", num_features=8, seed=0)
    plain.train()
    for _ in range(5):
        plain(x)
    assert torch.equal(plain.feature_map.projection.weight, w0)


def test_global_rng_untouched():
    state = torch.get_rng_state()
    KernelAttention(16, 2, "favor+", seed=0)(torch.ones(1, 4, 16))
    kernel_attention(*qkv(L=8), "favor+", seed=1)
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------------------------------------
# Module API
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_module_replaces_multihead_attention(method):
    x = torch.randn(3, 20, 32)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ours = KernelAttention(32, 4, method, num_features=nf(method, 16, E=8), seed=0)
    y_ref, _ = mha(x, x, x, need_weights=False)
    y, w = ours(x, x, x)
    assert y.shape == y_ref.shape and w is None
    seq_first = KernelAttention(
        32, 4, method, batch_first=False, num_features=nf(method, 16, E=8), seed=0
    )
    y2, _ = seq_first(x.transpose(0, 1))
    torch.testing.assert_close(y2.transpose(0, 1), y)
    pad = torch.zeros(3, 20, dtype=torch.bool)
    pad[:, 15:] = True
    y3, _ = ours(x, key_padding_mask=pad)
    x2 = x.clone()
    x2[:, 15:] = 100.0
    y4, _ = ours(x2, key_padding_mask=pad)
    torch.testing.assert_close(y3[:, :15], y4[:, :15])
    y.sum().backward()
    assert ours.q_proj.weight.grad is not None


def test_newton_schulz_converges_monotonically_to_the_inverse():
    g = torch.Generator().manual_seed(0)
    # Condition number ~300 (converges in ~14 steps). The checkpoints stop a few steps past
    # convergence: iterating far beyond it only repeats rounding-level updates, slowly.
    X = 0.5 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    A = torch.exp(-0.5 * torch.cdist(X, X).square()) + 1e-3 * torch.eye(64, dtype=torch.float64)
    exact = torch.linalg.inv(A)
    errs = [float(torch.linalg.norm(newton_schulz_inverse(A, it, 0.0)[0] - exact)) for it in
            (2, 4, 6, 8, 10, 12, 16, 20)]  # fmt: skip
    assert all(b <= a * (1 + 1e-9) + 1e-13 for a, b in itertools.pairwise(errs)), errs
    inv, _, res = newton_schulz_inverse(A, 200, 1e-12)
    assert res <= 1e-12 and rel(inv, exact) < 1e-9


def test_favor_affine_form_matches_positive_features():
    q, k, v = qkv(L=40, std=0.6)
    for fm in (PositiveFeatures(16, 32, seed=0), PositiveFeatures(16, 32, seed=0, M=0.1),
               PositiveFeatures(16, 32, seed=0, hyperbolic=True)):  # fmt: skip
        a = kernel_attention(q, k, v, "favor+", feature_map=fm)  # affine fast path
        b = kernel_attention(q, k, v, "favor+", feature_map=fm, is_causal=False, chunk_size=7)
        c = DecodingState("favor+", feature_map=fm)  # log_features path, causal
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        full_c = kernel_attention(q, k, v, "favor+", feature_map=fm, is_causal=True)
        torch.testing.assert_close(c.step(q, k, v), full_c, rtol=1e-9, atol=1e-11)
        # Last causal row attends to everything: equals the non-causal row.
        # (the affine path rounds c·W in the float32 buffer's dtype: ~1e-7 relative)
        torch.testing.assert_close(full_c[..., -1, :], a[..., -1, :], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_input_messages():
    q, k, v = qkv(L=8)
    with pytest.raises(ValueError, match="method must be one of"):
        kernel_attention(q, k, v, "performer")
    with pytest.raises(ValueError, match="same head dimension"):
        kernel_attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="same sequence length"):
        kernel_attention(q, k, v[..., :5, :])
    with pytest.raises(TypeError, match="key_padding_mask must be a bool"):
        kernel_attention(q, k, v, key_padding_mask=torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        kernel_attention(q, k, v, key_padding_mask=torch.zeros(1, 1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="same for every query"):
        kernel_attention(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be a bool"):
        kernel_attention(q, k, v, attn_mask=torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        kernel_attention(q, k, v, attn_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        kernel_attention(q, k, v, attn_mask=torch.ones(1, 8, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="as many queries as keys"):
        kernel_attention(q, k[..., :4, :], v[..., :4, :], "linear", is_causal=True)
    with pytest.raises(ValueError, match="in_features=8"):
        kernel_attention(q, k, v, feature_map=PositiveFeatures(8, 4, seed=0))
    with pytest.raises(ValueError, match="pinv must be one of"):
        kernel_attention(q, k, v, "nystrom", nystrom_form="projection", pinv="svd")
    with pytest.raises(ValueError, match="divisible"):
        KernelAttention(30, 4)
    with pytest.raises(ValueError, match="need_weights=False"):
        KernelAttention(16, 2)(torch.ones(1, 3, 16), need_weights=True)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, S\)"):
        KernelAttention(16, 2)(torch.ones(1, 3, 16), key_padding_mask=torch.zeros(1, 4).bool())
    with pytest.raises(ValueError, match="last dimension 15"):
        KernelAttention(16, 2)(torch.ones(1, 3, 15))
