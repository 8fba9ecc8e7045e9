"""Validation splits: stratified k-fold and holdout, computed from a seed, saved, reloaded and checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import Splits, make_splits
from cnnlab.errors import ConfigError, DataError

# 3 classes in proportions 50 / 30 / 17 (97 images): folds cannot be exactly equal, so rounding is tested.
LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 17)[
    torch.randperm(97, generator=torch.Generator().manual_seed(3))
]


def test_kfold_every_index_in_exactly_one_validation_fold() -> None:
    splits = make_splits(LABELS, seed=0, folds=5)
    validation = np.concatenate([splits.indices(fold)[1] for fold in range(5)])
    assert sorted(validation.tolist()) == list(range(len(LABELS)))
    for fold in range(5):
        train, val = splits.indices(fold)
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(LABELS)


def test_kfold_class_counts_per_fold_are_within_one_of_the_overall_proportion() -> None:
    folds = 5
    splits = make_splits(LABELS, seed=1, folds=folds)
    overall = np.bincount(LABELS.numpy(), minlength=3)
    for fold in range(folds):
        _, val = splits.indices(fold)
        counts = np.bincount(LABELS.numpy()[val], minlength=3)
        expected = overall * len(val) / len(LABELS)
        assert np.all(np.abs(counts - expected) <= 1), (fold, counts, expected)


def test_same_seed_gives_identical_folds_after_save_and_load(tmp_path: Path) -> None:
    saved = make_splits(LABELS, seed=7, folds=4).save(tmp_path / "splits.json")
    reloaded = Splits.load(saved, labels=LABELS)
    recomputed = make_splits(LABELS, seed=7, folds=4)
    for fold in range(4):
        for a, b in zip(reloaded.indices(fold), recomputed.indices(fold)):
            assert np.array_equal(a, b)
    assert json.loads(saved.read_text())["kind"] == "kfold" and reloaded.num_samples == len(LABELS)


def test_different_seed_gives_different_folds() -> None:
    first, second = make_splits(LABELS, seed=0, folds=4), make_splits(LABELS, seed=1, folds=4)
    assert any(not np.array_equal(first.indices(f)[1], second.indices(f)[1]) for f in range(4))


def test_holdout_is_stratified_and_sized_by_val_fraction() -> None:
    splits = make_splits(LABELS, seed=0, val_fraction=0.2)
    train, val = splits.indices()
    assert splits.folds == 1 and len(val) in (19, 20) and len(train) + len(val) == len(LABELS)
    assert np.bincount(LABELS.numpy()[val], minlength=3).tolist() in ([10, 6, 3], [10, 6, 4], [10, 7, 3])
    no_val = make_splits(LABELS, seed=0, val_fraction=0.0)
    assert len(no_val.indices()[1]) == 0 and len(no_val.indices()[0]) == len(LABELS)


def test_loading_splits_for_other_labels_is_refused(tmp_path: Path) -> None:
    path = make_splits(LABELS, seed=0, folds=3).save(tmp_path / "splits.json")
    with pytest.raises(DataError, match="splits.json were made for 97 other labels"):
        Splits.load(path, labels=LABELS.flip(0))
    with pytest.raises(DataError, match="splits file not found"):
        Splits.load(tmp_path / "missing.json")
    with pytest.raises(DataError, match="splits file is a device, pipe or socket, not a splits JSON file"):
        Splits.load("/dev/zero")  # never read: it has no end
    with pytest.raises(ConfigError, match=r"data.fold=3 is out of range; these splits have folds 0..2"):
        Splits.load(path).indices(3)


def test_too_many_folds_for_the_data_is_a_data_error() -> None:
    with pytest.raises(DataError, match="data.folds=10 needs at least 10 training images of every class"):
        make_splits(torch.tensor([0, 1, 0, 1, 0]), seed=0, folds=10)
