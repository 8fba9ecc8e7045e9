"""Training throughput of one model three ways, in one process: the usual pipeline, a hand loop, cnnlab's fit.

(a) usual: torchvision-style Dataset of PIL images + per-sample transforms (RandomHorizontalFlip,
    RandomCrop(28, padding=4), ToTensor, Normalize) + DataLoader(num_workers=2) + a plain PyTorch loop
    (fp32, default memory format, running loss/accuracy with `.item()` as such loops print them);
(b) hand:  a minimal loop over the in-memory uint8 tensors: index-sliced batches of a permutation, the same
    batched flip + pad-crop (cnnlab.data.augment), normalize, forward/backward/step, with the settings
    cnnlab uses on the device (memory format, bf16 autocast on CUDA) and nothing else;
(c) cnnlab: `cnnlab.train.fit` on the same images (a 2-epoch run; the second epoch is timed, from
    metrics.csv's `epoch_time_s`: no validation, no test, so the epoch is pure training).

All three train the same model (built by `cnnlab.train.run.prepare_run`, so identical to fit's) on the same
images (fit's stratified subset of Fashion-MNIST's training split, `--steps` x `--batch-size` images; the
generated stand-in when the Debian package is absent) with the same batch size, optimizer (SGD, nesterov
momentum 0.9, weight decay 5e-4) and augmentation. One repetition = one epoch of `--steps` steps, timed from
the request of the first batch to the end of the last step; warm-up = one untimed epoch per pipeline (per fit
call for (c)). Repetitions are interleaved (a, b, c, a, b, c, ...) so a change of machine load hits all three.

Achieved GFLOP/s = images/s x 3 x forward FLOPs per image (cnnlab.models.count_flops: torch's FLOP counter,
a multiply-add = 2 FLOPs; backward counted as twice the forward), compared with the fp32 matmul peak
measured in this process (2048x2048 torch.mm).

    python benchmarks/throughput.py                      # CPU, resnet20_cifar, lenet5, resnet18
    python benchmarks/throughput.py --device cuda        # on a GPU
    python benchmarks/throughput.py --quick              # seconds: tiny sizes, one model
    python benchmarks/throughput.py --record             # also write the section of RESULTS.md
    python benchmarks/throughput.py --profile resnet20_cifar   # torch.profiler table of fit's steps
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CNNLAB_QUIET", "1")

import common  # noqa: E402

SECTION = "Training throughput"
MODELS = ("resnet20_cifar", "lenet5", "resnet18")
STEPS = {"resnet20_cifar": 20, "lenet5": 60, "resnet18": 2}  # steps per timed epoch (CPU)
MAX_REPEATS = {"resnet18": 3}  # ~30 s per CPU epoch: fewer repetitions
GPU_STEPS = {"resnet20_cifar": 100, "lenet5": 100, "resnet18": 100}
PADDING = 4  # RandomCrop(28, padding=4) and cnnlab's crop
WORKERS = 2  # DataLoader worker processes of the usual pipeline
PIPELINES = ("a", "b", "c")
PIPELINE_NAMES = {
    "a": "(a) usual: PIL transforms + DataLoader(2 workers) + plain loop",
    "b": "(b) hand loop on in-memory uint8 tensors",
    "c": "(c) cnnlab fit",
}


@dataclass
class Setting:
    """One model's benchmark: what every pipeline shares."""

    model: str
    steps: int
    batch_size: int
    device: str
    data_dir: str | None
    compile: bool = False  # train.compile for (c), the same compiled forward in (b)
    forward_flops: int = 0
    rates: dict[str, list[float]] = field(default_factory=lambda: {key: [] for key in PIPELINES})


def fit_config(setting: Setting, epochs: int):
    """The run config of (c): the images and optimizer (a) and (b) copy, no validation, no test."""
    from cnnlab import config as cfg

    tree = {
        "model.name": setting.model,
        "data.name": "fashion-mnist",
        "data.data_dir": setting.data_dir,
        "data.subset": setting.steps * setting.batch_size,
        "data.val_fraction": 0.0,
        "data.batch_size": setting.batch_size,
        "data.augment": "flip+crop",
        "train.epochs": epochs,
        "train.test": False,
        "train.accelerator": torch.device(setting.device).type,
        "train.devices": "1",
        "train.compile": setting.compile,
    }
    return cfg.from_dict(tree)


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of cnnlab's defaults (SGD, lr 0.1, nesterov momentum 0.9, weight decay 5e-4)."""
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


