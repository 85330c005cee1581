"""Layers (``involution.layers``): the memory-lean involution layer and the BN folding.

- ``Involution2d(recompute_kernel=True)`` (the default: the fused op) gives the plain graph's
  gradients (float64, with gradcheck and gradgradcheck, on odd sizes, strides 1/2/3 with the
  pooled generation, dilation, channels_last inputs; groups of 16 channels run the fused
  kernels, narrower ones the composition), never makes the kernel tensor on the fused kernels
  and keeps none between forward and backward, and works under
  ``torch.compile(fullgraph=True)``, CPU autocast and DDP;
- ``Involution2d`` gives exactly Ho x Wo (the unfold spec's output) for odd and even sizes and
  strides 1/2/3, and its pooling (``CeilAvgPool2d``) equals ``AvgPool2d(ceil_mode=True)``;
- ``conv_bn`` / ``ConvBNReLU`` fold an eval-mode BN into the convolution exactly (float64) and stay
  differentiable; training mode runs the modules unchanged.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from involution.layers import (
    CeilAvgPool2d,
    ConvBNReLU,
    Involution2d,
    conv_bn,
    fold_batch_norm,
    make_spatial_op,
)
from involution.ops import _numba_cpu, fused_involution2d, involution2d_reference

# (channels, kernel_size, stride, group_channels, dilation, (H, W), channels_last)
LAYER_CASES = [
    (16, 3, 1, 8, 1, (7, 6), False),  # 3x3, NCHW kernels
    (16, 5, 2, 8, 1, (9, 7), False),  # stride 2 on odd sizes: pooled kernel map in ceil mode
    (16, 5, 1, 8, 2, (8, 9), True),  # dilation 2, channels_last input (NHWC kernels)
    (8, 3, 3, 4, 1, (10, 11), True),  # stride 3, groups narrower than a vector
    # 16 channels per group: numba_cpu's fused kernels
    (16, 7, 1, 16, 1, (9, 8), False),  # RedNet's K 7, odd x even
    (32, 5, 2, 16, 1, (9, 7), True),  # stride 2 with the pooled generation, channels_last
    (16, 3, 1, 16, 2, (8, 9), False),  # dilation 2
]
FUSED = LAYER_CASES[4:]


def _layer(case, backend="numba_cpu", recompute=True, dtype=torch.float64):
    channels, k, stride, gc_, dilation, _, _ = case
    torch.manual_seed(0)
    layer = Involution2d(
        channels,
        k,
        stride,
        gc_,
        reduction_ratio=2,
        dilation=dilation,
        backend=backend,
        recompute_kernel=recompute,
    )
    return layer.to(dtype)


def _input(case, dtype=torch.float64):
    channels, *_, size, channels_last = case
    x = torch.randn(2, channels, *size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _grads(layer, x, grad=None):
    """(output, d/dx, d/dparams) of one forward+backward with a fixed upstream gradient."""
    x.grad = None
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(torch.ones_like(out) if grad is None else grad)
    return out.detach(), x.grad.clone(), [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize("backend", ["reference", "numba_cpu"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: f"C{c[0]}k{c[1]}s{c[2]}d{c[4]}")
def test_recompute_gives_the_plain_gradients(case, backend):
    """Same output and gradients as the plain graph (float64; the fused kernels within 1e-12),
    and the generation branch's BN running statistics updated once, as the plain graph does."""
    lean, plain = _layer(case, backend), _layer(case, backend, recompute=False)
    plain.load_state_dict(lean.state_dict())
    x = _input(case)
    shape = lean.eval()(x).shape  # eval mode: the running statistics stay untouched
    grad = torch.randn(shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    lean_out, lean_dx, lean_dp = _grads(lean.train(), x, grad)
    plain_out, plain_dx, plain_dp = _grads(plain, x, grad)
    # the composition makes the kernel by the same product: the same bits; the fused kernels
    # sum the generation in their own order
    exact = 0 if case not in FUSED or backend != "numba_cpu" else 1e-12
    torch.testing.assert_close(lean_out, plain_out, rtol=exact, atol=exact)
    torch.testing.assert_close(lean_dx, plain_dx, rtol=1e-12, atol=1e-12)
    for got, want in zip(lean_dp, plain_dp, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(lean.reduce_bn.buffers(), plain.reduce_bn.buffers(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert int(lean.reduce_bn.num_batches_tracked) == 1


# small enough for a full float64 Jacobian:
# (channels, K, stride, group channels, dilation, size, NHWC)
GRADCHECK_CASES = [
    (8, 3, 2, 4, 1, (5, 4), False),
    (8, 3, 1, 8, 2, (4, 5), True),
    (16, 3, 2, 16, 1, (5, 4), True),  # the fused kernels
]


@pytest.mark.parametrize(
    "case", GRADCHECK_CASES, ids=["stride2-odd", "dilation2-nhwc", "fused-stride2-nhwc"]
)
def test_recompute_gradcheck_and_gradgradcheck(case):
    """Float64 gradcheck of input and all parameters through the recomputed kernel; double
    backward differentiates through the regeneration (grad mode is on under create_graph)."""
    layer = _layer(case).eval()  # BN with fixed statistics: a pure function of its parameters
    x = _input(case)
    names = [name for name, _ in layer.named_parameters()]

    def fn(inp, *weights):
        return torch.func.functional_call(layer, dict(zip(names, weights, strict=True)), (inp,))

    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *weights), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x, *weights), eps=1e-6, atol=1e-5, fast_mode=True)


def _largest_allocation(fn) -> int:
    """The largest single allocation (bytes) an op makes while ``fn`` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(
        (e.cpu_memory_usage for e in prof.events() if "::" in e.name and "autograd" not in e.name),
        default=0,
    )


def test_fused_layer_never_makes_the_kernel(monkeypatch):
    """On the fused kernels the kernel tensor [N, G, K, K, Ho, Wo] (3x the input here) is never
    allocated, in forward or backward; between the two the layer keeps its input, the hidden map
    and the BN's input (the C/r-channel maps of the generation) and no kernel-sized tensor, and
    backward computes no aggregation forward again. The plain graph (recompute_kernel=False)
    makes the kernel and keeps it."""
    case = FUSED[0]
    calls = {"fused_forward": 0, "fused_backward": 0, "forward": 0}
    for name in calls:
        original = getattr(_numba_cpu, name)

        def counting(*args, original=original, name=name):
            calls[name] += 1
            return original(*args)

        monkeypatch.setattr(_numba_cpu, name, counting)
    found = {}
    for recompute in (True, False):
        layer = _layer(case, recompute=recompute, dtype=torch.float32)
        x = _input(case, torch.float32)
        kernel_shape = (2, layer.groups, 7, 7, *x.shape[2:])
        kernel_bytes = 4 * math.prod(kernel_shape)
        saved = []

        def pack(t, saved=saved):
            saved.append(tuple(t.shape))
            return t

        out = {}

        def forward(layer=layer, x=x, out=out, pack=pack):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out["y"] = layer(x)

        largest = _largest_allocation(forward)
        largest = max(largest, _largest_allocation(lambda out=out: out["y"].sum().backward()))
        found[recompute] = (largest >= kernel_bytes, kernel_shape in saved, sorted(set(saved)))
    assert found[True][:2] == (False, False)
    # the maps kept: the input and the C/r-channel hidden map and BN input (parameters aside)
    maps = [shape for shape in found[True][2] if len(shape) == 4 and shape[0] == 2]
    assert maps == [(2, 8, 9, 8), (2, 16, 9, 8)]
    assert found[False][:2] == (True, True)
    assert calls == {"fused_forward": 1, "fused_backward": 1, "forward": 1}


def test_recompute_off_by_the_operator_key():
    op = make_spatial_op({"name": "involution", "kernel_size": 3, "recompute_kernel": False}, 32)
    assert isinstance(op, Involution2d) and op.recompute_kernel is False
    assert make_spatial_op({"name": "involution", "kernel_size": 3}, 32).recompute_kernel is True
    with pytest.raises(ValueError, match="recompute_kernel must be true or false"):
        make_spatial_op({"name": "involution", "kernel_size": 3, "recompute_kernel": "yes"}, 32)


@pytest.mark.parametrize("case", [LAYER_CASES[2], FUSED[1]], ids=["composition", "fused"])
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_recompute_under_torch_compile_fullgraph(compile_backend, case):
    lean = _layer(case, dtype=torch.float32)
    plain = _layer(case, recompute=False, dtype=torch.float32)
    plain.load_state_dict(lean.state_dict())
    x = _input(case, torch.float32)
    torch._dynamo.reset()
    compiled_lean = torch.compile(lean, fullgraph=True, backend=compile_backend)
    compiled_plain = torch.compile(plain, fullgraph=True, backend=compile_backend)
    out, dx, dp = _grads(compiled_lean, x)
    want_out, want_dx, want_dp = _grads(compiled_plain, x)
    for got, want in zip(lean.reduce_bn.buffers(), plain.reduce_bn.buffers(), strict=True):
        torch.testing.assert_close(got, want)  # updated once, by the functionalised forward
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(dx, want_dx)
    for got, want in zip(dp, want_dp, strict=True):
        torch.testing.assert_close(got, want)
    eager_out, eager_dx, _ = _grads(plain, x)
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dx, eager_dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [LAYER_CASES[2], FUSED[1]], ids=["composition", "fused"])
def test_recompute_under_cpu_autocast(case):
    """Under bfloat16 autocast the generation branch's convolution runs in bfloat16 and the fused
    op, by its autocast rule, in float32 on the Numba kernels (the plain graph's product is a
    bfloat16 baddbmm): the layer's output and gradients equal the fused op's on the branch's
    autocast output cast to float32, bit for bit, and the plain graph's within bfloat16's
    precision."""
    lean = _layer(case, dtype=torch.float32)
    plain = _layer(case, recompute=False, dtype=torch.float32)
    plain.load_state_dict(lean.state_dict())
    x = _input(case, torch.float32)
    results = []
    for layer in (lean, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x.grad = None
            layer.zero_grad(set_to_none=True)
            out = layer(x)
        out.float().square().sum().backward()
        results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in layer.parameters()]))
    (out_a, dx_a, dp_a), (out_b, dx_b, dp_b) = results
    assert out_a.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = lean._hidden(x)
    weight = lean.span.weight.flatten(1)
    want = fused_involution2d(
        x,
        hidden.float(),
        weight,
        lean.span.bias,
        lean.kernel_size,
        lean.stride,
        None,
        lean.dilation,
    )
    torch.testing.assert_close(out_a, want, rtol=0, atol=0)
    scale = out_b.abs().max()
    torch.testing.assert_close(out_a, out_b, rtol=0.05, atol=0.02 * scale)
    torch.testing.assert_close(dx_a, dx_b, rtol=0.05, atol=0.05 * dx_b.abs().max())
    for got, want in zip(dp_a, dp_b, strict=True):
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * want.abs().max())


@pytest.mark.parametrize("case", [LAYER_CASES[0], FUSED[0]], ids=["composition", "fused"])
def test_recompute_under_ddp(tmp_path, case):
    """DistributedDataParallel (gloo, one process) reduces the fused op's gradients."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        lean = _layer(case, dtype=torch.float32)
        plain = _layer(case, recompute=False, dtype=torch.float32)
        plain.load_state_dict(lean.state_dict())
        ddp = nn.parallel.DistributedDataParallel(lean)
        x = _input(case, torch.float32)
        _, dx, dp = _grads(ddp, x)
        _, want_dx, want_dp = _grads(plain, x)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(dx, want_dx)
    for got, want in zip(dp, want_dp, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["reference", "numba_cpu"])
@pytest.mark.parametrize(
    ("kernel_size", "group_channels"), [(3, 4), (5, 8)], ids=["k3-nchw", "k5-nhwc"]
)
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [(7, 7), (8, 9), (13, 10)])
def test_involution2d_layer_output_size(size, stride, kernel_size, group_channels, backend):
    """Kernel generation yields exactly Ho x Wo for odd and even sizes, strides 1/2/3."""
    torch.manual_seed(0)
    layer = Involution2d(16, kernel_size, stride, group_channels, backend=backend).eval()
    x = torch.randn(2, 16, *size)
    out = layer(x)
    assert out.shape == (2, 16, -(-size[0] // stride), -(-size[1] // stride))
    pad = (kernel_size - 1) // 2
    spec = involution2d_reference(x, layer.generate_kernel(x), (stride, stride), (pad, pad), (1, 1))
    torch.testing.assert_close(out, spec, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [2, 3])
def test_ceil_avg_pool_matches_avg_pool_ceil_mode(stride):
    """Involution2d's pooling (written to compile correctly) equals AvgPool2d(ceil_mode=True)."""
    x = torch.randn(2, 3, 7, 11, dtype=torch.float64, requires_grad=True)
    want = torch.nn.AvgPool2d(stride, stride, ceil_mode=True)(x)
    got = CeilAvgPool2d(stride)(x)
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0]
    )


