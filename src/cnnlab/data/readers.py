"""Readers for the on-disk dataset formats: IDX (MNIST-likes, raw or gzip) and CIFAR python batches.

IDX parsing is torchvision's (`read_image_file` / `read_label_file`); gzip files are decompressed to a
temporary file first because those readers take a path to raw bytes. CIFAR batches are pickles: they are read
with a restricted unpickler that can rebuild numpy arrays and nothing else, so a crafted batch file cannot run
code (torchvision's CIFAR classes use plain `pickle.load`).
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from cnnlab.errors import DataError, first_line

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

    return _read_idx(path, read_image_file, IDX_IMAGE_DIMENSIONS).unsqueeze(1).contiguous()


def read_idx_labels(path: Path) -> torch.Tensor:
    """int64 (N,) labels from an IDX1 file (`.gz` or raw)."""
    from torchvision.datasets.mnist import read_label_file  # ~2.7 s: only for IDX files (architecture.md)

    return _read_idx(path, read_label_file, IDX_LABEL_DIMENSIONS)


IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # the IDX format's type codes
IDX_UNSIGNED_BYTE = 0x08  # the type of every MNIST-like file
IDX_IMAGE_DIMENSIONS, IDX_LABEL_DIMENSIONS = 3, 1  # (count, height, width) images; (count,) labels
COPY_CHUNK = 1 << 20


def _read_idx(path: Path, reader: Any, dimensions: int) -> torch.Tensor:
    """Run a torchvision IDX reader on `path` after checking its header (unsigned bytes in `dimensions`
    dimensions) and its size against the header (gzip is decompressed to a temporary file first, never past
    the size the header promises)."""
    try:
        if path.suffix != ".gz":
            with open(path, "rb") as source:
                _check_idx_size(_idx_size(source, dimensions), path.stat().st_size)
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="cnnlab-idx-") as tmp:
            raw = Path(tmp) / path.stem
            with gzip.open(path, "rb") as source, open(raw, "wb") as target:
                _copy_idx(source, target, dimensions)
            return reader(str(raw))
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


def _idx_size(source: BinaryIO, dimensions: int) -> int:
    """The size in bytes an IDX file's header promises (header included), read from `source`'s start
    (left just past the header); ValueError for an empty file, one that is not IDX, or one that does not
    hold unsigned bytes in `dimensions` dimensions (images and labels swapped, say)."""
    magic = source.read(4)
    if not magic:
        raise ValueError("the file is empty")
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in IDX_ITEM_BYTES:
        raise ValueError("not an IDX file (bad magic number)")
    _check_idx_kind(magic[2], magic[3], dimensions)
    dims_bytes = source.read(4 * magic[3])
    if len(dims_bytes) < 4 * magic[3]:
        raise ValueError("the file is truncated inside its header")
    dims = struct.unpack(f">{magic[3]}I", dims_bytes)
    return 4 + len(dims_bytes) + math.prod(dims) * IDX_ITEM_BYTES[magic[2]]


def _check_idx_kind(item_type: int, found: int, dimensions: int) -> None:
    """An IDX header's type and dimension count are those of MNIST-like images (3) or labels (1)."""
    kind = "images" if dimensions == IDX_IMAGE_DIMENSIONS else "labels"
    if found != dimensions:
        raise ValueError(
            f"its header has {found} dimension(s), but an IDX {kind} file has {dimensions} (the images and "
            "labels files swapped?)"
        )
    if item_type != IDX_UNSIGNED_BYTE:
        raise ValueError(f"its header gives the value type 0x{item_type:02X}, not unsigned bytes (0x08)")


def _check_idx_size(expected: int, actual: int) -> None:
    if actual < expected:
        raise ValueError(f"the file is truncated: its header promises {expected:,} bytes, it has {actual:,}")
    if actual > expected:
        raise ValueError(f"the file holds more than the {expected:,} bytes its header promises")


def _copy_idx(source: BinaryIO, target: BinaryIO, dimensions: int) -> None:
    """Copy a decompressing IDX stream, stopping one byte past the size its header promises (a gzip bomb
    never fills the disk)."""
    expected = _idx_size(source, dimensions)
    source.seek(0)
    copied, limit = 0, expected + 1
    while copied < limit and (chunk := source.read(min(COPY_CHUNK, limit - copied))):
        target.write(chunk)
        copied += len(chunk)
    _check_idx_size(expected, copied)


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
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001  (a damaged pickle: LookupError, MemoryError, OverflowError, ...)
        raise DataError(f"refused to read {path}: {first_line(error)}") from None
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


def file_exists(path: Path) -> bool:
    """True for a readable regular file (following symlinks)."""
    return path.is_file() and os.access(path, os.R_OK)
