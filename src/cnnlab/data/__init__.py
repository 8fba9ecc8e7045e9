"""Datasets, validation splits and the fast in-memory data path.

- `load_split(data_config, split)`: a named dataset's "train" or "test" split as an `ImageSet` (uint8
  tensor + labels + class names), found locally or downloaded, memoised per process.
- `make_splits` / `Splits`: stratified holdout or k-fold, computed once from a seed, saved and reused.
- `InMemoryLoader`: batches sliced from a per-epoch permutation, augmented batch-wise on the device.
- `normalization(images, mode)`: per-channel (mean, std) for `data.normalize`.
"""

from __future__ import annotations

from cnnlab.data.augment import OPERATIONS, parse_augment
from cnnlab.data.catalog import (
    SPECS,
    DatasetSpec,
    check_data_config,
    clear_memory_cache,
    dataset_names,
    ensure_local,
    excluded_images,
    get_spec,
    load_local_split,
    load_split,
    locate,
    native_side,
)
from cnnlab.data.folder import (
    DEFAULT_BACKGROUND,
    DEFAULT_IMAGE_SIZE,
    FolderOptions,
    FolderScan,
    decode_image,
    load_folder,
    scan_folder,
    write_bad_files,
)
from cnnlab.data.imageset import ImageSet, take
from cnnlab.data.loader import IMAGENET_MEAN, IMAGENET_STD, InMemoryLoader, normalization
from cnnlab.data.splits import Splits, check_folds, make_splits

__all__ = [
    "DEFAULT_BACKGROUND",
    "DEFAULT_IMAGE_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPERATIONS",
    "SPECS",
    "DatasetSpec",
    "FolderOptions",
    "FolderScan",
    "ImageSet",
    "InMemoryLoader",
    "Splits",
    "check_data_config",
    "check_folds",
    "clear_memory_cache",
    "dataset_names",
    "decode_image",
    "ensure_local",
    "excluded_images",
    "get_spec",
    "load_folder",
    "load_local_split",
    "load_split",
    "locate",
    "native_side",
    "make_splits",
    "normalization",
    "parse_augment",
    "scan_folder",
    "take",
    "write_bad_files",
]