def _randomised_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).double()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.1)
    return bn


@pytest.mark.parametrize("bias", [False, True])
def test_conv_bn_folds_exactly_in_eval_and_stays_differentiable(bias):
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=bias).double()
    bn = _randomised_bn(8).eval()
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64, requires_grad=True)
    folded = conv_bn(x, conv, bn)
    plain = bn(conv(x))
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(folded.square().sum(), [x, conv.weight, bn.weight, bn.bias])
    want = torch.autograd.grad(plain.square().sum(), [x, conv.weight, bn.weight, bn.bias])
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    weight, _ = fold_batch_norm(conv, bn)
    assert weight.shape == conv.weight.shape


def test_conv_bn_in_training_mode_uses_batch_statistics():
    conv = nn.Conv2d(3, 4, 1, bias=False).double()
    bn = _randomised_bn(4).train()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    before = bn.running_mean.clone()
    out = conv_bn(x, conv, bn)
    # batch statistics: each channel's mean is exactly BN's shift
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), bn.bias.detach())
    assert not torch.equal(bn.running_mean, before)  # the statistics were updated, as BN does


def test_conv_bn_relu_keeps_sequential_names_and_runs_extra_modules():
    block = ConvBNReLU(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    assert [name for name, _ in block.named_children()] == ["0", "1", "2", "3"]
    block = block.double().eval()
    block[1].load_state_dict(_randomised_bn(4).state_dict())
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    want = block[3](block[2](block[1](block[0](x))))
    torch.testing.assert_close(block(x), want, rtol=1e-12, atol=1e-12)
    assert copy.deepcopy(block)(x).shape == (1, 4, 4, 4)


def test_folded_weights_are_kept_for_inference_and_refolded_when_anything_changes():
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    bn = _randomised_bn(4).eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        first = conv_bn(x, conv, bn)
        kept = bn.__dict__["_folded_cache"][1][0]
        conv_bn(x, conv, bn)
        assert bn.__dict__["_folded_cache"][1][0] is kept  # no refold while nothing changed
        conv.weight.mul_(2)  # an optimizer step, load_state_dict, ...: in place
        torch.testing.assert_close(conv_bn(x, conv, bn), bn(conv(x)), rtol=1e-12, atol=1e-12)
        bn.running_var.add_(1.0)
        torch.testing.assert_close(conv_bn(x, conv, bn), bn(conv(x)), rtol=1e-12, atol=1e-12)
        bn.running_mean = bn.running_mean + 1  # a replaced tensor
        torch.testing.assert_close(conv_bn(x, conv, bn), bn(conv(x)), rtol=1e-12, atol=1e-12)
    assert not torch.equal(first, conv_bn(x, conv, bn).detach())
    assert "_folded_cache" not in str(bn.state_dict().keys())
    # with grad mode on, the fold is recomputed inside the graph, so gradients reach the weights
    out = conv_bn(x, conv, bn)
    out.sum().backward()
    assert conv.weight.grad is not None and bn.weight.grad is not None
