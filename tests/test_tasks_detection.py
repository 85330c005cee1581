"""involution.tasks.detection (ObjectDetector), tasks.schedules and tasks.visuals: a few steps of
a tiny detector on synthetic scenes shaped as the detection data modules give them."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import decode_png, read_file

from involution.tasks import ObjectDetector, visuals
from involution.tasks.base import Diverged
from involution.tasks.schedules import lr_factor

from conftest import TINY_DETECTOR, tiny_detector, tiny_trainer

CLASSES = ["square", "bar", "dot"]
MODEL = dict(TINY_DETECTOR)


def scene(index: int, size: int = 64, masks: bool = True) -> tuple[torch.Tensor, dict]:
    """1-2 filled rectangles, class c drawn in channel c - 1."""
    generator = torch.Generator().manual_seed(index)
    image = torch.rand(3, size, size, generator=generator) * 0.2
    boxes, labels, shapes = [], [], []
    for _ in range(1 + index % 2):
        label = int(torch.randint(1, 4, (1,), generator=generator))
        x0, y0 = (int(v) for v in torch.randint(0, size - 24, (2,), generator=generator))
        w, h = (int(v) for v in torch.randint(10, 24, (2,), generator=generator))
        image[label - 1, y0 : y0 + h, x0 : x0 + w] = 1.0
        mask = torch.zeros(size, size, dtype=torch.uint8)
        mask[y0 : y0 + h, x0 : x0 + w] = 1
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(label)
        shapes.append(mask)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "image_id": index,
    }
    if masks:
        target["masks"] = torch.stack(shapes)
    return image, target


class Scenes(L.LightningDataModule):
    """The detection data contract: num_classes, class_names, in_channels, has_masks; batches
    (list of images, list of target dicts)."""

    def __init__(self, count: int = 8, batch_size: int = 4, has_masks: bool = True, **attrs):
        super().__init__()
        self.batch_size, self.has_masks = batch_size, has_masks
        self.num_classes, self.class_names, self.in_channels = 3, CLASSES, 3
        self.__dict__.update(attrs)
        self.items = [scene(i, masks=has_masks) for i in range(count)]

    def _loader(self) -> DataLoader:
        return DataLoader(self.items, self.batch_size, collate_fn=lambda b: tuple(zip(*b)))

    train_dataloader = val_dataloader = test_dataloader = _loader


def test_fit_logs_box_and_mask_map_and_draws_the_predictions(tmp_path):
    torch.manual_seed(0)
    module = ObjectDetector({"name": "maskrcnn", **MODEL, "neck": "involution"}, warmup_steps=1)
    assert module.masks
    trainer = tiny_trainer(tmp_path)
    trainer.fit(module, Scenes())
    metrics = trainer.callback_metrics
    for key in (
        "val/map",
        "val/map_50",
        "val/map_75",
        "val/mar_100",
        "val/mask_map",
        "val/mask_map_50",
        "train/loss",
        "train/loss_mask",
        "train/loss_objectness",
    ):
        assert key in metrics, key
        assert torch.isfinite(metrics[key])
    png = tmp_path / "predictions" / "epoch000.png"
    image = decode_png(read_file(str(png)))
    # 4 images: rows of (ground truth, prediction) 64 px tiles, 2 px padding
    assert image.shape == (3, 2 + 4 * 66, 2 + 2 * 66)
    # the ground-truth tile shows its boxes: coloured pixels beyond the image's own
    assert len(torch.unique(image.reshape(3, -1), dim=1).T) > 100
    trainer.test(module, Scenes(), verbose=False)
    assert {"test/map", "test/mask_map"} <= set(trainer.callback_metrics)


def test_checkpoint_rebuilds_the_detector_without_hydra(tmp_path):
    torch.manual_seed(0)
    module = ObjectDetector({"name": "fasterrcnn", **MODEL}, lr=0.01, schedule="cosine")
    trainer = tiny_trainer(tmp_path, limit_train_batches=1)
    trainer.fit(module, Scenes())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = ObjectDetector.load_from_checkpoint(path)
    assert loaded.hparams.model == {"name": "fasterrcnn", **MODEL}
    assert loaded.hparams.schedule == "cosine" and not loaded.masks
    images = [scene(0)[0]]
    with torch.no_grad():
        a, b = module.eval()(images)[0], loaded.eval()(images)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_backbone_checkpoint_seeds_the_run_but_stays_out_of_the_hyperparameters(tmp_path):
    from involution.models import create_model

    source = create_model("rednet26", num_classes=5, **MODEL["backbone_args"])
    path = tmp_path / "classifier.pth"
    torch.save(source.state_dict(), path)
    module = ObjectDetector({**tiny_detector("retinanet"), "backbone_checkpoint": str(path)})
    assert "backbone_checkpoint" not in module.hparams.model
    body = module.model.backbone.body
    assert torch.equal(body.body.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert (body.frozen_stages, body.norm_eval) == (1, True)


def test_masks_of_a_detector_without_a_mask_head_is_a_one_line_error():
    with pytest.raises(ValueError) as error:
        ObjectDetector({"name": "fasterrcnn", **MODEL}, masks=True)
    assert str(error.value) == (
        "masks=true needs a detector with a mask head (maskrcnn); fasterrcnn has none"
    )


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("fasterrcnn", {"num_classes": 5}, "model.num_classes=3 but the data has 5 categories"),
        ("maskrcnn", {"has_masks": False}, "maskrcnn trains a mask head but the data has no"),
    ],
)
def test_data_that_does_not_fit_the_model_stops_before_any_step(tmp_path, model, data, message):
    module = ObjectDetector({"name": model, **MODEL})
    data = Scenes(count=2, **data)
    with pytest.raises(ValueError, match=message):
        tiny_trainer(tmp_path).fit(module, data)


def test_non_finite_loss_raises_diverged(tmp_path, monkeypatch):
    module = ObjectDetector({"name": "fasterrcnn", **MODEL})
    real = module.model.forward

    def nan_loss(images, targets=None):
        out = real(images, targets)
        return {k: v * float("nan") for k, v in out.items()} if targets is not None else out

    monkeypatch.setattr(module.model, "forward", nan_loss)
    with pytest.raises(Diverged, match="train loss is nan at step 0"):
        tiny_trainer(tmp_path).fit(module, Scenes(count=2, batch_size=2))


def test_wandb_gets_images_with_boxes_and_masks(tmp_path, monkeypatch):
    from unittest import mock

    import wandb

    logger = mock.Mock()
    monkeypatch.setattr(visuals, "wandb_loggers", lambda trainer: [logger])
    torch.manual_seed(0)
    module = ObjectDetector({"name": "maskrcnn", **MODEL}, log_images=2, image_score_threshold=0.0)
    tiny_trainer(tmp_path).validate(module, Scenes(count=2), verbose=False)
    (call,) = logger.log_image.call_args_list
    kwargs = call.kwargs
    assert kwargs["key"] == "val/predictions" and len(kwargs["images"]) == 2
    assert kwargs["images"][0].shape == (64, 64, 3) and kwargs["images"][0].dtype == np.uint8
    truth = kwargs["boxes"][0]["ground_truth"]
    assert truth["class_labels"] == {1: "square", 2: "bar", 3: "dot"}
    assert len(truth["box_data"]) == len(scene(0)[1]["labels"])
    assert kwargs["masks"][0]["ground_truth"]["mask_data"].max() >= 1
    # W&B accepts the payload as it is (its own checks, no run needed)
    wandb.Image(kwargs["images"][0], boxes=kwargs["boxes"][0], masks=kwargs["masks"][0])


def test_learning_rate_schedules():
    common = {"total": 100, "steps_per_epoch": 10, "warmup_steps": 10, "warmup_start_factor": 0.001}
    step = lambda s: lr_factor(s, schedule="step", milestones=(4, 8), **common)  # noqa: E731
    assert step(0) == pytest.approx(0.001)
    assert step(5) == pytest.approx(0.001 + 0.999 * 0.5)
    assert step(10) == 1.0 and step(39) == 1.0
    assert step(40) == pytest.approx(0.1) and step(80) == pytest.approx(0.01)
    poly = lambda s: lr_factor(s, schedule="poly", min_factor=0.01, **common)  # noqa: E731
    assert poly(100) == pytest.approx(0.01) and poly(50) == pytest.approx(0.01 + 0.99 * 0.5**0.9)
    cosine = lambda s: lr_factor(s, schedule="cosine", **common)  # noqa: E731
    assert cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": "linear"}, "module.schedule must be one of"),
        ({"lr": 0}, "module.lr must be positive"),
        ({"milestones": (11, 8)}, "module.milestones must be increasing"),
        ({"warmup_start_factor": 0}, "module.warmup_start_factor must be in"),
    ],
)
def test_bad_optimizer_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        ObjectDetector({"name": "fasterrcnn", **MODEL}, **overrides)
