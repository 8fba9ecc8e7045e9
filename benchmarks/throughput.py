"""Training throughput of one model three ways, in one process: the usual pipeline, a hand loop, cnnlab's fit.

(a) usual: torchvision-style Dataset of PIL images + per-sample transforms (RandomHorizontalFlip,
    RandomCrop(28, padding=4), ToTensor, Normalize) + DataLoader(num_workers=2) + a plain PyTorch loop
    (fp32, default memory format, running loss/accuracy with `.item()` as such loops print them);
(b) hand:  a minimal loop over the in-memory uint8 tensors: index-sliced batches of a permutation, the same
    batched flip + pad-crop (cnnlab.data.augment), normalize, forward/backward/step, with the settings
    cnnlab uses (channels_last) in the same precision as (c) (bf16 autocast for bf16-mixed) and nothing else;
(c) cnnlab: `cnnlab.train.fit` on the same images with `train.precision` set explicitly (a 2-epoch run; the
    second epoch is timed, from metrics.csv's `epoch_time_s`: no validation, no test: pure training).

(b) and (c) run in each precision of `--precisions` (default: 32-true, plus bf16-mixed on CUDA and on CPUs
with avx512_bf16 or amx_bf16, where `precision: auto` may choose it); c/a compares each with the one fp32
usual pipeline, c/b with the hand loop of the same precision, and "of GEMM peak" divides by the GEMM rate
of that precision: the faster (by median) of a 2048x2048 torch.mm and the same GEMM as a 1x1 convolution
(oneDNN, as the models' convolutions; on the AMD EPYC of 2026-12-02 MKL's fp32 torch.mm ran at half of it).

On a CPU the whole process keeps freed memory in the heap from the start, as fit does
(`cnnlab.train.speed.keep_freed_memory`), so (a), (b) and (c) all run with it in every repetition.

All three train the same model (built by `cnnlab.train.run.prepare_run`, so identical to fit's) on the same
images (fit's stratified subset of Fashion-MNIST's training split, `--steps` x `--batch-size` images; the
generated stand-in when the Debian package is absent) with the same batch size, optimizer (SGD, nesterov
momentum 0.9, weight decay 5e-4) and augmentation. One repetition = one epoch of `--steps` steps, timed from
the request of the first batch to the end of the last step; warm-up = one untimed epoch per pipeline (per fit
call for (c)). Repetitions are interleaved (a, b, c, a, b, c, ...) so a change of machine load hits all three.

Achieved GFLOP/s = images/s x 3 x forward FLOPs per image (cnnlab.models.count_flops: torch's FLOP counter,
a multiply-add = 2 FLOPs; backward counted as twice the forward), compared with the GEMM peak measured in
this process.

    python benchmarks/throughput.py                      # CPU, resnet20_cifar, lenet5, resnet18
    python benchmarks/throughput.py --device cuda        # on a GPU
    python benchmarks/throughput.py --quick              # seconds: tiny sizes, one model
    python benchmarks/throughput.py --record             # also write the section of RESULTS.md
    python benchmarks/throughput.py --profile resnet20_cifar   # torch.profiler table of fit's steps
    python benchmarks/throughput.py --by-operator resnet20_cifar --precisions 32-true bf16-mixed
                                  # (b)'s ms per step by operator group in each precision: what bf16 speeds up
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("CNNLAB_QUIET", "1")

import common  # noqa: E402

from cnnlab.train.speed import keep_freed_memory  # noqa: E402

SECTION = "Training throughput"
MODELS = ("resnet20_cifar", "densenet_cifar", "lenet5", "resnet18")
STEPS = {"resnet20_cifar": 20, "densenet_cifar": 8, "lenet5": 60, "resnet18": 2}  # steps per timed epoch
MAX_REPEATS = {"resnet18": 3, "densenet_cifar": 3}  # long CPU epochs: fewer repetitions
GPU_STEPS = {"resnet20_cifar": 100, "densenet_cifar": 100, "lenet5": 100, "resnet18": 100}
WORKERS = 2  # DataLoader worker processes of the usual pipeline
FP32, BF16 = "32-true", "bf16-mixed"
SHORT = {FP32: "fp32", BF16: "bf16"}


@dataclass
class Setting:
    """One model's benchmark: what every pipeline shares."""

    model: str
    steps: int
    batch_size: int
    device: str
    data_dir: str | None
    compile: bool = False  # train.compile for (c), the same compiled forward in (b)
    precisions: tuple[str, ...] = (FP32,)  # of (b) and (c); (a) is fp32
    forward_flops: int = 0
    rates: dict[str, list[float]] = field(default_factory=dict)
    layout: str = "channels_last"  # of (b) and (c): what train.channels_last: auto chose for (c)

    @property
    def pipelines(self) -> tuple[str, ...]:
        """Keys of `rates` in table order: a, then b:<precision> and c:<precision> per precision."""
        return ("a", *(f"{kind}:{p}" for p in self.precisions for kind in ("b", "c")))


