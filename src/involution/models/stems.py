"""Stems: RedNet (official), ResNet 7x7, and a small stem for 32x32 inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from involution.layers import ConvBNReLU, make_spatial_op, recomputed

STEMS = ("rednet", "resnet", "small")


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> nn.Sequential:
    return ConvBNReLU(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RedNetStem(nn.Sequential):
    """The official RedNet stem as ``nn.Sequential`` (parameter names ``0.*`` to ``4.*`` of the
    official checkpoints). With ``recompute=True`` the whole stem (conv, involution, the second
    conv, their BNs and ReLUs, the max pool) is recomputed in backward from the image instead of
    keeping its maps: at 224x224 they are the network's largest activations (six maps at half
    resolution and the pool's indices, 10 MB per image), and recomputing them costs a forward
    of the stem, about 3% of a training step. torchvision's ResNet stem keeps three of them."""

    def __init__(self, *layers: nn.Module, recompute: bool = False) -> None:
        super().__init__(*layers)
        self.recompute = recompute

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        for module in self:
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recomputed(self, self._layers, x) if self.recompute else self._layers(x)


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
        recompute = False
        if stem_op.get("name") == "involution":
            stem_op.setdefault("group_channels", 16)
            # the stem recomputes its involution with the rest of the stem (one region)
            recompute = stem_op.get("recompute_kernel", True)
            stem_op["recompute_kernel"] = False
        return (
            RedNetStem(
                conv_bn_relu(in_channels, width // 2, 3, stride=2),
                make_spatial_op(stem_op, width // 2),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(inplace=True),
                conv_bn_relu(width // 2, width, 3),
                nn.MaxPool2d(3, 2, 1),
                recompute=recompute,
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
