"""Stems: RedNet (official), ResNet 7x7, and a small stem for 32x32 inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from involution.layers import ConvBNReLU, make_spatial_op

STEMS = ("rednet", "resnet", "small")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return ConvBNReLU(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def make_stem(
    kind: str, in_channels: int, width: int, operator: Mapping[str, Any]
) -> tuple[nn.Module, int]:
    """Return (stem, stride of its output).

    - ``rednet``: conv3x3(s2) -> involution(K=3) -> BN -> ReLU -> conv3x3, maxpool (official RedNet;
      the involution is the operator's, with a 3x3 window).
    - ``resnet``: conv7x7(s2) -> BN -> ReLU, maxpool (torchvision ResNet).
    - ``small``: conv3x3(s1) -> BN -> ReLU, no pooling (32x32 inputs such as CIFAR or digits).
    """
    if kind == "rednet":
        stem_op = {**operator, "kernel_size": 3}
        if stem_op.get("name") == "involution":
            stem_op.setdefault("group_channels", 16)
        return (
            nn.Sequential(
                conv_bn_relu(in_channels, width // 2, 3, stride=2),
                make_spatial_op(stem_op, width // 2),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(inplace=True),
                conv_bn_relu(width // 2, width, 3),
                nn.MaxPool2d(3, 2, 1),
            ),
            4,
        )
    if kind == "resnet":
        return (
            ConvBNReLU(  # named stem.0-3 like torchvision's conv1 / bn1 / relu / maxpool
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ),
            4,
        )
    if kind == "small":
        return conv_bn_relu(in_channels, width, 3), 1
    raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")
