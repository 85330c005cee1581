"""Semantic segmenters on any backbone of the zoo: Semantic FPN (mmseg's "FPN": torchvision's
FPN neck + FPNHead) and UPerNet (UPerHead: pyramid pooling + its own FPN, FCN auxiliary head).

    >>> model = create_segmenter("semantic_fpn", backbone="rednet50", num_classes=19,
    ...                          neck="involution")  # doctest: +SKIP
    >>> model(images)["out"].shape  # [N, 19, H, W] logits at the input's size  # doctest: +SKIP

Where the pieces come from: the neck is ``torchvision.ops.FeaturePyramidNetwork`` (the official
FPN_involution's 7x7 involutions in place of its 3x3 outputs with ``neck="involution"``), the
auxiliary head is torchvision's ``FCNHead`` (mmseg's auxiliary FCNHead: one 3x3 conv to a quarter
of the input channels, BN, ReLU, dropout 0.1, 1x1 classifier). No maintained library has mmseg's
FPNHead or UPerHead over a custom backbone with a choice of neck operator: torchvision has
FCN/DeepLab/LR-ASPP heads only, and segmentation_models_pytorch's FPN decoder (Kirillov's, with
GroupNorm and no 3x3 pyramid outputs to swap) and UPerNet decoder (LayerNorm on the features)
differ from mmseg's and take only encoders registered in its own format. So the two heads are
written here, after mmseg's (BN + ReLU convolutions, bilinear resizing without aligned corners,
dropout 0.1 before the 1x1 classifier).

Input: images in [0, 1] (normalised inside with ``mean``/``std``); output: a dict ``{"out":
logits [N, num_classes, H, W]}`` (+ ``"aux"`` in training mode when the model has an auxiliary
head), as torchvision's segmentation models return.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import Conv2dNormActivation

from involution.models.backbones import create_backbone
from involution.models.necks import BackboneWithFPN, resolve_operator, spatial_op

__all__ = ["SEGMENTERS", "SemanticFPNHead", "Segmenter", "UPerHead", "create_segmenter"]

SEGMENTERS = ("semantic_fpn", "upernet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """mmseg's ``cls_seg``: dropout, then a 1x1 convolution to the classes."""
    return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))


