"""Batch norm folded into the convolution before it, in eval mode: ``fold_batch_norm``,
``conv_bn`` (with a cache of the folded weights) and ``ConvBNReLU``; in training mode as a
per-channel affine map of the batch's statistics (``batch_norm_affine``) that an op can apply
where it reads its input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one convolution equal to ``bn(conv(x))`` while ``bn`` uses its running
    statistics (eval mode). Differentiable in every parameter, so it also serves a model
    fine-tuned with frozen statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def batch_norm_affine(bn: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel with ``bn(x) == x * scale + shift``, differentiable in ``x``
    and ``bn``'s parameters as ``bn(x)`` is. In training mode the batch's statistics (biased
    variance), and the running statistics updated as ``bn`` updates them (momentum, or the
    cumulative average for ``momentum=None``; the unbiased variance); otherwise the running
    statistics. For ``nn.BatchNorm2d`` only (a ``SyncBatchNorm`` syncs its statistics itself)."""
    if uses_running_stats(bn):
        mean, invstd = bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
    else:
        wide = x if x.dtype in (torch.float32, torch.float64) else x.float()  # as BN under autocast
        mean, invstd = _BatchStatistics.apply(wide, bn.eps)
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            var = invstd.detach().pow(-2) - bn.eps
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = bn.momentum
                if factor is None:
                    factor = 1.0 / float(bn.num_batches_tracked)
                count = x.numel() // x.shape[1]
                unbiased = var * (count / max(count - 1, 1))
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)
    scale = invstd
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class _BatchStatistics(torch.autograd.Function):
    """(mean, 1 / sqrt(biased variance + eps)) per channel of an [N, C, H, W] batch, as batch norm
    computes them (one aten kernel, any memory format: ``torch.var_mean`` over (0, 2, 3) takes
    several times as long on a channels-last map), differentiable in the batch: the gradient is
    one per-channel affine map of ``x - mean``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float):
        _, mean, invstd = torch.ops.aten._native_batch_norm_legit.no_stats(
            x, None, None, True, 0.0, eps
        )
        ctx.save_for_backward(x, mean, invstd)
        return mean, invstd

    @staticmethod
    def backward(ctx, grad_mean, grad_invstd):
        x, mean, invstd = ctx.saved_tensors
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_invstd = torch.zeros_like(invstd) if grad_invstd is None else grad_invstd
        count = x.numel() // x.shape[1]
        # d mean / dx = 1 / M; d invstd / dx = -invstd^3 (x - mean) / M
        slope = -grad_invstd * invstd.pow(3) / count
        offset = grad_mean / count - mean * slope
        return torch.addcmul(_per_channel(offset, x), x, _per_channel(slope, x)), None


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(1, -1, 1, 1)


def uses_running_stats(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` normalises with its running statistics (then it folds into a conv)."""
    return not bn.training and bn.running_var is not None and bn.running_mean is not None


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``fold_batch_norm``, kept between calls where nothing needs its graph (no grad mode, not
    traced): folding every pair on every forward is a measurable share of a RedNet's inference
    (the model benchmark, docs/benchmarks.md). The cache lives on ``bn`` (not in its state
    dict) and is refolded when any input tensor is replaced (``.to()``, ...) or changed in place
    (optimizer steps, ``load_state_dict``): its key is each input's version counter and
    address."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fold_batch_norm(conv, bn)
    inputs = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = (bn.eps,) + tuple(
        (t._version, t.data_ptr(), t.dtype, t.device) for t in inputs if t is not None
    )
    cached = bn.__dict__.get("_folded_cache")
    if cached is None or cached[0] != key:
        cached = (key, fold_batch_norm(conv, bn))
        bn.__dict__["_folded_cache"] = cached
    return cached[1]


def conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))``; in eval mode as one convolution with the BN folded in (one pass over the
    output instead of two). Training mode runs the two modules as they are."""
    if not uses_running_stats(bn):
        return bn(conv(x))
    weight, bias = _folded(conv, bn)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU (-> any further modules) as ``nn.Sequential``, so that parameters keep
    the names ``0.*``, ``1.*`` of the official checkpoints; the BN folds into the conv in eval
    mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_bn(x, self[0], self[1])
        for module in list(self)[2:]:
            x = module(x)
        return x
