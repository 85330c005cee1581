"""Digit scenes: the embedded detection and segmentation data set (no download).

A scene is a square canvas (3 channels, dark noisy background) on which a few of scikit-learn's
real 8x8 digit scans are drawn at random positions and sizes, each tinted a random light colour,
with limited overlap: a digit's square covers at most ``max_overlap`` of a smaller one's. Each scene
has boxes (tight around each digit's visible pixels), instance masks (the digit's own pixels: its
bilinear upscale thresholded at ``mask_threshold``, less what later digits cover) and a semantic
mask (background 0, digit d -> d + 1). The scans are split, stratified, into disjoint train / val /
test pools, so no scan seen in training is evaluated on.

A scene is a function of (seed, split, index) alone; the training split draws fresh scenes every
epoch (``fresh_train_scenes``) from the item seed the resumable loader sets, so a run sees new
compositions of its training scans each epoch and a resumed run sees the same ones.

Defaults, chosen for a tiny detector and a tiny Semantic FPN on a 2-core CPU: 64 x 64 canvases
(a 2 x 2 map at stride 32, so a 5-level FPN still has every level), 1-4 digits of 12-32 px (the
stride-4 and stride-8 levels see every digit with a few cells across it; anchors of 16 and 32 px
cover them), 4,000 training scenes an epoch (about 10,000 digits), 500 each for val and test.

``python -m involution.data.scene_files write-coco DIR`` (or ``write-cityscapes DIR``) writes the
scenes in those formats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import to_dtype

from involution.data.base import SeededDataModule
from involution.data.detection import DetectionDataModule
from involution.data.digits import check_fractions, split_indices
from involution.data.segmentation import SegmentationDataModule

SPLITS = ("train", "val", "test")
DIGIT_NAMES = [str(digit) for digit in range(10)]
SCAN_SIZE = 8  # load_digits' scans are 8 x 8, values 0..16
_PLACEMENT_TRIES = 16  # positions tried per digit before it is left out


@dataclass(frozen=True)
class SceneConfig:
    """How a scene is drawn; every field is a key of the scene data modules (``data.<field>``)."""

    canvas_size: int = 64
    min_digits: int = 1
    max_digits: int = 4
    min_digit_size: int = 12
    max_digit_size: int = 32
    max_overlap: float = 0.2
    noise: float = 0.06
    mask_threshold: float = 0.3

    def __post_init__(self) -> None:
        for key in ("canvas_size", "min_digits", "max_digits", "min_digit_size", "max_digit_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{key} must be a positive int, got {value!r}")
        if self.min_digit_size < 4:
            raise ValueError(f"data.min_digit_size must be >= 4 pixels, got {self.min_digit_size}")
        for low, high in (("min_digits", "max_digits"), ("min_digit_size", "max_digit_size")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"data.{low}={getattr(self, low)} must be <= data.{high}={getattr(self, high)}"
                )
        if self.max_digit_size > self.canvas_size:
            raise ValueError(
                f"data.max_digit_size={self.max_digit_size} must be <= "
                f"data.canvas_size={self.canvas_size}"
            )
        for key, low, high in (
            ("max_overlap", 0.0, 1.0),
            ("noise", 0.0, 1.0),
            ("mask_threshold", 0.0, 1.0),
        ):
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not low <= value < high
            ):
                raise ValueError(f"data.{key} must be a number in [{low}, {high}), got {value!r}")


class Scene(NamedTuple):
    image: np.ndarray  # uint8 [H, W, 3]
    boxes: np.ndarray  # float32 [n, 4], XYXY pixel edges, tight around the visible mask
    digits: np.ndarray  # int64 [n], 0..9
    masks: np.ndarray  # bool [n, H, W], visible pixels of each digit
    semantic: np.ndarray  # uint8 [H, W], 0 background, d + 1 for digit d


@cache
def _upscale_matrix(size: int) -> np.ndarray:
    """[size, 8]: bilinear interpolation (half-pixel centres, edges clamped), so a scan upscales as
    ``matrix @ scan @ matrix.T``."""
    centres = np.clip((np.arange(size) + 0.5) * SCAN_SIZE / size - 0.5, 0, SCAN_SIZE - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, SCAN_SIZE - 1)
    weight = centres - low
    matrix = np.zeros((size, SCAN_SIZE))
    np.add.at(matrix, (np.arange(size), low), 1 - weight)
    np.add.at(matrix, (np.arange(size), high), weight)
    return matrix


def _covered(candidates: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """[T]: for each candidate square, the largest share of the smaller square's area it shares
    with any placed square."""
    if len(placed) == 0:
        return np.zeros(len(candidates))
    low = np.maximum(candidates[:, None, :2], placed[None, :, :2])
    high = np.minimum(candidates[:, None, 2:], placed[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area_c = (candidates[:, 2:] - candidates[:, :2]).prod(-1)
    area_p = (placed[:, 2:] - placed[:, :2]).prod(-1)
    return (inter / np.minimum(area_c[:, None], area_p[None, :])).max(1)


def compose_scene(
    rng: np.random.Generator, scans: np.ndarray, digits: np.ndarray, config: SceneConfig
) -> Scene:
    """One scene from the scans (float [M, 8, 8] in [0, 1]) and their digits [M]."""
    size = config.canvas_size
    count = int(rng.integers(config.min_digits, config.max_digits + 1))
    canvas = rng.uniform(0.0, 0.35, 3) + rng.normal(0.0, config.noise, (size, size, 3))
    owner = np.zeros((size, size), np.int64)  # 1 + the digit each pixel shows, 0 for background
    placed = np.zeros((0, 4), np.int64)
    drawn: list[int] = []
    for _ in range(count):
        side = int(rng.integers(config.min_digit_size, config.max_digit_size + 1))
        corners = rng.integers(0, size - side + 1, (_PLACEMENT_TRIES, 2))  # (x, y)
        candidates = np.concatenate([corners, corners + side], axis=1)
        fits = _covered(candidates, placed) <= config.max_overlap
        scan = int(rng.integers(len(scans)))
        colour = rng.uniform(0.55, 1.0, 3)
        if not fits.any():
            continue
        x0, y0, x1, y1 = candidates[int(fits.argmax())]
        matrix = _upscale_matrix(side)
        alpha = matrix @ scans[scan] @ matrix.T
        region = canvas[y0:y1, x0:x1]
        region += alpha[..., None] * (colour - region)
        owner[y0:y1, x0:x1][alpha > config.mask_threshold] = len(drawn) + 1
        placed = np.concatenate([placed, candidates[None, int(fits.argmax())]])
        drawn.append(int(digits[scan]))
    image = np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)
    masks = owner[None] == np.arange(1, len(drawn) + 1)[:, None, None]
    visible = masks.any(axis=(1, 2))  # a digit whose pixels all lie under later ones is left out
    masks, labels = masks[visible], np.asarray(drawn, np.int64)[visible]
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.stack(
        [
            cols.argmax(1),
            rows.argmax(1),
            size - cols[:, ::-1].argmax(1),
            size - rows[:, ::-1].argmax(1),
        ],
        axis=1,
    ).astype(np.float32)
    semantic = np.concatenate([[0], np.asarray(drawn) + 1]).astype(np.uint8)[owner]
    return Scene(image, boxes.reshape(-1, 4), labels, masks, semantic)


def digit_pools(
    val_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The scans (float [M, 8, 8] in [0, 1]) and digits of each split: disjoint, stratified."""
    data = load_digits()
    scans = (data.images / 16.0).astype(np.float64)
    chosen = split_indices(data.target, val_fraction, test_fraction, seed)
    return {split: (scans[index], data.target[index]) for split, index in zip(SPLITS, chosen)}


