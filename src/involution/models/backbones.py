"""Backbones of detectors and segmenters: a zoo network's stage maps (``features_only``),
initialised from a classification checkpoint, with the official configs' ``frozen_stages`` and
``norm_eval``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from involution.models.checkpoint import (
    CheckpointMismatchError,
    extract_state_dict,
    load_checkpoint,
    read_checkpoint,
)
from involution.models.features import BottleneckFeatures, check_out_indices
from involution.models.registry import create_model

__all__ = ["FrozenStagesBackbone", "create_backbone", "load_backbone_checkpoint"]


def _not_in_backbone(key: str, num_stages: int) -> bool:
    """A classifier's key the backbone does not hold: the head, or a stage it dropped."""
    if key.startswith("fc."):
        return True
    return any(key.startswith(f"layer{i}.") for i in range(num_stages + 1, 5))


def load_backbone_checkpoint(
    body: BottleneckFeatures, checkpoint: str | os.PathLike | Mapping[str, Any]
) -> None:
    """Load a classification checkpoint into a ``features_only`` backbone, in place.

    Whatever :func:`involution.models.load_checkpoint` reads for a classifier is read here (an
    official mmcls RedNet file with ``backbone.*`` keys, a torchvision ResNet, a native state dict
    or one of our Lightning checkpoints), less the classifier head (``fc``/``head.fc``: any number
    of classes) and the stages the backbone dropped. Everything else must fit.

    Raises:
        CheckpointMismatchError: naming the file and every unexpected, missing or mismatched key.
        CheckpointFileError, FileNotFoundError: as ``load_checkpoint``.
    """
    is_path = isinstance(checkpoint, str | os.PathLike)
    source = repr(os.fspath(checkpoint)) if is_path else "(object)"
    state = extract_state_dict(read_checkpoint(checkpoint) if is_path else checkpoint)
    kept = {k: v for k, v in state.items() if not _not_in_backbone(k, body.num_stages)}
    try:
        load_checkpoint(body, kept)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(
            source, error.missing, error.unexpected, error.mismatched
        ) from None


def _check_frozen_stages(frozen_stages: int, num_stages: int) -> None:
    if (
        not isinstance(frozen_stages, int)
        or isinstance(frozen_stages, bool)
        or not -1 <= frozen_stages <= num_stages
    ):
        raise ValueError(
            f"frozen_stages must be an int in -1..{num_stages} (-1: none, 0: the stem, "
            f"k: the stem and layer1..layer{{k}}), got {frozen_stages!r}"
        )


class FrozenStagesBackbone(nn.Module):
    """A ``BottleneckFeatures`` (``body``) trained as the official mmdet/mmseg backbones are.

    - ``frozen_stages`` = k >= 0: the stem and layer1..layer{k} get no gradient
      (``requires_grad=False``) and stay in eval mode (their BN statistics never move);
      -1 freezes nothing. The official detection configs use 1.
    - ``norm_eval``: every BatchNorm of the backbone (the involutions' kernel-generation BNs
      included) stays in eval mode while the model trains, so its running statistics are those
      of the checkpoint; its affine parameters still learn (unless frozen).

    ``forward`` returns the body's stage maps (a list).
    """

    def __init__(self, body: BottleneckFeatures, frozen_stages: int = -1, norm_eval: bool = False):
        super().__init__()
        _check_frozen_stages(frozen_stages, body.num_stages)
        if not isinstance(norm_eval, bool):
            raise ValueError(f"norm_eval must be true or false, got {norm_eval!r}")
        self.body = body
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.feature_info = body.feature_info
        for module in self.frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.body.stem] + [
            getattr(self.body, f"layer{i}") for i in range(1, self.frozen_stages + 1)
        ]

    def train(self, mode: bool = True) -> FrozenStagesBackbone:
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.body.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    def extra_repr(self) -> str:
        return f"frozen_stages={self.frozen_stages}, norm_eval={self.norm_eval}"


def create_backbone(
    name: str,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    **overrides: Any,
) -> FrozenStagesBackbone:
    """A zoo network's stage maps ``out_indices`` as a detection/segmentation backbone.

    Args:
        name: a registered model (``list_models()``: rednet26..152, resnet*, sasa*).
        out_indices: the stages (0..3 = layer1..layer4, strides 4..32) returned.
        checkpoint: a classification checkpoint (see :func:`load_backbone_checkpoint`).
        frozen_stages, norm_eval: see :class:`FrozenStagesBackbone`.
        **overrides: ``create_model``'s (``operator``, ``stem``, ``base_width``, ``stem_width``,
            ``memory_format``, ...).

    Raises:
        ValueError: an unknown name or key, bad ``out_indices`` or ``frozen_stages`` (one line
            naming it), before anything is built or read.
    """
    if "num_classes" in overrides or "features_only" in overrides:
        key = "num_classes" if "num_classes" in overrides else "features_only"
        raise ValueError(f"backbone_args.{key} is not a backbone setting (the head sets it)")
    _check_frozen_stages(frozen_stages, max(check_out_indices(out_indices)) + 1)
    body = create_model(name, features_only=True, out_indices=out_indices, **overrides)
    if checkpoint is not None:
        load_backbone_checkpoint(body, checkpoint)
    return FrozenStagesBackbone(body, frozen_stages, norm_eval)
