"""involution.models.segmentation: Semantic FPN and UPerNet over the zoo, the neck's operator."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from involution.layers import Involution2d
from involution.models import count_macs, create_model, create_segmenter, mac_breakdown
from involution.models.segmentation import SemanticFPNHead, UPerHead

from conftest import TINY_SEGMENTER


def tiny(name: str, **overrides) -> nn.Module:
    return create_segmenter(name, **{**TINY_SEGMENTER, **overrides})


@pytest.mark.parametrize(
    ("name", "neck"),
    [("semantic_fpn", "convolution"), ("semantic_fpn", "involution"), ("upernet", "convolution")],
)
def test_segmenter_gives_logits_at_the_input_size_and_trains(name, neck):
    torch.manual_seed(0)
    model = tiny(name, neck=neck)
    images = torch.rand(2, 3, 72, 56)  # not a multiple of 32: logits still match the input
    labels = torch.randint(0, 4, (2, 72, 56))
    out = model.train()(images)
    assert out["out"].shape == (2, 4, 72, 56)
    assert ("aux" in out) is (name == "upernet")  # mmseg's configs: UPerNet's FCN aux head
    loss = nn.functional.cross_entropy(out["out"], labels)
    if "aux" in out:
        assert out["aux"].shape == out["out"].shape
        loss = loss + 0.4 * nn.functional.cross_entropy(out["aux"], labels)
    loss.backward()
    assert all(p.grad is not None for p in model.decode_head.parameters())
    with torch.no_grad():
        assert list(model.eval()(images)) == ["out"]  # no aux head at inference


def test_semantic_fpn_is_torchvisions_fpn_and_mmsegs_fpn_head():
    conv = tiny("semantic_fpn")
    assert isinstance(conv.backbone.fpn, FeaturePyramidNetwork)
    assert conv.backbone.fpn.extra_blocks is None  # mmseg: num_outs=4
    head = conv.decode_head
    assert isinstance(head, SemanticFPNHead)
    # strides 4, 8, 16, 32: 1, 1, 2, 3 conv blocks, upsampled after each but at stride 4
    convs = [sum(isinstance(m, nn.Conv2d) for m in h.modules()) for h in head.scale_heads]
    ups = [sum(isinstance(m, nn.Upsample) for m in h.modules()) for h in head.scale_heads]
    assert convs == [1, 1, 2, 3] and ups == [0, 1, 2, 3]
    assert isinstance(head.classifier[0], nn.Dropout2d) and head.classifier[0].p == 0.1
    inv = tiny("semantic_fpn", neck="involution")
    assert all(
        isinstance(layer, Involution2d) and layer.kernel_size == 7
        for layer in inv.backbone.fpn.layer_blocks
    )
    assert count_macs(inv, (3, 64, 64)) < count_macs(conv, (3, 64, 64))
    assert mac_breakdown(inv, (3, 64, 64))["involution::involution2d"] > 0


def test_upernet_head_pools_the_last_stage_and_takes_a_neck_operator():
    model = tiny("upernet", neck="involution", pool_scales=(1, 2))
    head = model.decode_head
    assert isinstance(head, UPerHead)
    assert [stage[0].output_size for stage in head.psp.stages] == [1, 2]
    assert len(head.outputs) == 3 and all(isinstance(b[0], Involution2d) for b in head.outputs)
    assert model.aux_head[0].in_channels == model.backbone.feature_info.channels()[2]


def test_segmenter_backbone_from_a_classifier_checkpoint():
    torch.manual_seed(1)
    source = create_model("rednet26", num_classes=5, **TINY_SEGMENTER["backbone_args"])
    model = tiny("upernet", backbone_checkpoint=source.state_dict())
    body = model.backbone.body
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in body.state_dict().items())
    # mmseg's configs train the whole backbone, statistics live
    assert (model.backbone.frozen_stages, model.backbone.norm_eval) == (-1, False)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("pspnet", {}, "segmenter must be one of"),
        ("semantic_fpn", {"aux_head": True}, "aux_head: semantic_fpn takes none"),
        ("upernet", {"num_classes": 0}, "num_classes must be a positive int"),
        ("upernet", {"neck": {"name": "involution", "ratio": 2}}, "neck (involution) got unknown"),
        ("semantic_fpn", {"dropout": 1.0}, "dropout must be in [0, 1)"),
    ],
)
def test_bad_arguments_are_one_line_errors(name, overrides, message):
    with pytest.raises(ValueError) as error:
        tiny(name, **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
