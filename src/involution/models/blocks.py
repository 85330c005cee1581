"""The one bottleneck every family shares; only its spatial operator changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from involution.layers import (
    RebuiltMaps,
    batch_norm_relu_again,
    conv_bn,
    make_spatial_op,
    saving_is_hooked,
    uses_running_stats,
)


class Bottleneck(nn.Module):
    """1x1 -> spatial op (carries the stride) -> 1x1, plus identity or projection shortcut.

    Module names follow torchvision/mmcls (conv1/bn1/conv2/bn2/conv3/bn3/downsample) so that
    parameter counts and official checkpoints line up.
    """

    expansion = 4
    # training keeps the two inner BN -> ReLU maps as recipes (``_rebuilding``); False keeps the
    # maps themselves (what tests/test_blocks.py compares the recipes with, bit for bit)
    rebuild_maps = True

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        stride: int,
        operator: Mapping[str, Any],
    ) -> None:
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = make_spatial_op(operator, mid_channels, stride)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv_bn folds each BN that follows a convolution into it in eval mode; bn2 follows the
        # spatial operator, which for involution and attention is no convolution.
        if self.downsample is None:
            identity = x
        else:
            identity = conv_bn(x, self.downsample[0], self.downsample[1])
        if self.rebuild_maps and torch.is_grad_enabled() and self._batch_statistics():
            # compiled, the partitioner decides; under other saved-tensor hooks (a checkpoint
            # around the block), their owner does
            if not torch.compiler.is_compiling() and not saving_is_hooked():
                with RebuiltMaps() as maps:
                    return self._rebuilding(x, identity, maps)
        out = self.relu(conv_bn(x, self.conv1, self.bn1))
        out = self.relu(self.bn2(self.conv2(out)))
        out = conv_bn(out, self.conv3, self.bn3)
        return self.relu(out.add_(identity))

    def _batch_statistics(self) -> bool:
        """Whether bn1 and bn2 are plain BNs normalising with this batch's statistics, which
        ``batch_norm_relu_again`` recomputes: not in eval mode, nor in a training model whose
        BNs are kept in eval mode (a detection backbone's ``norm_eval``: running statistics),
        nor ``SyncBatchNorm`` (DDP's ``sync_batchnorm``: statistics over every process)."""
        return all(
            type(bn) is nn.BatchNorm2d and not uses_running_stats(bn) for bn in (self.bn1, self.bn2)
        )

    def _rebuilding(self, x: torch.Tensor, identity: torch.Tensor, maps: RebuiltMaps):
        """The training forward whose two inner BN -> ReLU maps are rebuilt in backward from the
        BN inputs (which the BNs keep anyway) instead of being kept by the layer that reads
        them: 2 of a block's ~12.5 maps of the inner width. Same bits, gradients included; the
        rebuilding costs two elementwise passes over maps of the inner width (1.1-1.7% of a
        rednet50 training step at batch 8)."""
        c1 = self.conv1(x)
        out = self.bn1(c1)
        out = self.relu(maps.mark(out, batch_norm_relu_again(self.bn1, c1)))
        c2 = self.conv2(out)
        out = self.bn2(c2)
        out = self.relu(maps.mark(out, batch_norm_relu_again(self.bn2, c2)))
        out = conv_bn(out, self.conv3, self.bn3)
        return self.relu(out.add_(identity))
