"""The spatial operator of necks and heads, and torchvision's FPN over a zoo backbone.

A neck or head operator is chosen like a backbone's: ``"convolution"`` (torchvision's own 3x3
layers, untouched), ``"involution"`` (7x7, 16 channels per group, reduction 4: the official
FPN_involution / RPNHead_involution / FCNMaskHead_involution) or ``"attention"`` (7x7 local
self-attention, 8 heads), or a dict ``{"name": ..., **hyperparameters}`` merged onto that default
(``{"name": "involution", "kernel_size": 5}``), built by ``involution.layers.make_spatial_op``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from involution.layers import OPERATOR_KEYS, make_spatial_op
from involution.models.backbones import FrozenStagesBackbone
from involution.models.registry import FAMILIES

__all__ = ["BackboneWithFPN", "replace_spatial_convs", "resolve_operator"]

# operator name -> its default hyperparameters (those of the family that uses it)
OPERATOR_DEFAULTS: dict[str, dict[str, Any]] = {op["name"]: op for op, _ in FAMILIES.values()}
# torchvision's own 3x3 layer, which ``convolution`` with these settings keeps
_TORCHVISION_CONV = {"name": "convolution", "kernel_size": 3, "groups": 1, "dilation": 1}


def resolve_operator(spec: str | Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
    """The operator dict of a neck/head choice, or None for torchvision's own 3x3 convolution.

    Raises a one-line ValueError naming ``key`` for an unknown operator name or hyperparameter.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{key} must be an operator name ({', '.join(sorted(OPERATOR_KEYS))}) or a dict with "
            f"'name', got {spec!r}"
        )
    spec = dict(spec)
    name = spec.get("name")
    if name not in OPERATOR_KEYS:
        raise ValueError(f"{key}.name must be one of {sorted(OPERATOR_KEYS)}, got {name!r}")
    unknown = set(spec) - OPERATOR_KEYS[name] - {"name"}
    if unknown:
        raise ValueError(
            f"{key} ({name}) got unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(OPERATOR_KEYS[name])}"
        )
    resolved = {**OPERATOR_DEFAULTS[name], **spec}
    if name == "convolution" and {**_TORCHVISION_CONV, **resolved} == _TORCHVISION_CONV:
        return None
    return resolved


def spatial_op(operator: Mapping[str, Any], channels: int, key: str) -> nn.Module:
    """``make_spatial_op(operator, channels)`` with its errors prefixed by ``key``."""
    try:
        return make_spatial_op(operator, channels)
    except ValueError as error:
        raise ValueError(f"{key} (spatial op with {channels} channels): {error}") from None


def replace_spatial_convs(blocks: nn.Module, operator: Mapping[str, Any] | None, key: str) -> None:
    """Replace the 3x3 convolution of each ``Conv2dNormActivation`` in ``blocks`` (conv ->
    [norm] -> ReLU: torchvision's RPN, mask and RetinaNet head layers) by ``operator``,
    keeping what follows it; in place. None keeps torchvision's layers."""
    if operator is None:
        return
    for block in blocks:
        conv = block[0]
        if conv.in_channels != conv.out_channels or conv.stride != (1, 1):
            raise ValueError(
                f"{key}: a {operator['name']} keeps its {conv.in_channels} channels and size; "
                f"this layer maps {conv.in_channels} -> {conv.out_channels} channels"
            )
        block[0] = spatial_op(operator, conv.in_channels, key)
        for module in list(block)[1:]:
            if isinstance(module, nn.ReLU):
                # the involution op's output can be a view (a 1x1 map: RetinaNet's P7), which
                # autograd does not let an in-place ReLU modify
                module.inplace = False


class BackboneWithFPN(nn.Module):
    """torchvision's ``BackboneWithFPN`` over one of our backbones: the backbone's stage maps
    -> ``torchvision.ops.FeaturePyramidNetwork`` (1x1 laterals, top-down sum, 3x3 outputs,
    ``extra_blocks``), whose 3x3 output convolutions become ``operator`` when one is given
    (the official FPN_involution: ``involution(256, 7, 1)``, no bias, no activation; the
    laterals and extra levels stay as they are).

    ``forward`` returns an ``OrderedDict`` ``{"0": P_first, ..., extra levels}`` and
    ``out_channels`` says their width, as torchvision's detectors expect.
    """

    def __init__(
        self,
        body: FrozenStagesBackbone,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        operator: Mapping[str, Any] | None = None,
        key: str = "neck",
    ) -> None:
        super().__init__()
        if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
            raise ValueError(f"fpn_channels must be a positive int, got {out_channels!r}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=extra_blocks
        )
        if operator is not None:
            self.fpn.layer_blocks = nn.ModuleList(
                spatial_op(operator, out_channels, key) for _ in self.fpn.layer_blocks
            )
        self.out_channels = out_channels
        self.strides = body.feature_info.strides()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
