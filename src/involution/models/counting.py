"""Parameter and multiply-add counts (``torch.utils.flop_counter``, involution op included)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from involution.layers import Involution2d, LocalSelfAttention2d


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _op_name(op: object) -> str:
    """'namespace::name' of an OpOverloadPacket (e.g. 'aten::convolution',
    'involution::involution2d')."""
    name = getattr(op, "_qualified_op_name", None)
    return name if isinstance(name, str) else str(op)


def _is_aggregation(op_name: str) -> bool:
    """The involution aggregation op itself (not its gradient ops, which attention uses for
    logits)."""
    return op_name == "involution::involution2d"


def _counted_forward(model: nn.Module, x: torch.Tensor) -> object:
    """The forward whose multiply-adds are counted: the model's own, except for torchvision's
    two-stage detectors, whose RoI heads run on a fixed number of RoIs
    (``involution.models.detection.fixed_roi_forward``), so that their count does not depend
    on what the random weights happen to detect."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    if isinstance(model, GeneralizedRCNN):
        from involution.models.detection import fixed_roi_forward

        return fixed_roi_forward(model, x)
    return model(x)


def mac_breakdown(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    device: torch.device | str | None = None,
) -> dict[str, int]:
    """Multiply-adds per op ('aten::convolution', 'involution::…', ...) of one forward pass."""
    size = tuple(input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4:
        raise ValueError(f"input_size must be (C, H, W) or (N, C, H, W), got {tuple(input_size)!r}")
    if device is None:
        tensor = next(iter(model.parameters()), None)
        device = tensor.device if tensor is not None else "cpu"
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            _counted_forward(model, torch.zeros(size, device=device))
    finally:
        model.train(was_training)
    flops = counter.get_flop_counts().get("Global", {})
    return {_op_name(op): int(count) // 2 for op, count in flops.items()}


def macs_by_module(
    model: nn.Module, input_size: Sequence[int] = (3, 224, 224), depth: int = 2
) -> dict[str, int]:
    """Multiply-adds of one forward pass per submodule, down to ``depth`` levels, by the names of
    ``model.named_modules()`` (``""``: the whole model; ``layer1``, ``layer1.0``, ...), counted as
    :func:`count_macs` counts them (involution ops included)."""
    size = tuple(input_size)
    if len(size) == 3:
        size = (1, *size)
    tensor = next(iter(model.parameters()), None)
    device = tensor.device if tensor is not None else "cpu"
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=depth + 1)
    try:
        with torch.no_grad(), counter:
            _counted_forward(model, torch.zeros(size, device=device))
    finally:
        model.train(was_training)
    root = type(model).__name__
    out = {}
    for name, counts in counter.get_flop_counts().items():
        if name == root or name.startswith(f"{root}."):
            out[name[len(root) + 1 :]] = sum(int(n) for n in counts.values()) // 2
    return out


def count_macs(
    model: nn.Module,
    input_size: Sequence[int] = (3, 224, 224),
    device: torch.device | str | None = None,
) -> int:
    """Multiply-adds (1 MAC = 2 FLOPs of ``torch.utils.flop_counter``) of one forward pass.

    Counted: convolutions, linear layers and the registered involution ops (aggregation and
    attention logits); not normalisation, activations or pooling, which is why RedNet counts land
    2-3% under the official numbers. The model runs in eval mode under ``no_grad`` (its mode is
    restored afterwards). A Faster/Mask R-CNN is counted with ``rpn_post_nms_top_n_test`` RoIs in
    its box head and ``box_detections_per_img`` in its mask head, as mmdet's ``get_flops`` does.

    Args:
        model: any ``nn.Module``; one built under ``torch.device("meta")`` is counted without
            memory or arithmetic.
        input_size: (C, H, W) (batch 1) or (N, C, H, W).
        device: where the input is made (default: where the model's parameters are).

    Returns:
        The number of multiply-adds.

    Raises:
        ValueError: ``input_size`` is neither (C, H, W) nor (N, C, H, W).
        RuntimeError: the model has involution or attention layers but no involution
            multiply-adds were counted (the op's FLOP formula is not registered, so the count
            would silently be too low).

    Example:
        >>> import torch
        >>> from involution.models import create_model
        >>> with torch.device("meta"):
        ...     model = create_model("rednet50")
        >>> round(count_macs(model, (3, 224, 224)) / 1e9, 2)
        2.65
    """
    breakdown = mac_breakdown(model, input_size, device)
    has_aggregation = any(
        isinstance(m, Involution2d | LocalSelfAttention2d) for m in model.modules()
    )
    if has_aggregation and not any(
        _is_aggregation(name) and n > 0 for name, n in breakdown.items()
    ):
        raise RuntimeError(
            "count_macs: the model has involution layers but torch.utils.flop_counter counted no "
            f"involution multiply-adds (ops counted: {sorted(breakdown)}); the involution op has "
            "no registered FLOP formula, so the count would omit the involution aggregation"
        )
    return sum(breakdown.values())
