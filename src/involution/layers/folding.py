"""Batch norm folded into the convolution before it, in eval mode: ``fold_batch_norm``,
``conv_bn`` (with a cache of the folded weights) and ``ConvBNReLU``."""

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
