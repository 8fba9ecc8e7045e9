"""The pictures a run leaves for its report, written at its end as `images/<kind>.npz` through `runfolder`.

A report never builds a model or loads data, so whatever it shows of images is saved here, small: a few
training images with the run's own augmentation applied, the evaluation images with the highest loss,
misclassified examples of the most-confused class pairs, and Grad-CAM maps of one image per class. The
evaluation split is the test split (validation when `train.test` is false); the predictions the report reads
(`predictions/<split>.npz`) are the ones these pictures are chosen from. Thumbnails keep the images the
network saw (folder datasets: the decoded files, with their file stems as ids), shrunk to at most
THUMBNAIL_SIDE pixels. A few images take milliseconds; a problem here is logged and never fails the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import runfolder
from cnnlab.data import ImageSet, InMemoryLoader, load_split, parse_augment
from cnnlab.data.imageset import resize_images
from cnnlab.errors import printable
from cnnlab.runfolder import ImageSamples, Predictions
from cnnlab.train.gradcam import explain_uint8

if TYPE_CHECKING:
    from cnnlab.train.run import PreparedRun

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 64  # larger images are stored shrunk to this side (antialiased)
AUGMENTED_IMAGES = 8  # training images in the augmentation grid, one per class in turn
AUGMENTED_DRAWS = 3  # augmented versions of each (the augmentation of epochs 0, 1, 2)
HARDEST_IMAGES = 12  # evaluation images with the highest cross-entropy loss
CONFUSED_PAIRS = 6  # most frequent (true, predicted) pairs with examples
CONFUSED_PER_PAIR = 4  # examples per pair, most confidently wrong first
GRADCAM_IMAGES = 8  # evaluation images with a Grad-CAM map, one per class in turn


def write_run_images(
    model: nn.Module, prepared: PreparedRun, out_dir: Path, device: torch.device
) -> list[Path]:
    """Write images/*.npz for a run whose predictions are saved; returns the files written."""
    try:
        return _write_run_images(model, prepared, Path(out_dir), device)
    except Exception as error:  # the pictures are extras: a problem with them never fails a finished run
        log.warning("%s: report images not written (%s: %s)", out_dir, type(error).__name__, error)
        return []


def _write_run_images(
    model: nn.Module, prepared: PreparedRun, out_dir: Path, device: torch.device
) -> list[Path]:
    config = prepared.config
    train_idx, _ = prepared.splits.indices(config.data.split_index)
    augmented = augmented_samples(prepared.train_set, train_idx, config.data.augment, config.train.seed)
    written = [runfolder.write_image_samples(out_dir, "augmented", augmented)]
    split = "test" if config.train.test else "val"
    predictions = runfolder.read_predictions(out_dir, split)
    if predictions is None or len(predictions.labels) == 0:
        return written
    source = load_split(config.data, "test") if split == "test" else prepared.train_set
    for kind, rows in (("hardest", hardest_rows(predictions)), ("confused", confused_rows(predictions))):
        samples = evaluation_samples(source, split, predictions, rows)
        written.append(runfolder.write_image_samples(out_dir, kind, samples))
    rows = round_robin(predictions.labels, GRADCAM_IMAGES)
    pixels = source.images[torch.as_tensor(predictions.indices[rows])]
    cams = explain_uint8(model, pixels, mean=prepared.mean, std=prepared.std, device=device)
    if cams is not None:  # a model without a conv feature map has no Grad-CAM
        samples = evaluation_samples(source, split, predictions, rows, maps=cams.maps)
        written.append(runfolder.write_image_samples(out_dir, "gradcam", samples))
    return written


def augmented_samples(train_set: ImageSet, train_idx: np.ndarray, augment: str, seed: int) -> ImageSamples:
    """A few training images (variant 0) and AUGMENTED_DRAWS augmentations of each, as training draws them."""
    chosen = np.asarray(train_idx)[round_robin(train_set.labels.numpy()[train_idx], AUGMENTED_IMAGES)]
    images = train_set.images[torch.as_tensor(chosen)]
    draws = [images]
    if parse_augment(augment):
        channels = images.shape[1]
        loader = InMemoryLoader(
            images,
            train_set.labels[torch.as_tensor(chosen)],
            batch_size=len(chosen),
            augment=augment,
            mean=(0.0,) * channels,
            std=(1 / 255,) * channels,  # the loader's float batch stays in 0..255
            seed=seed,
        )
        for epoch in range(AUGMENTED_DRAWS):
            loader.set_epoch(epoch)
            batch, _ = next(iter(loader))
            draws.append(batch.round().clamp(0, 255).to(torch.uint8))
    count = len(draws)
    return ImageSamples(
        split="train",
        images=thumbnails(torch.cat(draws)),
        labels=np.tile(train_set.labels.numpy()[chosen], count),
        indices=np.tile(chosen, count),
        ids=tuple(image_ids(train_set, chosen)) * count,
        variants=np.repeat(np.arange(count), len(chosen)),
    )


def evaluation_samples(
    source: ImageSet,
    split: str,
    predictions: Predictions,
    rows: np.ndarray,
    *,
    maps: np.ndarray | None = None,
) -> ImageSamples:
    """The evaluation images at `rows` of the saved predictions, with their probabilities (and maps)."""
    indices = predictions.indices[rows]
    images = source.images[torch.as_tensor(indices)]
    return ImageSamples(
        split=split,
        images=thumbnails(images),
        labels=predictions.labels[rows],
        indices=indices,
        ids=tuple(image_ids(source, indices)),
        probs=predictions.probs[rows],
        maps=None if maps is None else _shrink_maps(maps, min(images.shape[-1], THUMBNAIL_SIDE)),
    )


def hardest_rows(predictions: Predictions, count: int = HARDEST_IMAGES) -> np.ndarray:
    """Rows of the `count` highest cross-entropy losses (-log p of the true class), highest first."""
    return np.argsort(-losses(predictions), kind="stable")[:count]


def losses(predictions: Predictions) -> np.ndarray:
    """Per-image cross-entropy of the saved probabilities."""
    picked = predictions.probs[np.arange(len(predictions.labels)), predictions.labels]
    return -np.log(np.clip(picked, 1e-12, 1.0))


def confused_rows(predictions: Predictions) -> np.ndarray:
    """Misclassified rows of the CONFUSED_PAIRS most frequent (true, predicted) pairs, CONFUSED_PER_PAIR each,
    most confidently wrong first."""
    predicted = predictions.probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != predictions.labels)
    pairs: dict[tuple[int, int], list[int]] = {}
    for row in wrong:
        pairs.setdefault((int(predictions.labels[row]), int(predicted[row])), []).append(int(row))
    ranked = sorted(pairs.items(), key=lambda item: (-len(item[1]), item[0]))[:CONFUSED_PAIRS]
    chosen = []
    for (_, wrong_class), members in ranked:
        confidence = predictions.probs[members, wrong_class]
        chosen += [members[i] for i in np.argsort(-confidence, kind="stable")[:CONFUSED_PER_PAIR]]
    return np.asarray(chosen, dtype=np.int64)


def round_robin(labels: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` positions taking each class's first image in turn, then each class's second, ..."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))[:count]


def image_ids(image_set: ImageSet, indices: np.ndarray) -> list[str]:
    """File stems of folder images, `#<index>` for datasets without file names."""
    if image_set.ids is None:
        return [f"#{int(index)}" for index in indices]
    return [printable(image_set.ids[int(index)]) for index in indices]


def thumbnails(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) shrunk to at most THUMBNAIL_SIDE (square images, as every split holds)."""
    side = images.shape[-1]
    return resize_images(images, THUMBNAIL_SIDE).numpy() if side > THUMBNAIL_SIDE else images.numpy()


def _shrink_maps(maps: np.ndarray, side: int) -> np.ndarray:
    if maps.shape[-1] == side:
        return maps
    tensor = torch.from_numpy(maps)[:, None]
    return F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True)[:, 0].numpy()