class DigitScenes(Dataset):
    """``length`` scenes of one split. ``output``: "detection" gives (image, target dict),
    "segmentation" (image, semantic mask); images float32 [3, H, W] in [0, 1]."""

    def __init__(
        self,
        scans: np.ndarray,
        digits: np.ndarray,
        config: SceneConfig,
        *,
        seed: int,
        split: str,
        length: int,
        fresh: bool = False,
        output: str = "detection",
        masks: bool = True,
    ) -> None:
        self.scans, self.digits, self.config = scans, digits, config
        self.seed, self.split, self.length, self.fresh = seed, split, length, fresh
        self.output, self.masks = output, masks

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int, draw: int | None = None) -> Scene:
        """Scene ``index``; ``draw`` (a fresh training draw) makes it one of many for the index."""
        key = [self.seed, SPLITS.index(self.split), index]
        if draw is not None:
            key.append(draw)
        return compose_scene(np.random.default_rng(key), self.scans, self.digits, self.config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        # a fresh draw comes from torch's RNG, which the resumable loader seeds per item and epoch
        draw = int(torch.randint(0, 2**62, ())) if self.fresh else None
        scene = self.scene(index, draw)
        # torchvision's conversion, so that a scene read back from its PNG is equal bit for bit
        image = to_dtype(torch.from_numpy(scene.image).permute(2, 0, 1), torch.float32, scale=True)
        if self.output == "segmentation":
            return image, torch.from_numpy(scene.semantic).long()
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.digits) + 1,
            "image_id": index + 1,
        }
        if self.masks:
            target["masks"] = torch.from_numpy(scene.masks).to(torch.uint8)
        if self.split != "train":
            target["iscrowd"] = torch.zeros(len(scene.digits), dtype=torch.int64)
        return image, target


