"""`ImageSet`: a whole split held as one uint8 tensor, and the transforms applied to it at load time.

Everything here works on the full tensor at once (resize, class selection, stratified subsets), so the
training loop never touches a single image in Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

SUBSET_SEED = (
    0  # subsets are fixed per dataset, independent of the run seed, so every run sees the same images
)
RESIZE_STEP_BYTES = 256 * 2**20  # float32 working memory of one resize step (a chunk of images)
MEMINFO = Path("/proc/meminfo")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """One split: `images` uint8 (N, C, H, W), `labels` int64 (N,), class names, optional file stems.

    `bad_files` lists `(relative path, reason)` for folder images excluded by `bad_images: skip`, so a run can
    record them (see `cnnlab.data.write_bad_files`). Treat the tensors as read-only: loads are memoised.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    ids: tuple[str, ...] | None = None
    bad_files: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        """Number of images."""
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> list[int]:
        """Images per class, in class-index order."""
        return torch.bincount(self.labels, minlength=len(self.class_names)).tolist()


def take(image_set: ImageSet, indices: np.ndarray | torch.Tensor | Sequence[int]) -> ImageSet:
    """The images at `indices` (in that order), keeping class names and ids aligned."""
    index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    ids = tuple(image_set.ids[i] for i in index.tolist()) if image_set.ids is not None else None
    return dataclasses.replace(
        image_set, images=image_set.images[index], labels=image_set.labels[index], ids=ids
    )


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square-resize a uint8 batch to `size` (bilinear, antialiased when shrinking); no-op at that size.

    A result that cannot fit in the memory available is a ConfigError before anything is allocated (at
    data.image_size=4096 the 1,437 digits would be 24 GB, and torch's float working copy 96 GB)."""
    if images.shape[-2:] == (size, size):
        return images
    count, channels, height, width = images.shape
    per_image = channels * (size * size + height * width) * 4  # float32 input and output of one image
    step = max(1, RESIZE_STEP_BYTES // per_image)
    _check_memory(count * channels * size * size + min(count, step) * per_image, images.shape, size)
    chunks = []
    for start in range(0, count, step):
        chunk = images[start : start + step].float()
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        chunks.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    if not chunks:
        return images.new_zeros((0, channels, size, size))
    return torch.cat(chunks)


def _check_memory(needed: int, shape: torch.Size, size: int) -> None:
    available = available_memory()
    if available is not None and needed > available:
        count, channels = shape[:2]
        raise ConfigError(
            f"data.image_size={size}: {count:,} images of {channels}×{size}×{size} need "
            f"{needed / 1e9:.1f} GB of memory, more than the {available / 1e9:.1f} GB available; choose a "
            "smaller data.image_size or fewer images (data.subset, data.per_class, data.classes)"
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable); None where it cannot be read."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def select_classes(image_set: ImageSet, wanted: Sequence[str]) -> ImageSet:
    """Keep the `wanted` classes (names, or indices when no class has that name), re-indexed in that order."""
    old_indices = [_class_index(image_set.class_names, name) for name in wanted]
    if len(set(old_indices)) != len(old_indices):
        raise ConfigError(f"data.classes={list(wanted)} names a class twice")
    mapping = torch.full((len(image_set.class_names),), -1, dtype=torch.int64)
    mapping[torch.tensor(old_indices)] = torch.arange(len(old_indices))
    new_labels = mapping[image_set.labels]
    keep = torch.nonzero(new_labels >= 0).flatten()
    kept = take(image_set, keep)
    names = tuple(image_set.class_names[i] for i in old_indices)
    return dataclasses.replace(kept, labels=new_labels[keep], class_names=names)


def _class_index(class_names: Sequence[str], name: str) -> int:
    """Index of a class given by name, or by its index when no class is called that."""
    if name in class_names:
        return list(class_names).index(name)
    if name.isdigit() and int(name) < len(class_names):
        return int(name)
    shown = ", ".join(class_names) if len(class_names) <= 20 else ", ".join(class_names[:20]) + ", ..."
    raise ConfigError(f"data.classes: unknown class {name!r}; allowed: {shown} (or their indices)")


def stratified_subset(
    labels: torch.Tensor, *, total: int | None = None, per_class: int | None = None
) -> np.ndarray:
    """Sorted indices of a class-stratified subset: `total` images overall, or at most `per_class` per class.

    Drawn with the fixed `SUBSET_SEED`, so the same config always selects the same images.
    """
    labels_np = labels.numpy()
    rng = np.random.default_rng(SUBSET_SEED)
    classes = np.unique(labels_np)
    members = [rng.permutation(np.flatnonzero(labels_np == c)) for c in classes]
    if per_class is not None:
        quotas = [min(per_class, len(m)) for m in members]
    else:
        quotas = _proportional_quotas([len(m) for m in members], total or 0)
    chosen = np.concatenate([m[:q] for m, q in zip(members, quotas)]) if members else np.zeros(0, np.int64)
    return np.sort(chosen).astype(np.int64)


def _proportional_quotas(counts: list[int], total: int) -> list[int]:
    """Split `total` over classes in proportion to `counts` (largest remainder method)."""
    overall = sum(counts)
    exact = [total * c / overall for c in counts]
    quotas = [int(x) for x in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: (exact[i] - quotas[i], counts[i]), reverse=True)
    for i in by_remainder[: total - sum(quotas)]:
        quotas[i] += 1
    return [min(q, c) for q, c in zip(quotas, counts)]


def apply_subset(image_set: ImageSet, *, subset: int | None, per_class: int | None) -> ImageSet:
    """`data.subset` / `data.per_class` on a training split (validated against its size)."""
    if subset is None and per_class is None:
        return image_set
    if subset is not None and per_class is not None:
        raise ConfigError("data.subset and data.per_class are exclusive; set one of them")
    if subset is not None and not 1 <= subset <= len(image_set):
        raise ConfigError(f"data.subset={subset} is out of range; it must be in [1, {len(image_set)}]")
    if per_class is not None and per_class < 1:
        raise ConfigError(f"data.per_class={per_class} is out of range; it must be at least 1")
    return take(image_set, stratified_subset(image_set.labels, total=subset, per_class=per_class))


def apply_test_subset(image_set: ImageSet, test_subset: int | None) -> ImageSet:
    """`data.test_subset` on a test split: N images, stratified, drawn with the fixed `SUBSET_SEED`, so every
    run of a study (and every re-evaluation) scores the same images."""
    if test_subset is None:
        return image_set
    if not 1 <= test_subset <= len(image_set):
        raise ConfigError(
            f"data.test_subset={test_subset} is out of range; it must be in [1, {len(image_set)}] "
            "(the size of the test split)"
        )
    return take(image_set, stratified_subset(image_set.labels, total=test_subset))
