"""involution.tasks.classification, the training recipe: linear warm-up from 0.25 x lr, cosine
to zero, lr scaled by the total batch."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from involution.data import SyntheticDataModule
from involution.tasks import ImageClassifier

from conftest import TINY_MODEL

# a ResNet (fast on CPU) of 7 classes of RGB images
TINY = {**TINY_MODEL, "name": "resnet26", "num_classes": 7, "in_channels": 3}


class RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_then_cosine_with_batch_scaled_lr() -> None:
    L.seed_everything(0)
    data = SyntheticDataModule(num_samples=64, image_size=8, num_classes=7, batch_size=8)
    module = ImageClassifier(
        TINY, lr=0.2, lr_reference_batch=256, warmup_epochs=1, warmup_start_factor=0.25
    )
    recorder = RecordLR()
    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    peak = 0.2 * 8 / 256
    lrs = recorder.lrs
    assert len(lrs) == 32
    assert lrs[0] == pytest.approx(0.25 * peak)
    assert all(a < b for a, b in zip(lrs[:8], lrs[1:9])), "linear warm-up rises for 8 steps"
    assert lrs[8] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[8:], lrs[9:])), "cosine decays afterwards"
    assert lrs[-1] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 23 / 24)))
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9


def test_label_smoothing_and_top5_metrics() -> None:
    module = ImageClassifier(TINY, label_smoothing=0.1)
    assert module.criterion.label_smoothing == 0.1
    assert module.top_ks == (1, 5)
    logits = module(torch.randn(3, 3, 8, 8))
    assert logits.shape == (3, 7)


def test_checkpoint_rebuilds_without_hydra(tmp_path) -> None:
    module = ImageClassifier(TINY)
    trainer = L.Trainer(
        max_epochs=0, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    restored = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    x = torch.randn(2, 3, 8, 8)
    module.eval()
    restored.eval()
    assert torch.equal(module(x), restored(x))
