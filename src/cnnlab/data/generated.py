"""Datasets that need no files: scikit-learn's bundled `digits`, and deterministic `synthetic` images."""

from __future__ import annotations

import math

import numpy as np
import torch

from cnnlab.data.imageset import ImageSet, resize_images

DIGITS_SIZE = 28  # digits are served at 1x28x28, like MNIST
DIGITS_TEST_FRACTION = 0.2  # fixed stratified test share of the 1,797 digits ...
DIGITS_TEST_SEED = 0  # ... drawn with this seed: 1,437 train / 360 test, identical on every machine

SYNTHETIC_CLASSES = 10
SYNTHETIC_CHANNELS = 3
SYNTHETIC_SIZE = 32  # default side; data.image_size generates at another side directly
SYNTHETIC_SIZES = {"train": 2000, "test": 500}
SYNTHETIC_SEEDS = {"train": 1, "test": 2}
SYNTHETIC_NOISE = 0.15  # std of the additive pixel noise, in [0, 1] intensity units


def digits_split(split: str) -> ImageSet:
    """scikit-learn's 8x8 digits scaled to 0..255 and resized to 28x28; a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split  # ~1.5 s: only to split (architecture.md, Imports)

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = resize_images(torch.from_numpy(pixels).unsqueeze(1), DIGITS_SIZE)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=bunch.target,
        random_state=DIGITS_TEST_SEED,
    )
    index = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return ImageSet(images[index], labels[index], tuple(str(d) for d in range(10)))


def synthetic_split(split: str, size: int | None = None) -> ImageSet:
    """Class-dependent gratings with a class tint, random phase and noise: learnable well above chance.

    Class k is a sinusoidal grating at angle k·π/K with 2 + k mod 3 cycles per image and its own colour
    mix, so a small CNN separates the classes within an epoch or two; generation is a fixed function of
    the split, so every machine gets the same images.
    """
    side = size or SYNTHETIC_SIZE
    count = SYNTHETIC_SIZES[split]
    generator = torch.Generator().manual_seed(SYNTHETIC_SEEDS[split])
    labels = torch.arange(count) % SYNTHETIC_CLASSES
    labels = labels[torch.randperm(count, generator=generator)]
    images = _gratings(labels, side, generator)
    names = tuple(f"class{k}" for k in range(SYNTHETIC_CLASSES))
    return ImageSet(images, labels.to(torch.int64), names)


def _gratings(labels: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, side, side) class gratings with a per-class colour mix, random phase and noise."""
    k = labels.to(torch.float32)
    angle = k * math.pi / SYNTHETIC_CLASSES
    cycles = 2.0 + (labels % 3).to(torch.float32)
    coords = torch.linspace(0.0, 1.0, side)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    phase = torch.rand(len(labels), generator=generator) * 2 * math.pi
    along = x[None] * torch.cos(angle)[:, None, None] + y[None] * torch.sin(angle)[:, None, None]
    wave = torch.sin(2 * math.pi * cycles[:, None, None] * along + phase[:, None, None])
    tint = _class_tints()[labels]  # (N, 3)
    images = 0.5 + 0.35 * wave[:, None] * tint[:, :, None, None]
    images = images + SYNTHETIC_NOISE * torch.randn(images.shape, generator=generator)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _class_tints() -> torch.Tensor:
    """(K, 3) colour weights, one per class, each channel in [0.4, 1]."""
    k = torch.arange(SYNTHETIC_CLASSES, dtype=torch.float32)
    return torch.stack([0.7 + 0.3 * torch.cos(k + shift) for shift in (0.0, 2.1, 4.2)], dim=1)
