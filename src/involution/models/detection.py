"""Detectors: torchvision's Faster R-CNN, Mask R-CNN and RetinaNet with an FPN over any backbone
of the zoo, the neck's and heads' spatial operator chosen like the backbone's.

    >>> model = create_detector("maskrcnn", backbone="rednet50", num_classes=80,
    ...                         neck="involution", heads="involution")  # doctest: +SKIP

What the official code (d-li14/involution, ``det/``) does, and where each piece lands here:

- ``neck``: the FPN's 3x3 output convolutions (FPN_involution: ``involution(256, 7, 1)``, no
  activation); laterals and the extra levels (max pool for the R-CNNs, RetinaNet's P6/P7
  stride-2 convolutions on C5) stay convolutions, as there.
- ``heads``: the RPN head's 3x3 convolution (RPNHead_involution: involution, then ReLU) and the
  four 3x3 convolutions of the mask head (FCNMaskHead_involution: involution + ReLU each).
  The box head (two FC layers) has no spatial operator. The official RetinaNet configs change
  the neck only, and so does this module: RetinaNet's towers keep their convolutions, whose
  std-0.01 initialisation its focal-loss prior relies on (an involution tower, tried, starts at a
  classification loss four orders of magnitude above the convolution tower's).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from involution.models.backbones import create_backbone
from involution.models.necks import BackboneWithFPN, replace_spatial_convs, resolve_operator

__all__ = ["DETECTORS", "create_detector", "fixed_roi_forward", "has_mask_head"]

DETECTORS = {"fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN, "retinanet": RetinaNet}
# the backbone stages each detector's FPN reads: the R-CNNs P2-P5 (+ max-pooled P6), RetinaNet
# P3-P5 (+ P6, P7 from C5), as torchvision's *_resnet50_fpn and the official configs
_OUT_INDICES = {"fasterrcnn": (0, 1, 2, 3), "maskrcnn": (0, 1, 2, 3), "retinanet": (1, 2, 3)}
# torchvision's defaults: one anchor size per level (R-CNN); RetinaNet's are octave bases, each
# taken at 3 scales (2^0, 2^(1/3), 2^(2/3)) as mmdet's octave_base_scale=4, scales_per_octave=3
_ANCHOR_SIZES = (32, 64, 128, 256, 512)
# the arguments create_detector sets itself (the rest of each class's go through **kwargs)
_BUILT_HERE = {
    "self",
    "backbone",
    "num_classes",
    "kwargs",
    "rpn_anchor_generator",
    "rpn_head",
    "box_head",
    "box_predictor",
    "mask_head",
    "mask_predictor",
    "anchor_generator",
    "head",
}
_TRANSFORM_KEYS = {"size_divisible", "fixed_size"}  # GeneralizedRCNNTransform's own


def _passthrough_keys(name: str) -> list[str]:
    names = set(inspect.signature(DETECTORS[name].__init__).parameters) - _BUILT_HERE
    return sorted(names | _TRANSFORM_KEYS)


def _positive_int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive int, got {value!r}")
    return value


def _anchor_generator(
    name: str, sizes: Sequence[float] | None, ratios: Sequence[float], levels: int
) -> AnchorGenerator:
    sizes = tuple(sizes) if sizes is not None else _ANCHOR_SIZES
    if len(sizes) != levels or any(
        not isinstance(s, int | float) or isinstance(s, bool) or s <= 0 for s in sizes
    ):
        raise ValueError(
            f"anchor_sizes must be {levels} positive sizes in pixels, one per FPN level of "
            f"{name} (default {_ANCHOR_SIZES}), got {sizes!r}"
        )
    ratios = tuple(float(r) for r in ratios)
    if name == "retinanet":
        per_level = tuple(tuple(s * 2 ** (i / 3) for i in range(3)) for s in sizes)
    else:
        per_level = tuple((s,) for s in sizes)
    return AnchorGenerator(per_level, (ratios,) * levels)


def create_detector(
    name: str,
    backbone: str = "rednet50",
    num_classes: int = 80,
    *,
    neck: str | Mapping[str, Any] | None = "convolution",
    heads: str | Mapping[str, Any] | None = "convolution",
    backbone_args: Mapping[str, Any] | None = None,
    backbone_checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    frozen_stages: int | None = None,
    norm_eval: bool | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_head_channels: int = 1024,
    mask_head_channels: int | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision detector with an FPN over a zoo backbone.

    Args:
        name: ``fasterrcnn``, ``maskrcnn`` or ``retinanet`` (torchvision's classes).
        backbone: a registered model (``list_models()``: rednet26..152, resnet*, sasa*).
        num_classes: foreground categories; the detector predicts ``num_classes + 1`` (label 0 is
            the background), so targets carry labels 1..num_classes.
        neck: the FPN's output operator: ``convolution`` (torchvision's 3x3), ``involution``,
            ``attention``, or a dict ``{"name": ..., **hyperparameters}`` (``necks``).
        heads: the RPN head's and mask head's operator, likewise (RetinaNet: convolution).
        backbone_args: ``create_model`` overrides of the backbone (``operator``, ``stem``,
            ``base_width``, ``stem_width``, ``memory_format``, ...).
        backbone_checkpoint: a classification checkpoint for the backbone (an official mmcls
            RedNet, torchvision ResNet, native state dict or our Lightning checkpoint).
        frozen_stages: stem + layer1..layer{k} frozen (-1: none). None: 1 with a
            ``backbone_checkpoint`` (the official configs), -1 without (a random backbone
            trains whole, as torchvision's detectors without weights do).
        norm_eval: the backbone's BNs in eval mode while training. None: True with a
            ``backbone_checkpoint``, False without.
        fpn_channels: the FPN's width (256 in the official configs; smaller for tiny runs).
        anchor_sizes: one anchor size (pixels) per FPN level, 5 levels; RetinaNet takes each
            at three octave scales. Default ``(32, 64, 128, 256, 512)``.
        aspect_ratios: anchor height/width ratios.
        box_head_channels: the R-CNN box head's FC width (1024).
        mask_head_channels: the mask head's width (default ``fpn_channels``).
        min_size, max_size: ``GeneralizedRCNNTransform``'s resize (800, 1333 for COCO).
        **kwargs: any other argument of the torchvision class (``rpn_pre_nms_top_n_train``,
            ``box_detections_per_img``, ``image_mean``, ``score_thresh`` ...).

    Returns:
        The torchvision ``FasterRCNN`` / ``MaskRCNN`` / ``RetinaNet``; ``model.backbone`` is a
        :class:`~involution.models.necks.BackboneWithFPN`.

    Raises:
        ValueError: a one-line message naming the bad argument (detector or backbone name, an
            operator key, an argument the torchvision class does not take, ...), before any
            weights are built or read.
        CheckpointMismatchError: ``backbone_checkpoint`` does not fit the backbone.
    """
    if name not in DETECTORS:
        raise ValueError(f"detector must be one of {sorted(DETECTORS)}, got {name!r}")
    unknown = sorted(set(kwargs) - set(_passthrough_keys(name)))
    if unknown:
        raise ValueError(
            f"{name} takes no argument {', '.join(unknown)}; create_detector's own and "
            f"torchvision's {DETECTORS[name].__name__}: {', '.join(_passthrough_keys(name))}"
        )
    num_classes = _positive_int(num_classes, "num_classes")
    fpn_channels = _positive_int(fpn_channels, "fpn_channels")
    neck_op = resolve_operator(neck, "neck")
    head_op = resolve_operator(heads, "heads")
    if name == "retinanet" and head_op is not None:
        raise ValueError(
            f"heads={head_op['name']!r}: retinanet's heads are convolutions only (as in the "
            "official code, which changes its neck alone); use neck= for the FPN"
        )
    if name == "maskrcnn":
        mask_head_channels = _positive_int(mask_head_channels or fpn_channels, "mask_head_channels")
        if head_op is not None and mask_head_channels != fpn_channels:
            raise ValueError(
                f"mask_head_channels={mask_head_channels} must equal fpn_channels={fpn_channels} "
                f"with heads={head_op['name']!r} (it keeps its input's channels)"
            )
    levels = 5
    anchors = _anchor_generator(name, anchor_sizes, aspect_ratios, levels)
    with_checkpoint = backbone_checkpoint is not None
    body = create_backbone(
        backbone,
        out_indices=_OUT_INDICES[name],
        checkpoint=backbone_checkpoint,
        frozen_stages=(1 if with_checkpoint else -1) if frozen_stages is None else frozen_stages,
        norm_eval=with_checkpoint if norm_eval is None else norm_eval,
        **dict(backbone_args or {}),
    )
    if name == "retinanet":
        # P6 from C5 (mmdet's add_extra_convs="on_input"); torchvision uses P5 only when the
        # two widths agree
        extra = LastLevelP6P7(body.feature_info.channels()[-1], fpn_channels)
    else:
        extra = LastLevelMaxPool()
    fpn = BackboneWithFPN(body, fpn_channels, extra, neck_op)
    common = {"min_size": min_size, "max_size": max_size, **kwargs}
    if name == "retinanet":
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes + 1)
        return RetinaNet(fpn, num_classes + 1, anchor_generator=anchors, head=head, **common)
    rpn_head = RPNHead(fpn_channels, anchors.num_anchors_per_location()[0])
    replace_spatial_convs(rpn_head.conv, head_op, "heads")
    box_head_channels = _positive_int(box_head_channels, "box_head_channels")
    common.update(
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_channels),
        box_predictor=FastRCNNPredictor(box_head_channels, num_classes + 1),
    )
    if name == "fasterrcnn":
        return FasterRCNN(fpn, **common)
    mask_head = MaskRCNNHeads(fpn_channels, (mask_head_channels,) * 4, 1)
    replace_spatial_convs(mask_head, head_op, "heads")
    mask_predictor = MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes + 1)
    return MaskRCNN(fpn, mask_head=mask_head, mask_predictor=mask_predictor, **common)


