"""Checkpoint import: official mmcls RedNet checkpoints, torchvision/mmcls ResNets, and our own.

Accepted layouts (all loaded with ``torch.load(..., weights_only=True)``):

- official mmcls (d-li14/involution): ``{"state_dict": {"backbone.stem.0.conv.weight": ...,
  "backbone.layer1.0.conv2.conv1.conv.weight": ..., "head.fc.weight": ...}, "meta": ...}``.
  The official involution names its kernel-generation modules ``conv1.conv`` / ``conv1.bn`` /
  ``conv2.conv``; ours are ``reduce`` / ``reduce_bn`` / ``span``; its stem ConvModules are
  ``stem.{0,4}.conv/.bn`` where ours are ``stem.{0,4}.0/.1``. ``official_names`` holds the mapping;
- torchvision ResNet state dicts (and mmcls ResNet ``backbone.conv1`` / ``backbone.bn1``):
  ``conv1``/``bn1`` are our ``stem.0``/``stem.1``, everything else matches;
- native: a plain ``model.state_dict()``, or this project's Lightning checkpoints
  (``{"state_dict": {"model.<key>": ...}, "pytorch-lightning_version": ...}``; only the ``model.``
  entries are network weights, the rest belong to the LightningModule and are ignored).

Wrappers are peeled off first: ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``).
Anything left that does not fit is an error listing unexpected, missing and mismatched keys.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from involution.layers import Involution2d

PathLike = str | os.PathLike

_INVOLUTION_NAMES = {"reduce": "conv1.conv", "reduce_bn": "conv1.bn", "span": "conv2.conv"}
_CONV_MODULE_NAMES = {"0": "conv", "1": "bn", "2": "activate"}
_TORCHVISION_STEM = {"0": "conv1", "1": "bn1"}


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model; ``missing``, ``unexpected``, ``mismatched`` say
    how."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def listing(title: str, items: list[str]) -> str:
            shown = items[:50]
            more = (
                f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
            )
            return f"  {title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in shown) + more

        parts = [f"checkpoint {source} does not fit the model:"]
        if unexpected:
            parts.append(
                listing("unexpected keys (in the checkpoint, not in the model)", unexpected)
            )
        if missing:
            parts.append(listing("missing keys (in the model, not in the checkpoint)", missing))
        if mismatched:
            parts.append(
                listing(
                    "shape mismatches (key: checkpoint vs model)",
                    [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in mismatched],
                )
            )
        super().__init__("\n".join(parts))
        self.source = source

    def one_line(self, limit: int = 400) -> str:
        """The same report on one line (the first few keys of each kind), for command-line
        errors."""

        def few(items: list[str]) -> str:
            shown = ", ".join(items[:3])
            return shown + (f", ... (+{len(items) - 3})" if len(items) > 3 else "")

        parts = []
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({few(self.unexpected)})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({few(self.missing)})")
        if self.mismatched:
            shapes = [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{len(shapes)} shape mismatches ({few(shapes)})")
        line = f"checkpoint {self.source} is of another architecture: " + "; ".join(parts)
        return line if len(line) <= limit else line[: limit - 3] + "..."


class CheckpointFileError(RuntimeError):
    """The file is not a readable checkpoint; the message is one line naming it and why."""


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = b"\x80"  # the legacy format (and plain pickles) start with a protocol opcode


def read_checkpoint(source: PathLike, mmap: bool = False) -> Any:
    """``torch.load(source, weights_only=True)`` with one-line errors for the usual bad files:
    missing, not a torch.save file, truncated or corrupt, holding pickled code or objects."""
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist or is not a file")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_PROTO):
        raise CheckpointFileError(
            f"{path!r} is not a checkpoint (not a file written by torch.save)"
        )
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=mmap and head == _ZIP_MAGIC
        )
    except pickle.UnpicklingError as error:
        text = str(error)
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL [\w.]+", text)
        reason = (
            found.group(0) if found else (text.strip().splitlines() or ["unpickling failed"])[0]
        )
        reason = reason.replace("unsupported GLOBAL", "Unsupported global: GLOBAL")
        raise CheckpointFileError(
            f"checkpoint {path!r} cannot be loaded with weights_only=True: it holds pickled code "
            f"or objects other than tensors and plain containers ({reason}); "
            "re-save it with plain dicts"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointFileError(
            f"checkpoint {path!r} is truncated or corrupt ({first})"
        ) from None


def _is_conv_module(module: nn.Module) -> bool:
    """Our ``conv_bn_relu`` Sequential, the counterpart of mmcv's ConvModule."""
    return (
        isinstance(module, nn.Sequential)
        and len(module) == 3
        and isinstance(module[0], nn.Conv2d)
        and isinstance(module[1], nn.BatchNorm2d)
        and isinstance(module[2], nn.ReLU)
    )


