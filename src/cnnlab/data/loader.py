"""The fast path: a whole split as one uint8 tensor on the training device, served in index-sliced batches.

Each epoch is a permutation (from a generator seeded by (seed, epoch)) sliced into batches; augmentation
runs batch-wise on the device; then the batch becomes float32, is normalized and optionally made
channels_last. Under DDP every rank takes a disjoint, equal-length share of the epoch's permutation (padded
by wrapping, as DistributedSampler does). Lightning accepts the loader as a train/val/test dataloader and
calls `set_epoch` through its `sampler` attribute at the start of each epoch.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cnnlab.data.augment import augment_uint8, parse_augment, random_resized_crop
from cnnlab.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_MODES = ("dataset", "weights", "none")
_STATS_MEMO_SIZE = 16
_stats_memo: collections.OrderedDict[str, tuple[tuple[float, ...], tuple[float, ...]]] = (
    collections.OrderedDict()
)


def stream_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit generator seed that is a pure function of (seed, epoch, stream name)."""
    digest = hashlib.sha256(f"cnnlab:{stream}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _EpochHook:
    """What Lightning finds as `loader.sampler`: it calls `set_epoch` here at the start of every epoch."""

    def __init__(self, loader: InMemoryLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        """Forward Lightning's epoch to the loader."""
        self.loader.set_epoch(epoch)


class InMemoryLoader:
    """Iterable of `(float32 normalized images, int64 labels)` batches over uint8 images held on `device`.

    The order and augmentation of epoch `e` depend only on `(seed, e)` (and the rank), so a resumed run
    sees exactly the batches an uninterrupted one would. `len()` is the number of batches per epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        augment: str = "none",
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        _check_inputs(images, labels, batch_size, rank, world_size)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.operations = parse_augment(augment)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self.scale, self.shift = _affine(mean, std, images.shape[1], self.device)
        self.epoch = 0
        self.sampler = _EpochHook(self)
        self.batch_sampler = None  # Lightning looks for both; batching is done here

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration serves."""
        self.epoch = int(epoch)

    @property
    def samples_per_rank(self) -> int:
        """Images this rank serves per epoch (after padding or dropping to an equal share)."""
        total = len(self.labels)
        return total // self.world_size if self.drop_last else math.ceil(total / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        count = self.samples_per_rank
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """The indices (into this loader's images) this rank serves in `epoch`, in order."""
        epoch = self.epoch if epoch is None else epoch
        total = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, "order"))
            order = torch.randperm(total, generator=generator)
        else:
            order = torch.arange(total)
        padded_size = self.samples_per_rank * self.world_size
        if padded_size > total:
            order = torch.cat([order] * math.ceil(padded_size / max(total, 1)))
        return order[:padded_size][self.rank : padded_size : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this epoch's batches (the same ones every time for the same epoch)."""
        order = self.epoch_indices().to(self.device)
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch, f"augment:{self.rank}"))
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self._prepare(self.images[index], generator), self.labels[index]

    def _prepare(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a uint8 batch, convert to normalized float32, optionally channels_last."""
        images = augment_uint8(images, self.operations, generator)
        floats = images.float()
        if "randomresizedcrop" in self.operations:
            floats = random_resized_crop(floats, generator)
        floats = floats.mul_(self.scale).add_(self.shift)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return floats.contiguous(memory_format=memory_format)


def _check_inputs(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, rank: int, world_size: int
) -> None:
    """The loader's arguments make sense (programming errors, not user errors, raise ValueError)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} is out of range; it must be at least 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


def _affine(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) so that uint8 x maps to (x / 255 - mean) / std, shaped (1, C, 1, 1)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
    if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
        raise ValueError(f"mean/std have {mean_t.numel()}/{std_t.numel()} values for {channels} channels")
    scale = (1.0 / (255.0 * std_t)).expand(channels).reshape(1, channels, 1, 1)
    shift = (-mean_t / std_t).expand(channels).reshape(1, channels, 1, 1)
    return scale.to(device), shift.to(device)


def normalization(images: torch.Tensor, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units: training-set, ImageNet weights' or no statistics.

    `dataset` statistics are exact (from a per-channel histogram of the uint8 values) and memoised by the
    images' content, so every run over the same training images computes them once.
    """
    channels = int(images.shape[1])
    if mode == "none":
        return (0.0,) * channels, (1.0,) * channels
    if mode == "weights":
        return _imagenet_stats(channels)
    if mode != "dataset":
        raise ConfigError(f"data.normalize={mode!r} is not allowed; allowed: {', '.join(NORMALIZE_MODES)}")
    if images.device.type != "cpu":
        return _dataset_stats(images)  # on an accelerator the histogram is cheaper than hashing a copy
    key = _content_key(images)
    if key not in _stats_memo:
        _stats_memo[key] = _dataset_stats(images)
        while len(_stats_memo) > _STATS_MEMO_SIZE:
            _stats_memo.popitem(last=False)
    return _stats_memo[key]


def _imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for 3 channels; their average repeated for any other channel count."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels


def _content_key(images: torch.Tensor) -> str:
    """Digest of a uint8 tensor's shape and bytes (the memo key of its statistics)."""
    array = np.ascontiguousarray(images.detach().cpu().numpy())
    digest = hashlib.blake2b(repr(array.shape).encode(), digest_size=20)
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _dataset_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images, in [0, 1] units."""
    if images.dtype != torch.uint8 or len(images) == 0:
        raise ValueError(
            f"dataset statistics need non-empty uint8 images, got {images.dtype} {tuple(images.shape)}"
        )
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).cpu().to(torch.float64)
        mean = float((counts * values).sum() / counts.sum())
        variance = float((counts * (values - mean) ** 2).sum() / counts.sum())
        means.append(mean)
        stds.append(max(math.sqrt(variance), 1e-6))
    return tuple(means), tuple(stds)
