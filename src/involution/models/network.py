"""One network skeleton: stem -> four bottleneck stages -> global pool -> linear."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from involution import rules
from involution.models.blocks import Bottleneck
from involution.models.stems import make_stem

MEMORY_FORMATS = ("keep", "auto", "channels_last", "contiguous")
# The widths' ranges: checked by BottleneckNet and by the run's pre-flight (the ``model`` group).
WIDTH_RULES: dict[str, rules.Rule] = {
    "base_width": rules.int_at_least(1),
    "stem_width": rules.int_at_least(1),
}

STAGE_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def resolve_memory_format(memory_format: str) -> str:
    """``memory_format`` checked: one of ``MEMORY_FORMATS``.

    ``auto`` (the default) computes channels_last on the CPU, whatever the process's
    floating-point mode: oneDNN's convolutions and the involution kernels both work natively on
    NHWC maps there (the model benchmark, docs/benchmarks.md, measures the defaults as a plain
    script gets them). Denormal gradients, which make x86 arithmetic slow on some CPUs, cost
    nothing measurable on the benchmark machine in either layout (docs/models.md); training
    (``involution.train``, ``flush_denormal: true``) flushes them anyway.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    return memory_format


def in_memory_format(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The input in the memory format a network computes in (``layout``: a resolved
    ``memory_format``). ``keep``: the input's own format; ``auto``: channels_last on the CPU, the
    input's own format elsewhere (the CUDA kernels are NCHW); ``channels_last`` and
    ``contiguous`` force one."""
    if layout == "channels_last" or (layout == "auto" and x.device.type == "cpu"):
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "contiguous":
        return x.contiguous()
    return x


def _where(where: str, channels: int, error: ValueError) -> str:
    """Prefix a spatial-operator error with the stage/block it came from and the operator key."""
    message = str(error)
    key = message if message.startswith("operator") else f"operator.{message}"
    return f"{where} (spatial op with {channels} channels): {key}"


class BottleneckNet(nn.Module):
    """RedNet / ResNet / local-attention net: the families differ only in ``operator`` and stem."""

    def __init__(
        self,
        depth: int = 26,
        operator: Mapping[str, Any] | None = None,
        stem: str = "rednet",
        num_classes: int = 1000,
        in_channels: int = 3,
        base_width: int = 64,
        stem_width: int = 64,
        zero_init_residual: bool = True,
        memory_format: str = "auto",
    ) -> None:
        super().__init__()
        rules.check({"base_width": base_width, "stem_width": stem_width}, WIDTH_RULES, "model")
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(STAGE_DEPTHS)}, got {depth!r}")
        self.layout = resolve_memory_format(memory_format)
        self.memory_format = memory_format
        operator = dict(operator or {"name": "involution"})
        self.depth, self.operator, self.stem_kind = depth, operator, stem
        try:
            self.stem, stem_stride = make_stem(stem, in_channels, stem_width, operator)
        except ValueError as error:
            if stem == "rednet" and not str(error).startswith("stem must be"):
                raise ValueError(_where("stem.1", stem_width // 2, error)) from None
            raise
        channels = stem_width
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        stride_so_far = stem_stride
        for index, blocks in enumerate(STAGE_DEPTHS[depth]):
            mid = base_width * 2**index
            stride = 1 if index == 0 else 2
            stride_so_far *= stride
            layers = []
            for block in range(blocks):
                where = f"layer{index + 1}.{block}"
                try:
                    layers.append(Bottleneck(channels, mid, stride if block == 0 else 1, operator))
                except ValueError as error:
                    raise ValueError(_where(where, mid, error)) from None
                channels = mid * Bottleneck.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            self.stage_channels.append(channels)
            self.stage_strides.append(stride_so_far)
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (strides ``stage_strides``, channels ``stage_channels``)."""
        x = self.stem(in_memory_format(x, self.layout))
        features = []
        for index in range(4):
            x = getattr(self, f"layer{index + 1}")(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)[-1]
        return self.fc(torch.flatten(self.global_pool(x), 1))
