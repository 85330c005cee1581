"""involution.models.detection / necks / backbones: torchvision detectors over the zoo, the neck's
and heads' operator, backbone initialisation, frozen stages and BN statistics, MAC counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from involution.layers import Involution2d, LocalSelfAttention2d
from involution.models import (
    CheckpointMismatchError,
    count_macs,
    create_backbone,
    create_detector,
    create_model,
    mac_breakdown,
)
from involution.models.checkpoint import official_names

from conftest import TINY_BACKBONE, tiny_detector


def tiny(name: str, **overrides) -> nn.Module:
    return create_detector(**{**tiny_detector(name), **overrides})


def scenes(count: int = 2, size: int = 64, masks: bool = True):
    """Images and targets as the detection data modules give them."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=generator) for _ in range(count)]
    targets = []
    for _ in range(count):
        boxes = torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 20.0, 60.0, 58.0]])
        target = {"boxes": boxes, "labels": torch.tensor([1, 3]), "image_id": 0}
        if masks:
            mask = torch.zeros(2, size, size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                mask[i, y0:y1, x0:x1] = 1
            target["masks"] = mask
        targets.append(target)
    return images, targets


@pytest.mark.parametrize(
    ("name", "neck", "heads"),
    [
        ("fasterrcnn", "convolution", "convolution"),
        ("maskrcnn", "involution", "involution"),
        ("retinanet", "involution", "convolution"),
        ("fasterrcnn", "attention", "attention"),
    ],
)
def test_detector_trains_and_predicts(name, neck, heads):
    torch.manual_seed(0)
    model = tiny(name, neck=neck, heads=heads)
    assert isinstance(model, {"fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN}.get(name, RetinaNet))
    images, targets = scenes(masks=name == "maskrcnn")
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.fpn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    if name == "maskrcnn":
        assert out[0]["masks"].shape[1:] == (1, 64, 64)
    assert all(((o["labels"] >= 1) & (o["labels"] <= 3)).all() for o in out)


def test_neck_and_heads_operators_replace_the_official_layers():
    conv = tiny("maskrcnn")
    layers = conv.backbone.fpn.layer_blocks
    assert all(type(block[0]) is nn.Conv2d and block[0].kernel_size == (3, 3) for block in layers)
    assert type(conv.rpn.head.conv[0][0]) is nn.Conv2d
    inv = tiny("maskrcnn", neck="involution", heads="involution")
    outputs = inv.backbone.fpn.layer_blocks
    assert len(outputs) == 4
    for layer in outputs:  # FPN_involution: involution(256, 7, 1), nothing after it
        assert isinstance(layer, Involution2d)
        assert (layer.kernel_size, layer.channels, layer.stride) == (7, 32, 1)
    # the laterals stay 1x1 convolutions, the extra level a max pool
    assert all(type(b[0]) is nn.Conv2d for b in inv.backbone.fpn.inner_blocks)
    assert [type(m) for m in inv.rpn.head.conv[0]] == [Involution2d, nn.ReLU]
    assert len(inv.roi_heads.mask_head) == 4
    assert all(isinstance(block[0], Involution2d) for block in inv.roi_heads.mask_head)
    # the box head and the predictors are the same
    assert conv.roi_heads.box_head.fc6.weight.shape == inv.roi_heads.box_head.fc6.weight.shape
    # hyperparameters merge onto the operator's default
    five = tiny("fasterrcnn", neck={"name": "involution", "kernel_size": 5})
    assert five.backbone.fpn.layer_blocks[0].kernel_size == 5
    attention = tiny("fasterrcnn", neck="attention")
    assert isinstance(attention.backbone.fpn.layer_blocks[0], LocalSelfAttention2d)
    # convolution with other settings is built by make_spatial_op
    wide = tiny("fasterrcnn", neck={"name": "convolution", "kernel_size": 5})
    assert wide.backbone.fpn.layer_blocks[0].kernel_size == (5, 5)


def test_retinanet_reads_p3_to_p7_with_p6_from_c5():
    model = tiny("retinanet", neck="involution")
    body = model.backbone.body.body
    assert body.out_indices == (1, 2, 3)
    extra = model.backbone.fpn.extra_blocks
    assert extra.p6.in_channels == body.feature_info.channels()[-1]  # mmdet's "on_input"
    assert model.anchor_generator.num_anchors_per_location() == [9] * 5
    with torch.no_grad():
        levels = model.eval().backbone(torch.rand(1, 3, 64, 64))
    assert list(levels) == ["0", "1", "2", "p6", "p7"]
    assert [f.shape[-1] for f in levels.values()] == [8, 4, 2, 1, 1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "yolo"}, "detector must be one of"),
        ({"rpn_pre_nms_top_n": 10}, "maskrcnn takes no argument rpn_pre_nms_top_n"),
        ({"neck": "deformable"}, "neck.name must be one of"),
        ({"heads": {"name": "involution", "groups": 2}}, "heads (involution) got unknown keys"),
        ({"neck": {"name": "involution", "group_channels": 5}}, "neck (spatial op with 32"),
        ({"heads": "involution", "mask_head_channels": 16}, "mask_head_channels=16 must equal"),
        ({"anchor_sizes": (8, 16)}, "anchor_sizes must be 5 positive sizes"),
        ({"frozen_stages": 5}, "frozen_stages must be an int in -1..4"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"backbone": "rednet27"}, "unknown model 'rednet27'"),
        ({"backbone_args": {"num_classes": 5}}, "backbone_args.num_classes is not"),
    ],
)
def test_bad_arguments_are_one_line_errors(overrides, message):
    overrides = dict(overrides)
    name = overrides.pop("name", "maskrcnn")
    with pytest.raises(ValueError) as error:
        create_detector(**{**tiny_detector("maskrcnn"), "name": name, **overrides})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_retinanet_heads_stay_convolutions():
    with pytest.raises(ValueError, match="retinanet's heads are convolutions only"):
        tiny("retinanet", heads="involution")


