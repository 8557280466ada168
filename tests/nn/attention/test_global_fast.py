"""The whole-sequence no-grad path of ``"hedgehog"`` and ``"linear"`` against the chunked path."""

import math

import pytest
import torch

import snnk.nn.attention.functional as functional
import snnk.nn.attention.global_fast as global_fast
from snnk.nn.attention import KernelAttention, LearnedFeatureMap, hybrid_attention, kernel_attention
from snnk.nn.attention.global_fast import fast_path_applies

E = 8


def rand(*shape, seed=0, std=0.7, dtype=torch.float64):
    return std * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def shaped_map(H, m=16, seed=1, dtype=torch.float64):
    """A map moved away from its start (query and key maps differ, offsets not constant)."""
    fm = LearnedFeatureMap(H, E, m, seed=seed, dtype=dtype)
    with torch.no_grad():
        fm.weight_k.mul_(1.4)
        fm.bias_q.add_(rand(H, m, seed=seed + 10, dtype=dtype))
        fm.bias_k.sub_(rand(H, m, seed=seed + 11, dtype=dtype))
    return fm


def dense_learned(fm, q, k, v, lw=None):
    """softmax over the log-kernel ``logsumexp_f(log φ_q + log φ_k)`` (the estimator)."""
    lq, lk = fm.log_features(q, "query"), fm.log_features(k, "key")
    logw = torch.logsumexp(lq.unsqueeze(-2) + lk.unsqueeze(-3), -1)
    if lw is not None:
        logw = logw + lw.unsqueeze(-2)
    return torch.softmax(logw, -1) @ v


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of the whole-sequence functions from :mod:`.functional`."""
    calls = {"learned": 0, "linear": 0}

    def wrap(name, fn):
        def inner(*args):
            calls[name] += 1
            return fn(*args)

        return inner

    monkeypatch.setattr(functional, "learned_global", wrap("learned", functional.learned_global))
    monkeypatch.setattr(functional, "linear_global", wrap("linear", functional.linear_global))
    return calls


# (batch, H, L, S, Ev): L = 1, S != L, 3-d inputs (no batch), two batch dimensions
SHAPES = [
    ((2,), 3, 37, 37, E),
    ((1,), 3, 1, 1, E),
    ((2,), 3, 5, 41, 3),
    ((), 3, 20, 20, E),
    ((2, 2), 3, 9, 13, 5),
]


@pytest.mark.parametrize("batch, H, L, S, Ev", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_hedgehog_fast_path_equals_chunked_and_dense(spy, batch, H, L, S, Ev, masked):
    fm = shaped_map(H)
    q, k = rand(*batch, H, L, E, seed=2), rand(*batch, H, S, E, seed=3)
    v = rand(*batch, H, S, Ev, seed=4)
    pad = None
    if masked:
        pad = torch.rand(*batch, H, S, generator=torch.Generator().manual_seed(5)) < 0.3
        pad[..., 0] = False
    with torch.no_grad():
        fast = hybrid_attention(q, k, v, fm, window=0, key_padding_mask=pad)
        assert spy["learned"] == 1
        chunked = hybrid_attention(q, k, v, fm, window=0, key_padding_mask=pad, chunk_size=4)
        assert spy["learned"] == 1
        lw = (
            None
            if pad is None
            else torch.zeros(pad.shape, dtype=q.dtype).masked_fill(pad, -math.inf)
        )
        ref = dense_learned(fm, q, k, v, lw)
    assert fast.shape == (*batch, H, L, Ev) and fast.dtype == q.dtype
    torch.testing.assert_close(fast, chunked, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch, H, L, S, Ev", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_linear_fast_path_equals_chunked_and_dense(spy, batch, H, L, S, Ev, masked):
    q, k = rand(*batch, H, L, E, seed=2, std=1.5), rand(*batch, H, S, E, seed=3, std=1.5)
    v = rand(*batch, H, S, Ev, seed=4)
    bias = None
    if masked:  # float biases and dropped keys, (..., 1, S)
        bias = rand(*batch, H, 1, S, seed=6)
        bias[..., 1::3] = -math.inf
    with torch.no_grad():
        fast = kernel_attention(q, k, v, "linear", attn_mask=bias)
        assert spy["linear"] == 1
        chunked = kernel_attention(q, k, v, "linear", attn_mask=bias, chunk_size=4)
        assert spy["linear"] == 1
    phi_q = torch.nn.functional.elu(q) + 1
    phi_k = torch.nn.functional.elu(k) + 1
    w = phi_q @ phi_k.mT
    if bias is not None:
        w = w * bias.exp()
    ref = (w @ v) / w.sum(-1, keepdim=True)
    torch.testing.assert_close(fast, chunked, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_linear_fast_path_on_two_dimensional_inputs(spy):
    q, k, v = rand(11, E, seed=1), rand(7, E, seed=2), rand(7, 3, seed=3)
    with torch.no_grad():
        fast = kernel_attention(q, k, v, "linear")
        chunked = kernel_attention(q, k, v, "linear", chunk_size=2)
    assert spy["linear"] == 1
    torch.testing.assert_close(fast, chunked, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("budget", [1, 200, 600])
def test_blocks_of_heads_and_sequences_give_the_same_result(monkeypatch, budget):
    """Tiny block budgets: one head per block, several heads, several sequences."""
    fm = shaped_map(3)
    q, k, v = rand(3, 3, 6, E, seed=7), rand(3, 3, 6, E, seed=8), rand(3, 3, 6, E, seed=9)
    with torch.no_grad():
        ref_learned = hybrid_attention(q, k, v, fm, window=0)
        ref_linear = kernel_attention(q, k, v, "linear")
        monkeypatch.setattr(global_fast, "FAST_BLOCK_ELEMENTS", budget)
        blocks = list(global_fast._blocks(3, 3, 6, 16))
        torch.testing.assert_close(hybrid_attention(q, k, v, fm, window=0), ref_learned)
        torch.testing.assert_close(kernel_attention(q, k, v, "linear"), ref_linear)
    assert len(blocks) == {1: 9, 200: 6, 600: 2}[budget]  # 96 entries a head


def test_non_contiguous_inputs_as_hugging_face_passes_them(spy):
    """``(B, L, H, E)`` projections seen through ``transpose(1, 2)``."""
    fm = shaped_map(3)
    x = rand(3, 2, 10, 3, E, seed=12)
    q, k, v = (t.transpose(1, 2) for t in x)
    assert not q.is_contiguous()
    with torch.no_grad():
        for fn in (
            lambda a, b, c: hybrid_attention(a, b, c, fm, window=0),
            lambda a, b, c: kernel_attention(a, b, c, "linear"),
        ):
            out = fn(q, k, v)
            torch.testing.assert_close(out, fn(*(t.contiguous() for t in (q, k, v))))
    assert spy == {"learned": 2, "linear": 2}


def test_routing(spy):
    """Gradients, causal, windows, an explicit chunk size and compiled code keep the
    chunked path; no-grad and inference mode take the whole-sequence path."""
    fm = shaped_map(3)
    q, k, v = rand(1, 3, 12, E), rand(1, 3, 12, E, seed=1), rand(1, 3, 12, E, seed=2)
    hybrid_attention(q, k, v, fm, window=0)  # the map's parameters require a gradient
    kernel_attention(q.requires_grad_(), k, v, "linear")
    q = q.detach()
    with torch.no_grad():
        hybrid_attention(q, k, v, fm, window=0, is_causal=True)
        hybrid_attention(q, k, v, fm, window=2)
        hybrid_attention(q, k, v, fm, window=0, chunk_size=5)
        hybrid_attention(q, k, v, window=0, far_kernel="nystrom", num_features=4)
        kernel_attention(q, k, v, "linear", is_causal=True)
    assert spy == {"learned": 0, "linear": 0}
    fm.requires_grad_(False)
    hybrid_attention(q, k, v, fm, window=0)  # nothing needs a gradient
    kernel_attention(q, k, v, "linear")
    with torch.inference_mode():
        hybrid_attention(q, k, v, fm, window=0)
        kernel_attention(q, k, v, "linear")
    assert spy == {"learned": 2, "linear": 2}


def test_fast_path_respects_the_memory_budget(monkeypatch):
    x = torch.zeros(2, 3)
    assert fast_path_applies(100, 64, x)
    monkeypatch.setattr(global_fast, "BLOCK_ELEMENTS", 100 * 64 - 1)
    assert not fast_path_applies(100, 64, x)


def test_every_key_masked_gives_zero_not_nan(spy):
    fm = shaped_map(3)
    q, k, v = rand(2, 3, 10, E), rand(2, 3, 10, E, seed=1), rand(2, 3, 10, E, seed=2)
    pad = torch.zeros(2, 1, 10, dtype=torch.bool)
    pad[1] = True
    with torch.no_grad():
        out = hybrid_attention(q, k, v, fm, window=0, key_padding_mask=pad)
        lin = kernel_attention(q, k, v, "linear", key_padding_mask=pad)
        ref = hybrid_attention(q[:1], k[:1], v[:1], fm, window=0)
    assert spy == {"learned": 2, "linear": 1}
    for o in (out, lin):
        assert torch.equal(o[1], torch.zeros_like(o[1]))
    torch.testing.assert_close(out[:1], ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 30.0, 1e4, 1e12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_and_tiny_inputs_stay_finite_convex_combinations(spy, scale, dtype):
    fm = shaped_map(3, dtype=dtype)
    q, k = rand(2, 3, 16, E, seed=1, dtype=dtype) * scale, rand(2, 3, 16, E, seed=2, dtype=dtype)
    k = k * scale
    v = rand(2, 3, 16, E, seed=3, dtype=dtype)
    lo, hi = v.amin(-2, keepdim=True), v.amax(-2, keepdim=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        for out in (
            hybrid_attention(q, k, v, fm, window=0),
            kernel_attention(q, k, v, "linear"),
        ):
            assert torch.isfinite(out).all()
            assert (out >= lo - tol).all() and (out <= hi + tol).all()
    assert spy == {"learned": 1, "linear": 1}


def test_half_inputs_run_in_float32():
    fm = shaped_map(3, dtype=torch.float32)
    q, k, v = (rand(1, 3, 24, E, seed=s, dtype=torch.float32) for s in (1, 2, 3))
    with torch.no_grad():
        ref = hybrid_attention(q, k, v, fm, window=0)
        ref_lin = kernel_attention(q, k, v, "linear")
        for dt in (torch.float16, torch.bfloat16):
            out = hybrid_attention(q.to(dt), k.to(dt), v.to(dt), fm, window=0)
            lin = kernel_attention(q.to(dt), k.to(dt), v.to(dt), "linear")
            assert out.dtype == dt and lin.dtype == dt
            torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
            torch.testing.assert_close(lin.float(), ref_lin, rtol=0.05, atol=0.05)


def test_module_forward_without_grad_equals_training_forward():
    """``KernelAttention("hedgehog")`` and ``("linear")``: the no-grad forward (whole
    sequence) equals the differentiable one (chunked) to float32 rounding."""
    x = rand(2, 40, 24, seed=5, std=1.0, dtype=torch.float32)
    for method in ("hedgehog", "linear"):
        m = KernelAttention(24, 3, method, num_features=16, seed=0, batch_first=True)
        train = m(x)[0]
        with torch.no_grad():
            infer = m(x)[0]
        torch.testing.assert_close(infer, train.detach(), rtol=1e-5, atol=1e-6)
