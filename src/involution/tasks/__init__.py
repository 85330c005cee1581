"""Tasks: one LightningModule per task (loss, optimizer, schedule, torchmetrics), built by the
runner from the ``task`` config group (``module._target_``) with the ``model`` argument assembled
from the model and operator groups and the data's shape.

- :class:`ImageClassifier` (``task=classification``): the paper's ImageNet recipe, top-1/5.
- :class:`ObjectDetector` (``task=detection``): torchvision detectors, box and mask mAP.
- :class:`SemanticSegmenter` (``task=segmentation``): Semantic FPN / UPerNet, mIoU.
- :class:`Diverged`: what a task raises when its loss stops being finite.

The detection and segmentation tasks are imported on first use: they bring torchvision's detection
models, which a classification run need not load.
"""

from __future__ import annotations

from typing import Any

from involution.tasks.base import Diverged, stop_if_diverged
from involution.tasks.classification import ImageClassifier

_LAZY = {
    "ObjectDetector": "involution.tasks.detection",
    "SemanticSegmenter": "involution.tasks.segmentation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Diverged", "ImageClassifier", "ObjectDetector", "SemanticSegmenter", "stop_if_diverged"]
