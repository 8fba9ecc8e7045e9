"""Readers for the on-disk dataset formats: IDX (MNIST-likes, raw or gzip) and CIFAR python batches.

IDX parsing is torchvision's (`read_image_file` / `read_label_file`); gzip files are decompressed to a
temporary file first because those readers take a path to raw bytes. CIFAR batches are pickles: they are read
with a restricted unpickler that can rebuild numpy arrays and nothing else, so a crafted batch file cannot run
code (torchvision's CIFAR classes use plain `pickle.load`).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import DataError

# (module, name) pairs a CIFAR batch may reference: numpy array/dtype reconstruction and bytes decoding.
_CIFAR_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def read_idx_images(path: Path) -> torch.Tensor:
    """uint8 (N, 1, H, W) images from an IDX3 file (`.gz` or raw)."""
    from torchvision.datasets.mnist import read_image_file  # ~2.7 s: only for IDX files (architecture.md)

    return _read_idx(path, read_image_file).unsqueeze(1).contiguous()


def read_idx_labels(path: Path) -> torch.Tensor:
    """int64 (N,) labels from an IDX1 file (`.gz` or raw)."""
    from torchvision.datasets.mnist import read_label_file  # ~2.7 s: only for IDX files (architecture.md)

    return _read_idx(path, read_label_file)


def _read_idx(path: Path, reader: Any) -> torch.Tensor:
    """Run a torchvision IDX reader on `path` (gzip is decompressed to a temporary file first)."""
    try:
        if path.suffix != ".gz":
            return reader(_non_empty(path))
        with tempfile.TemporaryDirectory(prefix="cnnlab-idx-") as tmp:
            raw = Path(tmp) / path.stem
            with gzip.open(path, "rb") as source, open(raw, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            return reader(_non_empty(raw))
    except (
        AssertionError,
        ValueError,
        TypeError,
        RuntimeError,
        KeyError,
        OSError,
        EOFError,
        zlib.error,
    ) as error:
        why = (
            "not an IDX file of the expected kind (bad header or size)"
            if isinstance(error, AssertionError)
            else first_line(error)
        )
        raise DataError(
            f"cannot read IDX file {path}: {why}; replace it with the dataset's original file"
        ) from None


def _non_empty(path: Path) -> str:
    """`path` for a reader; ValueError for an empty file (torchvision's reader would fail on int(b''))."""
    if path.stat().st_size == 0:
        raise ValueError("the file is empty")
    return str(path)


def read_cifar_batches(paths: Sequence[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 labels from CIFAR python batch files (`labels`/`fine_labels`)."""
    images, labels = [], []
    for path in paths:
        batch = read_cifar_pickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as error:
            raise DataError(f"{path} is not a CIFAR batch ({type(error).__name__}: {error})") from None
        if len(batch_labels) != len(data):
            raise DataError(f"{path}: {len(data)} images but {len(batch_labels)} labels")
        images.append(torch.from_numpy(data.copy()))
        labels.append(torch.from_numpy(batch_labels))
    return torch.cat(images), torch.cat(labels)


def read_cifar_class_names(path: Path, key: str) -> tuple[str, ...]:
    """Class names from a CIFAR meta file (`label_names` or `fine_label_names`)."""
    meta = read_cifar_pickle(path)
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path} has no {key!r} list; is it a CIFAR meta file?")
    return tuple(_text(name) for name in names)


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """Load one CIFAR pickle with the restricted unpickler; keys are returned as str."""
    try:
        with open(path, "rb") as handle:
            loaded = _CifarUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"refused to read {path}: {first_line(error)}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path} holds a {type(loaded).__name__}, not a CIFAR batch mapping")
    return {_text(key): value for key, value in loaded.items()}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array reconstruction; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """Allow-list lookup: refuse everything that is not needed to rebuild a numpy array."""
        if (module, name) not in _CIFAR_PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a CIFAR batch never needs")
        return super().find_class(module, name)


def _text(value: Any) -> str:
    """bytes or str → str (CIFAR files written by Python 2 or 3)."""
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def first_line(error: BaseException) -> str:
    """The first line of an exception message, or its type name when empty."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def file_exists(path: Path) -> bool:
    """True for a readable regular file (following symlinks)."""
    return path.is_file() and os.access(path, os.R_OK)
