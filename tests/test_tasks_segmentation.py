"""involution.tasks.segmentation (SemanticSegmenter): a few steps of a tiny segmenter on
synthetic maps shaped as the segmentation data modules give them."""

from __future__ import annotations

from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.io import decode_png, read_file

from involution.tasks import SemanticSegmenter, visuals
from involution.tasks.base import Diverged

from conftest import TINY_SEGMENTER, tiny_trainer

MODEL = dict(TINY_SEGMENTER)  # 4 classes


class Maps(L.LightningDataModule):
    """The segmentation data contract: num_classes, class_names, ignore_index, in_channels;
    batches (images [N, 3, H, W] in [0, 1], masks int64 [N, H, W])."""

    def __init__(self, count: int = 4, batch_size: int = 2, **attrs):
        super().__init__()
        self.batch_size = batch_size
        self.num_classes, self.ignore_index, self.in_channels = 4, 255, 3
        self.class_names = ["background", "red", "green", "blue"]
        self.__dict__.update(attrs)
        generator = torch.Generator().manual_seed(0)
        masks = torch.zeros(count, 48, 48, dtype=torch.int64)
        for i in range(count):
            for label in (1, 2, 3):
                y, x = (int(v) for v in torch.randint(0, 36, (2,), generator=generator))
                masks[i, y : y + 12, x : x + 12] = label
        masks[:, :2] = 255  # an unlabelled border
        images = torch.rand(count, 3, 48, 48, generator=generator) * 0.2
        for label in (1, 2, 3):
            images[:, label - 1][masks == label] = 1.0
        self.data = TensorDataset(images, masks)

    def _loader(self) -> DataLoader:
        return DataLoader(self.data, self.batch_size)

    train_dataloader = val_dataloader = test_dataloader = _loader


@pytest.mark.parametrize(("name", "epochs"), [("semantic_fpn", 2), ("upernet", 1)])
def test_fit_logs_miou_and_pixel_accuracy_and_draws_the_maps(tmp_path, name, epochs):
    torch.manual_seed(0)
    module = SemanticSegmenter({"name": name, **MODEL, "neck": "involution"}, lr=0.05)
    trainer = tiny_trainer(tmp_path, max_epochs=epochs)
    trainer.fit(module, Maps())
    metrics = trainer.callback_metrics
    for key in ("val/miou", "val/pixel_acc", "val/loss", "train/loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert 0 <= metrics["val/miou"] <= 1 and 0 <= metrics["val/pixel_acc"] <= 1
    for epoch in range(epochs):
        image = decode_png(read_file(str(tmp_path / "predictions" / f"epoch{epoch:03d}.png")))
        assert image.shape == (3, 2 + 2 * 50, 2 + 2 * 50)  # 2 images x (truth, prediction)
    trainer.test(module, Maps(), verbose=False)
    assert {"test/miou", "test/pixel_acc"} <= set(trainer.callback_metrics)


def test_miou_ignores_unlabelled_pixels_and_absent_classes():
    module = SemanticSegmenter({"name": "semantic_fpn", **MODEL})
    metric = module.metrics["val_miou"]
    target = torch.tensor([[[0, 0, 1, 255]]])
    metric.update(torch.tensor([[[0, 0, 1, 2]]]), target)  # the ignored pixel is wrong: no cost
    assert metric.compute() == 1.0  # classes 2 and 3 appear nowhere: not averaged in
    pixel = module.metrics["val_pixel_acc"]
    pixel.update(torch.tensor([[[0, 1, 1, 2]]]), target)
    assert pixel.compute() == pytest.approx(2 / 3)


def test_checkpoint_rebuilds_the_segmenter_without_hydra(tmp_path):
    torch.manual_seed(0)
    module = SemanticSegmenter({"name": "upernet", **MODEL}, aux_weight=0.2)
    trainer = tiny_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, Maps())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = SemanticSegmenter.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.hparams.model == {"name": "upernet", **MODEL}
    assert loaded.hparams.aux_weight == 0.2
    images = Maps().data.tensors[0][:1]
    with torch.no_grad():
        assert torch.equal(module.eval()(images), loaded.eval()(images))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_classes": 19}, "model.num_classes=4 but the data has num_classes=19"),
        ({"ignore_index": 0}, "module.ignore_index=255 but the data has ignore_index=0"),
    ],
)
def test_data_that_does_not_fit_the_model_stops_before_any_step(tmp_path, data, message):
    module = SemanticSegmenter({"name": "semantic_fpn", **MODEL})
    with pytest.raises(ValueError, match=message):
        tiny_trainer(tmp_path).fit(module, Maps(count=2, **data))


def test_non_finite_loss_raises_diverged(tmp_path, monkeypatch):
    module = SemanticSegmenter({"name": "semantic_fpn", **MODEL})
    monkeypatch.setattr(module.criterion, "forward", lambda logits, target: logits.sum() * np.nan)
    with pytest.raises(Diverged, match="train loss is nan at step 0"):
        tiny_trainer(tmp_path).fit(module, Maps(count=2))


def test_wandb_gets_images_with_predicted_and_true_maps(tmp_path, monkeypatch):
    import wandb

    logger = mock.Mock()
    monkeypatch.setattr(visuals, "wandb_loggers", lambda trainer: [logger])
    module = SemanticSegmenter({"name": "semantic_fpn", **MODEL}, log_images=3)
    tiny_trainer(tmp_path).validate(module, Maps(), verbose=False)
    (call,) = logger.log_image.call_args_list
    kwargs = call.kwargs
    assert len(kwargs["images"]) == 2  # one validation batch of two
    masks = kwargs["masks"][0]
    assert masks["ground_truth"]["class_labels"][255] == "ignored"
    assert masks["ground_truth"]["class_labels"][1] == "red"
    assert set(np.unique(masks["ground_truth"]["mask_data"])) == {0, 1, 2, 3, 255}
    wandb.Image(kwargs["images"][0], masks=masks)


def test_unknown_segmenter_is_a_one_line_error():
    with pytest.raises(
        ValueError, match=r"model.name must be one of \['semantic_fpn', 'upernet'\]"
    ):
        SemanticSegmenter({"name": "deeplab", **MODEL})
