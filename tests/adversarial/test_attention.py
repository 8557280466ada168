"""Kernel attention (``snnk.nn``) on hostile input.

Criterion per method, for finite input (every case: finite output or a clear error):

- ``"favor+"``, ``"linear"`` and ``"nystrom"`` (snap form): positive weights, so every output
  row lies in the convex hull of ``V`` (checked per column, ``min V <= out <= max V`` up to
  rounding).
- ``"hermite"``: weights may be negative (a polynomial expansion); every output is within
  ``3·max|V|``; ``"hermite"`` tempers rows whose logit
  spread exceeds 1, so this holds at logits up to 1e3 (it returned 1e5·max|V| before).
- ``"softmax-free"``: Gaussian-kernel attention without row normalisation; finite and within
  ``S·max|V|/jitter``.
- At small logits (scale 1e-3) the estimators of softmax (favor+, nystrom, hermite) match
  exact softmax attention computed in float64 (stated tolerances).
"""

from __future__ import annotations

import math

import pytest
import torch

from snnk.features import PositiveFeatures
from snnk.nn import DecodingState, KernelAttention, kernel_attention
from tests.adversarial.harness import correct_or_clear, expect_error, expect_finite

E, L = 4, 12
METHODS = ["favor+", "nystrom", "hermite", "softmax-free", "linear"]
CAUSAL = [("favor+", False), ("favor+", True), ("linear", True)] + [
    (m, False) for m in METHODS if m != "favor+"
]
HULL = {"favor+": 1.0, "linear": 1.0, "nystrom": 1.0, "hermite": 3.0}  # nystrom: snap form


def _qkv(seed=0, dtype=torch.float32, L=L, S=L):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, L, E, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, S, E, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, S, E, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _exact(q, k, v, scale):
    w = torch.softmax(q.double() @ k.double().mT * scale, -1)
    return w @ v.double()


def _sensible(method, out, v):
    """The criterion of the module docstring."""
    expect_finite(out)
    o, vv = out.double(), v.double()
    slack = 1e-2 * vv.abs().max() + 1e-6
    if method in ("favor+", "linear", "nystrom"):
        lo, hi = vv.amin(-2, keepdim=True), vv.amax(-2, keepdim=True)
        assert (o >= lo - slack).all() and (o <= hi + slack).all(), "outside the hull of V"
    elif method in HULL:
        assert o.abs().max() <= HULL[method] * vv.abs().max() + slack
    else:
        assert o.abs().max() <= v.shape[-2] * vv.abs().max() / 1e-3


def _call(q, k, v, method, causal=False, **kw):
    kw.setdefault("num_features", 16)
    return kernel_attention(q, k, v, method, is_causal=causal, **kw)


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("where", ["query", "key", "value"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("method, causal", CAUSAL)
def test_nonfinite_inputs(method, causal, bad, where):
    """Non-finite entries give an error naming the argument, or (where the estimator's
    arithmetic propagates them, like SDPA) no silent finite garbage: NaN/Inf stays visible."""
    q, k, v = _qkv()
    t = {"query": q, "key": k, "value": v}[where]
    t[0, 0, 3, 1] = bad
    try:
        out = _call(q, k, v, method, causal)
    except (ValueError, TypeError) as exc:
        assert where in str(exc)
        return
    assert not torch.isfinite(out).all(), "non-finite input silently disappeared"


@pytest.mark.category("nonfinite")
@pytest.mark.parametrize("method", [m for m in METHODS])
def test_float_mask_with_nan(method):
    q, k, v = _qkv()
    mask = torch.zeros(2, 2, 1, L)
    mask[..., 2] = math.nan
    correct_or_clear(
        lambda: _call(q, k, v, method, attn_mask=mask),
        lambda out: _sensible(method, out, v) if torch.isfinite(out).all() else None,
        "attn_mask",
    )


@pytest.mark.category("scale")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("logit", [1e-3, 1e-1, 1.0, 1e1, 1e2, 1e3])
@pytest.mark.parametrize("method, causal", CAUSAL)
def test_logit_scales(method, causal, logit, dtype):
    q, k, v = _qkv(dtype=dtype)
    out = _call(q, k, v, method, causal, scale=logit / math.sqrt(E))
    assert out.dtype == dtype and out.shape == v.shape
    _sensible(method, out, v.float())


@pytest.mark.category("scale")
@pytest.mark.parametrize("offset", [1e3, 1e6])
@pytest.mark.parametrize("method", METHODS)
def test_offset_keys(method, offset):
    """Keys far from the origin: softmax is invariant to a shift along no direction, so only
    the sensible-output criterion (or a clear error) is asked."""
    q, k, v = _qkv()
    correct_or_clear(
        lambda: _call(q * 1e-3, k + offset, v, method),
        lambda out: _sensible(method, out, v),
        "key",
        "query",
    )


@pytest.mark.category("scale")
@pytest.mark.parametrize("method, tol", [("favor+", 5e-2), ("nystrom", 1e-2), ("hermite", 1e-3)])
def test_small_logits_match_exact_softmax(method, tol):
    q, k, v = _qkv(dtype=torch.float64)
    scale = 1e-3 / math.sqrt(E)
    out = _call(q, k, v, method, scale=scale, num_features=64)
    ref = _exact(q, k, v, scale)
    assert (out - ref).abs().max() <= tol * v.abs().max()


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.bool])
def test_non_float_inputs(dtype):
    q, k, v = _qkv()
    expect_error(lambda: _call(q.to(dtype), k.to(dtype), v.to(dtype), "favor+"), "query")


