"""Helpers shared by the data tests: an isolated data environment and writers for the real file formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import clear_memory_cache, locations


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No system datasets, no $CNNLAB_DATA, no downloads, a private cache; memoised loads forgotten."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(locations.CACHE_ENV, str(cache))
    monkeypatch.setenv(locations.OFFLINE_ENV, "1")
    monkeypatch.delenv(locations.DATA_ENV, raising=False)
    monkeypatch.setattr(locations, "SYSTEM_DATA_DIRS", ())
    clear_memory_cache()
    return cache


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    """Write a uint8 array in IDX format (big-endian header: magic 0x08 type, ndim, then each dimension)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist_like(directory: Path, *, train: int, test: int, compress: bool, seed: int = 0) -> dict:
    """The four MNIST-style IDX files with random 28x28 images and labels cycling over 10 classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress=compress)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar10(directory: Path, *, per_batch: int, seed: int = 0) -> dict:
    """cifar-10-batches-py/: five training batches, a test batch and batches.meta, as CIFAR's pickles."""
    rng = np.random.default_rng(seed)
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    names = [
        name.encode()
        for name in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ]
    meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_cifar100(directory: Path, *, train: int, test: int, seed: int = 0) -> dict:
    """cifar-100-python/: train, test and meta pickles with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = directory / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, count in (("train", train), ("test", test)):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, count)]
        batch = {b"data": data, b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, fine)
    meta = {
        b"fine_label_names": [f"class{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written
