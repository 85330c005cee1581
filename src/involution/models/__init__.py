"""Models: one bottleneck skeleton -> RedNet, ResNet and local self-attention (SASA) families;
detectors and segmenters over them (torchvision's, imported on first use)."""

from __future__ import annotations

from typing import Any

from involution.models.backbones import FrozenStagesBackbone, create_backbone
from involution.models.checkpoint import CheckpointMismatchError, load_checkpoint
from involution.models.counting import count_macs, count_params, mac_breakdown
from involution.models.features import BottleneckFeatures, FeatureInfo
from involution.models.network import STAGE_DEPTHS, BottleneckNet
from involution.models.registry import FAMILIES, create_model, list_models, register_model

# torchvision takes longer to import than torch itself: classification never pays for it
_LAZY = {
    "DETECTORS": "involution.models.detection",
    "create_detector": "involution.models.detection",
    "SEGMENTERS": "involution.models.segmentation",
    "create_segmenter": "involution.models.segmentation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DETECTORS",
    "FAMILIES",
    "SEGMENTERS",
    "STAGE_DEPTHS",
    "BottleneckFeatures",
    "BottleneckNet",
    "CheckpointMismatchError",
    "FeatureInfo",
    "FrozenStagesBackbone",
    "count_macs",
    "count_params",
    "create_backbone",
    "create_detector",
    "create_model",
    "create_segmenter",
    "list_models",
    "load_checkpoint",
    "mac_breakdown",
    "register_model",
]
