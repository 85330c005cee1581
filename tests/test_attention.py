"""Local self-attention built from the involution kernels, against a plain unfold attention.

- ``window_dot`` (logits) is the involution grad_kernel op (``window_dot_key_grad`` its adjoint, the
  grad_input op): checked against autograd of the involution spec, on each backend, with
  gradcheck/gradgradcheck (the ops themselves are opchecked in tests/test_ops.py) and under the
  CUDA simulator;
- ``LocalSelfAttention2d`` equals a textbook SASA layer written here with ``unfold`` (forward, and
  gradcheck in float64), for strides, dilations, odd sizes and head counts.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from involution.layers import LocalSelfAttention2d, make_spatial_op
from involution.models import count_macs, mac_breakdown
from involution.ops import involution2d_reference, output_size
from involution.ops.window_dot import window_dot, window_dot_key_grad

BACKENDS = ["reference", "numba_cpu", "torch"]

# (channels, heads, kernel, stride, dilation, height, width)
CASES = [
    (8, 2, 3, 1, 1, 6, 6),
    (8, 4, 5, 1, 2, 7, 5),
    (6, 3, 3, 2, 1, 7, 9),
    (8, 1, 3, 2, 2, 8, 6),
    (4, 4, 7, 1, 1, 5, 5),  # one channel per head: rows get no embedding channels
]


def plain_attention(layer: LocalSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """SASA written directly, with unfold:
    y_ij = sum_ab softmax_ab(q_ij . (k_ab + r_{a-i, b-j})) v_ab."""
    n, c, h, w = x.shape
    k, s, d, g = layer.kernel_size, layer.stride, layer.dilation, layer.heads
    p, dh = d * (k - 1) // 2, c // g
    pooled = F.avg_pool2d(x, s, s, ceil_mode=True) if s > 1 else x
    q = F.conv2d(pooled, layer.query.weight) / math.sqrt(dh)
    keys, values = F.conv2d(x, layer.key.weight), F.conv2d(x, layer.value.weight)
    ho, wo = q.shape[-2:]

    def windows(t: torch.Tensor) -> torch.Tensor:  # [n, g, dh, K, K, ho, wo]
        return F.unfold(t, k, dilation=d, padding=p, stride=s).view(t.shape[0], g, -1, k, k, ho, wo)

    inside = windows(torch.ones(1, g, h, w, dtype=x.dtype)) > 0  # [1, g, 1, K, K, ho, wo]
    rel = torch.cat(
        [
            layer.rel_rows[:, :, :, None].expand(-1, -1, k, k),  # row offset u
            layer.rel_cols[:, :, None, :].expand(-1, -1, k, k),  # column offset v
        ],
        dim=1,
    )  # [g, dh, K, K]
    logits = (
        q.view(n, g, dh, 1, 1, ho, wo) * (windows(keys) + rel[None, :, :, :, :, None, None])
    ).sum(2)
    logits = logits.masked_fill(~inside[:, :, 0], float("-inf"))
    attn = torch.softmax(logits.reshape(n, g, k * k, ho, wo), dim=2).view(n, g, 1, k, k, ho, wo)
    return (attn * windows(values)).sum(dim=(3, 4)).reshape(n, c, ho, wo)


def make_layer(channels, heads, kernel, stride, dilation, backend, dtype=torch.float64):
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(channels, kernel, stride, heads, dilation, backend).to(dtype)
    return layer


# ------------------------------------------------------------------------------------------
# window_dot: the op
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,dilation,kernel", [(1, 1, 3), (2, 1, 5), (2, 2, 3), (1, 2, 3)])
@pytest.mark.parametrize("c,g", [(6, 3), (16, 2)])  # 8+ channels per group: the NHWC CPU kernels
def test_window_dot_is_involution_grad_kernel(backend, stride, dilation, kernel, c, g):
    """window_dot(q, k) = d/dW sum(q * involution(k, W)): the definition in DESIGN.md."""
    torch.manual_seed(1)
    n, h, w = 2, 7, 8
    p = dilation * (kernel - 1) // 2
    ho, wo = (
        output_size(h, kernel, stride, p, dilation),
        output_size(w, kernel, stride, p, dilation),
    )
    key = torch.randn(n, c, h, w, dtype=torch.float64)
    query = torch.randn(n, c, ho, wo, dtype=torch.float64)
    weights = torch.zeros(n, g, kernel, kernel, ho, wo, dtype=torch.float64, requires_grad=True)
    out = involution2d_reference(key, weights, (stride, stride), (p, p), (dilation, dilation))
    (expected,) = torch.autograd.grad((out * query).sum(), weights)
    got = window_dot(query, key, kernel, stride, None, dilation, g, backend)
    torch.testing.assert_close(got, expected)
    # key_grad is the adjoint: <key_grad(q, W), k> = <W, window_dot(q, k)>
    probe = torch.randn_like(weights)
    scattered = window_dot_key_grad(query, probe, (h, w), stride, None, dilation, backend)
    torch.testing.assert_close((scattered * key).sum(), (probe * expected).sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_dot_gradcheck(backend):
    torch.manual_seed(2)
    query = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    key = torch.randn(1, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 2, 3, 3, 2, 3, dtype=torch.float64, requires_grad=True)

    def logits(q, k):
        return window_dot(q, k, 3, 2, None, 1, 2, backend)

    def scatter(q, wt):
        return window_dot_key_grad(q, wt, (3, 5), 2, None, 1, backend)

    assert torch.autograd.gradcheck(logits, (query, key))
    assert torch.autograd.gradgradcheck(logits, (query, key), fast_mode=True)
    assert torch.autograd.gradcheck(scatter, (query, weights))


def test_window_dot_numba_cuda_in_simulator():
    """backend="numba_cuda" reaches the involution ops' CUDA path; run by Numba's CUDA simulator
    (no GPU needed) on CPU tensors and compared with the reference backend."""
    script = """