@pytest.mark.category("dtype")
def test_mixed_dtypes():
    q, k, v = _qkv()
    expect_error(lambda: _call(q, k.double(), v, "nystrom"), "dtype")


@pytest.mark.category("dtype")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_to_a_float32_module(dtype):
    m = KernelAttention(8, 2, seed=0, num_features=8)
    x = torch.randn(2, 5, 8)
    expect_error(lambda: m(x.to(dtype)), "query")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = m(x.to(torch.bfloat16))
    expect_finite(out)


@pytest.mark.category("shape")
@pytest.mark.parametrize("method", METHODS)
def test_zero_keys(method):
    q, k, v = _qkv(S=0)
    expect_error(lambda: _call(q, k, v, method), "key")


@pytest.mark.category("shape")
@pytest.mark.parametrize("method, causal", CAUSAL)
def test_one_query_and_one_key(method, causal):
    q, k, v = _qkv(L=1, S=1)
    out = _call(q, k, v, method, causal, num_features=8)
    if method in ("favor+", "linear", "nystrom"):
        torch.testing.assert_close(out, v, rtol=1e-4, atol=1e-4)  # one key: its value
    else:
        _sensible(method, out, v)


@pytest.mark.category("shape")
@pytest.mark.parametrize(
    "case, names",
    [
        ("E", ("head dimension",)),
        ("batch", ("batch",)),
        ("S", ("sequence length",)),
        ("ndim", ("query",)),
        ("mask-shape", ("attn_mask",)),
        ("mask-rows", ("attn_mask",)),
        ("mask-dtype", ("attn_mask",)),
        ("padding-dtype", ("key_padding_mask",)),
        ("padding-shape", ("key_padding_mask",)),
        ("causal-L", ("is_causal",)),
    ],
)
def test_bad_shapes(case, names):
    q, k, v = _qkv()
    kw = {}
    if case == "E":
        k = k[..., :3]
    elif case == "batch":
        k, v = k[:1, :1], v[:1, :1]
        k = k.expand(3, 2, L, E)
        v = v.expand(3, 2, L, E)
    elif case == "S":
        v = v[..., :5, :]
    elif case == "ndim":
        q = q[0, 0, 0]
    elif case == "mask-shape":
        kw["attn_mask"] = torch.ones(1, L + 1, dtype=torch.bool)
    elif case == "mask-rows":
        kw["attn_mask"] = torch.ones(L, L, dtype=torch.bool)
    elif case == "mask-dtype":
        kw["attn_mask"] = torch.ones(1, L, dtype=torch.int64)
    elif case == "padding-dtype":
        kw["key_padding_mask"] = torch.zeros(2, 2, L)
    elif case == "padding-shape":
        kw["key_padding_mask"] = torch.zeros(2, 2, L + 2, dtype=torch.bool)
    elif case == "causal-L":
        q = q[..., :5, :]
        kw["is_causal"] = True
    expect_error(lambda: kernel_attention(q, k, v, "favor+", **kw), *names, "query", "key")


@pytest.mark.category("shape")
@pytest.mark.parametrize("method", METHODS)
def test_all_keys_masked(method):
    q, k, v = _qkv()
    mask = torch.ones(2, 2, L, dtype=torch.bool)
    correct_or_clear(
        lambda: _call(q, k, v, method, key_padding_mask=mask),
        expect_finite,
        "key_padding_mask",
    )


@pytest.mark.category("device")
@pytest.mark.parametrize("method, causal", CAUSAL)
def test_meta_inputs(method, causal):
    q = torch.empty(2, 3, 7, E, device="meta")
    out = _call(q, q, q, method, causal, num_features=8)
    assert out.device.type == "meta" and out.shape == q.shape


@pytest.mark.category("device")
def test_meta_module_materialised():
    """Built on meta, ``to_empty`` + ``reset_parameters`` equals the CPU-built module."""
    for method in ("favor+", "nystrom"):
        cpu = KernelAttention(8, 2, method, seed=3, num_features=8)
        meta = KernelAttention(8, 2, method, seed=3, num_features=8, device="meta")
        out, _ = meta(torch.empty(2, 5, 8, device="meta"))
        assert out.device.type == "meta"
        meta.to_empty(device="cpu")
        meta.reset_parameters()
        a, b = cpu.state_dict(), meta.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.category("device")
