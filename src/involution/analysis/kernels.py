"""What a trained network computes: the involution kernels it generates, the filters a
convolution learned.

- ``load_involution_model`` / ``load_convolution_model``: a checkpoint of ``involution.train`` ->
  the network in eval mode, or one line saying why the checkpoint does not fit.
- ``capture_kernels``: forward hooks on every ``Involution2d`` record the per-pixel kernels
  ``[N, G, K, K, Ho, Wo]`` it generated for a batch of images (plus where they sit in the image).
- ``kernel_variation``: how much a layer's kernels change across space and across groups (the
  paper's point: spatial-specific, channel-agnostic — a convolution is the opposite).
- ``conv_filters``: the KxK weights of a convolution model's spatial operators.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch import nn

from involution.analysis.errors import AnalysisError, CheckpointError, first_line
from involution.analysis.locate import find_checkpoint
from involution.layers import Involution2d

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# checkpoints


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, with where it came from."""

    network: nn.Module
    checkpoint: Path
    hparams: dict[str, Any]

    @property
    def operator(self) -> str:
        return str(self.hparams["model"].get("operator", {}).get("name", "?"))

    @property
    def name(self) -> str:
        return str(self.hparams["model"].get("name", "?"))

    @property
    def run_dir(self) -> Path:
        """``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
        return self.checkpoint.parent.parent


def load_classifier(checkpoint: PathLike) -> LoadedModel:
    """A Lightning checkpoint of ``involution.train`` -> its network (CPU, eval mode).

    The model is rebuilt from ``hyper_parameters["model"]`` (``create_model`` arguments), so no
    Hydra is needed. Raises ``CheckpointError`` (one line) for a missing or unreadable file, a
    checkpoint from elsewhere, or weights that do not fit the model they describe.
    """
    from involution.tasks import ImageClassifier

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        hint = " (a run directory: give <run>/checkpoints/best-*.ckpt)" if path.is_dir() else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the same message
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({first_line(error)})"
        ) from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    model_args = hparams.get("model") if isinstance(hparams, dict) else None
    if not isinstance(model_args, dict) or "name" not in model_args or "state_dict" not in state:
        raise CheckpointError(
            f"{path} is not a checkpoint of involution.train (no hyper_parameters['model'] / "
            "state_dict): give <run dir>/checkpoints/best-*.ckpt or last.ckpt"
        )
    try:
        module = ImageClassifier(**hparams)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot rebuild {model_args.get('name')!r} ({first_line(error)})"
        ) from None
    expected = {k: v.shape for k, v in module.state_dict().items() if k.startswith("model.")}
    given = {k: v.shape for k, v in state["state_dict"].items() if k.startswith("model.")}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [k for k in expected if k in given and tuple(given[k]) != tuple(expected[k])]
    if missing or unexpected or mismatched:
        example = (mismatched or missing or unexpected)[0]
        raise CheckpointError(
            f"{path}: its weights do not fit the {model_args.get('name')} its hyperparameters "
            f"describe ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} of another shape, "
            f"e.g. {example})"
        )
    module.load_state_dict(state["state_dict"], strict=False)
    network = module.model.eval()
    return LoadedModel(network, path, dict(hparams))


def _describe(model: LoadedModel) -> str:
    return f"{model.checkpoint} holds a {model.name} with {model.operator} as spatial operator"


def load_involution_model(checkpoint: PathLike | None = None) -> LoadedModel:
    """A checkpoint whose network has involution layers (``None``: the best finished single
    involution run, ``find_checkpoint``)."""
    path = find_checkpoint("involution") if checkpoint is None else checkpoint
    model = load_classifier(path)
    if not involution_layers(model.network):
        raise CheckpointError(
            f"{_describe(model)}, not involution: it generates no kernels to show; give the "
            "checkpoint of an involution (RedNet) run"
        )
    return model


def load_convolution_model(checkpoint: PathLike | None = None) -> LoadedModel:
    """A checkpoint whose blocks' spatial operators are KxK convolutions (``None``: the best
    finished single run)."""
    path = find_checkpoint("convolution") if checkpoint is None else checkpoint
    model = load_classifier(path)
    if not spatial_convolutions(model.network):
        raise CheckpointError(
            f"{_describe(model)}, not convolution: it has no learned KxK filters in its blocks; "
            "give the checkpoint of a convolution (ResNet) run"
        )
    return model


# --------------------------------------------------------------------------------------------
# layers


def involution_layers(network: nn.Module) -> dict[str, Involution2d]:
    """``{module name: Involution2d}`` in forward order (e.g. ``layer1.0.conv2``)."""
    return {name: m for name, m in network.named_modules() if isinstance(m, Involution2d)}


def spatial_convolutions(network: nn.Module) -> dict[str, nn.Conv2d]:
    """The bottleneck blocks' spatial convolutions (``*.conv2`` with a KxK kernel, K > 1)."""
    return {
        name: m
        for name, m in network.named_modules()
        if isinstance(m, nn.Conv2d) and name.endswith("conv2") and max(m.kernel_size) > 1
    }