def has_mask_head(model: nn.Module) -> bool:
    """Whether ``model`` predicts instance masks (a Mask R-CNN)."""
    return isinstance(model, GeneralizedRCNN) and model.roi_heads.has_mask()


def _fixed_boxes(count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """``count`` boxes spread over the image, the same on every call."""
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(count, 2, generator=generator) * 0.75
    size = torch.rand(count, 2, generator=generator) * 0.25 + 0.01
    scale = torch.tensor([width, height], dtype=torch.float32)
    boxes = torch.cat([corner * scale, (corner + size) * scale], dim=1)
    return boxes.to(device)


def fixed_roi_forward(model: GeneralizedRCNN, images: torch.Tensor) -> list[torch.Tensor]:
    """An R-CNN's layers on ``images`` with a fixed number of RoIs, for counting multiply-adds
    (mmdet's ``forward_dummy``): transform -> backbone + FPN -> RPN head -> box head on the RPN's
    test-time proposal count (``rpn_post_nms_top_n_test``) -> mask head on the first
    ``box_detections_per_img`` of them. A real forward's RoI count depends on the image and
    the weights; this one does not."""
    batch, _ = model.transform(list(images))
    features = model.backbone(batch.tensors)
    outputs = list(model.rpn.head(list(features.values()))[0])
    height, width = batch.tensors.shape[-2:]
    count = model.rpn._post_nms_top_n["testing"]
    proposals = [_fixed_boxes(count, height, width, batch.tensors.device)] * len(images)
    heads = model.roi_heads
    boxes = heads.box_roi_pool(features, proposals, batch.image_sizes)
    outputs += list(heads.box_predictor(heads.box_head(boxes)))
    if heads.has_mask():
        first = [p[: heads.detections_per_img] for p in proposals]
        masks = heads.mask_roi_pool(features, first, batch.image_sizes)
        outputs.append(heads.mask_predictor(heads.mask_head(masks)))
    return outputs
