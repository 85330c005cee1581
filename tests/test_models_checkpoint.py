"""Checkpoint import: official mmcls RedNet layout, torchvision ResNet, native and Lightning files.

The official network is rebuilt here with the official module names and structure (mmcv-style
ConvModule with ``.conv``/``.bn``/``.activate``, the official ``involution`` with
``conv1``/``conv2`` ConvModules and the unfold aggregation, mmcls Bottleneck/ResLayer, ``stem`` +
separate ``maxpool``, GlobalAveragePooling neck and ``head.fc``), given random weights and random
BatchNorm statistics, and saved in the official
``{'state_dict': {'backbone.…', 'head.fc.…'}, 'meta': …}`` format.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from involution.models import CheckpointMismatchError, count_params, create_model, load_checkpoint
from involution.models.checkpoint import official_names

# ------------------------------------------------------------------------------------------
# The official network (d-li14/involution, cls/mmcls/models/backbones/rednet.py), structure only
# ------------------------------------------------------------------------------------------


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (bias only without norm) -> bn -> activate."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        if act:
            self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        if hasattr(self, "activate"):
            x = self.activate(x)
        return x


class OfficialInvolution(nn.Module):
    def __init__(self, channels, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride, self.channels = kernel_size, stride, channels
        self.group_channels = 16
        self.groups = channels // self.group_channels
        self.conv1 = ConvModule(channels, channels // 4, 1)
        self.conv2 = ConvModule(
            channels // 4, kernel_size**2 * self.groups, 1, norm=False, act=False
        )
        if stride > 1:
            self.avgpool = nn.AvgPool2d(stride, stride)
        self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, stride)

    def forward(self, x):
        weight = self.conv2(self.conv1(x if self.stride == 1 else self.avgpool(x)))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size**2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size**2, h, w)
        return (weight * out).sum(dim=3).view(b, self.channels, h, w)


class OfficialBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, downsample):
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = OfficialInvolution(mid, 7, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class OfficialRedNet(nn.Module):
    """mmcls ImageClassifier(backbone=RedNet, neck=GlobalAveragePooling, head=LinearClsHead)."""

    def __init__(self, blocks, num_classes):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.stem = nn.Sequential(
            ConvModule(3, 32, 3, stride=2, padding=1),
            OfficialInvolution(32, 3, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            ConvModule(32, 64, 3, stride=1, padding=1),
        )
        self.backbone.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, cout = 64, 256
        for index, count in enumerate(blocks):
            stride = 1 if index == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
            layer = [OfficialBottleneck(cin, cout, stride, downsample)]
            layer += [OfficialBottleneck(cout, cout, 1, None) for _ in range(1, count)]
            setattr(self.backbone, f"layer{index + 1}", nn.Sequential(*layer))
            cin, cout = cout, cout * 2
        self.head = nn.Module()
        self.head.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.backbone.maxpool(self.backbone.stem(x))
        for index in range(4):
            x = getattr(self.backbone, f"layer{index + 1}")(x)
        return self.head.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def randomise(model: nn.Module, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random weights, random BN affine parameters, and BN statistics measured on ``images``.

    Every running_mean/var is distinct (a fresh model's identity BatchNorms would hide key
    mix-ups), and on ``images`` the eval-mode activations stay O(1) through the depth. Compare
    logits on those images: involution is quadratic in its input, so in eval mode a network with
    random weights amplifies any distribution shift from one block to the next.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) / fan_in**0.5
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
        model.train()
        model(images)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
                module.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(official network in eval mode, its checkpoint in the mmcls format, the images its BN
    statistics were measured on)."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    net = randomise(OfficialRedNet((1, 2, 4, 1), num_classes=1000), images)
    path = tmp_path_factory.mktemp("official") / "rednet26_official.pth"
    state = net.state_dict()
    torch.save(
        {
            "meta": {"epoch": 130, "mmcls_version": "0.10.0", "CLASSES": ["a", "b"]},
            "state_dict": state,
        },
        path,
    )
    return net, path, images


def test_official_network_is_the_reference_layout(official):
    """The test's official network has RedNet-26's parameter count and REFERENCE.md's key names."""
    net, path, _ = official
    assert count_params(net) == count_params(create_model("rednet26"))
    keys = set(torch.load(path, weights_only=True)["state_dict"])
    for key in [
        "backbone.stem.0.conv.weight",
        "backbone.stem.0.bn.running_var",
        "backbone.stem.1.conv1.conv.weight",
        "backbone.stem.1.conv1.bn.weight",
        "backbone.stem.1.conv2.conv.weight",
        "backbone.stem.1.conv2.conv.bias",
        "backbone.stem.2.weight",
        "backbone.stem.4.conv.weight",
        "backbone.stem.4.bn.num_batches_tracked",
        "backbone.layer1.0.conv1.weight",
        "backbone.layer1.0.bn1.weight",
        "backbone.layer2.0.conv2.conv1.conv.weight",
        "backbone.layer2.0.conv2.conv1.bn.running_mean",
        "backbone.layer3.3.conv2.conv2.conv.weight",
        "backbone.layer4.0.conv2.conv2.conv.bias",
        "backbone.layer1.0.bn2.bias",
        "backbone.layer1.0.conv3.weight",
        "backbone.layer1.0.bn3.weight",
        "backbone.layer1.0.downsample.0.weight",
        "backbone.layer1.0.downsample.1.running_var",
        "head.fc.weight",
        "head.fc.bias",
    ]:
        assert key in keys, key