def first_of_each_stage(names: Sequence[str]) -> list[str]:
    """One layer per top-level stage (``stem``, ``layer1``, ...): the first of each."""
    chosen: dict[str, str] = {}
    for name in names:
        chosen.setdefault(name.split(".")[0], name)
    return list(chosen.values())


def _select(available: Sequence[str], layers: Sequence[str] | None, what: str) -> list[str]:
    if layers is None:
        return first_of_each_stage(available)
    unknown = [name for name in layers if name not in available]
    if unknown:
        raise AnalysisError(f"no {what} named {unknown}; the model has {list(available)}")
    return list(layers)


def layer_table(network: nn.Module) -> pd.DataFrame:
    """The involution layers: kernel size, groups, channels, stride, dilation."""
    rows = [
        {
            "layer": name,
            "channels": m.channels,
            "kernel_size": m.kernel_size,
            "groups": m.groups,
            "group_channels": m.channels // m.groups,
            "stride": m.stride,
            "dilation": m.dilation,
        }
        for name, m in involution_layers(network).items()
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# images


def sample_images(
    model: LoadedModel, count: int = 4, split: str = "test"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (and labels) of the data set the checkpoint's run trained on.

    The data module comes from the run's ``.hydra/config.yaml`` (``data`` group); a checkpoint
    outside a run directory falls back to the embedded digits.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config_file = model.run_dir / ".hydra" / "config.yaml"
    try:
        if config_file.is_file():
            config = OmegaConf.load(config_file)
            data_cfg = OmegaConf.to_container(config.data, resolve=True)
            datamodule = instantiate(data_cfg)
        else:
            from involution.data import DigitsDataModule

            datamodule = DigitsDataModule()
        datamodule.setup(split)
    except Exception as error:
        raise AnalysisError(f"cannot load the run's data set ({first_line(error)})") from None
    dataset = {
        "train": datamodule.train_set,
        "val": datamodule.val_set,
        "test": datamodule.test_set,
    }.get(split)
    if dataset is None:
        raise AnalysisError(f"split must be train, val or test, got {split!r}")
    count = min(count, len(dataset))
    images, labels = zip(*(dataset[i] for i in range(count)))
    images_t = torch.stack(list(images))
    expected = model.hparams["model"].get("in_channels", 3)
    if images_t.shape[1] != expected:
        raise AnalysisError(
            f"the model takes {expected}-channel images, "
            f"the data set gives {images_t.shape[1]} channels"
        )
    return images_t, torch.as_tensor(labels)


@torch.no_grad()
def predict(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """Predicted class per image."""
    return model.network(images).argmax(dim=1)


def choose_pixels(image: torch.Tensor, count: int = 3) -> list[tuple[int, int]]:
    """(row, col) pixels worth looking at: the brightest point, the centre, and the darkest point
    of the central half (for digits: a stroke, the middle, the background inside a loop)."""
    plane = image.float().mean(dim=0) if image.dim() == 3 else image.float()
    h, w = plane.shape
    bright = divmod(int(plane.argmax()), w)
    middle = plane[h // 4 : h - h // 4, w // 4 : w - w // 4]
    row, col = divmod(int(middle.argmin()), middle.shape[1])
    dark = (row + h // 4, col + w // 4)
    centre = (h // 2, w // 2)
    chosen: list[tuple[int, int]] = []
    for pixel in (bright, centre, dark, (h // 4, w // 4), (3 * h // 4, 3 * w // 4)):
        if pixel not in chosen:
            chosen.append(pixel)
    return chosen[:count]


# --------------------------------------------------------------------------------------------
# kernels


@dataclass
class LayerKernels:
    """Kernels one involution layer generated for a batch: ``kernel`` is [N, G, K, K, Ho, Wo]."""

    name: str
    kernel: torch.Tensor
    input_size: tuple[int, int]
    image_size: tuple[int, int]
    stride: int
    dilation: int

    @property
    def groups(self) -> int:
        return self.kernel.shape[1]

    @property
    def kernel_size(self) -> int:
        return self.kernel.shape[2]

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(self.kernel.shape[-2:])  # type: ignore[return-value]

    def scale(self) -> tuple[float, float]:
        """Image pixels per pixel of the layer's input."""
        return self.image_size[0] / self.input_size[0], self.image_size[1] / self.input_size[1]

    def position(self, pixel: tuple[int, int]) -> tuple[int, int]:
        """The output position (i, j) whose window is centred nearest the image pixel (row, col)."""
        sy, sx = self.scale()
        ho, wo = self.output_size
        i = min(ho - 1, max(0, int(pixel[0] / (sy * self.stride))))
        j = min(wo - 1, max(0, int(pixel[1] / (sx * self.stride))))
        return i, j

    def at(self, pixel: tuple[int, int], sample: int = 0, group: int = 0) -> torch.Tensor:
        """The KxK kernel applied at the image pixel (row, col)."""
        i, j = self.position(pixel)
        return self.kernel[sample, group, :, :, i, j]

    def window_extent(self, pixel: tuple[int, int]) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) of the kernel's window in image coordinates (imshow
        extent)."""
        sy, sx = self.scale()
        i, j = self.position(pixel)
        k, d = self.kernel_size, self.dilation
        pad = d * (k - 1) // 2
        top = (i * self.stride - pad) * sy - 0.5
        left = (j * self.stride - pad) * sx - 0.5
        return left, left + k * d * sx, top + k * d * sy, top


@torch.no_grad()
def capture_kernels(
    model: LoadedModel | nn.Module, images: torch.Tensor, layers: Sequence[str] | None = None
) -> dict[str, LayerKernels]:
    """Run ``images`` [N, C, H, W] through the network; return the kernels of ``layers``
    (default: the first involution layer of each stage) as ``{name: LayerKernels}``.

    A forward hook on each chosen ``Involution2d`` regenerates the kernel from the input it was
    given (``generate_kernel``): the exact kernels the aggregation applied, whatever backend ran.
    """
    network = model.network if isinstance(model, LoadedModel) else model
    available = involution_layers(network)
    if not available:
        raise AnalysisError(f"{type(network).__name__} has no involution layers")
    names = _select(list(available), layers, "involution layer")
    image_size = (images.shape[-2], images.shape[-1])
    captured: dict[str, LayerKernels] = {}

    def hook(name: str):
        def record(
            module: Involution2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            x = inputs[0]
            captured[name] = LayerKernels(
                name=name,
                kernel=module.generate_kernel(x).detach().float().cpu(),
                input_size=(x.shape[-2], x.shape[-1]),
                image_size=image_size,
                stride=module.stride,
                dilation=module.dilation,
            )

        return record

    handles = [available[name].register_forward_hook(hook(name)) for name in names]
    was_training = network.training
    try:
        network.eval()
        device = next(network.parameters()).device
        network(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return {name: captured[name] for name in names}


@dataclass
class KernelVariation:
    """How a layer's kernels vary. ``spatial_map`` [N, Ho, Wo]: distance of each pixel's kernel
    from the layer's mean kernel, relative to the mean kernel norm (averaged over groups);
    ``across_space`` and ``across_groups``: the same relative spread over pixels / over groups."""

    spatial_map: torch.Tensor
    across_space: float
    across_groups: float


def kernel_variation(kernel: torch.Tensor) -> KernelVariation:
    """Spread of per-pixel kernels [N, G, K, K, Ho, Wo] across space and across groups."""
    if kernel.dim() != 6:
        raise ValueError(f"kernel must be [N, G, K, K, Ho, Wo], got shape {tuple(kernel.shape)}")
    flat = kernel.float().flatten(2, 3)  # N, G, K*K, Ho, Wo
    norm = flat.norm(dim=2).mean().clamp_min(1e-12)
    spatial = (flat - flat.mean(dim=(-2, -1), keepdim=True)).norm(dim=2)  # N, G, Ho, Wo
    groups = (flat - flat.mean(dim=1, keepdim=True)).norm(dim=2)  # N, G, Ho, Wo
    spatial_map = spatial.mean(dim=1) / norm
    across_groups = float(groups.mean() / norm) if flat.shape[1] > 1 else 0.0
    return KernelVariation(spatial_map, float(spatial.mean() / norm), across_groups)


def filter_variation(weight: torch.Tensor) -> float:
    """Relative spread of a convolution's filters [Cout, Cin, K, K] across output channels."""
    flat = weight.detach().float().flatten(1)
    return float(
        (flat - flat.mean(dim=0)).norm(dim=1).mean() / flat.norm(dim=1).mean().clamp_min(1e-12)
    )


def variation_table(
    captures: dict[str, LayerKernels], convolution: LoadedModel | nn.Module | None = None
) -> pd.DataFrame:
    """Per layer: how the involution kernels vary across space and groups; next to it, how the
    convolution model's filters at the same layer vary across output channels (across space they
    cannot: a convolution shares one filter bank over all pixels)."""
    convs: dict[str, nn.Conv2d] = {}
    if convolution is not None:
        network = convolution.network if isinstance(convolution, LoadedModel) else convolution
        convs = spatial_convolutions(network)
    rows = []
    for name, layer in captures.items():
        variation = kernel_variation(layer.kernel)
        row = {
            "layer": name,
            "kernel": f"{layer.kernel_size}x{layer.kernel_size}",
            "groups": layer.groups,
            "output": f"{layer.output_size[0]}x{layer.output_size[1]}",
            "involution across space": variation.across_space,
            "involution across groups": variation.across_groups,
        }
        if convolution is not None:
            conv = convs.get(name)
            row["convolution across space"] = 0.0 if conv is not None else float("nan")
            row["convolution across channels"] = (
                filter_variation(conv.weight) if conv is not None else float("nan")
            )
        rows.append(row)
    return pd.DataFrame(rows)


def conv_filters(
    model: LoadedModel | nn.Module, layers: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """``{layer: weight [Cout, Cin/groups, K, K]}`` of the spatial convolutions (default: the first
    of each stage)."""
    network = model.network if isinstance(model, LoadedModel) else model
    available = spatial_convolutions(network)
    if not available:
        raise AnalysisError(f"{type(network).__name__} has no KxK spatial convolutions")
    names = _select(list(available), layers, "spatial convolution")
    return {name: available[name].weight.detach().float().cpu() for name in names}


def describe(model: LoadedModel) -> dict[str, Any]:
    """A one-row summary of a loaded checkpoint, for display."""
    run_config = model.run_dir / ".hydra" / "config.yaml"
    data = None
    if run_config.is_file():
        try:
            data = (yaml.safe_load(run_config.read_text()) or {}).get("data", {}).get("_target_")
        except yaml.YAMLError:
            data = None
    return {
        "checkpoint": str(model.checkpoint),
        "model": model.name,
        "operator": model.operator,
        "params": sum(p.numel() for p in model.network.parameters()),
        "data": data,
    }
