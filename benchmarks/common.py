"""Shared helpers of the benchmark scripts: the data they run on, the usual PIL pipeline they compare with,
the machine, repetition statistics, the GEMM peak and writing a section of RESULTS.md (or a JSON summary
for `run_all.py`).

Not a test module and not part of the package: the scripts import it as `common` from this folder.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import platform
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
FASHION_SHAPE = (1, 28, 28)
FASHION_SIZES = {"train": 60000, "t10k": 10000}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
PADDING = 4  # RandomCrop(28, padding=4) of the usual pipeline and cnnlab's crop


def fashion_data_dir(sizes: dict[str, int] | None = None) -> tuple[str | None, str]:
    """(data.data_dir for cnnlab, description): None when Fashion-MNIST is installed (and `sizes` is not
    given), else a temporary folder of generated IDX files of that shape (random pixels: chance accuracy)."""
    from cnnlab.data import get_spec, locate

    if sizes is None and locate(get_spec("fashion-mnist"), None) is not None:
        return None, "Fashion-MNIST (real files, 60,000 training / 10,000 test images of 1x28x28)"
    counts = sizes or FASHION_SIZES
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-bench-fashion-"))
    write_generated_idx(folder, counts)
    return str(folder), (
        f"generated Fashion-MNIST-shaped IDX files ({counts['train']:,} / {counts['t10k']:,} random 1x28x28 "
        "images: the Debian package dataset-fashion-mnist is absent or --generated was asked)"
    )


def write_generated_idx(folder: Path, sizes: dict[str, int]) -> None:
    """Write gzipped IDX image/label files named like Fashion-MNIST's, with seeded random content."""
    generator = torch.Generator().manual_seed(0)
    for prefix, count in sizes.items():
        images = torch.randint(0, 256, (count, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.arange(count, dtype=torch.uint8) % 10  # every class present, for stratified splits
        header = struct.pack(">IIII", IDX_IMAGES_MAGIC, count, 28, 28)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb", compresslevel=1) as handle:
            handle.write(header + images.numpy().tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb", compresslevel=1) as handle:
            handle.write(struct.pack(">II", IDX_LABELS_MAGIC, count) + labels.numpy().tobytes())


class PilDataset(torch.utils.data.Dataset):
    """The usual hand-written dataset: one PIL image per sample through torchvision transforms."""

    def __init__(self, images: Any, labels: Any, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def usual_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int,
    workers: int,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """The usual pipeline: uint8 (N, 1, H, W) images as PIL images through RandomHorizontalFlip,
    RandomCrop(28, padding=4), ToTensor and Normalize, in a DataLoader with `workers` processes."""
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(images.shape[-1], padding=PADDING),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = PilDataset(images[:, 0].numpy(), labels.numpy(), transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native-bf16 flags (avx512_bf16, amx_bf16): where bf16 training can pay on a CPU."""
    from cnnlab.train.precision import cpu_bf16_flags as flags

    return flags()


def write_json(path: str | Path | None, figures: dict[str, Any]) -> None:
    """Write a script's headline figures for `run_all.py` (nothing when no path was given)."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=1) + "\n")


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(
    device: str,
    *,
    size: int = 2048,
    repeats: int = 10,
    dtype: torch.dtype = torch.float32,
    kernel: str = "mm",
) -> list[float]:
    """Measured GEMM throughput (size x size @ size x size), one figure per repetition, in GFLOP/s.

    `kernel` "mm" times torch.mm (MKL's GEMM for fp32 on a CPU); "conv1x1" the same GEMM as a 1x1
    convolution of `size` channels over `size` pixels in channels_last, so through the library that runs
    the models' convolutions (oneDNN on a CPU, cuDNN on a GPU). On the 2-core AMD EPYC of 2026-12-02 MKL's
    fp32 torch.mm ran at half the convolution's rate, so the convolution is the better fp32 peak there. fp32
    means true fp32: TF32 is switched off for the measurement (and restored after it).
    """
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device, dtype)
    right = torch.randn(size, size, generator=generator).to(device, dtype)
    if kernel == "conv1x1":  # pixels x in-channels times in-channels x out-channels
        pixels = left.reshape(1, size // 64, 64, size).permute(0, 3, 1, 2)  # channels_last (1, size, _, 64)
        weights = right.t().reshape(size, size, 1, 1).contiguous(memory_format=torch.channels_last)

        def gemm() -> object:
            return torch.nn.functional.conv2d(pixels, weights)
    else:

        def gemm() -> object:
            return torch.mm(left, right)

    on_gpu = torch.device(device).type == "cuda"
    inner = 20 if on_gpu else 1  # a GPU GEMM is too short to time alone
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for _ in range(3):
            gemm()
        rates = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                gemm()
            sync(device)
            rates.append(2 * size**3 * inner / (time.perf_counter() - start) / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow_tf32
    return rates


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max) of repeated measurements."""
    return min(values), statistics.median(values), max(values)


def format_spread(values: Sequence[float], digits: int = 1) -> str:
    """`min / median / max` with a fixed number of decimals and thousands separators."""
    return " / ".join(f"{value:,.{digits}f}" for value in spread(values))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine(device: str) -> str:
    """CPU model, cores, GPU when used, versions, torch threads and the current load average."""
    import lightning
    import torchvision

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.device(device).type == "cuda" else ""
    bf16 = "+".join(cpu_bf16_flags()) or "no avx512_bf16/amx_bf16"
    return (
        f"{cpu_model()} ({bf16}), nproc {os.cpu_count()}{gpu}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}, lightning {lightning.__version__}; "
        f"torch threads {torch.get_num_threads()}; load average {load_average()}"
    )


def load_average() -> str:
    """The 1-minute load average now (what else was running on the machine)."""
    return f"{os.getloadavg()[0]:.2f}"


def git_commit() -> str:
    """The short commit of the working tree the benchmark ran from (with '+dirty' when it differs)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=root, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{'+dirty' if dirty else ''}" if commit else "unknown"


def header(command: str, device: str) -> list[str]:
    """The first lines of a RESULTS.md section: date, the command, the machine, the code's commit."""
    return [
        f"{datetime.date.today().isoformat()} — `{command}` (cnnlab commit {git_commit()})",
        "",
        f"Machine: {machine(device)}.",
    ]


def record_section(title: str, lines: Sequence[str]) -> None:
    """Replace (or append) the `## <title>` section of RESULTS.md, keeping every other section."""
    heading = f"## {title}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    body = "\n".join([heading, "", *lines]).rstrip("\n") + "\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + body + (text[end:] if end >= 0 else "")
    RESULTS.write_text(text)