class SemanticFPNHead(nn.Module):
    """mmseg's FPNHead (Kirillov et al., Panoptic FPN): each pyramid level goes through
    log2(stride / first stride) (at least one) 3x3 conv + BN + ReLU blocks, each followed by a 2x
    bilinear upsampling except at the first level; the levels are summed at the first level's
    resolution and classified."""

    def __init__(
        self,
        in_channels: int,
        strides: Sequence[int],
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            blocks: list[nn.Module] = []
            for k in range(length):
                blocks.append(Conv2dNormActivation(in_channels if k == 0 else channels, channels))
                if stride != strides[0]:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear"))
            self.scale_heads.append(nn.Sequential(*blocks))
        self.classifier = _classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, feature in zip(self.scale_heads[1:], features[1:], strict=True):
            out = out + _resize(head(feature), out.shape[-2:])
        return self.classifier(out)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling (mmseg's PPM + UPerHead's bottleneck): the input average-pooled
    to each of ``scales`` x ``scales`` cells, 1x1 conv + BN + ReLU each, resized back,
    concatenated with the input and fused by a 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), Conv2dNormActivation(in_channels, channels, 1))
            for s in scales
        )
        self.bottleneck = Conv2dNormActivation(in_channels + len(scales) * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


def _output_block(channels: int, operator: Mapping[str, Any] | None) -> nn.Module:
    """UPerHead's 3x3 FPN output block (conv + BN + ReLU), its conv replaced by ``operator``."""
    if operator is None:
        return Conv2dNormActivation(channels, channels)
    return nn.Sequential(
        spatial_op(operator, channels, "neck"), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
    )


class UPerHead(nn.Module):
    """mmseg's UPerHead (Xiao et al., UPerNet): pyramid pooling on the last stage as the top of
    an FPN whose laterals (1x1) and outputs (3x3) are conv + BN + ReLU; the outputs, resized to
    the first level, are concatenated, fused by a 3x3 conv + BN + ReLU and classified.
    ``operator`` replaces the 3x3 output convolutions (the official UPerNet keeps them)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        operator: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.psp = PyramidPooling(in_channels[-1], channels, pool_scales)
        self.laterals = nn.ModuleList(
            Conv2dNormActivation(c, channels, 1) for c in in_channels[:-1]
        )
        self.outputs = nn.ModuleList(_output_block(channels, operator) for _ in in_channels[:-1])
        self.fuse = Conv2dNormActivation(len(in_channels) * channels, channels)
        self.classifier = _classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.laterals, features, strict=False)]
        laterals.append(self.psp(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [block(x) for block, x in zip(self.outputs, laterals, strict=False)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0], *(_resize(x, size) for x in outs[1:])], dim=1))
        return self.classifier(fused)


class Segmenter(nn.Module):
    """Normalise -> ``backbone`` (stage maps, or an FPN's dict) -> ``decode_head`` -> logits
    resized to the input; ``aux_head`` (training only) on the backbone map ``aux_index``."""

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        aux_head: nn.Module | None = None,
        aux_index: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel, got {mean}, {std}")
        self.backbone, self.decode_head, self.aux_head = backbone, decode_head, aux_head
        self.aux_index = aux_index
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.backbone((x - self.mean) / self.std)
        return list(out.values()) if isinstance(out, Mapping) else list(out)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.features(x)
        result = OrderedDict(out=_resize(self.decode_head(features), x.shape[-2:]))
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features[self.aux_index])
            result["aux"] = _resize(aux, x.shape[-2:])
        return result


def create_segmenter(
    name: str,
    backbone: str = "rednet50",
    num_classes: int = 19,
    *,
    neck: str | Mapping[str, Any] | None = "convolution",
    backbone_args: Mapping[str, Any] | None = None,
    backbone_checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    fpn_channels: int = 256,
    head_channels: int | None = None,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    aux_head: bool | None = None,
    dropout: float = 0.1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Segmenter:
    """A semantic segmenter over a zoo backbone.

    Args:
        name: ``semantic_fpn`` (mmseg's FPN: neck + FPNHead) or ``upernet`` (UPerHead).
        backbone: a registered model (``list_models()``).
        num_classes: classes predicted (the background included where it is a class).
        neck: semantic_fpn: the FPN's 3x3 output operator (``convolution``: torchvision's,
            ``involution``: the official FPN_involution, ``attention``, or a dict); upernet: the
            3x3 output convolutions of UPerHead's FPN (the official UPerNet: convolution).
        backbone_args: ``create_model`` overrides of the backbone.
        backbone_checkpoint: a classification checkpoint for the backbone.
        frozen_stages, norm_eval: as :class:`~involution.models.backbones.FrozenStagesBackbone`;
            the official segmentation configs train the whole backbone with live BN statistics
            (-1, False).
        fpn_channels: semantic_fpn's FPN width (256).
        head_channels: the decode head's width (mmseg: 128 for FPNHead, 512 for UPerHead).
        pool_scales: upernet's pyramid pooling grid sizes.
        aux_head: an auxiliary FCN head on layer3 (training loss only); default: upernet yes
            (mmseg's config, loss weight 0.4 in the task), semantic_fpn no.
        dropout: before each 1x1 classifier.
        mean, std: input normalisation (images in [0, 1]).

    Raises:
        ValueError: a one-line message naming the bad argument, before anything is built.
        CheckpointMismatchError: ``backbone_checkpoint`` does not fit the backbone.
    """
    if name not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {list(SEGMENTERS)}, got {name!r}")
    for key, value in (
        ("num_classes", num_classes),
        ("fpn_channels", fpn_channels),
        ("head_channels", 1 if head_channels is None else head_channels),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    operator = resolve_operator(neck, "neck")
    aux = name == "upernet" if aux_head is None else aux_head
    if aux and name == "semantic_fpn":
        # its decode head reads the pyramid; mmseg's FPN config has no auxiliary head
        raise ValueError("aux_head: semantic_fpn takes none (mmseg's FPN config); use upernet")
    body = create_backbone(
        backbone,
        checkpoint=backbone_checkpoint,
        frozen_stages=frozen_stages,
        norm_eval=norm_eval,
        **dict(backbone_args or {}),
    )
    stage_channels = body.feature_info.channels()
    aux_module = FCNHead(stage_channels[2], num_classes) if aux else None
    if name == "semantic_fpn":
        fpn = BackboneWithFPN(body, fpn_channels, None, operator)
        head = SemanticFPNHead(
            fpn_channels, fpn.strides, head_channels or 128, num_classes, dropout
        )
        return Segmenter(fpn, head, None, mean=mean, std=std)
    head = UPerHead(
        stage_channels, head_channels or 512, num_classes, tuple(pool_scales), dropout, operator
    )
    return Segmenter(body, head, aux_module, aux_index=2, mean=mean, std=std)
