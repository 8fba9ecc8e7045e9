"""Batches per second: cnnlab's InMemoryLoader vs torchvision Dataset + PIL transforms + DataLoader.

Both pipelines serve Fashion-MNIST-shaped data (the real files when `cnnlab data fashion-mnist` finds them,
else 60,000 generated 1x28x28 images) with the same augmentation (random horizontal flip, random crop 28
with 4 pixels of zero padding) and normalization, in batches of 256. Each repetition times a fixed number of
batches after a warm-up batch; the table reports min / median / max over repetitions and the ratio of medians.
The main process runs with `--threads` torch threads (default 1, like each DataLoader worker): on a shared
machine more intra-op threads than free cores make small tensor ops spin and stall.

    python benchmarks/data_loader.py                 # print the table
    python benchmarks/data_loader.py --record        # also write the "## Data loader" section of RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Data loader"
BATCH_SIZE = 256  # images per batch, both pipelines
PADDING = 4  # RandomCrop(28, padding=4), both pipelines


def fashion_like() -> tuple[torch.Tensor, torch.Tensor, str]:
    """Fashion-MNIST's training split when installed, else 60,000 random 1x28x28 images; and which it is."""
    from cnnlab.config import DataConfig
    from cnnlab.data import load_local_split
    from cnnlab.errors import DataError

    try:
        train = load_local_split(DataConfig(name="fashion-mnist"), "train")
        return train.images, train.labels, "Fashion-MNIST training split (60,000 x 1x28x28, real files)"
    except DataError:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (60000, 1, 28, 28), generator=generator, dtype=torch.uint8)
        return images, torch.randint(0, 10, (60000,), generator=generator), "generated 60,000 x 1x28x28 uint8"


def in_memory_batches(images: torch.Tensor, labels: torch.Tensor, device: str) -> Callable[[], Iterable]:
    """A fresh epoch iterator of cnnlab's loader (flip+crop, dataset normalization) per call."""
    from cnnlab.data import InMemoryLoader, normalization

    mean, std = normalization(images, "dataset")
    loader = InMemoryLoader(
        images,
        labels,
        batch_size=BATCH_SIZE,
        shuffle=True,
        augment="flip+crop",
        mean=mean,
        std=std,
        seed=0,
        device=device,
    )
    epochs = iter(range(10**9))

    def epoch() -> Iterable:
        loader.set_epoch(next(epochs))
        return iter(loader)

    return epoch


class _PilDataset(torch.utils.data.Dataset):
    """The usual hand-written pipeline: one PIL image per sample through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def torchvision_batches(images: torch.Tensor, labels: torch.Tensor, workers: int) -> Callable[[], Iterable]:
    """A fresh epoch iterator of DataLoader(PIL dataset, flip, crop, ToTensor, Normalize) per call."""
    from torchvision import transforms

    from cnnlab.data import normalization

    mean, std = normalization(images, "dataset")
    transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(28, padding=PADDING),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = _PilDataset(images[:, 0].numpy(), labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    return lambda: iter(loader)


def batches_per_second(make_epoch: Callable[[], Iterable], batches: int, device: str) -> float:
    """Time `batches` batches after one warm-up batch (a new epoch iterator per repetition)."""
    iterator = iter(make_epoch())
    next(iterator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    _sync(device)
    del images
    return batches / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    name: str, make_epoch: Callable[[], Iterable], batches: int, repeats: int, device: str
) -> list[float]:
    """Repeated batches/s measurements of one pipeline, printed as they come."""
    rates = []
    for repeat in range(repeats):
        rates.append(batches_per_second(make_epoch, batches, device))
        print(f"  {name} repeat {repeat + 1}/{repeats}: {rates[-1]:.1f} batches/s", flush=True)
    return rates


def machine() -> str:
    """CPU model, core count, GPU (if used), versions: what a reader needs to compare numbers."""
    import torchvision

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, nproc {os.cpu_count()}{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )


def table(results: dict[str, list[float]]) -> list[str]:
    """Markdown rows: pipeline, min / median / max batches/s and images/s at the median."""
    rows = ["| pipeline | min | median | max | images/s (median) |", "|---|---:|---:|---:|---:|"]
    for name, rates in results.items():
        median = statistics.median(rates)
        rows.append(
            f"| {name} | {min(rates):.1f} | {median:.1f} | {max(rates):.1f} | {median * BATCH_SIZE:,.0f} |"
        )
    return rows


def record(lines: list[str]) -> None:
    """Replace (or append) the '## Data loader' section of RESULTS.md, keeping every other section."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + "\n" + (text[end:] if end >= 0 else "")
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per repetition")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for torchvision")
    parser.add_argument("--device", default="cpu", help="device of the in-memory loader (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--record", action="store_true", help=f"write the results into {RESULTS}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels, source = fashion_like()
    print(f"data: {source}\nmachine: {machine()}", flush=True)
    results = {
        f"cnnlab InMemoryLoader, flip+crop on {args.device}": measure(
            "in-memory",
            in_memory_batches(images, labels, args.device),
            args.batches,
            args.repeats,
            args.device,
        ),
        f"torchvision PIL transforms + DataLoader(num_workers={args.workers})": measure(
            "torchvision",
            torchvision_batches(images, labels, args.workers),
            args.batches,
            args.repeats,
            "cpu",
        ),
    }
    medians = [statistics.median(rates) for rates in results.values()]
    lines = [
        SECTION,
        "",
        f"{datetime.date.today().isoformat()} — `python benchmarks/data_loader.py "
        f"--repeats {args.repeats} --batches {args.batches} --workers {args.workers} --device {args.device} "
        f"--threads {args.threads}`",
        "",
        f"Data: {source}; batch {BATCH_SIZE}; random horizontal flip + random crop 28 (padding "
        f"{PADDING}) + normalization; {args.batches} timed batches per repetition, {args.repeats} "
        "repetitions (batches/s).",
        "",
        f"Machine: {machine()}.",
        "",
        *table(results),
        "",
        f"In-memory / torchvision (medians): **{medians[0] / medians[1]:.1f}x**.",
    ]
    print("\n".join(lines))
    if args.record:
        record(lines)
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