def official_names(model: nn.Module) -> dict[str, str]:
    """Our state-dict key -> the official (mmcls backbone / torchvision) key, without ``backbone.``.

    Keys that are named alike in both (most of them) map to themselves.
    """
    stem_kind = getattr(model, "stem_kind", None)
    external: dict[str, str] = {"": ""}
    modules = dict(model.named_modules())
    for name in modules:
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        renamed = child
        if isinstance(parent, Involution2d):
            renamed = _INVOLUTION_NAMES.get(child, child)
        elif parent_name.startswith("stem") and _is_conv_module(parent):
            renamed = _CONV_MODULE_NAMES.get(child, child)
        elif parent_name == "stem" and stem_kind == "resnet" and child in _TORCHVISION_STEM:
            external[name] = _TORCHVISION_STEM[child]
            continue
        prefix = external[parent_name]
        external[name] = f"{prefix}.{renamed}" if prefix else renamed
    names = {}
    for key in model.state_dict():
        module_name, _, leaf = key.rpartition(".")
        prefix = external[module_name]
        names[key] = f"{prefix}.{leaf}" if prefix else leaf
    return names


def _load(source: PathLike) -> Any:
    return read_checkpoint(source)


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint object, keys normalised to our/official naming."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a mapping, got {type(checkpoint).__name__}")
    lightning = "pytorch-lightning_version" in checkpoint
    state = checkpoint
    for field in ("state_dict", "model"):
        if isinstance(checkpoint.get(field), Mapping):
            state = checkpoint[field]
            break
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(
            "checkpoint holds no tensors (expected a state dict or {'state_dict': ...})"
        )
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if lightning or all(k.startswith("model.") for k in state):
        # our LightningModule keeps the network as ``self.model``; other entries are not weights
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if any(k.startswith("backbone.") for k in state):  # mmcls: backbone.* + head.fc.*
        state = {
            k[len("backbone.") :]
            if k.startswith("backbone.")
            else (k[len("head.") :] if k.startswith("head.fc.") else k): v
            for k, v in state.items()
        }
    return state


def load_checkpoint(
    model: nn.Module, checkpoint: PathLike | Mapping[str, Any], strict: bool = True
) -> nn.Module:
    """Load ``checkpoint`` into ``model`` in place, whatever layout wrote it.

    Understood: an official mmcls RedNet file (``backbone.*`` + ``head.fc.*``, official module
    names), a torchvision ResNet state dict, a native state dict (also wrapped in ``state_dict``
    or ``model``, or prefixed ``module.`` / ``_orig_mod.``) and a Lightning checkpoint of
    ``involution.tasks.ImageClassifier``. BatchNorm's ``num_batches_tracked`` may be absent (older
    torchvision files).

    Args:
        model: the network to fill (from :func:`create_model`).
        checkpoint: a path (read with ``weights_only=True``) or an already-loaded object.
        strict: any unexpected, missing or shape-mismatched key raises before anything is copied;
            without it the fitting tensors are loaded and the rest is left as it is.

    Returns:
        ``model``, loaded.

    Raises:
        CheckpointMismatchError: with ``strict``, the checkpoint does not fit (every unexpected,
            missing and mismatched key listed; ``one_line()`` for a short message).
        CheckpointFileError: the file is not a checkpoint, is truncated, or needs pickled code.
        FileNotFoundError: the path does not exist.
        TypeError: the object is not a mapping.
        ValueError: the object holds no tensors.

    Example:
        >>> model = create_model("rednet50")  # doctest: +SKIP
        >>> load_checkpoint(model, "rednet50-1c9fc0a5.pth")  # doctest: +SKIP
    """
    source = (
        repr(os.fspath(checkpoint)) if isinstance(checkpoint, str | os.PathLike) else "(object)"
    )
    obj = _load(checkpoint) if isinstance(checkpoint, str | os.PathLike) else checkpoint
    state = extract_state_dict(obj)
    own = model.state_dict()
    to_official = official_names(model)
    from_official = {ext: ours for ours, ext in to_official.items()}
    translated: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        ours = key if key in own else from_official.get(key)
        if ours is None or ours in translated:
            unexpected.append(key)
        else:
            translated[ours], origin[ours] = value, key

    def both(ours: str, theirs: str) -> str:
        return ours if ours == theirs else f"{theirs} (model: {ours})"

    renamed = any(origin[k] != k for k in origin)  # official names: report missing keys in them
    missing = [
        both(k, to_official[k]) if renamed else k
        for k in own
        if k not in translated and not k.endswith("num_batches_tracked")
    ]
    mismatched = [
        (both(k, origin[k]), tuple(v.shape), tuple(own[k].shape))
        for k, v in translated.items()
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or mismatched):
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    fits = {k: v for k, v in translated.items() if tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    return model