def pipeline_name(key: str) -> str:
    """The table's name of a pipeline key."""
    if key == "a":
        return "(a) usual: PIL transforms + DataLoader(2 workers) + plain loop, fp32"
    kind, precision = key.split(":")
    what = "(b) hand loop on in-memory uint8 tensors" if kind == "b" else "(c) cnnlab fit"
    return f"{what}, {SHORT.get(precision, precision)}"


def fit_config(setting: Setting, epochs: int, precision: str = FP32):
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
        "optim.optimizer": "sgd",  # make_optimizer's, whatever the model's default recipe
        "optim.lr": 0.1,
        "optim.momentum": 0.9,
        "optim.nesterov": True,
        "optim.weight_decay": 5e-4,
        "train.precision": precision,  # explicit: fit does not probe
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


def usual_pipeline(setting: Setting) -> Callable[[], None]:
    """(a): an epoch function over DataLoader(PIL dataset) with a plain fp32 loop, as users write it."""
    from cnnlab.train.run import prepare_run

    prepared = prepare_run(fit_config(setting, 1))
    device = torch.device(setting.device)
    model = prepared.model.to(device).train()
    optimizer = make_optimizer(model)
    loader = common.usual_loader(
        prepared.train_set.images,
        prepared.train_set.labels,
        prepared.mean,
        prepared.std,
        batch_size=setting.batch_size,
        workers=WORKERS,
        drop_last=True,
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


def hand_loop(setting: Setting, precision: str = FP32) -> Callable[[], None]:
    """(b): an epoch function of the minimal loop over in-memory uint8 tensors (cnnlab's device settings)."""
    from cnnlab.data.augment import augment_uint8
    from cnnlab.train.run import prepare_run, speed_choices

    prepared = prepare_run(fit_config(setting, 1))
    device = torch.device(setting.device)
    layout, _ = speed_choices(prepared, None)  # the layout (c) trains in: c/b compares loops, not layouts
    setting.layout = layout.name
    memory_format = torch.channels_last if layout.channels_last else torch.contiguous_format
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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == BF16 else nullcontext()

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


def fit_epoch_seconds(setting: Setting, precision: str = FP32) -> float:
    """(c): a 2-epoch fit; the second epoch's `epoch_time_s` (the first one is the warm-up)."""
    import csv

    from cnnlab.train import fit

    out_dir = Path(tempfile.mkdtemp(prefix="cnnlab-bench-fit-"))
    try:
        with redirect_stdout(io.StringIO()):  # the run's own lines, once per repetition: noise here
            result = fit(fit_config(setting, 2, precision), out_dir)
        if result.status != "completed":
            raise RuntimeError(f"fit {result.status}: {result.summary.get('reason')}")
        with open(out_dir / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
        return float(rows[1]["epoch_time_s"])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def measure(setting: Setting, repeats: int) -> None:
    """Interleaved repetitions of (a) and (b), (c) in each precision; images/s appended to `setting.rates`."""
    images = setting.steps * setting.batch_size
    builds: dict[str, Callable[[], Callable[[], None]]] = {"a": lambda: usual_pipeline(setting)}
    for precision in setting.precisions:
        builds[f"b:{precision}"] = lambda precision=precision: hand_loop(setting, precision)
    epochs: dict[str, Callable[[], float]] = {}
    for key, build in builds.items():
        epoch = build()
        timed_epoch(epoch, setting.device)  # warm-up epoch
        epochs[key] = lambda epoch=epoch: timed_epoch(epoch, setting.device)
    for precision in setting.precisions:
        epochs[f"c:{precision}"] = lambda precision=precision: fit_epoch_seconds(setting, precision)
    for repeat in range(repeats):
        for key in setting.pipelines:
            seconds = epochs[key]()
            setting.rates.setdefault(key, []).append(images / seconds)
        line = ", ".join(f"{key} {setting.rates[key][-1]:,.0f}" for key in setting.pipelines)
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


def model_table(setting: Setting, peaks: dict[str, float]) -> list[str]:
    """Markdown rows for one model: images/s and achieved GFLOP/s per pipeline, then the ratios.

    `peaks` maps a precision to its GEMM peak in GFLOP/s ((a) is fp32)."""
    train_flops = 3 * setting.forward_flops
    rows = [
        f"**{setting.model}**{' (compiled)' if setting.compile else ''} — batch {setting.batch_size}, "
        f"{setting.steps} steps per timed epoch, {len(setting.rates['a'])} repetitions, "
        f"{train_flops / 1e9:.4f} GFLOP per training image (3 x forward); (b) and (c) {setting.layout} "
        "(what `train.channels_last: auto` chose; (a) NCHW)",
        "",
        "| pipeline | images/s min / median / max | GFLOP/s (median) | of GEMM peak (same precision) |",
        "|---|---:|---:|---:|",
    ]
    for key in setting.pipelines:
        median = statistics.median(setting.rates[key])
        achieved = median * train_flops / 1e9
        peak = peaks.get(key.partition(":")[2] or FP32)
        share = f"{achieved / peak:.0%}" if peak else "-"
        rows.append(
            f"| {pipeline_name(key)} | {common.format_spread(setting.rates[key], 0)} | {achieved:,.1f} "
            f"| {share} |"
        )
    rows.append("")
    for precision in setting.precisions:
        c, b = f"c:{precision}", f"b:{precision}"
        rows.append(
            f"{SHORT.get(precision, precision)}: c/a = {common.format_spread(ratios(setting, c, 'a'), 2)} "
            f"(min / median / max over paired repetitions); c/b = "
            f"{common.format_spread(ratios(setting, c, b), 2)}"
        )
        rows.append("")
    if BF16 in setting.precisions and FP32 in setting.precisions:
        rows += [
            f"cnnlab fit bf16 / fp32: {common.format_spread(ratios(setting, f'c:{BF16}', f'c:{FP32}'), 2)}",
            "",
        ]
    return rows


def headline(setting: Setting, peaks: dict[str, float]) -> dict[str, dict[str, float]]:
    """Median figures per precision for run_all.py's summary: images/s of (c), c/a, c/b, share of peak."""
    figures = {}
    for precision in setting.precisions:
        c, b = f"c:{precision}", f"b:{precision}"
        rate = statistics.median(setting.rates[c])
        peak = peaks.get(precision)
        figures[precision] = {
            "fit_images_per_s": rate,
            "c_over_a": statistics.median(ratios(setting, c, "a")),
            "c_over_b": statistics.median(ratios(setting, c, b)),
            "of_peak": rate * 3 * setting.forward_flops / 1e9 / peak if peak else None,
            "seconds_per_tflop": 1e12 / (rate * 3 * setting.forward_flops),
        }
    if BF16 in setting.precisions and FP32 in setting.precisions:
        figures["bf16_over_fp32"] = statistics.median(ratios(setting, f"c:{BF16}", f"c:{FP32}"))
    return figures


def profile_fit(setting: Setting, precision: str = FP32) -> None:
    """Print torch.profiler's top operators (self CPU time) over a 2-epoch fit of this setting."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.device(setting.device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fit_epoch_seconds(setting, precision)  # warm caches (data, imports) outside the profile
    with profile(activities=activities) as profiler:
        fit_epoch_seconds(setting, precision)
    sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=25))


OPERATOR_GROUPS = {  # torch.profiler operator -> the group `--by-operator` reports it in
    "aten::mkldnn_convolution": "convolution forward",
    "aten::_slow_conv2d_forward": "convolution forward",  # bf16 on a CPU without bf16 instructions (AVX2)
    "aten::convolution_backward": "convolution backward (input and weight gradients)",
    "aten::_slow_conv2d_backward": "convolution backward (input and weight gradients)",
    "aten::native_batch_norm": "BatchNorm forward",
    "aten::native_batch_norm_backward": "BatchNorm backward",
    "aten::relu_": "ReLU forward + backward",
    "aten::clamp_min_": "ReLU forward + backward",
    "aten::threshold_backward": "ReLU forward + backward",
    "aten::add": "adds (residuals, gradient sums)",
}
OTHER_OPERATORS = "everything else (augmentation, casts, loss, optimizer)"


def operator_milliseconds(setting: Setting, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Milliseconds per step of the hand loop (b) by operator group, for each precision of the setting;
    the precisions are profiled in alternation (`rounds` epochs each, after one warm-up epoch)."""
    from torch.profiler import ProfilerActivity, profile

    epochs = {precision: hand_loop(setting, precision) for precision in setting.precisions}
    for epoch in epochs.values():
        epoch()
    totals: dict[str, dict[str, float]] = {precision: {} for precision in epochs}
    for _ in range(rounds):
        for precision, epoch in epochs.items():
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                epoch()
            for event in profiler.key_averages():
                group = OPERATOR_GROUPS.get(event.key, OTHER_OPERATORS)
                share = event.self_cpu_time_total / 1e3 / (rounds * setting.steps)
                totals[precision][group] = totals[precision].get(group, 0.0) + share
    return totals


def operator_table(totals: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of `operator_milliseconds`: one column per precision, and the first over the last."""
    precisions = list(totals)
    first, last = precisions[0], precisions[-1]
    header = " | ".join(f"{SHORT.get(p, p)} ms/step" for p in precisions)
    lines = [
        f"| operator group | {header} | {SHORT.get(first, first)} / {SHORT.get(last, last)} |",
        "|---|" + "---:|" * (len(precisions) + 1),
    ]
    groups = [*dict.fromkeys(OPERATOR_GROUPS.values()), OTHER_OPERATORS]
    rows = {group: [totals[p].get(group, 0.0) for p in precisions] for group in groups}
    rows["step"] = [sum(totals[p].values()) for p in precisions]
    for group, values in rows.items():
        ratio = f"{values[0] / values[-1]:.2f}x" if values[-1] else "-"
        lines.append(f"| {group} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {ratio} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default per model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per pipeline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="of (b) and (c) (default: 32-true, and bf16-mixed on CUDA or a CPU with avx512_bf16/amx_bf16)",
    )
    parser.add_argument("--compile", action="store_true", help="train.compile in (c), torch.compile in (b)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--generated", action="store_true", help="use generated data even if installed")
    parser.add_argument("--profile", metavar="MODEL", help="print a torch.profiler table of fit and exit")
    parser.add_argument(
        "--by-operator",
        metavar="MODEL",
        help="print (b)'s milliseconds per step by operator group in each of --precisions (default: "
        "32-true and bf16-mixed, on any CPU) and exit",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help=f"write the '{SECTION}' section of RESULTS.md (with --compile: its own)",
    )
    parser.add_argument("--json", help="also write the headline figures to this file (run_all.py)")
    return parser.parse_args(argv)


def default_precisions(device: str) -> tuple[str, ...]:
    """fp32, and bf16 where `precision: auto` could choose it (CUDA, or a CPU with native bf16)."""
    on_gpu = torch.device(device).type == "cuda"
    return (FP32, BF16) if on_gpu or common.cpu_bf16_flags() else (FP32,)


def settings_from(args: argparse.Namespace, data_dir: str | None) -> list[Setting]:
    """One Setting per model, with steps per epoch from the flags, the device and --quick."""
    precisions = tuple(args.precisions or default_precisions(args.device))
    if args.quick:
        models = args.models or ["lenet5"]
        batch = min(args.batch_size, 32)
        return [
            Setting(m, args.steps or 2, batch, args.device, data_dir, args.compile, precisions)
            for m in models
        ]
    table = GPU_STEPS if torch.device(args.device).type == "cuda" else STEPS
    steps = {model: args.steps or table.get(model, 10) for model in (args.models or MODELS)}
    return [
        Setting(model, count, args.batch_size, args.device, data_dir, args.compile, precisions)
        for model, count in steps.items()
    ]


def one_model_setting(model: str, args: argparse.Namespace, data_dir: str | None) -> Setting:
    """The Setting of `--profile MODEL` and `--by-operator MODEL`: --steps, else the model's default."""
    return Setting(model, args.steps or STEPS.get(model, 10), args.batch_size, args.device, data_dir)


def command_line(argv: list[str]) -> str:
    """The command as it would be typed again."""
    return "python benchmarks/throughput.py " + " ".join(argv)


GEMM_KERNELS = {"mm": "torch.mm", "conv1x1": "1x1 convolution"}


def gemm_rates(device: str, precisions: tuple[str, ...], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Measured 2048x2048 GEMM GFLOP/s per precision (fp32 always: (a) trains in fp32) and kernel."""
    dtypes = {FP32: torch.float32, BF16: torch.bfloat16}
    wanted = [p for p in dict.fromkeys((FP32, *precisions)) if p in dtypes]
    return {
        p: {
            kernel: common.matmul_gflops(device, repeats=repeats, dtype=dtypes[p], kernel=kernel)
            for kernel in GEMM_KERNELS
        }
        for p in wanted
    }


def gemm_peak(by_kernel: dict[str, list[float]]) -> tuple[str, float]:
    """The kernel with the highest median rate, and that median: one precision's GEMM peak."""
    medians = {kernel: statistics.median(rates) for kernel, rates in by_kernel.items()}
    best = max(medians, key=medians.__getitem__)
    return best, medians[best]


def peak_line(precision: str, by_kernel: dict[str, list[float]]) -> str:
    """One precision's GEMM figures, and which kernel is its peak."""
    figures = "; ".join(
        f"{GEMM_KERNELS[kernel]} {common.format_spread(rates)}" for kernel, rates in by_kernel.items()
    )
    repeats = len(next(iter(by_kernel.values())))
    best, _ = gemm_peak(by_kernel)
    return (
        f"{SHORT.get(precision, precision)} GEMM 2048x2048 ({repeats} repetitions, GFLOP/s "
        f"min / median / max): {figures}; the peak is the median of the {GEMM_KERNELS[best]}."
    )


def density_line(settings: list[Setting]) -> list[str]:
    """densenet_cifar's time per FLOP of (c) against resnet20_cifar's, per precision (target: <= 1.5x)."""
    by_model = {setting.model: setting for setting in settings}
    dense, resnet = by_model.get("densenet_cifar"), by_model.get("resnet20_cifar")
    if dense is None or resnet is None:
        return []
    parts = []
    for precision in dense.precisions:
        per_flop = [
            (r * resnet.forward_flops) / (d * dense.forward_flops)
            for d, r in zip(dense.rates[f"c:{precision}"], resnet.rates[f"c:{precision}"], strict=False)
        ]
        parts.append(f"{SHORT.get(precision, precision)} {common.format_spread(per_flop, 2)}")
    return [
        "densenet_cifar time per FLOP / resnet20_cifar's, cnnlab fit (min / median / max over repetitions, "
        "paired in order): " + "; ".join(parts),
        "",
    ]


def main(argv: list[str] | None = None) -> list[Setting]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cpu":
        # fit keeps freed memory on a CPU (cnnlab.train.speed); set for the whole process from the start, so
        # every pipeline and repetition runs with it, not only those after the first fit
        keep_freed_memory()
    sizes = {"train": 2000, "t10k": 100} if args.quick and args.generated else None
    data_dir, source = common.fashion_data_dir(sizes) if args.generated else common.fashion_data_dir()
    if args.profile:
        profile_fit(one_model_setting(args.profile, args, data_dir), (args.precisions or [FP32])[0])
        return []
    if args.by_operator:
        setting = one_model_setting(args.by_operator, args, data_dir)
        setting.precisions = tuple(args.precisions or (FP32, BF16))
        print(f"machine: {common.machine(args.device)}; {setting.model}, batch {setting.batch_size}")
        print("\n".join(operator_table(operator_milliseconds(setting, rounds=1 if args.quick else 3))))
        return []
    repeats = 2 if args.quick else args.repeats
    print(f"data: {source}\nmachine: {common.machine(args.device)}", flush=True)
    load_before = common.load_average()
    settings = settings_from(args, data_dir)
    peak_rates = gemm_rates(args.device, settings[0].precisions, 3 if args.quick else 10)
    for precision, by_kernel in peak_rates.items():
        print(peak_line(precision, by_kernel), flush=True)
    lines = [*common.header(command_line(argv), args.device), ""]
    lines += [
        f"Data: {source}. Augmentation flip + pad-4 crop everywhere; SGD nesterov; interleaved "
        "repetitions of one epoch each after one warm-up epoch per pipeline.",
        "",
        *(peak_line(p, by_kernel) for p, by_kernel in peak_rates.items()),
        "",
    ]
    if (
        not common.cpu_bf16_flags()
        and torch.device(args.device).type == "cpu"
        and BF16 not in settings[0].precisions
    ):
        lines += [
            "bf16 not measured: this CPU has neither avx512_bf16 nor amx_bf16, so `precision: auto` trains "
            "in fp32 here without a probe (`--precisions 32-true bf16-mixed` measures it anyway).",
            "",
        ]
    peaks = {precision: gemm_peak(by_kernel)[1] for precision, by_kernel in peak_rates.items()}
    on_gpu = torch.device(args.device).type == "cuda"
    figures = {}
    for setting in settings:
        setting.forward_flops = forward_flops(setting)
        measure(setting, min(repeats, MAX_REPEATS.get(setting.model, repeats)) if not on_gpu else repeats)
        lines += model_table(setting, peaks)
        figures[setting.model] = headline(setting, peaks)
    lines += density_line(settings)
    lines.append(f"Load average: {load_before} at the start, {common.load_average()} at the end.")
    print("\n".join(lines))
    common.write_json(args.json, {"models": figures, "matmul_gflops": peaks, "lines": density_line(settings)})
    if args.record:
        common.record_section(section_title(args), lines)
        print(f"recorded in {common.RESULTS}")
    return settings


def section_title(args: argparse.Namespace) -> str:
    """RESULTS.md section of a run: compiled and GPU runs each have their own, apart from eager CPU runs."""
    compiled = " (compiled)" if args.compile else ""
    return SECTION + compiled + (" (GPU)" if args.device.startswith("cuda") else "")


if __name__ == "__main__":
    main()
