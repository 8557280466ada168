"""Every attention method traces under ``torch.compile(fullgraph=True)``, forward and backward.

``aot_eager`` runs Dynamo's tracing (any graph break fails) and AOTAutograd's backward without
Inductor's code generation, so the test stays fast. Compiled code differentiates the chunked
forward directly (:func:`snnk.nn.attention.engine.run_engine`); values and gradients match
the eager custom backward.
"""

import pytest
import torch

from snnk.features import PositiveFeatures
from snnk.nn import KernelAttention, kernel_attention

CASES = [
    ("favor+", False),
    ("favor+", True),
    ("nystrom", False),
    ("hermite", False),
    ("softmax-free", False),
    ("linear", False),
    ("linear", True),
]


@pytest.mark.parametrize("method, causal", CASES)
def test_kernel_attention_fullgraph_forward_and_backward(method, causal):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g, requires_grad=True) for _ in range(3))
    fmap = PositiveFeatures(4, 8, seed=0) if method == "favor+" else None

    def attend(q, k, v):
        return kernel_attention(
            q, k, v, method, is_causal=causal, num_features=8, chunk_size=3, feature_map=fmap
        )

    out = torch.compile(attend, fullgraph=True, backend="aot_eager")(q, k, v)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = attend(q, k, v)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for a, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(a, t.grad, rtol=1e-4, atol=1e-5)


def test_default_favor_map_inside_compile_is_ready_after_one_eager_call():
    torch._dynamo.reset()
    q = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(1))
    ref = kernel_attention(q, q, q, num_features=8, seed=5)
    out = torch.compile(
        lambda x: kernel_attention(x, x, x, num_features=8, seed=5),
        fullgraph=True,
        backend="aot_eager",
    )(q)
    torch.testing.assert_close(out, ref)


def test_module_fullgraph():
    torch._dynamo.reset()
    m = KernelAttention(8, 2, "hermite", seed=0, num_features=8)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
    out = torch.compile(m, fullgraph=True, backend="aot_eager")(x)[0]
    torch.testing.assert_close(out, m(x)[0])
