"""The in-memory data path plugged into Lightning: loaders built on the training device, sharded per rank.

Under DDP each rank trains a disjoint share of every epoch's permutation: rank r takes positions r, r + W,
r + 2W, ... (W ranks), padded by wrapping to an equal length so every rank runs the same number of steps.
With `data.batch_size` B per rank, global batch b of a W-rank run is exactly batch b of a one-process run
with batch size W * B (same images, same order), so the two follow the same trajectory. Validation is
sharded the same way without padding (no gradient sync there, and a padded image would count twice), and
the epoch metrics are summed over the ranks, so they are those of the whole validation split.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from cnnlab.config import DataConfig
from cnnlab.data import InMemoryLoader


class InMemoryDataModule(pl.LightningDataModule):
    """Train/val loaders over uint8 images; Lightning sets each epoch through the loader's sampler hook."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        train_idx: torch.Tensor,
        val_idx: torch.Tensor,
        *,
        data: DataConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int,
        channels_last: bool,
    ) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.train_idx, self.val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        self.data, self.mean, self.std = data, mean, std
        self.seed, self.channels_last = seed, channels_last
        self.train_loader: InMemoryLoader | None = None
        self.val_loader: InMemoryLoader | None = None

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        rank, world = self.trainer.global_rank, self.trainer.world_size
        self.train_loader = self._loader(self.train_idx, device, rank, world, train=True)
        if len(self.val_idx):
            # this rank's disjoint share of the validation split, unpadded: the metrics count each image once
            self.val_loader = self._loader(self.val_idx[rank::world], device, 0, 1, train=False)

    def _loader(
        self, indices: torch.Tensor, device: torch.device, rank: int, world: int, *, train: bool
    ) -> InMemoryLoader:
        return InMemoryLoader(
            self.images[indices],
            self.labels[indices],
            batch_size=self.data.batch_size if train else self.data.eval_batch_size,
            shuffle=train,
            augment=self.data.augment if train else "none",
            mean=self.mean,
            std=self.std,
            seed=self.seed,
            device=device,
            drop_last=False,
            rank=rank,
            world_size=world,
            channels_last=self.channels_last,
        )

    def train_dataloader(self) -> InMemoryLoader:
        return self.train_loader

    def val_dataloader(self) -> InMemoryLoader | list:
        return self.val_loader if self.val_loader is not None else []

    @property
    def train_images_per_epoch(self) -> int:
        """Training images seen per epoch by all ranks together (padding included)."""
        world = self.trainer.world_size
        return math.ceil(len(self.train_idx) / world) * world