import torch
from involution.ops.window_dot import window_dot, window_dot_key_grad
torch.manual_seed(0)
q, k = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 5, 6, dtype=torch.float64)
args = ((3, 3), (2, 2), (1, 1), (1, 1), 2)
want = window_dot(q, k, *args, backend="reference")
got = window_dot(q, k, *args, backend="numba_cuda")
assert want.abs().max() > 0 and torch.allclose(got, want), "window_dot"
w = torch.randn(want.shape, dtype=torch.float64)
want = window_dot_key_grad(q, w, (5, 6), *args[1:4], backend="reference")
got = window_dot_key_grad(q, w, (5, 6), *args[1:4], backend="numba_cuda")
assert want.abs().max() > 0 and torch.allclose(got, want), "window_dot_key_grad"
print("ok")
"""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_window_dot_bad_arguments():
    query, key = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="groups=3 must divide the 4 channels"):
        window_dot(query, key, 3, groups=3)
    with pytest.raises(
        ValueError, match=r"query spatial size \(5, 5\) must be the output size \(3, 3\)"
    ):
        window_dot(query, key, 3, stride=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        window_dot(query, key, 3, backend="cupy")
    with pytest.raises(ValueError, match="must agree in N and C"):
        window_dot(query, torch.randn(1, 8, 5, 5), 3)


# ------------------------------------------------------------------------------------------
# LocalSelfAttention2d
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
@pytest.mark.parametrize("channels,heads,kernel,stride,dilation,h,w", CASES)
def test_attention_matches_plain_unfold_attention(
    backend, channels, heads, kernel, stride, dilation, h, w
):
    layer = make_layer(channels, heads, kernel, stride, dilation, backend)
    x = torch.randn(2, channels, h, w, dtype=torch.float64)
    got = layer(x)
    assert got.shape == (2, channels, -(-h // stride), -(-w // stride))
    torch.testing.assert_close(got, plain_attention(layer, x))


class PlainAttention(torch.nn.Module):
    """``plain_attention`` as a module over the layer's parameters (for functional_call)."""

    def __init__(self, layer: LocalSelfAttention2d) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return plain_attention(self.layer, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 2)])
def test_attention_gradcheck(backend, stride, dilation):
    layer = make_layer(4, 2, 3, stride, dilation, backend)
    plain = PlainAttention(layer)
    names = [name for name, _ in layer.named_parameters()]
    leaves = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)

    def run(inp, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (inp,))

    def run_plain(inp, *values):
        return torch.func.functional_call(
            plain, {f"layer.{n}": v for n, v in zip(names, values)}, (inp,)
        )

    assert torch.autograd.gradcheck(run, (x, *leaves), fast_mode=True)
    # the gradients equal those of the plain attention, for the input and every parameter
    out = run(x, *leaves)
    probe = torch.randn_like(out)
    ours = torch.autograd.grad((out * probe).sum(), (x, *leaves))
    theirs = torch.autograd.grad((run_plain(x, *leaves) * probe).sum(), (x, *leaves))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_attention_runs_on_the_registered_ops():
    """The logits are the involution grad_kernel op and the aggregation the involution op, so every
    backend and the MAC counter see both, each counted once."""
    layer = make_layer(8, 2, 3, 1, 1, "auto", torch.float32)
    macs = mac_breakdown(layer, (8, 6, 5))
    window = 8 * 3 * 3 * 6 * 5  # C * K * K * Ho * Wo
    assert macs["involution::involution2d_grad_kernel"] == window  # logits q . k
    assert macs["involution::involution2d"] == window  # aggregation of the values
    assert "involution::involution2d_grad_input" not in macs
    assert macs["aten::convolution"] == 3 * 8 * 8 * 6 * 5  # the q, k, v projections
    assert count_macs(layer, (8, 6, 5)) == sum(macs.values())


def test_attention_float32_and_backward_on_auto():
    layer = make_layer(16, 4, 7, 2, 1, "auto", torch.float32)
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    out = layer(x)
    out.square().mean().backward()
    assert out.shape == (2, 16, 5, 5)
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.rel_rows.grad).all()
    torch.testing.assert_close(out, plain_attention(layer, x), rtol=1e-4, atol=1e-5)


def test_attention_operator_config_and_errors():
    layer = make_spatial_op({"name": "attention", "kernel_size": 5, "heads": 4}, 32, stride=2)
    assert isinstance(layer, LocalSelfAttention2d) and (
        layer.kernel_size,
        layer.heads,
        layer.stride,
    ) == (5, 4, 2)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 32 * 32 + 32 * 5
    with pytest.raises(ValueError, match="heads=3 must divide the 32 channels"):
        make_spatial_op({"name": "attention", "heads": 3}, 32)
    with pytest.raises(ValueError, match="kernel_size must be an odd"):
        make_spatial_op({"name": "attention", "kernel_size": 4}, 32)
    with pytest.raises(ValueError, match=r"unknown keys \['group_channels'\]"):
        make_spatial_op({"name": "attention", "group_channels": 16}, 32)


def test_attention_compiles_without_graph_breaks():
    """fullgraph tracing sees the registered ops (fake impls + autograd), not Python kernels."""
    layer = make_layer(8, 2, 3, 2, 1, "auto", torch.float32)
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=False)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, layer(x))
    assert x.grad is not None and torch.isfinite(x.grad).all()
