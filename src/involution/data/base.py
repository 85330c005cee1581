"""Shared DataLoader plumbing for the data modules of every task.

The training loader is resumable: its order and every item's augmentation are functions of
(seed, epoch, index) only (each item is drawn under its own seed, so no global RNG stream is
involved, in the main process or in workers), and it tells Lightning (``state_dict`` /
``load_state_dict``, stored in every checkpoint) how many batches of the epoch it has handed out.
A run resumed from any checkpoint, mid-epoch included, sees exactly the batches, in the order and
with the augmentations, that the uninterrupted run saw. The process RNG states are saved with it
and restored too (nothing in training draws from them any more, but user code may).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from involution import rules


class EpochSampler(DistributedSampler):
    """A seeded permutation per epoch (``set_epoch``, called by Lightning), optionally without its
    first ``start`` indices (the part of the epoch a resumed run has already trained on). It yields
    ``(index, item seed)`` pairs for :class:`SeededItems`.

    A DistributedSampler, so that Lightning keeps it under DDP instead of swapping in its own.
    """

    start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 1)
        seeds = torch.randint(0, 2**62, (len(self.dataset),), generator=generator).tolist()  # type: ignore[arg-type]
        return iter([(index, seeds[index]) for index in indices[start:]])


class SeededItems(Dataset):
    """``dataset[index]`` computed under ``torch.manual_seed(item seed)``: random augmentations
    become a function of the item and the epoch, not of a shared RNG stream."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int] | int) -> Any:
        if isinstance(item, int):
            # a sampler Lightning put in place of ours (overfit_batches turns shuffling off with a
            # SequentialSampler): plain indices, augmentations from the process RNG as usual
            return self.dataset[item]
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0)
    )
    python = state["python"]
    random.setstate((3, tuple(int(x) for x in python), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning can checkpoint mid-epoch.

    The state (only plain types and tensors, so ``torch.load(weights_only=True)`` reads it) is the
    epoch, the batches handed out in it and the process RNG states (augmentations draw from them).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_batches = 0
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        epoch = sampler.epoch if isinstance(sampler, EpochSampler) else 0
        return {"epoch": epoch, "batches": self._epoch_batches, "rng": _rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restore = state

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        restore, self._restore = self._restore, None
        sampler = self.sampler
        same_epoch = (
            restore is not None
            and isinstance(sampler, EpochSampler)
            and restore["epoch"] == sampler.epoch
            and restore["batches"] > 0
        )
        skip = restore["batches"] if same_epoch else 0
        if skip:
            sampler.start = skip * (self.batch_size or 1)
        self._epoch_batches = skip
        iterator = super().__iter__()
        if restore is not None:
            _set_rng_state(restore["rng"])
        for batch in iterator:
            self._epoch_batches += 1
            yield batch


class SeededDataModule(L.LightningDataModule):
    """Three data sets (filled in ``setup``) behind the resumable, seeded training loader; the
    base of every task's data modules. ``collate_fn``: how items become a batch (None: stack).
    The loader keys' ranges are ``ARGUMENT_RULES``, checked here and by the run's pre-flight."""

    ARGUMENT_RULES: dict[str, rules.Rule] = {
        "batch_size": rules.int_at_least(1),
        "num_workers": rules.int_at_least(0),
    }
    seed: int = 0
    collate_fn: Any = None

    def __init__(
        self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False
    ) -> None:
        super().__init__()
        arguments = {"batch_size": batch_size, "num_workers": num_workers}
        rules.check(arguments, self.ARGUMENT_RULES, "data")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for loaders")
        options: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
            "collate_fn": self.collate_fn,
        }
        if not shuffle:
            return DataLoader(dataset, shuffle=False, **options)
        trainer = self.trainer
        replicas, rank = (
            (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        )
        sampler = EpochSampler(
            dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed
        )
        drop_last = len(dataset) // replicas > self.batch_size  # type: ignore[arg-type]
        return ResumableLoader(
            SeededItems(dataset), sampler=sampler, drop_last=drop_last, **options
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class ClassificationDataModule(SeededDataModule):
    """Subclasses set ``num_classes``, ``in_channels``, ``image_size`` and fill the three sets in
    setup."""

    num_classes: int
    in_channels: int
    image_size: int
