"""The pictures a run saves for its report (images/*.npz): the right images for their captions, recomputed
from the run's own saved predictions and data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import config as cfg
from cnnlab import runfolder
from cnnlab.data import decode_image, load_split
from cnnlab.data.imageset import resize_images
from cnnlab.report import write_report
from cnnlab.runfolder import ImageSamples, RunFolderError
from cnnlab.train import artefacts, fit


def tiny(**dotted) -> cfg.RunConfig:
    """lenet5 on a digits subset with flip+crop: a run of a second or two."""
    base = {
        "model.name": "lenet5",
        "model.activation": "relu",
        "data.name": "digits",
        "data.subset": 400,
        "data.augment": "flip+crop",
        "optim.lr": 0.01,
        "optim.optimizer": "adam",
        "train.epochs": 2,
    }
    return cfg.from_dict({**base, **dotted})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(tiny(), tmp_path_factory.mktemp("runs") / "digits").out_dir


def _losses(predictions: runfolder.Predictions) -> np.ndarray:
    picked = predictions.probs[np.arange(len(predictions.labels)), predictions.labels]
    return -np.log(np.clip(picked, 1e-12, 1))


def test_a_run_saves_every_kind_of_picture(digits_run: Path) -> None:
    saved = {kind: runfolder.read_image_samples(digits_run, kind) for kind in runfolder.IMAGE_KINDS}
    assert all(samples is not None for samples in saved.values())
    assert sum(path.stat().st_size for path in (digits_run / "images").iterdir()) < 200_000


def test_highest_loss_images_are_the_test_images_with_the_highest_loss(digits_run: Path) -> None:
    hardest = runfolder.read_image_samples(digits_run, "hardest")
    predictions = runfolder.read_predictions(digits_run, "test")
    losses = _losses(predictions)
    expected = predictions.indices[np.argsort(-losses, kind="stable")[: artefacts.HARDEST_IMAGES]]
    assert hardest.split == "test" and list(hardest.indices) == list(expected)
    saved_losses = -np.log(np.clip(hardest.probs[np.arange(len(hardest)), hardest.labels], 1e-12, 1))
    assert np.all(np.diff(saved_losses) <= 0) and saved_losses.min() >= np.sort(losses)[-len(hardest)] - 1e-6
    test = load_split(tiny().data, "test")
    assert np.array_equal(hardest.images, test.images[torch.as_tensor(hardest.indices)].numpy())
    assert np.array_equal(hardest.labels, test.labels[torch.as_tensor(hardest.indices)].numpy())
    assert hardest.ids == tuple(f"#{index}" for index in hardest.indices)


def test_confused_images_are_misclassified_into_the_most_frequent_pairs(digits_run: Path) -> None:
    confused = runfolder.read_image_samples(digits_run, "confused")
    predictions = runfolder.read_predictions(digits_run, "test")
    predicted = predictions.probs.argmax(axis=1)
    wrong = predicted != predictions.labels
    pairs, counts = np.unique(
        np.stack([predictions.labels[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True
    )
    assert len(confused) > 0
    saved_pairs = {(int(t), int(p)) for t, p in zip(confused.labels, confused.probs.argmax(axis=1))}
    threshold = np.sort(counts)[::-1][min(len(counts), artefacts.CONFUSED_PAIRS) - 1]
    frequent = {(int(t), int(p)) for (t, p), count in zip(pairs, counts) if count >= threshold}
    assert saved_pairs <= frequent
    row_of = {int(index): row for row, index in enumerate(predictions.indices)}
    for index, label in zip(confused.indices, confused.labels):
        assert wrong[row_of[int(index)]] and predictions.labels[row_of[int(index)]] == label


def test_augmented_samples_are_training_images_and_their_augmentations(digits_run: Path) -> None:
    augmented = runfolder.read_image_samples(digits_run, "augmented")
    train = load_split(tiny().data, "train")
    originals = augmented.variants == 0
    count = int(originals.sum())
    assert count == artefacts.AUGMENTED_IMAGES and set(augmented.variants) == {0, 1, 2, 3}
    assert sorted(augmented.labels[originals]) == list(range(count))  # one image per class in turn
    stored = train.images[torch.as_tensor(augmented.indices[originals])].numpy()
    assert np.array_equal(augmented.images[originals], stored)
    drawn = augmented.images[~originals].reshape(3, count, *augmented.images.shape[1:])
    changed = np.any(drawn != augmented.images[originals][None], axis=(2, 3, 4))  # (draw, image)
    assert changed.any(axis=0).all()  # every image is changed by at least one of its three draws


def test_gradcam_samples_hold_one_map_per_image_in_0_1(digits_run: Path) -> None:
    gradcam = runfolder.read_image_samples(digits_run, "gradcam")
    assert len(gradcam) == artefacts.GRADCAM_IMAGES
    assert sorted(gradcam.labels) == list(range(artefacts.GRADCAM_IMAGES))
    assert gradcam.maps.shape == (len(gradcam), *gradcam.images.shape[2:])
    assert gradcam.maps.min() >= 0 and gradcam.maps.max() <= 1 and gradcam.maps.max() > 0


def test_a_run_without_augmentation_saves_only_the_originals(tmp_path: Path) -> None:
    out = fit(
        tiny(**{"data.augment": "none", "train.epochs": 1, "train.test": False}), tmp_path / "run"
    ).out_dir
    augmented = runfolder.read_image_samples(out, "augmented")
    assert set(augmented.variants) == {0}
    hardest = runfolder.read_image_samples(out, "hardest")
    assert hardest.split == "val"  # not tested: the pictures come from the validation predictions
    val = runfolder.read_predictions(out, "val")
    assert set(hardest.indices) <= set(val.indices)


def test_folder_runs_save_real_thumbnails_named_by_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, shade in (("dark", 50), ("light", 200)):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(15):
            pixels = np.clip(rng.normal(shade, 30, (90, 90, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pics" / label / f"{label}_{i:02d}.png")
    config = cfg.from_dict(
        {
            "model.name": "lenet5",
            "data.name": f"folder:{tmp_path / 'pics'}",
            "data.image_size": 80,
            "train.epochs": 1,
        }
    )
    out = fit(config, tmp_path / "run").out_dir
    for kind in ("hardest", "gradcam"):
        samples = runfolder.read_image_samples(out, kind)
        assert samples.images.shape[1:] == (3, artefacts.THUMBNAIL_SIDE, artefacts.THUMBNAIL_SIDE)
        for image, name, label in zip(samples.images, samples.ids, samples.labels):
            folder = ("dark", "light")[label]
            assert name.startswith(folder)
            decoded = torch.from_numpy(decode_image(tmp_path / "pics" / folder / f"{name}.png", size=80))
            assert np.array_equal(image, resize_images(decoded[None], artefacts.THUMBNAIL_SIDE)[0].numpy())
    gradcam = runfolder.read_image_samples(out, "gradcam")
    assert gradcam.maps.shape[1:] == (artefacts.THUMBNAIL_SIDE, artefacts.THUMBNAIL_SIDE)
    markdown = write_report(out).markdown.read_text()  # a folder of one run is a study too
    hardest = runfolder.read_image_samples(out, "hardest")
    for name, label in zip(hardest.ids, hardest.labels):
        assert f"{name} ({('dark', 'light')[label]}) loss " in markdown  # captions name the files shown
    assert all(f"{name} (" in markdown for name in gradcam.ids)


def test_a_problem_with_the_pictures_never_fails_the_run(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(*args: object) -> list:
        raise RuntimeError("simulated thumbnail bug")

    monkeypatch.setattr(artefacts, "_write_run_images", broken)
    with caplog.at_level(logging.WARNING, logger="cnnlab.train.artefacts"):
        result = fit(tiny(**{"train.epochs": 1}), tmp_path / "run")
    assert result.status == "completed" and result.summary["test"] is not None
    assert "simulated thumbnail bug" in caplog.text
    assert not (tmp_path / "run" / "images").exists()


def test_image_samples_round_trip_and_a_damaged_file_is_a_run_folder_error(tmp_path: Path) -> None:
    samples = ImageSamples(
        split="test",
        images=np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4),
        labels=np.array([1, 0]),
        indices=np.array([7, 3]),
        ids=("cat_7", "dog_3"),
        probs=np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32),
        maps=np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 4, 4),
    )
    runfolder.write_image_samples(tmp_path, "hardest", samples)
    loaded = runfolder.read_image_samples(tmp_path, "hardest")
    assert loaded.ids == samples.ids and loaded.split == "test" and loaded.variants is None
    assert np.array_equal(loaded.images, samples.images) and np.array_equal(loaded.indices, samples.indices)
    np.testing.assert_allclose(loaded.maps, samples.maps, atol=1 / 255)
    assert runfolder.read_image_samples(tmp_path, "gradcam") is None
    runfolder.image_samples_path(tmp_path, "gradcam").write_bytes(b"not an npz")
    with pytest.raises(RunFolderError, match="gradcam.npz"):
        runfolder.read_image_samples(tmp_path, "gradcam")
    runfolder.clear_run_files(tmp_path)
    assert not (tmp_path / runfolder.IMAGES_DIR).exists()
