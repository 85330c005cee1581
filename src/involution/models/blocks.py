"""The one bottleneck every family shares; only its spatial operator changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from involution.layers import conv_bn, make_spatial_op


class Bottleneck(nn.Module):
    """1x1 -> spatial op (carries the stride) -> 1x1, plus identity or projection shortcut.

    Module names follow torchvision/mmcls (conv1/bn1/conv2/bn2/conv3/bn3/downsample) so that
    parameter counts and official checkpoints line up.
    """

    expansion = 4

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
        out = self.relu(conv_bn(x, self.conv1, self.bn1))
        out = self.relu(self.bn2(self.conv2(out)))
        out = conv_bn(out, self.conv3, self.bn3)
        return self.relu(out.add_(identity))