def scene_sets(
    config: SceneConfig,
    sizes: dict[str, int],
    *,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    fresh_train_scenes: bool = False,
    output: str = "detection",
    masks: bool = True,
) -> dict[str, DigitScenes]:
    """The three splits' scene sets (``sizes``: scenes per split)."""
    pools = digit_pools(val_fraction, test_fraction, seed)
    return {
        split: DigitScenes(
            *pools[split],
            config,
            seed=seed,
            split=split,
            length=sizes[split],
            fresh=fresh_train_scenes and split == "train",
            output=output,
            masks=masks,
        )
        for split in SPLITS
    }


def check_scene_keys(sizes: dict[str, int], seed: int) -> None:
    for split, count in sizes.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"data.{split}_size must be a positive int, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data.seed must be an int >= 0, got {seed!r}")


class _SceneDataModule(SeededDataModule):
    """The keys and setup shared by the detection and the segmentation scene modules."""

    output: str
    has_masks = False

    def __init__(
        self,
        batch_size: int = 16,
        num_workers: int = 0,
        train_size: int = 4000,
        val_size: int = 500,
        test_size: int = 500,
        fresh_train_scenes: bool = True,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 42,
        **scene: Any,
    ) -> None:
        super().__init__(batch_size, num_workers)
        unknown = sorted(set(scene) - {field.name for field in dataclasses.fields(SceneConfig)})
        if unknown:
            raise TypeError(f"data: unknown key(s) {unknown} for {type(self).__name__}")
        self.config = SceneConfig(**scene)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        check_scene_keys(self.sizes, seed)
        check_fractions(val_fraction, test_fraction)
        self.fresh_train_scenes = fresh_train_scenes
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.image_size = (self.config.canvas_size, self.config.canvas_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sets = scene_sets(
            self.config,
            self.sizes,
            seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            fresh_train_scenes=self.fresh_train_scenes,
            output=self.output,
            masks=self.has_masks,
        )
        self.train_set, self.val_set, self.test_set = (sets[split] for split in SPLITS)


class SceneDetectionDataModule(_SceneDataModule, DetectionDataModule):
    """Digit scenes for detection and instance segmentation: 10 classes (labels 1..10 for digits
    0..9), instance masks unless ``masks=false``. Scene keys: see :class:`SceneConfig`."""

    output = "detection"
    num_classes = 10
    class_names = DIGIT_NAMES

    def __init__(self, masks: bool = True, **keys: Any) -> None:
        super().__init__(**keys)
        self.has_masks = bool(masks)


class SceneSegmentationDataModule(_SceneDataModule, SegmentationDataModule):
    """Digit scenes for semantic segmentation: 11 classes (0 background, d + 1 for digit d).
    Scene keys: see :class:`SceneConfig`."""

    output = "segmentation"
    num_classes = 11
    class_names = ["background", *DIGIT_NAMES]
