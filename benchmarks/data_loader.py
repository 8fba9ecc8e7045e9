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
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SECTION = "Data loader"
BATCH_SIZE = 256  # images per batch, both pipelines


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


def torchvision_batches(images: torch.Tensor, labels: torch.Tensor, workers: int) -> Callable[[], Iterable]:
    """A fresh epoch iterator of DataLoader(PIL dataset, flip, crop, ToTensor, Normalize) per call."""
    from cnnlab.data import normalization

    mean, std = normalization(images, "dataset")
    loader = common.usual_loader(images, labels, mean, std, batch_size=BATCH_SIZE, workers=workers)
    return lambda: iter(loader)


def batches_per_second(make_epoch: Callable[[], Iterable], batches: int, device: str) -> float:
    """Time `batches` batches after one warm-up batch (a new epoch iterator per repetition)."""
    iterator = iter(make_epoch())
    next(iterator)
    common.sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    common.sync(device)
    del images
    return batches / (time.perf_counter() - start)


def measure(
    name: str, make_epoch: Callable[[], Iterable], batches: int, repeats: int, device: str
) -> list[float]:
    """Repeated batches/s measurements of one pipeline, printed as they come."""
    rates = []
    for repeat in range(repeats):
        rates.append(batches_per_second(make_epoch, batches, device))
        print(f"  {name} repeat {repeat + 1}/{repeats}: {rates[-1]:.1f} batches/s", flush=True)
    return rates


def table(results: dict[str, list[float]]) -> list[str]:
    """Markdown rows: pipeline, min / median / max batches/s and images/s at the median."""
    rows = ["| pipeline | min | median | max | images/s (median) |", "|---|---:|---:|---:|---:|"]
    for name, rates in results.items():
        median = statistics.median(rates)
        rows.append(
            f"| {name} | {min(rates):.1f} | {median:.1f} | {max(rates):.1f} | {median * BATCH_SIZE:,.0f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per repetition")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes for torchvision")
    parser.add_argument("--device", default="cpu", help="device of the in-memory loader (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--record", action="store_true", help=f"write the results into {common.RESULTS}")
    parser.add_argument("--json", help="also write the headline figures to this file (run_all.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels, source = fashion_like()
    print(f"data: {source}\nmachine: {common.machine(args.device)}", flush=True)
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
    command = (
        f"python benchmarks/data_loader.py --repeats {args.repeats} --batches {args.batches} "
        f"--workers {args.workers} --device {args.device} --threads {args.threads}"
    )
    lines = [
        *common.header(command, args.device),
        "",
        f"Data: {source}; batch {BATCH_SIZE}; random horizontal flip + random crop 28 (padding "
        f"{common.PADDING}) + normalization; {args.batches} timed batches per repetition, {args.repeats} "
        "repetitions (batches/s).",
        "",
        *table(results),
        "",
        f"In-memory / torchvision (medians): **{medians[0] / medians[1]:.1f}x**.",
    ]
    print("\n".join(lines))
    common.write_json(args.json, {"in_memory_over_torchvision": medians[0] / medians[1]})
    if args.record:
        common.record_section(SECTION, lines)
        print(f"recorded in {common.RESULTS}")


if __name__ == "__main__":
    main()