def test_meta_input_to_a_cpu_module_and_map():
    m = KernelAttention(8, 2, seed=0, num_features=8)
    expect_error(lambda: m(torch.empty(2, 5, 8, device="meta")), "device")
    q = torch.empty(1, 4, E, device="meta")
    fmap = PositiveFeatures(E, 8, seed=0)
    expect_error(lambda: kernel_attention(q, q, q, feature_map=fmap), "device")


@pytest.mark.category("options")
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"method": "softmax"}, "method"),
        ({"num_features": 0}, "num_features"),
        ({"num_features": -4}, "num_features"),
        ({"num_features": 8.0}, "num_features"),
        ({"num_features": "8"}, "num_features"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"method": "nystrom", "landmarks": "random"}, "landmarks"),
        ({"method": "favor+", "landmarks": "pool"}, "landmarks"),
        ({"method": "nystrom", "pinv": "svd"}, "pinv"),
        ({"method": "nystrom", "jitter": 0.0}, "jitter"),
        ({"method": "nystrom", "max_iter": 0}, "max_iter"),
        ({"method": "nystrom", "tol": -1.0}, "tol"),
        ({"scale": -1.0}, "scale"),
        ({"scale": math.nan}, "scale"),
        ({"method": "hermite", "num_features": 5}, "num_features"),
        ({"method": "nystrom", "is_causal": True}, "causal"),
        ({"feature_map": "x"}, "feature_map"),
        ({"feature_map": PositiveFeatures(E + 1, 8, seed=0)}, "feature_map"),
    ],
)
def test_bad_options(kw, name):
    q, k, v = _qkv()
    expect_error(lambda: kernel_attention(q, k, v, **kw), name)


@pytest.mark.category("options")
def test_newton_without_convergence_is_a_clear_error():
    q, k, v = _qkv()
    expect_error(
        lambda: _call(
            q, k, v, "nystrom", pinv="newton", max_iter=1, tol=1e-12, nystrom_form="projection"
        ),
        "max_iter",
    )


@pytest.mark.category("options")
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"method": "x"}, "method"),
        ({"num_features": 0}, "num_features"),
        ({"num_heads": 3}, "num_heads"),
        ({"dropout": 1.5}, "dropout"),
        ({"redraw_interval": 0}, "redraw_interval"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_module_options(kw, name):
    kw = {"embed_dim": 8, "num_heads": 2, **kw}
    expect_error(lambda: KernelAttention(**kw), name)


@pytest.mark.category("options")
def test_decoding_state_options_and_shapes():
    expect_error(lambda: DecodingState("nystrom"), "method")
    expect_error(lambda: DecodingState("favor+"), "feature_map")
    st = DecodingState("linear")
    q, k, v = _qkv()
    st.step(q[..., :2, :], k[..., :2, :], v[..., :2, :])
    expect_error(lambda: st.step(q[:1, :, :1], k[:1, :, :1], v[:1, :, :1]), "batch")
    assert st.length == 2


@pytest.mark.category("inplace")
def test_redraw_with_a_bad_seed_keeps_the_module():
    m = KernelAttention(8, 2, seed=0, num_features=8)
    before = {n: t.clone() for n, t in m.state_dict().items()}
    expect_error(lambda: m.redraw_features("not a seed"), "seed")
    assert all(torch.equal(before[n], t) for n, t in m.state_dict().items())


@pytest.mark.category("inplace")
@pytest.mark.parametrize("case", ["feature-shape", "missing", "unexpected", "late-failure"])
def test_load_state_dict_is_all_or_nothing(case):
    m = KernelAttention(8, 2, seed=0, num_features=8)
    other = KernelAttention(8, 2, seed=1, num_features=8)
    sd = dict(other.state_dict())
    if case == "feature-shape":
        sd["feature_map.projection.weight"] = torch.zeros(16, 4)
    elif case == "missing":
        del sd["out_proj.bias"]
    elif case == "unexpected":
        sd["extra"] = torch.zeros(1)
    before = {n: t.clone() for n, t in m.state_dict().items()}
    if case == "late-failure":
        # a failure inside torch's copy (the last entry is not a tensor) restores everything
        sd["out_proj.weight"] = "not a tensor"
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            m.load_state_dict(sd)
    else:
        expect_error(lambda: m.load_state_dict(sd), "state dict")
    assert all(torch.equal(before[n], t) for n, t in m.state_dict().items())


@pytest.mark.category("inplace")
def test_decoding_state_unchanged_after_a_failed_step():
    fmap = PositiveFeatures(E, 8, seed=0)
    st = DecodingState("favor+", feature_map=fmap)
    q, k, v = _qkv()
    st.step(q[..., :3, :], k[..., :3, :], v[..., :3, :])
    S, z, c = st.S.clone(), st.z.clone(), st.c.clone()
    expect_error(lambda: st.step(q[..., :1, :3], k[..., :1, :3], v[..., :1, :]), "query")
    assert torch.equal(S, st.S) and torch.equal(z, st.z) and torch.equal(c, st.c)
    assert st.length == 3