class _PilDataset(torch.utils.data.Dataset):
    """The usual hand-written dataset: one PIL image per sample through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def usual_pipeline(setting: Setting) -> Callable[[], None]:
    """(a): an epoch function over DataLoader(PIL dataset) with a plain fp32 loop, as users write it."""
    from torchvision import transforms

    from cnnlab.train.run import prepare_run

    prepared = prepare_run(fit_config(setting, 1))
    device = torch.device(setting.device)
    model = prepared.model.to(device).train()
    optimizer = make_optimizer(model)
    transform = transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(28, padding=PADDING),
            transforms.ToTensor(),
            transforms.Normalize(prepared.mean, prepared.std),
        ]
    )
    images = prepared.train_set.images[:, 0].numpy()
    dataset = _PilDataset(images, prepared.train_set.labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=setting.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=WORKERS,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )

    def epoch() -> None:
        running_loss, correct = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, targets)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            correct += (outputs.argmax(1) == targets).sum().item()

    return epoch


def hand_loop(setting: Setting) -> Callable[[], None]:
    """(b): an epoch function of the minimal loop over in-memory uint8 tensors (cnnlab's device settings)."""
    from cnnlab.data.augment import augment_uint8
    from cnnlab.train.run import prepare_run

    prepared = prepare_run(fit_config(setting, 1))
    device = torch.device(setting.device)
    memory_format = torch.channels_last if prepared.config.train.channels_last else torch.contiguous_format
    model = prepared.model.to(device, memory_format=memory_format).train()
    forward = torch.compile(model.forward) if setting.compile else model
    optimizer = make_optimizer(model)
    images = prepared.train_set.images.to(device)
    labels = prepared.train_set.labels.to(device)
    channels = images.shape[1]
    mean = torch.tensor(prepared.mean, device=device).view(1, channels, 1, 1)
    std = torch.tensor(prepared.std, device=device).view(1, channels, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def epoch() -> None:
        order = torch.randperm(len(labels), generator=generator).to(device)
        for step in range(setting.steps):
            index = order[step * setting.batch_size : (step + 1) * setting.batch_size]
            batch = augment_uint8(images[index], ("crop", "flip"), generator)
            batch = (batch.float() * scale + shift).contiguous(memory_format=memory_format)
            with autocast:
                loss = F.cross_entropy(forward(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def timed_epoch(epoch: Callable[[], None], device: str) -> float:
    """Seconds of one epoch, with queued GPU work finished on both ends."""
    common.sync(device)
    start = time.perf_counter()
    epoch()
    common.sync(device)
    return time.perf_counter() - start


def fit_epoch_seconds(setting: Setting) -> float:
    """(c): a 2-epoch fit; the second epoch's `epoch_time_s` (the first one is the warm-up)."""
    import csv

    from cnnlab.train import fit

    out_dir = Path(tempfile.mkdtemp(prefix="cnnlab-bench-fit-"))
    try:
        result = fit(fit_config(setting, 2), out_dir)
        if result.status != "completed":
            raise RuntimeError(f"fit {result.status}: {result.summary.get('reason')}")
        with open(out_dir / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
        return float(rows[1]["epoch_time_s"])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def measure(setting: Setting, repeats: int) -> None:
    """Interleaved repetitions of (a), (b), (c); images/s of each appended to `setting.rates`."""
    images = setting.steps * setting.batch_size
    epochs: dict[str, Callable[[], float]] = {}
    for key, build in (("a", usual_pipeline), ("b", hand_loop)):
        epoch = build(setting)
        timed_epoch(epoch, setting.device)  # warm-up epoch
        epochs[key] = lambda epoch=epoch: timed_epoch(epoch, setting.device)
    epochs["c"] = lambda: fit_epoch_seconds(setting)
    for repeat in range(repeats):
        for key in PIPELINES:
            seconds = epochs[key]()
            setting.rates[key].append(images / seconds)
        line = ", ".join(f"{key} {setting.rates[key][-1]:,.0f}" for key in PIPELINES)
        print(f"  {setting.model} repeat {repeat + 1}/{repeats}: images/s {line}", flush=True)


def forward_flops(setting: Setting) -> int:
    """Forward FLOPs of one training image of the model fit builds."""
    from cnnlab.models import count_flops
    from cnnlab.train.run import prepare_run

    prepared = prepare_run(fit_config(setting, 1))
    side = prepared.config.data.image_size
    return count_flops(prepared.model, (prepared.model_hparams["in_chans"], side, side))


def ratios(setting: Setting, top: str, bottom: str) -> list[float]:
    """Per-repetition throughput ratios top/bottom (the repetitions are interleaved, so they pair up)."""
    return [t / b for t, b in zip(setting.rates[top], setting.rates[bottom], strict=True)]


def model_table(setting: Setting, peak: float) -> list[str]:
    """Markdown rows for one model: images/s and achieved GFLOP/s per pipeline, then the ratios."""
    train_flops = 3 * setting.forward_flops
    rows = [
        f"**{setting.model}**{' (compiled)' if setting.compile else ''} — batch {setting.batch_size}, "
        f"{setting.steps} steps per timed epoch, {len(setting.rates['a'])} repetitions, "
        f"{train_flops / 1e9:.4f} GFLOP per training image (3 x forward)",
        "",
        "| pipeline | images/s min / median / max | GFLOP/s (median) | of matmul peak |",
        "|---|---:|---:|---:|",
    ]
    for key in PIPELINES:
        median = statistics.median(setting.rates[key])
        achieved = median * train_flops / 1e9
        rows.append(
            f"| {PIPELINE_NAMES[key]} | {common.format_spread(setting.rates[key], 0)} | {achieved:,.1f} "
            f"| {achieved / peak:.0%} |"
        )
    rows += [
        "",
        f"c/a = {common.format_spread(ratios(setting, 'c', 'a'), 2)} (min / median / max over paired "
        f"repetitions); c/b = {common.format_spread(ratios(setting, 'c', 'b'), 2)}",
        "",
    ]
    return rows


def profile_fit(setting: Setting) -> None:
    """Print torch.profiler's top operators (self CPU time) over a 2-epoch fit of this setting."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.device(setting.device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fit_epoch_seconds(setting)  # warm caches (data, imports) outside the profile
    with profile(activities=activities) as profiler:
        fit_epoch_seconds(setting)
    sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=25))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default per model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per pipeline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--compile", action="store_true", help="train.compile in (c), torch.compile in (b)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--generated", action="store_true", help="use generated data even if installed")
    parser.add_argument("--profile", metavar="MODEL", help="print a torch.profiler table of fit and exit")
    parser.add_argument("--record", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    return parser.parse_args()


def settings_from(args: argparse.Namespace, data_dir: str | None) -> list[Setting]:
    """One Setting per model, with steps per epoch from the flags, the device and --quick."""
    if args.quick:
        models = args.models or ["lenet5"]
        batch = min(args.batch_size, 32)
        return [Setting(m, args.steps or 2, batch, args.device, data_dir, args.compile) for m in models]
    table = GPU_STEPS if torch.device(args.device).type == "cuda" else STEPS
    steps = {model: args.steps or table.get(model, 10) for model in (args.models or MODELS)}
    return [
        Setting(model, count, args.batch_size, args.device, data_dir, args.compile)
        for model, count in steps.items()
    ]


def command_line(args: argparse.Namespace) -> str:
    """The command as it would be typed again."""
    return "python benchmarks/throughput.py " + " ".join(sys.argv[1:])


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = {"train": 2000, "t10k": 100} if args.quick and args.generated else None
    data_dir, source = common.fashion_data_dir(sizes) if args.generated else common.fashion_data_dir()
    if args.profile:
        profile_fit(
            Setting(
                args.profile,
                args.steps or STEPS.get(args.profile, 10),
                args.batch_size,
                args.device,
                data_dir,
            )
        )
        return
    repeats = 2 if args.quick else args.repeats
    print(f"data: {source}\nmachine: {common.machine(args.device)}", flush=True)
    load_before = common.load_average()
    peak_rates = common.matmul_gflops(args.device, repeats=3 if args.quick else 10)
    print(f"fp32 matmul: {common.format_spread(peak_rates)} GFLOP/s", flush=True)
    on_gpu = torch.device(args.device).type == "cuda"
    bf16_rates = common.matmul_gflops(args.device, dtype=torch.bfloat16) if on_gpu else []
    lines = [*common.header(command_line(args), args.device), ""]
    lines += [
        f"Data: {source}. Augmentation flip + pad-4 crop everywhere; SGD nesterov; interleaved "
        "repetitions of one epoch each after one warm-up epoch per pipeline.",
        "",
        f"fp32 matmul peak (2048x2048 torch.mm, {len(peak_rates)} repetitions): "
        f"{common.format_spread(peak_rates)} GFLOP/s (min / median / max); the median is the peak below.",
        "",
    ]
    if bf16_rates:
        lines += [
            f"bf16 matmul (what fit's bf16-mixed training runs on): {common.format_spread(bf16_rates)} "
            "GFLOP/s; fractions below are still of the fp32 peak.",
            "",
        ]
    peak = statistics.median(peak_rates)
    for setting in settings_from(args, data_dir):
        setting.forward_flops = forward_flops(setting)
        measure(setting, min(repeats, MAX_REPEATS.get(setting.model, repeats)) if not on_gpu else repeats)
        lines += model_table(setting, peak)
    lines.append(f"Load average: {load_before} at the start, {common.load_average()} at the end.")
    print("\n".join(lines))
    if args.record:
        common.record_section(SECTION + (" (GPU)" if args.device.startswith("cuda") else ""), lines)
        print(f"recorded in {common.RESULTS}")


if __name__ == "__main__":
    main()
