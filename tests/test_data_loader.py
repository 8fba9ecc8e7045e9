"""The in-memory loader: epoch coverage, sharding, batch-wise augmentation, normalization, Lightning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import IMAGENET_MEAN, InMemoryLoader, normalization, parse_augment
from cnnlab.data.augment import random_crop, random_flip
from cnnlab.errors import ConfigError


def _numbered(count: int, channels: int = 1, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images whose label is their own index, so a batch's labels say which images it holds."""
    images = torch.randint(0, 256, (count, channels, side, side), generator=torch.Generator().manual_seed(0))
    return images.to(torch.uint8), torch.arange(count)


def _epoch_labels(loader: InMemoryLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return torch.cat([labels for _, labels in loader]).tolist()


def test_each_training_index_exactly_once_per_epoch_in_a_new_order() -> None:
    images, labels = _numbered(103)
    loader = InMemoryLoader(images, labels, batch_size=10, shuffle=True, augment="flip+crop", seed=5)
    first, second = _epoch_labels(loader, 0), _epoch_labels(loader, 1)
    assert len(loader) == 11
    assert sorted(first) == list(range(103)) and sorted(second) == list(range(103))
    assert first != second
    assert _epoch_labels(loader, 0) == first  # an epoch's order is a function of (seed, epoch)


def test_ranks_take_disjoint_equal_shares_covering_the_epoch() -> None:
    images, labels = _numbered(10)
    shards = [
        _epoch_labels(
            InMemoryLoader(images, labels, batch_size=2, shuffle=True, seed=1, rank=r, world_size=3), 4
        )
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(10 / 3), padded by wrapping
    assert set().union(*shards) == set(range(10))
    exact = [
        _epoch_labels(
            InMemoryLoader(images, labels, batch_size=2, shuffle=True, seed=1, rank=r, world_size=2), 4
        )
        for r in range(2)
    ]
    assert sorted(exact[0] + exact[1]) == list(range(10))


def test_drop_last_drops_the_incomplete_batch() -> None:
    images, labels = _numbered(25)
    loader = InMemoryLoader(images, labels, batch_size=10, shuffle=True, drop_last=True)
    assert len(loader) == 2 and len(_epoch_labels(loader, 0)) == 20


def test_augmentation_differs_per_sample_and_is_reproducible_from_the_seed() -> None:
    one = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8) * 3
    images, labels = one.repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.int64)

    def batch(seed: int, epoch: int) -> torch.Tensor:
        loader = InMemoryLoader(images, labels, batch_size=64, augment="flip+crop", seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    augmented = batch(seed=0, epoch=0)
    distinct = {tuple(image.flatten().tolist()) for image in augmented}
    assert len(distinct) > 20  # identical inputs, per-sample random flips and offsets
    assert torch.equal(augmented, batch(seed=0, epoch=0))
    assert not torch.equal(augmented, batch(seed=0, epoch=1))
    assert not torch.equal(augmented, batch(seed=1, epoch=0))


@pytest.mark.parametrize("reflect", [False, True])
def test_random_crop_is_a_window_of_the_padded_image(reflect: bool) -> None:
    images, _ = _numbered(16, channels=3, side=6)
    cropped = random_crop(images, 2, torch.Generator().manual_seed(0), reflect=reflect)
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect" if reflect else "constant")
    offsets_seen = set()
    for source, out in zip(padded, cropped.float()):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(source[:, dy : dy + 6, dx : dx + 6], out)
        ]
        assert matches, "output is not a crop of the padded image"
        offsets_seen.add(matches[0])
    assert len(offsets_seen) > 4


def test_random_flip_mirrors_some_images_and_keeps_the_others() -> None:
    images, _ = _numbered(32)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out, image.flip(-1)) for out, image in zip(flipped, images)]
    kept = [torch.equal(out, image) for out, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 4 < sum(mirrored) < 28


def test_random_resized_crop_keeps_shape_and_changes_content() -> None:
    images, labels = _numbered(8, channels=3, side=16)
    loader = InMemoryLoader(images, labels, batch_size=8, augment="flip+randomresizedcrop")
    out = next(iter(loader))[0]
    assert out.shape == (8, 3, 16, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out, images.float() / 255)


def test_unknown_or_conflicting_augment_preset_is_a_config_error() -> None:
    assert parse_augment("crop+flip") == ("crop", "flip") and parse_augment("none") == ()
    with pytest.raises(ConfigError, match="data.augment='flip\\+rotate': unknown operation 'rotate'"):
        parse_augment("flip+rotate")
    with pytest.raises(ConfigError, match="combines two crops"):
        parse_augment("crop+randomresizedcrop")


def test_batches_are_normalized_float32_and_channels_last_on_request() -> None:
    images, labels = _numbered(64, channels=3)
    mean, std = normalization(images, "dataset")
    loader = InMemoryLoader(images, labels, batch_size=64, mean=mean, std=std, channels_last=True)
    batch, batch_labels = next(iter(loader))
    assert batch.dtype == torch.float32 and batch_labels.dtype == torch.int64
    assert batch.is_contiguous(memory_format=torch.channels_last)
    per_channel_mean = batch.mean(dim=(0, 2, 3))
    per_channel_std = batch.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel_std, torch.ones(3), atol=1e-4)


def test_normalization_modes() -> None:
    images, _ = _numbered(20, channels=1)
    mean, std = normalization(images, "dataset")
    expected = images.double() / 255
    assert np.isclose(mean[0], expected.mean().item()) and np.isclose(
        std[0], expected.std(unbiased=False).item()
    )
    assert normalization(images, "none") == ((0.0,), (1.0,))
    gray_mean, _ = normalization(images, "weights")
    assert np.isclose(gray_mean[0], sum(IMAGENET_MEAN) / 3)
    assert normalization(_numbered(2, channels=3)[0], "weights")[0] == IMAGENET_MEAN


def test_lightning_trains_on_the_loaders_and_sets_the_epoch() -> None:
    import lightning.pytorch as pl

    images, labels = _numbered(24)
    seen: dict[int, list[int]] = {}

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(64, 1)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
            seen.setdefault(self.current_epoch, []).extend(batch[1].tolist())
            return self.layer(batch[0].flatten(1)).mean()

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
            self.log("val", self.layer(batch[0].flatten(1)).mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    train = InMemoryLoader(images, labels, batch_size=5, shuffle=True, augment="flip", seed=3)
    val = InMemoryLoader(images[:6], labels[:6], batch_size=4)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(), train_dataloaders=train, val_dataloaders=val)
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(24))
    assert seen[0] == train.epoch_indices(0).tolist() and seen[1] == train.epoch_indices(1).tolist()
    assert seen[0] != seen[1]