def test_official_checkpoint_gives_official_logits(official):
    net, path, x = official
    model = create_model("rednet26", checkpoint=path).eval()
    with torch.no_grad():
        expected, got = net(x), model(x)
    assert 0.1 < expected.std() < 100  # a well-conditioned, not a degenerate, comparison
    # float32: the eval-mode model folds each BN into its convolution, which rounds differently
    # from conv-then-BN (logits std ~0.6; differences up to ~2e-4 through 26 layers)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=5e-4)
    assert model.stem[0][1].num_batches_tracked.item() == 7  # buffers came along too
    # float64: the same computation to rounding, so the mapping of every weight is exact
    with torch.no_grad():
        expected64 = copy.deepcopy(net).double()(x.double())
        got64 = copy.deepcopy(model).double()(x.double())
    torch.testing.assert_close(got64, expected64, rtol=1e-9, atol=1e-9)


def test_official_checkpoint_into_backbone(official):
    net, path, x = official
    backbone = create_model(
        "rednet26", checkpoint=path, features_only=True, out_indices=(3,)
    ).eval()
    with torch.no_grad():
        (got,) = backbone(x)
        expected = net.backbone.maxpool(net.backbone.stem(x))
        for index in range(4):
            expected = getattr(net.backbone, f"layer{index + 1}")(expected)
    scale = expected.abs().max().item()
    assert scale > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * scale)


def test_official_names_cover_every_key():
    model = create_model("rednet26")
    names = official_names(model)
    assert names["stem.0.0.weight"] == "stem.0.conv.weight"
    assert names["stem.1.span.bias"] == "stem.1.conv2.conv.bias"
    assert names["layer2.1.conv2.reduce_bn.running_var"] == "layer2.1.conv2.conv1.bn.running_var"
    assert names["fc.weight"] == "fc.weight"
    assert len(set(names.values())) == len(names)


