"""timm-style registry: ``create_model("rednet50", num_classes=1000, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from involution.models.network import STAGE_DEPTHS, BottleneckNet

# Family -> (default spatial operator, default stem). Overrides replace either.
FAMILIES: dict[str, tuple[dict[str, Any], str]] = {
    "rednet": (
        {"name": "involution", "kernel_size": 7, "group_channels": 16, "reduction_ratio": 4},
        "rednet",
    ),
    "resnet": ({"name": "convolution", "kernel_size": 3}, "resnet"),
    # SASA (Ramachandran et al., 2019): 7x7 windows, 8 heads, convolutional (ResNet) stem.
    "sasa": ({"name": "attention", "kernel_size": 7, "heads": 8}, "resnet"),
}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    _REGISTRY[name] = builder


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def family_operator(family: str, operator: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator a family member gets: the family default, updated by ``operator``.

    An override without ``name`` (or with the family's own) is merged key by key onto the default
    (``{"kernel_size": 5}`` keeps group_channels/reduction_ratio); another ``name`` replaces it.
    """
    default = dict(FAMILIES[family][0])
    if operator is None:
        return default
    operator = dict(operator)
    if operator.get("name", default["name"]) == default["name"]:
        return {**default, **operator}
    return operator


def _family_builder(family: str, depth: int) -> Callable[..., nn.Module]:
    default_stem = FAMILIES[family][1]

    def build(
        num_classes: int = 1000,
        operator: Mapping[str, Any] | None = None,
        stem: str | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        return BottleneckNet(
            depth=depth,
            operator=family_operator(family, operator),
            stem=stem or default_stem,
            num_classes=num_classes,
            **kwargs,
        )

    return build


for _family in FAMILIES:
    for _depth in STAGE_DEPTHS:
        register_model(f"{_family}{_depth}", _family_builder(_family, _depth))


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    checkpoint: Any = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model (``list_models()``), timm-style.

    Args:
        name: a registered name, ``<family><depth>``: family rednet (involution), resnet (3x3
            convolution) or sasa (local self-attention), depth 26, 38, 50, 101 or 152.
        num_classes: outputs of the classifier head.
        features_only: return a ``BottleneckFeatures`` whose forward gives the stage maps
            ``out_indices`` and whose ``feature_info`` reports their channels and strides.
        out_indices: the stages (0..3) a ``features_only`` model returns.
        checkpoint: a path (official mmcls RedNet, torchvision ResNet, a native state dict or a
            Lightning checkpoint; see :func:`load_checkpoint`), loaded with ``weights_only=True``
            into the full network before ``features_only`` strips the head.
        **overrides: ``operator`` (a dict: ``name`` + hyperparameters, merged onto the family's
            default when the name agrees, replacing it otherwise), ``stem`` (rednet / resnet /
            small), ``base_width``, ``stem_width``, ``in_channels``, ``zero_init_residual``,
            ``memory_format``.

    Returns:
        The network (a ``BottleneckNet``), or its ``BottleneckFeatures`` backbone.

    Raises:
        ValueError: an unknown name (the message lists the registered ones), bad
            ``out_indices``, or a hyperparameter a stage cannot take (naming the stage and key).
        CheckpointMismatchError: ``checkpoint`` does not fit the network (every bad key listed).
        CheckpointFileError: ``checkpoint`` is not a readable checkpoint file.
        FileNotFoundError: ``checkpoint`` does not exist.

    Example:
        >>> import torch
        >>> model = create_model("rednet26", num_classes=10, stem="small", base_width=16,
        ...                      stem_width=16, operator={"kernel_size": 5})
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    if features_only:  # validate before building anything
        from involution.models.features import check_out_indices

        check_out_indices(out_indices)
    model = _REGISTRY[name](num_classes=num_classes, **overrides)
    if checkpoint is not None:
        from involution.models.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    if features_only:
        from involution.models.features import BottleneckFeatures

        model = BottleneckFeatures(model, tuple(out_indices))
    return model
