"""Validation splits computed once from a seed (stratified holdout or stratified k-fold), saved and reused.

A run or a study saves its `Splits` as JSON (`splits.json`) and every later run loads that file instead of
recomputing, so all runs of a study validate on exactly the same images. The file records a digest of the
labels it was made for; loading it against different labels is an error, not a silent mismatch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch

from cnnlab import safeio
from cnnlab.errors import ConfigError, DataError, not_a_file

SPLITS_FORMAT = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Validation index sets over one training split: one (holdout) or k (k-fold) disjoint sets."""

    kind: str  # holdout | kfold
    seed: int
    num_samples: int
    val_fraction: float | None  # holdout share (None for k-fold)
    labels_sha256: str
    val_sets: tuple[np.ndarray, ...]  # sorted int64 validation indices per fold

    @property
    def folds(self) -> int:
        """Number of folds (1 for a holdout split)."""
        return len(self.val_sets)

    def indices(self, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, validation indices) of `fold`, both sorted int64 arrays."""
        if not 0 <= fold < self.folds:
            raise ConfigError(
                f"data.fold={fold} is out of range; these splits have folds 0..{self.folds - 1}"
            )
        val = self.val_sets[fold]
        train = np.setdiff1d(np.arange(self.num_samples, dtype=np.int64), val, assume_unique=True)
        return train, val.copy()

    def check_labels(self, labels: torch.Tensor | np.ndarray, source: str = "splits") -> None:
        """Raise a DataError when these splits were made for different labels (size or content)."""
        labels_np = np.asarray(labels, dtype=np.int64)
        if len(labels_np) != self.num_samples or _labels_digest(labels_np) != self.labels_sha256:
            raise DataError(
                f"{source} were made for {self.num_samples} other labels, not this training split "
                f"of {len(labels_np)} images; delete the file or use the matching data config"
            )

    def to_dict(self) -> dict:
        """JSON-able form (what `save` writes)."""
        return {
            "format": SPLITS_FORMAT,
            "kind": self.kind,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "val_fraction": self.val_fraction,
            "labels_sha256": self.labels_sha256,
            "val_indices": [v.tolist() for v in self.val_sets],
        }

    def save(self, path: str | Path) -> Path:
        """Write the splits as JSON, atomically."""
        return safeio.atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, labels: torch.Tensor | np.ndarray | None = None) -> Splits:
        """Read splits saved by `save`; with `labels`, also check they were made for them."""
        path = Path(path)
        if not path.is_file():
            raise DataError(not_a_file(path, "splits file", "a splits JSON file"))
        try:
            raw = safeio.read_json(path)
            splits = cls(
                raw["kind"],
                int(raw["seed"]),
                int(raw["num_samples"]),
                raw["val_fraction"],
                raw["labels_sha256"],
                tuple(np.asarray(v, dtype=np.int64) for v in raw["val_indices"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(
                f"{path} is not a cnnlab splits file ({type(error).__name__}: {error}); restore it, or "
                "delete it if a study wrote it (it is made again from the study's split seed)"
            ) from None
        if labels is not None:
            splits.check_labels(labels, source=str(path))
        return splits


def check_folds(labels: torch.Tensor | np.ndarray, folds: int) -> None:
    """Stratified k-fold needs at least `folds` images of every class; a DataError names the smallest."""
    labels_np = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels_np) if len(labels_np) else np.zeros(0, dtype=np.int64)
    present = counts[counts > 0]
    if len(present) and folds > present.min():
        raise DataError(
            f"data.folds={folds} needs at least {folds} training images of every class, but class "
            f"{int(np.flatnonzero(counts == present.min())[0])} has {int(present.min())}; use fewer folds"
        )


def make_splits(
    labels: torch.Tensor | np.ndarray, *, seed: int, val_fraction: float = 0.1, folds: int | None = None
) -> Splits:
    """Stratified holdout (`val_fraction`) or stratified k-fold (`folds`) over `labels`, fixed by `seed`."""
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit  # ~1.5 s (architecture.md)

    labels_np = np.asarray(labels, dtype=np.int64)
    if folds is not None:
        check_folds(labels_np, folds)
    state = seed % 2**32
    index = np.zeros(len(labels_np))
    try:
        if folds is not None:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=state)
            val_sets = tuple(np.sort(val) for _, val in splitter.split(index, labels_np))
        elif val_fraction > 0:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=state)
            val_sets = tuple(np.sort(val) for _, val in splitter.split(index, labels_np))
        else:
            val_sets = (np.zeros(0, dtype=np.int64),)
    except ValueError as error:
        what = f"data.folds={folds}" if folds is not None else f"data.val_fraction={val_fraction}"
        raise DataError(
            f"cannot make a stratified split with {what} over {len(labels_np)} images: {error}; add images "
            f"or change {what.split('=')[0]}"
        ) from None
    kind = "kfold" if folds is not None else "holdout"
    fraction = None if folds is not None else val_fraction
    return Splits(
        kind,
        seed,
        len(labels_np),
        fraction,
        _labels_digest(labels_np),
        tuple(v.astype(np.int64) for v in val_sets),
    )


def _labels_digest(labels: np.ndarray) -> str:
    """SHA-256 of the labels as little-endian int64: identifies the split the indices refer to."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()
