"""Backbones: the stage feature maps of a ``BottleneckNet``
(``create_model(..., features_only=True)``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from involution.models.network import BottleneckNet, in_memory_format


class FeatureInfo(list):
    """One dict per returned feature map: ``num_chs``, ``reduction`` (stride), ``module``,
    ``index``.

    timm-compatible accessors ``channels()`` and ``reduction()``; ``strides()`` is an alias.
    """

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    strides = reduction

    def module_names(self) -> list[str]:
        return [info["module"] for info in self]


def check_out_indices(out_indices: Sequence[int], num_stages: int = 4) -> tuple[int, ...]:
    indices = tuple(out_indices)
    if (
        not indices
        or any(not isinstance(i, int) or isinstance(i, bool) for i in indices)
        or len(set(indices)) != len(indices)
        or any(not 0 <= i < num_stages for i in indices)
    ):
        raise ValueError(
            f"out_indices must be distinct stage indices in 0..{num_stages - 1} "
            f"(0 = layer1, stride 4 with the rednet/resnet stems), got {tuple(out_indices)!r}"
        )
    return indices


class BottleneckFeatures(nn.Module):
    """Stem + stages of a ``BottleneckNet`` (no pooling, no classifier); ``forward`` returns the
    maps of ``out_indices`` (0..3 = layer1..layer4) in that order.

    Stages after the last requested one are dropped. Parameter names are those of the network
    (``stem.*``, ``layer{i}.*``), so native checkpoints of the backbone load unchanged.
    """

    def __init__(self, net: BottleneckNet, out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_indices = check_out_indices(out_indices)
        self.depth, self.operator, self.stem_kind = net.depth, net.operator, net.stem_kind
        self.stem = net.stem
        self.memory_format, self.layout = net.memory_format, net.layout
        self.num_stages = max(self.out_indices) + 1
        for index in range(self.num_stages):
            self.add_module(f"layer{index + 1}", getattr(net, f"layer{index + 1}"))
        self.feature_info = FeatureInfo(
            {
                "num_chs": net.stage_channels[i],
                "reduction": net.stage_strides[i],
                "module": f"layer{i + 1}",
                "index": i,
            }
            for i in self.out_indices
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(in_memory_format(x, self.layout))
        stages = []
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
            stages.append(x)
        return [stages[i] for i in self.out_indices]
