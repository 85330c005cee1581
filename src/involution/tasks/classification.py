"""Image classification (``task=classification``): the paper's recipe (label-smoothed CE,
Nesterov SGD, warm-up + cosine), top-1/5."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from involution import rules
from involution.models import create_model
from involution.tasks.base import stop_if_diverged


class ImageClassifier(L.LightningModule):
    """Wraps a registry model built from ``model`` (``create_model`` keyword arguments).

    Storing the model's arguments (not the module) in the hyperparameters means any checkpoint can
    be rebuilt with ``ImageClassifier.load_from_checkpoint(path)`` and no Hydra.
    ``lr`` is the learning rate for a total batch of ``lr_reference_batch``; it is scaled linearly
    by the real total batch (per-device batch x devices x nodes x accumulation), as in the paper.
    The optimisation keys' ranges are ``ARGUMENT_RULES``, checked here and by the run's pre-flight.
    """

    ARGUMENT_RULES: dict[str, rules.Rule] = {
        "lr": rules.POSITIVE_NUMBER,
        "lr_reference_batch": rules.int_at_least(1),
        "momentum": rules.FRACTION,
        "weight_decay": rules.number_at_least(0),
        "warmup_epochs": rules.number_at_least(0),
        "warmup_start_factor": rules.number_at_least(0),
        "label_smoothing": rules.FRACTION,
    }

    def __init__(
        self,
        model: dict[str, Any],
        lr: float = 0.1,
        lr_reference_batch: int = 256,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = True,
        warmup_epochs: float = 5.0,
        warmup_start_factor: float = 0.25,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        rules.check(self.hparams, self.ARGUMENT_RULES, "module")
        # A pretrained file only seeds a fresh run; once training has started its own checkpoints
        # hold the weights, so the path is kept out of the hyperparameters (load_from_checkpoint
        # must not reopen it).
        model = dict(model)
        pretrained = model.pop("checkpoint", None)
        self.hparams["model"] = model
        self.model = create_model(**model, **({"checkpoint": pretrained} if pretrained else {}))
        num_classes = model["num_classes"]
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                f"{split}_top{k}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for split in ("train", "val", "test")
                for k in (1, top5)
            }
        )
        self.top_ks = (1, top5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        stop_if_diverged(loss, split, self.global_step)
        on_step = split == "train"
        self.log(
            f"{split}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=not on_step,
        )
        for k in self.top_ks:
            metric = self.metrics[f"{split}_top{k}"]
            metric(logits, labels)
            self.log(f"{split}/acc_top{k}", metric, on_step=False, on_epoch=True, prog_bar=k == 1)
        return loss

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def total_batch_size(self) -> int:
        trainer = self.trainer
        per_device = trainer.datamodule.batch_size if trainer.datamodule is not None else 1
        return per_device * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = hp.lr * self.total_batch_size() / hp.lr_reference_batch
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=lr,
            momentum=hp.momentum,
            weight_decay=hp.weight_decay,
            nesterov=hp.nesterov,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, int(round(hp.warmup_epochs * steps_per_epoch)))

        def factor(step: int) -> float:
            if step < warmup:
                return hp.warmup_start_factor + (1 - hp.warmup_start_factor) * step / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
