"""LightningModules, one per task (loss, optimizer and schedule, torchmetrics metrics).

Imported on first use: the detection and segmentation tasks bring torchvision's detection models,
which a classification run need not load."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ObjectDetector": "involution.tasks.detection",
    "SemanticSegmenter": "involution.tasks.segmentation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ObjectDetector", "SemanticSegmenter"]
