"""LightningModule for semantic segmentation: a segmenter from ``create_segmenter``, pixel-wise
cross-entropy (auxiliary head weighted 0.4 as in mmseg), SGD with the poly schedule of the
official Cityscapes configs, mIoU and pixel accuracy from torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from involution.models.segmentation import SEGMENTERS, create_segmenter
from involution.tasks import visuals
from involution.tasks.base import stop_if_diverged
from involution.tasks.schedules import check_schedule, sgd_with_schedule

Batch = tuple[torch.Tensor, torch.Tensor]


class SemanticSegmenter(L.LightningModule):
    """Wraps ``create_segmenter(**model)`` (``model["name"]``: semantic_fpn or upernet).

    The hyperparameters hold the model's plain arguments, so that
    ``SemanticSegmenter.load_from_checkpoint(path)`` rebuilds it without Hydra; a
    ``backbone_checkpoint`` only seeds a fresh run and is kept out of them.

    Batches: ``(images, masks)``, images float [N, 3, H, W] in [0, 1] (the segmenter
    normalises), masks int64 [N, H, W] of class ids, ``ignore_index`` where unlabelled.

    Logged: ``{split}/loss`` (the decode head's cross-entropy + ``aux_weight`` x the auxiliary
    head's in training), ``{split}/miou`` (``MulticlassJaccardIndex``, macro over the classes
    present in predictions or labels, as mmseg's mIoU) and ``{split}/pixel_acc``
    (``MulticlassAccuracy``, micro), both without the ignored pixels. Each validation epoch draws
    ``log_images`` images with their ground-truth and predicted maps (``visuals``).

    Args:
        model: ``create_segmenter`` keyword arguments, ``name`` and ``num_classes`` included.
        ignore_index: the label of unlabelled pixels (Cityscapes: 255).
        aux_weight: the auxiliary head's loss weight (mmseg: 0.4).
        lr: for a total batch of ``lr_reference_batch`` (mmseg Cityscapes: 0.01 for 8 x 2
            images), scaled linearly to the real total batch.
        schedule: ``poly`` (mmseg: power 0.9 down to ``min_lr_factor`` x lr = 1e-4), ``cosine``
            or ``step`` (x ``gamma`` at each of ``milestones`` epochs), after ``warmup_steps``
            iterations of linear warm-up.
    """

    def __init__(
        self,
        model: dict[str, Any],
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        lr: float = 0.01,
        lr_reference_batch: int = 16,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        schedule: str = "poly",
        milestones: Sequence[float] = (),
        gamma: float = 0.1,
        poly_power: float = 0.9,
        min_lr_factor: float = 0.01,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.1,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        model = dict(model)
        name = model.get("name")
        if name not in SEGMENTERS:
            raise ValueError(f"model.name must be one of {list(SEGMENTERS)}, got {name!r}")
        check_schedule(schedule, lr, milestones, warmup_steps, warmup_start_factor)
        pretrained = model.pop("backbone_checkpoint", None)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = model
        self.hparams["milestones"] = list(milestones)
        self.model = create_segmenter(
            **model, **({"backbone_checkpoint": pretrained} if pretrained else {})
        )
        self.num_classes = model.get("num_classes", 19)
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": metric(
                    self.num_classes, ignore_index=ignore_index, average=average
                )
                for split in ("val", "test")
                for kind, metric, average in (
                    ("miou", MulticlassJaccardIndex, "macro"),
                    ("pixel_acc", MulticlassAccuracy, "micro"),
                )
            }
        )
        self._drawn: list[tuple[torch.Tensor, ...]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_classes, H, W]."""
        return self.model(images)["out"]

    def setup(self, stage: str) -> None:
        """The data must fit the model: one-line errors before any step."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return
        for key, ours in (
            ("num_classes", self.num_classes),
            ("ignore_index", self.hparams.ignore_index),
        ):
            found = getattr(datamodule, key, None)
            if found is not None and found != ours:
                where = "model.num_classes" if key == "num_classes" else "module.ignore_index"
                raise ValueError(
                    f"{where}={ours} but the data has {key}={found} "
                    f"(data.{type(datamodule).__name__}.{key})"
                )

    def _loss(
        self, outputs: dict[str, torch.Tensor], masks: torch.Tensor, split: str
    ) -> torch.Tensor:
        loss = self.criterion(outputs["out"], masks)
        if "aux" in outputs:
            loss = loss + self.hparams.aux_weight * self.criterion(outputs["aux"], masks)
        stop_if_diverged(loss, split, self.global_step)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self._loss(self.model(images), masks, "train")
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images)
        )
        return loss

    def _evaluate(self, batch: Batch, split: str) -> torch.Tensor:
        images, masks = batch
        outputs = self.model(images)
        loss = self._loss(outputs, masks, split)
        predicted = outputs["out"].argmax(1)
        size = len(images)
        self.log(f"{split}/loss", loss, on_epoch=True, sync_dist=True, batch_size=size)
        for kind in ("miou", "pixel_acc"):
            metric = self.metrics[f"{split}_{kind}"]
            metric.update(predicted, masks)
            self.log(
                f"{split}/{kind}", metric, on_epoch=True, prog_bar=kind == "miou", batch_size=size
            )
        return predicted

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        predicted = self._evaluate(batch, "val")
        wanted = self.hparams.log_images - sum(len(d[0]) for d in self._drawn)
        if wanted > 0 and not self.trainer.sanity_checking:
            images, masks = batch
            self._drawn.append(tuple(t[:wanted].detach().cpu() for t in (images, predicted, masks)))

    def on_validation_epoch_end(self) -> None:
        drawn, self._drawn = self._drawn, []
        if not drawn:
            return
        images, predicted, masks = (torch.cat(parts) for parts in zip(*drawn, strict=True))
        tiles = visuals.segmentation_tiles(images, predicted, masks, self.num_classes)
        visuals.save_png(tiles, visuals.png_path(self.trainer))
        names = getattr(self.trainer.datamodule, "class_names", None)
        labels = {
            **visuals.class_labels(names, self.num_classes),
            self.hparams.ignore_index: "ignored",
        }
        for logger in visuals.wandb_loggers(self.trainer):
            logger.log_image(
                key="val/predictions",
                images=[visuals.to_uint8(i).permute(1, 2, 0).numpy() for i in images],
                step=self.global_step,
                masks=[
                    {
                        "predictions": {"mask_data": p.numpy(), "class_labels": labels},
                        "ground_truth": {"mask_data": m.numpy(), "class_labels": labels},
                    }
                    for p, m in zip(predicted, masks, strict=True)
                ],
            )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        return sgd_with_schedule(self, self.model.parameters())
