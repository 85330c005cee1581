"""Predictions drawn on images, once per validation epoch: a PNG in the run directory
(``<run dir>/predictions/epoch003.png``) and, with a W&B logger, W&B images whose boxes and
masks can be toggled in the W&B UI. Drawn with torchvision.utils; a few images, so it costs
next to nothing beside the validation itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

__all__ = [
    "class_labels",
    "detection_tiles",
    "png_path",
    "save_png",
    "segmentation_tiles",
    "wandb_boxes",
    "wandb_loggers",
]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float [3, H, W] image in [0, 1] as uint8."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def class_labels(names: Sequence[str] | None, count: int, offset: int = 0) -> dict[int, str]:
    """Label id -> name; ``offset`` 1 for detectors (0 is the background)."""
    names = list(names or [])
    return {i + offset: names[i] if i < len(names) else str(i + offset) for i in range(count)}


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct colours (evenly spaced hues)."""
    import colorsys

    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(1, count), 0.85, 1.0))
        for i in range(count)
    ]


def _instances(
    image: torch.Tensor, found: dict[str, torch.Tensor], labels: dict[int, str], colours
) -> torch.Tensor:
    """``image`` (uint8) with the masks and boxes of ``found``, captioned with class (and
    score)."""
    ids = found["labels"].tolist()
    colour = [colours[i % len(colours)] for i in ids]
    if "masks" in found and len(ids):
        masks = found["masks"].bool().reshape(len(ids), *image.shape[-2:])
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colour)
    if len(ids):
        scores = found.get("scores")
        captions = [
            labels.get(i, str(i)) + (f" {s:.2f}" if scores is not None else "")
            for i, s in zip(ids, scores.tolist() if scores is not None else ids, strict=True)
        ]
        image = draw_bounding_boxes(image, found["boxes"], captions, colour, width=1)
    return image


def kept(prediction: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """The detections scoring at least ``threshold``, masks binarised at 0.5, on the CPU."""
    keep = prediction["scores"] >= threshold
    out = {k: v[keep].detach().cpu() for k, v in prediction.items() if k != "masks"}
    if "masks" in prediction:
        out["masks"] = prediction["masks"][keep].detach().cpu() > 0.5
    return out


def detection_tiles(
    images: Sequence[torch.Tensor],
    predictions: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    labels: dict[int, str],
) -> list[torch.Tensor]:
    """For each image, two uint8 tiles: the ground truth, then the predictions (already
    filtered with ``kept``)."""
    colours = palette(max(labels, default=0) + 1)
    tiles = []
    for image, found, target in zip(images, predictions, targets, strict=True):
        base = to_uint8(image)
        truth = {k: target[k].cpu() for k in ("boxes", "labels", "masks") if k in target}
        tiles.append(_instances(base, truth, labels, colours))
        tiles.append(_instances(base, found, labels, colours))
    return tiles


def segmentation_tiles(
    images: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> list[torch.Tensor]:
    """For each image, two uint8 tiles: the ground-truth map, then the predicted map, each
    class in its colour over the image (ignored pixels left bare)."""
    colours = palette(num_classes)
    classes = torch.arange(num_classes)[:, None, None]
    tiles = []
    for image, predicted, truth in zip(images, predictions, targets, strict=True):
        base = to_uint8(image)
        for label_map in (truth.cpu(), predicted.cpu()):
            masks = label_map[None] == classes
            tiles.append(draw_segmentation_masks(base, masks, alpha=0.55, colors=colours))
    return tiles


def png_path(trainer: L.Trainer, stage: str = "val") -> Path:
    """``<run dir>/predictions/epoch003.png`` (``test_epoch003.png`` for the test stage); the
    run directory is the trainer's ``default_root_dir``."""
    prefix = "" if stage == "val" else f"{stage}_"
    return (
        Path(trainer.default_root_dir)
        / "predictions"
        / f"{prefix}epoch{trainer.current_epoch:03d}.png"
    )


def save_png(tiles: Sequence[torch.Tensor], path: Path, pairs: bool = True) -> Path:
    """The tiles as one PNG grid, a (ground truth, prediction) pair per row."""
    size = max(t.shape[-2] for t in tiles), max(t.shape[-1] for t in tiles)
    padded = [
        torch.nn.functional.pad(t, (0, size[1] - t.shape[-1], 0, size[0] - t.shape[-2]))
        for t in tiles
    ]
    grid = make_grid(padded, nrow=2 if pairs else 8, padding=2, pad_value=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid, str(path))
    return path


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def wandb_boxes(found: dict[str, torch.Tensor], labels: dict[int, str]) -> dict[str, Any]:
    """``wandb.Image(boxes=...)``'s entry for one image's boxes (pixel coordinates)."""
    scores = found.get("scores")
    data = []
    for index, (box, label) in enumerate(
        zip(found["boxes"].tolist(), found["labels"].tolist(), strict=True)
    ):
        entry = {
            "position": {"minX": box[0], "minY": box[1], "maxX": box[2], "maxY": box[3]},
            "domain": "pixel",
            "class_id": int(label),
            "box_caption": labels.get(int(label), str(label)),
        }
        if scores is not None:
            entry["scores"] = {"score": float(scores[index])}
            entry["box_caption"] += f" {float(scores[index]):.2f}"
        data.append(entry)
    return {"box_data": data, "class_labels": labels}


def instance_label_map(found: dict[str, torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Instance masks painted as one class-id map (0: background; later instances on top)."""
    out = torch.zeros(tuple(size), dtype=torch.uint8)
    if "masks" in found:
        for mask, label in zip(
            found["masks"].bool().reshape(-1, *size), found["labels"].tolist(), strict=True
        ):
            out[mask] = int(label)
    return out
