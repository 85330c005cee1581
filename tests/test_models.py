"""Model zoo: registry, parameter and multiply-add counts, forward shapes, backbones, bad input.

Counts at 224x224 are taken on the ``meta`` device (no memory, no arithmetic); forward passes run
at small sizes for depths 26 and 50 only, so the whole file stays fast on two CPU cores.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from involution.layers import Involution2d, LocalSelfAttention2d
from involution.models import (
    FAMILIES,
    STAGE_DEPTHS,
    BottleneckFeatures,
    BottleneckNet,
    count_macs,
    count_params,
    create_model,
    list_models,
    mac_breakdown,
)
from involution.models.table import OFFICIAL, model_table, to_markdown

DEPTHS = {
    26: (1, 2, 4, 1),
    38: (2, 3, 5, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def meta_model(name: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **overrides)


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_every_family_builds_every_depth_with_the_official_stages(depth):
    """A depth counts 3 layers a bottleneck block plus the stem and the head."""
    assert sum(DEPTHS[depth]) * 3 + 2 == depth
    for family in ("rednet", "resnet", "sasa"):
        assert f"{family}{depth}" in list_models()
        model = meta_model(f"{family}{depth}")
        assert tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)) == DEPTHS[depth]
    assert set(FAMILIES) == {"rednet", "resnet", "sasa"}
    assert set(STAGE_DEPTHS) == set(DEPTHS)  # no depth is registered that this test skips


@pytest.mark.parametrize(
    "name, operator, stem",
    [
        ("rednet50", "involution", "rednet"),
        ("resnet50", "convolution", "resnet"),
        ("sasa50", "attention", "resnet"),
    ],
)
def test_family_defaults(name, operator, stem):
    model = meta_model(name)
    assert isinstance(model, BottleneckNet)
    assert (model.operator["name"], model.stem_kind) == (operator, stem)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == list(DEPTHS[50])


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError, match="unknown model 'rednet51'") as info:
        create_model("rednet51")
    for name in ("rednet26", "rednet152", "resnet50", "sasa101"):
        assert name in str(info.value)


def test_operator_override_merges_with_family_default():
    model = meta_model("rednet26", operator={"kernel_size": 5})
    op = model.layer1[0].conv2
    assert isinstance(op, Involution2d) and (op.kernel_size, op.groups) == (5, 64 // 16)
    assert model.stem[1].kernel_size == 3  # the stem keeps its 3x3 involution
    switched = meta_model("resnet26", operator={"name": "involution", "kernel_size": 3})
    assert isinstance(switched.layer1[0].conv2, Involution2d) and switched.stem_kind == "resnet"
    attention = meta_model("rednet26", operator={"name": "attention", "kernel_size": 3, "heads": 4})
    assert isinstance(attention.layer3[0].conv2, LocalSelfAttention2d)
    assert isinstance(attention.stem[1], LocalSelfAttention2d)  # rednet stem: the operator at 3x3
    widths = meta_model("rednet26", base_width=32, stem_width=32, in_channels=1, num_classes=7)
    assert widths.stage_channels == [128, 256, 512, 1024] and widths.fc.out_features == 7
    assert widths.stem[0][0].in_channels == 1


# ------------------------------------------------------------------------------------------
# counts (224x224, 1000 classes)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_rednet_params_match_official(name):
    params = count_params(meta_model(name)) / 1e6
    assert params == pytest.approx(OFFICIAL[name][0], rel=0.005)


def test_resnet50_params_equal_torchvision():
    import torchvision

    assert count_params(meta_model("resnet50")) == 25_557_032
    with torch.device("meta"):
        assert count_params(torchvision.models.resnet50()) == 25_557_032


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_rednet_macs_match_official(name):
    """Within 3% of the official multiply-adds; fails if the involution op is not counted."""
    macs = count_macs(meta_model(name), (3, 224, 224)) / 1e9
    assert macs == pytest.approx(OFFICIAL[name][1], rel=0.03)


def test_involution_macs_are_counted_exactly():
    """The involution op's multiply-adds are C*K*K*Ho*Wo per image and layer, plus, for the
    fused op (the default layers: the last 1x1 conv of the kernel generation inside the op),
    the generation's G*K*K*R*Ho*Wo: compare with the layer shapes, so a FLOP formula that is
    missing (or wrong) fails here, not silently."""
    model = meta_model("rednet50")
    aggregation = generation = 0

    def hook(module, inputs, output):
        nonlocal aggregation, generation
        n, c, ho, wo = output.shape
        aggregation += n * c * module.kernel_size**2 * ho * wo
        if module.recompute_kernel:  # the fused op counts the generation's 1x1 conv too
            generation += n * module.span.out_channels * module.span.in_channels * ho * wo

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Involution2d)
    ]
    breakdown = mac_breakdown(model, (2, 3, 224, 224))
    for handle in handles:
        handle.remove()
    involution = {op: n for op, n in breakdown.items() if op.startswith("involution::")}
    assert sum(involution.values()) == aggregation + generation, breakdown
    assert aggregation / 2 == pytest.approx(71.4e6, rel=0.01)  # ~2.6% of RedNet-50's 2.71 G


def test_count_macs_refuses_to_undercount(monkeypatch):
    """Without the involution op's FLOP formula count_macs raises instead of returning a number
    that silently leaves the involution multiply-adds out."""
    from torch.utils import flop_counter

    monkeypatch.delitem(flop_counter.flop_registry, torch.ops.involution.involution2d)
    with pytest.raises(RuntimeError, match="no registered FLOP formula"):
        count_macs(meta_model("rednet26"))
    assert count_macs(meta_model("resnet26")) > 0  # no involution layers: nothing to miss


def test_resnet50_macs():
    assert count_macs(meta_model("resnet50")) / 1e9 == pytest.approx(4.09, rel=0.01)


def test_count_macs_on_real_model_and_restores_mode():
    model = create_model("rednet26", num_classes=10, stem="small", base_width=16, stem_width=16)
    model.train()
    macs = count_macs(model, (1, 3, 8, 8))
    assert macs > 0 and model.training
    assert count_macs(model, (3, 8, 8)) == macs
    with pytest.raises(ValueError, match="input_size"):
        count_macs(model, (8, 8))


def test_sasa_counts_every_depth():
    params = {depth: count_params(meta_model(f"sasa{depth}")) for depth in DEPTHS}
    assert params[50] / 1e6 == pytest.approx(18.0, rel=0.01)  # SASA paper, full attention ResNet-50
    assert params[26] < params[38] < params[50] < params[101] < params[152]
    breakdown = mac_breakdown(meta_model("sasa26"), (3, 224, 224))
    # attention logits (the involution grad_kernel op) and aggregation (the involution op)
    assert breakdown["involution::involution2d_grad_kernel"] > 0, breakdown
    assert breakdown["involution::involution2d"] > 0, breakdown


def test_deep_models_by_parameter_count():
    for family in ("rednet", "resnet", "sasa"):
        counts = [count_params(meta_model(f"{family}{depth}")) for depth in (26, 38, 50, 101, 152)]
        assert counts == sorted(counts), family
    assert count_params(meta_model("resnet101")) == 44_549_160  # torchvision resnet101
    assert count_params(meta_model("resnet152")) == 60_192_808  # torchvision resnet152


def test_table_rows_and_markdown():
    rows = model_table(families=("rednet",), depths=(26,))
    assert rows[0]["model"] == "rednet26" and rows[0]["official_params_m"] == 9.23
    text = to_markdown(rows)
    assert text.splitlines()[0].startswith("| model |") and "| rednet26 | involution |" in text


# ------------------------------------------------------------------------------------------
# forward shapes
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["rednet", "resnet", "sasa"])
@pytest.mark.parametrize("depth", [26, 50])
def test_forward_shapes(family, depth):
    torch.manual_seed(0)
    model = create_model(f"{family}{depth}", num_classes=10).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["rednet", "sasa"])
def test_small_stem_trains_one_step(family):
    torch.manual_seed(0)
    model = create_model(f"{family}26", num_classes=10, stem="small", base_width=16, stem_width=16)
    out = model(torch.randn(2, 3, 16, 16))
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------
# backbones
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rednet26", "resnet26", "sasa26"])
def test_features_only(name):
    torch.manual_seed(0)
    backbone = create_model(name, features_only=True, out_indices=(0, 1, 2, 3)).eval()
    assert isinstance(backbone, BottleneckFeatures)
    assert backbone.feature_info.channels() == [256, 512, 1024, 2048]
    assert backbone.feature_info.strides() == [4, 8, 16, 32] == backbone.feature_info.reduction()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 64 // s, 64 // s)
        for c, s in zip(backbone.feature_info.channels(), backbone.feature_info.strides())
    ]
    assert not hasattr(backbone, "fc")


def test_features_subset_drops_later_stages_and_matches_network():
    torch.manual_seed(0)
    net = create_model("rednet26", stem="small", base_width=16, stem_width=16).eval()
    state = net.state_dict()
    backbone = create_model(
        "rednet26",
        features_only=True,
        out_indices=(2, 0),
        stem="small",
        base_width=16,
        stem_width=16,
    ).eval()
    assert not hasattr(backbone, "layer4")
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(("layer4", "fc"))})
    assert backbone.feature_info.channels() == [256, 64] and backbone.feature_info.strides() == [
        4,
        1,
    ]
    x = torch.randn(1, 3, 17, 15)
    with torch.no_grad():
        full = net.forward_features(x)
        maps = backbone(x)
    torch.testing.assert_close(maps[0], full[2])
    torch.testing.assert_close(maps[1], full[0])


@pytest.mark.parametrize("bad", [(), (4,), (0, 0), (-1,), ("1",)])
def test_features_bad_out_indices(bad):
    with pytest.raises(ValueError, match="out_indices must be distinct stage indices in 0..3"):
        create_model("rednet26", features_only=True, out_indices=bad)


# ------------------------------------------------------------------------------------------
# bad operator hyperparameters name the stage and the key
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        (
            "rednet26",
            {"operator": {"group_channels": 48}},
            r"stem\.1 \(spatial op with 32 channels\): "
            r"operator\.group_channels=48 must divide the 32 channels",
        ),
        (
            "rednet26",
            {"stem": "resnet", "operator": {"group_channels": 128}},
            r"layer1\.0 \(spatial op with 64 channels\): operator\.group_channels=128 must divide",
        ),
        (
            "rednet26",
            {"stem": "resnet", "base_width": 24},
            r"layer1\.0 \(spatial op with 24 channels\): operator\.group_channels=16 must divide",
        ),
        (
            "rednet26",
            {"stem": "resnet", "operator": {"reduction_ratio": 100}},
            r"layer1\.0 \(spatial op with 64 channels\): operator\.reduction_ratio=100",
        ),
        (
            "sasa26",
            {"operator": {"heads": 3}},
            r"layer1\.0 \(spatial op with 64 channels\): operator\.heads=3",
        ),
        (
            "resnet26",
            {"operator": {"groups": 3}},
            r"layer1\.0 \(spatial op with 64 channels\): operator\.groups=3",
        ),
        (
            "rednet26",
            {"operator": {"kernel_size": 4}},
            r"layer1\.0 .*: operator\.kernel_size must be an odd",
        ),
        (
            "rednet26",
            {"operator": {"kernal_size": 3}},
            r"operator 'involution' got unknown keys \['kernal_size'\]",
        ),
        ("rednet26", {"operator": {"name": "deform"}}, r"operator\.name must be one of"),
        ("rednet26", {"stem": "vit"}, r"stem must be one of"),
    ],
)
def test_bad_hyperparameters_name_stage_and_key(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        meta_model(name, **overrides)


@pytest.mark.parametrize(
    "memory_format, flush, expected",
    [
        ("keep", True, False),
        ("auto", True, True),  # training (involution.train) flushes denormals
        ("auto", False, True),  # a plain script does not: the same layout, no hidden dependence
        ("channels_last", False, True),
        ("contiguous", True, False),
    ],
)
def test_memory_format_changes_layout_not_values(memory_format, flush, expected):
    """auto (the default) computes channels_last on the CPU whatever the floating-point mode the
    model is built in; channels_last forces it, keep and contiguous do not; every format gives
    the same values in float64, in training (with gradients) and in eval mode (BN folded)."""
    torch.manual_seed(0)
    torch.set_flush_denormal(flush)
    try:
        reference = create_model(
            "rednet26", num_classes=7, stem="small", memory_format="contiguous"
        )
        model = create_model("rednet26", num_classes=7, stem="small", memory_format=memory_format)
        default = create_model("rednet26", num_classes=7, stem="small")
    finally:
        torch.set_flush_denormal(False)
    assert default.memory_format == "auto" and default.layout == "auto"
    model.load_state_dict(reference.state_dict())
    reference, model = reference.double(), model.double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    seen = []
    model.layer1.register_forward_hook(lambda m, i, o: seen.append(o))
    for train in (True, False):
        reference.train(train), model.train(train)
        torch.testing.assert_close(model(x), reference(x), rtol=1e-9, atol=1e-9)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) == expected
    # nor does building or running a model change the caller's floating-point mode
    model.float()(x.float()).sum().backward()
    assert float(torch.tensor([1e-39]) * 2) != 0.0, "denormals flushed behind the caller's back"
    with pytest.raises(ValueError, match="memory_format must be one of"):
        create_model("rednet26", memory_format="nhwc")