def test_macs_count_the_involution_op_and_do_not_depend_on_the_weights():
    torch.manual_seed(0)
    inv = tiny("maskrcnn", neck="involution", heads="involution")
    breakdown = mac_breakdown(inv, (3, 64, 64))
    assert breakdown["involution::involution2d"] > 0
    for parameter in inv.parameters():  # other weights, other detections: the same count
        nn.init.normal_(parameter)
    assert count_macs(inv, (3, 64, 64)) == sum(breakdown.values())
    # the involution neck and heads cost fewer multiply-adds than 3x3 convolutions; more RoIs
    # cost more
    conv = count_macs(tiny("maskrcnn"), (3, 64, 64))
    assert sum(breakdown.values()) < conv
    assert count_macs(tiny("maskrcnn", rpn_post_nms_top_n_test=40), (3, 64, 64)) > conv


# ------------------------------------------------------------------------------------------------
# Backbone initialisation, frozen stages, frozen BN statistics
# ------------------------------------------------------------------------------------------------


def classifier(name: str = "rednet26", num_classes: int = 7) -> nn.Module:
    torch.manual_seed(1)
    model = create_model(name, num_classes=num_classes, **TINY_BACKBONE)
    for module in model.modules():  # running statistics that a real checkpoint would carry
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


def official(model: nn.Module) -> dict:
    """The mmcls layout of a classifier: ``backbone.<official name>`` + ``head.fc.*``."""
    names = official_names(model)
    state = {}
    for key, value in model.state_dict().items():
        theirs = names[key]
        state[("head." if theirs.startswith("fc.") else "backbone.") + theirs] = value
    return {"state_dict": state, "meta": {}}


@pytest.mark.parametrize("layout", ["native", "lightning", "official"])
def test_backbone_loads_a_classification_checkpoint(tmp_path, layout):
    source = classifier()
    state = source.state_dict()
    saved = {
        "native": state,
        "lightning": {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "pytorch-lightning_version": "2.6.6",
        },
        "official": official(source),
    }[layout]
    path = tmp_path / f"{layout}.ckpt"
    torch.save(saved, path)
    model = tiny("fasterrcnn", backbone_checkpoint=str(path))
    body = model.backbone.body.body
    loaded = body.state_dict()
    assert loaded and all(torch.equal(v, state[k]) for k, v in loaded.items())
    # the official configs' settings follow a checkpoint by default
    assert (model.backbone.body.frozen_stages, model.backbone.body.norm_eval) == (1, True)
    assert (
        tiny("fasterrcnn").backbone.body.frozen_stages,
        tiny("fasterrcnn").backbone.body.norm_eval,
    ) == (-1, False)


def test_backbone_checkpoint_of_another_architecture_names_the_file(tmp_path):
    path = tmp_path / "resnet26.pth"
    torch.save(classifier("resnet26").state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as error:
        tiny("maskrcnn", backbone_checkpoint=path)
    assert repr(str(path)) in str(error.value)
    assert error.value.unexpected and error.value.missing
    assert "layer1.0.conv2.reduce.weight" in error.value.missing


def test_backbone_without_the_dropped_stage_loads_the_rest():
    source = classifier()
    body = create_backbone(
        "rednet26", out_indices=(0, 1, 2), checkpoint=source.state_dict(), **TINY_BACKBONE
    )
    assert not hasattr(body.body, "layer4")
    assert torch.equal(body.body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)


def _backbone_bns(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buffer.clone()
        for name, buffer in model.backbone.body.named_buffers()
        if "running" in name
    }


def test_frozen_stages_get_no_gradient_and_norm_eval_keeps_bn_statistics():
    torch.manual_seed(0)
    model = tiny("maskrcnn", frozen_stages=1, norm_eval=True, neck="involution")
    model.train()
    backbone = model.backbone.body
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.backbone.fpn.training and model.roi_heads.training
    before = _backbone_bns(model)
    frozen_before = {k: v.clone() for k, v in backbone.body.stem.state_dict().items()}
    images, targets = scenes()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        sum(model(images, targets).values()).backward()
        optimizer.step()
    for name, parameter in backbone.body.named_parameters():
        frozen = name.startswith(("stem.", "layer1."))
        assert parameter.requires_grad is not frozen, name
        assert (parameter.grad is None) is frozen, name
    assert all(torch.equal(v, backbone.body.stem.state_dict()[k]) for k, v in frozen_before.items())
    after = _backbone_bns(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # without norm_eval the statistics of the unfrozen stages move, the frozen ones' do not
    model = tiny("maskrcnn", frozen_stages=1, norm_eval=False)
    model.train()
    before = _backbone_bns(model)
    sum(model(images, targets).values()).backward()
    after = _backbone_bns(model)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(
        k.startswith("body.layer") and not k.startswith("body.layer1.") for k in moved
    )