def test_mismatch_lists_unexpected_missing_and_shapes(official, tmp_path):
    _, path, _ = official
    state = dict(torch.load(path, weights_only=True)["state_dict"])
    del state["backbone.layer3.2.conv2.conv1.conv.weight"]
    state["backbone.layer9.0.conv1.weight"] = torch.zeros(1)
    state["backbone.layer2.0.conv2.conv2.conv.bias"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("rednet26", checkpoint=bad)
    message = str(info.value)
    assert "unexpected keys" in message and "layer9.0.conv1.weight" in message
    assert (
        "missing keys" in message
        and "layer3.2.conv2.conv1.conv.weight (model: layer3.2.conv2.reduce.weight)" in message
    )
    assert (
        "layer2.0.conv2.conv2.conv.bias (model: layer2.0.conv2.span.bias): (3,) vs (392,)"
        in message
    )
    assert info.value.unexpected == ["layer9.0.conv1.weight"]
    assert info.value.missing == [
        "layer3.2.conv2.conv1.conv.weight (model: layer3.2.conv2.reduce.weight)"
    ]
    # wrong number of classes: the head is reported, nothing is loaded
    with pytest.raises(CheckpointMismatchError, match=r"fc.weight: \(1000, 2048\) vs \(10, 2048\)"):
        create_model("rednet26", num_classes=10, checkpoint=path)
    # a different depth
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        create_model("rednet50", checkpoint=path)


def test_checkpoint_is_loaded_weights_only(tmp_path):
    """Pickled objects other than tensors/containers are refused (torch.load(weights_only=True))."""
    path = tmp_path / "unsafe.pth"
    state = create_model("rednet26").state_dict()
    torch.save({"state_dict": state, "extra": pickle.UnpicklingError("object")}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        create_model("rednet26", checkpoint=path)


def test_native_state_dict_and_wrappers(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12)
    source = randomise(
        create_model("rednet26", num_classes=10, stem="small", base_width=16, stem_width=16), x, 1
    )
    with torch.no_grad():
        expected = source(x)
    for index, state in enumerate(
        [
            source.state_dict(),
            {f"module.{k}": v for k, v in source.state_dict().items()},  # DDP
            {f"_orig_mod.{k}": v for k, v in source.state_dict().items()},  # torch.compile
        ]
    ):
        path = tmp_path / f"native{index}.pth"
        torch.save(state, path)
        model = create_model(
            "rednet26", num_classes=10, stem="small", base_width=16, stem_width=16, checkpoint=path
        )
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), expected)


def test_lightning_checkpoint(tmp_path):
    """A real Lightning checkpoint of a module that keeps the network as ``self.model``."""
    import lightning as L

    arguments = {
        "name": "sasa26",
        "num_classes": 5,
        "stem": "small",
        "base_width": 16,
        "stem_width": 16,
    }

    x = torch.randn(2, 3, 8, 8)

    class Module(L.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.save_hyperparameters()
            self.model = randomise(create_model(**model), x, 2)
            self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

        def forward(self, x):
            return self.model(x)

    module = Module(arguments)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=0,
    )
    trainer.strategy.connect(module)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    model = create_model(**arguments, checkpoint=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), module.model.eval()(x))


def test_torchvision_resnet50_weights(tmp_path):
    import torchvision

    x = torch.randn(2, 3, 64, 64)
    source = randomise(torchvision.models.resnet50(num_classes=10), x, 4)
    state = source.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # old files
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = create_model("resnet50", num_classes=10, checkpoint=path).eval()
    with torch.no_grad():
        # float32 within the rounding of folded BNs over 50 layers; float64 to rounding
        torch.testing.assert_close(model(x), source(x), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(
            copy.deepcopy(model).double()(x.double()),
            copy.deepcopy(source).double()(x.double()),
            rtol=1e-9,
            atol=1e-9,
        )


def test_load_checkpoint_non_strict_reports_nothing_but_loads_the_fitting_part(official):
    _, path, _ = official
    model = create_model("rednet26", num_classes=10)
    before = model.fc.weight.clone()
    load_checkpoint(model, path, strict=False)
    official_state = torch.load(path, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        model.stem[0][0].weight, official_state["backbone.stem.0.conv.weight"]
    )
    torch.testing.assert_close(model.fc.weight, before)  # the 1000-class head did not fit
