"""LightningModule for detection and instance segmentation: a torchvision detector from
``create_detector``, its own losses, SGD as the official mmdet configs, COCO box (and mask) mAP
from torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torchmetrics.detection import MeanAveragePrecision

from involution.models.detection import DETECTORS, create_detector, has_mask_head
from involution.tasks import visuals
from involution.tasks.base import stop_if_diverged
from involution.tasks.schedules import check_schedule, sgd_with_schedule

# torchmetrics' COCO evaluation backend: pycocotools (pinned), also what torchvision's
# CocoDetection reads annotations with
MAP_BACKEND = "pycocotools"
# MeanAveragePrecision's keys that are logged (the per-class ones only with class_metrics)
MAP_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
)

Batch = tuple[Sequence[torch.Tensor], Sequence[dict[str, torch.Tensor]]]


class ObjectDetector(L.LightningModule):
    """Wraps ``create_detector(**model)`` (``model["name"]``: fasterrcnn, maskrcnn, retinanet).

    The hyperparameters hold the model's plain arguments, so that
    ``ObjectDetector.load_from_checkpoint(path)`` rebuilds it without Hydra; a
    ``backbone_checkpoint`` only seeds a fresh run and is kept out of them.

    Batches: ``(images, targets)``, images a list of float [3, H, W] in [0, 1] (any sizes: the
    detector resizes and normalises), targets dicts with ``boxes`` (XYXY pixels), ``labels``
    (1..num_classes) and, for a Mask R-CNN, ``masks`` [n, H, W].

    Logged: ``train/loss`` and each loss term (``train/loss_classifier``, ...); on validation and
    test, COCO mAP: ``val/map``, ``val/map_50``, ``val/map_75``, ``val/map_small``... and with
    masks ``val/mask_map``, ``val/mask_map_50``, ... (torchmetrics ``MeanAveragePrecision``,
    pycocotools backend). Each validation epoch draws ``log_images`` images with their ground
    truth and predictions (``visuals``).

    Args:
        model: ``create_detector`` keyword arguments, ``name`` and ``num_classes`` included.
        masks: evaluate instance masks (mask mAP). None: when the detector has a mask head;
            True for one without is an error.
        lr: for a total batch of ``lr_reference_batch`` (mmdet: 0.02 for 16 images), scaled
            linearly to the real total batch.
        schedule: ``step`` (x ``gamma`` at each of ``milestones``, in epochs: mmdet's 1x is
            8, 11 of 12), ``cosine`` or ``poly``; after ``warmup_steps`` iterations of linear
            warm-up from ``warmup_start_factor`` x lr.
        log_images: images drawn per validation epoch (0: none); detections scoring below
            ``image_score_threshold`` are not drawn.
    """

    def __init__(
        self,
        model: dict[str, Any],
        masks: bool | None = None,
        lr: float = 0.02,
        lr_reference_batch: int = 16,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        schedule: str = "step",
        milestones: Sequence[float] = (8, 11),
        gamma: float = 0.1,
        poly_power: float = 0.9,
        min_lr_factor: float = 0.0,
        warmup_steps: int = 500,
        warmup_start_factor: float = 0.001,
        log_images: int = 4,
        image_score_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        model = dict(model)
        name = model.get("name")
        if name not in DETECTORS:
            raise ValueError(f"model.name must be one of {sorted(DETECTORS)}, got {name!r}")
        if masks and name != "maskrcnn":
            raise ValueError(
                f"masks=true needs a detector with a mask head (maskrcnn); {name} has none"
            )
        check_schedule(schedule, lr, milestones, warmup_steps, warmup_start_factor)
        pretrained = model.pop("backbone_checkpoint", None)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = model
        self.hparams["milestones"] = list(milestones)
        self.model = create_detector(
            **model, **({"backbone_checkpoint": pretrained} if pretrained else {})
        )
        self.masks = has_mask_head(self.model) if masks is None else bool(masks)
        self.num_classes = model.get("num_classes", 80)
        iou_types = ("bbox", "segm") if self.masks else ("bbox",)
        self.val_map = MeanAveragePrecision(iou_type=iou_types, backend=MAP_BACKEND)
        self.test_map = MeanAveragePrecision(iou_type=iou_types, backend=MAP_BACKEND)
        self._drawn: list[tuple] = []

    def forward(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(list(images))

    def setup(self, stage: str) -> None:
        """The data must fit the model: one-line errors before any step."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        found = getattr(datamodule, "num_classes", None)
        if found is not None and found != self.num_classes:
            raise ValueError(
                f"model.num_classes={self.num_classes} but the data has {found} categories "
                f"(data.{type(datamodule).__name__}.num_classes)"
            )
        if has_mask_head(self.model) and getattr(datamodule, "has_masks", True) is False:
            raise ValueError(
                f"{self.hparams.model['name']} trains a mask head but the data has no instance "
                "masks; use fasterrcnn or retinanet, or data with masks"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(list(images), list(targets))
        loss = sum(losses.values())
        stop_if_diverged(loss, "train", self.global_step)
        size = len(images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for key, value in losses.items():
            self.log(f"train/{key}", value, on_step=True, on_epoch=True, batch_size=size)
        return loss

    def _evaluate(
        self, batch: Batch, metric: MeanAveragePrecision
    ) -> list[dict[str, torch.Tensor]]:
        images, targets = batch
        predictions = self.model(list(images))
        preds, truths = [], []
        for found, target in zip(predictions, targets, strict=True):
            pred = {k: found[k] for k in ("boxes", "scores", "labels")}
            truth = {k: target[k] for k in ("boxes", "labels")}
            if self.masks:
                pred["masks"] = found["masks"][:, 0] > 0.5
                truth["masks"] = target["masks"].bool()
            preds.append(pred)
            truths.append(truth)
        metric.update(preds, truths)
        return predictions

    def _log_map(self, metric: MeanAveragePrecision, split: str) -> None:
        results = metric.compute()
        for iou, prefix in (("bbox", ""), ("segm", "mask_")):
            for key in MAP_KEYS:
                value = results.get(f"{iou}_{key}")
                if value is not None:
                    self.log(f"{split}/{prefix}{key}", value.float(), prog_bar=key == "map_50")
        metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        predictions = self._evaluate(batch, self.val_map)
        wanted = self.hparams.log_images - sum(len(d[0]) for d in self._drawn)
        if wanted > 0 and not self.trainer.sanity_checking:
            images, targets = batch
            threshold = self.hparams.image_score_threshold
            self._drawn.append(
                (
                    [image.detach().cpu() for image in images[:wanted]],
                    [visuals.kept(p, threshold) for p in predictions[:wanted]],
                    [{k: v for k, v in t.items() if torch.is_tensor(v)} for t in targets[:wanted]],
                )
            )

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")
        drawn, self._drawn = self._drawn, []
        if not drawn:
            return
        images = [i for d in drawn for i in d[0]]
        found = [p for d in drawn for p in d[1]]
        targets = [t for d in drawn for t in d[2]]
        names = getattr(self.trainer.datamodule, "class_names", None)
        labels = visuals.class_labels(names, self.num_classes, offset=1)
        tiles = visuals.detection_tiles(images, found, targets, labels)
        visuals.save_png(tiles, visuals.png_path(self.trainer))
        for logger in visuals.wandb_loggers(self.trainer):
            boxes, masks = [], []
            for image, pred, target in zip(images, found, targets, strict=True):
                truth = {k: target[k].cpu() for k in ("boxes", "labels", "masks") if k in target}
                boxes.append(
                    {
                        "predictions": visuals.wandb_boxes(pred, labels),
                        "ground_truth": visuals.wandb_boxes(truth, labels),
                    }
                )
                if self.masks:
                    size = image.shape[-2:]
                    masks.append(
                        {
                            name: {
                                "mask_data": visuals.instance_label_map(entry, size).numpy(),
                                "class_labels": {0: "background", **labels},
                            }
                            for name, entry in (("predictions", pred), ("ground_truth", truth))
                        }
                    )
            extra = {"masks": masks} if self.masks else {}
            logger.log_image(
                key="val/predictions",
                images=[visuals.to_uint8(i).permute(1, 2, 0).numpy() for i in images],
                step=self.global_step,
                boxes=boxes,
                **extra,
            )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_map)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        return sgd_with_schedule(self, self.model.parameters())
