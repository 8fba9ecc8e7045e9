"""`train.precision: auto`: the precision a run trains in, measured on this machine for this model on a CPU.

- CUDA: bf16-mixed, as before (tensor-core GPUs run it faster than fp32; no probe).
- CPU: bf16-mixed only where it measured faster. bf16 convolutions are fast only with AVX512-BF16 or AMX;
  without either flag they are far slower than fp32 (resnet20_cifar and lenet5 training steps 5-10x slower
  on an AVX2-only AMD EPYC, torch 2.14.1; some bf16 shapes also regressed 4-16x since torch 2.13), so such
  a CPU trains in fp32 without a probe. With a flag, a probe times a few training steps (forward, backward,
  SGD step on random inputs of the run's shape, channels_last as the run, on a copy of the model) each way,
  interleaved, and bf16 is chosen when it is at least `BF16_MARGIN` times faster. The decision is cached
  per machine and model shape in `<cache>/precision.json` (`$CNNLAB_CACHE`, else `~/.cache/cnnlab`), so
  only the first run of a model on a machine pays the probe's seconds; delete the file to measure again.
- Several processes (DDP) on CPU: fp32 (every process would have to agree on one measurement).
- A run that trains fewer than `PROBE_WORTH` times the images the probe would train is not probed (fp32,
  and channels_last for the layout), unless a probe of its model shape is cached already.
- An explicit `train.precision` (e.g. `--set train.precision=32-true`) is used as given, with no probe.

The run's id is the hash of its config, which holds `auto`, not the outcome: the same config is the same
run on every machine, and a resumed run trains in the precision its checkpoint records (never probed again).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import safeio
from cnnlab.data.locations import cache_root

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 matrix kernels
BF16_MARGIN = 1.10  # bf16 must be this much faster than fp32 (probe noise; fp32 is the safe default)
PROBE_BATCH = 128  # images per probe step at most (the run's batch size when smaller)
PROBE_PAIRS = 3  # timed (fp32, bf16) step pairs, after one warm-up step each way
PROBE_SECONDS = 6.0  # start no timed pair after this long (warm-up included)
PROBE_STEP_S = 0.5  # cut the probe batch while one fp32 step takes longer than this
PROBE_MIN_BATCH = 8
PROBE_WORTH = 10  # probe only a run that trains at least this many times the images the probe trains
CACHE_FILE = "precision.json"
PROBE_LOCK_WAIT_S = (
    60.0  # longest wait for another process's probe (a few seconds each) before probing anyway
)
FP32, BF16 = "32-true", "bf16-mixed"
Probe = TypeVar("Probe")


@dataclass(frozen=True)
class ProbeResult:
    """Training-step throughput of the probe, each way (best of the timed steps)."""

    batch: int
    pairs: int  # timed (fp32, bf16) step pairs
    fp32_images_per_s: float
    bf16_images_per_s: float
    seconds: float  # wall time of the whole probe, warm-up included
    cached: bool = False  # read from the machine's cache, not measured by this run

    @property
    def speedup(self) -> float:
        """bf16 throughput / fp32 throughput."""
        return self.bf16_images_per_s / self.fp32_images_per_s


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in and why: result.json's `precision` and the run's first line."""

    precision: str  # what Lightning trains in: 32-true, bf16-mixed, ...
    requested: str  # train.precision as configured
    reason: str
    probe: ProbeResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """result.json's `precision` entry (the probe's figures with its speedup, or null)."""
        probe = (
            None if self.probe is None else {**asdict(self.probe), "speedup": round(self.probe.speedup, 3)}
        )
        return {
            "precision": self.precision,
            "requested": self.requested,
            "reason": self.reason,
            "probe": probe,
        }

    def line(self) -> str:
        """One line for the start of the run."""
        if self.requested != "auto":
            return f"precision: {self.precision} (train.precision {self.reason})"
        return f"precision: {self.precision} (auto: {self.reason})"


def decide(fp32_images_per_s: float, bf16_images_per_s: float, margin: float = BF16_MARGIN) -> str:
    """bf16-mixed when it trained at least `margin` times faster than fp32, else 32-true."""
    return BF16 if bf16_images_per_s >= margin * fp32_images_per_s else FP32


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of BF16_FLAGS this CPU has (/proc/cpuinfo on Linux, torch's cpuinfo elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return tuple(flag for flag in BF16_FLAGS if flag in flags)
    found = []
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.append("avx512_bf16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        found.append("amx_bf16")
    return tuple(found)


@dataclass(frozen=True)
class ProbeTarget:
    """What a probe trains and where: the run's model, input and batch, the accelerator and process count."""

    accelerator: str
    processes: int
    model: nn.Module
    model_key: str  # name and switches: with the input shape and batch, the cache key
    input_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    run_images: int | None = None  # images the run will train on (epochs × training images); None: unknown

    @property
    def shape_key(self) -> str:
        return f"{self.model_key}|{self.input_shape}|batch {min(self.batch_size, PROBE_BATCH)}"


def choose_precision(
    requested: str, target: ProbeTarget, *, channels_last: bool, resumed_with: str | None = None
) -> PrecisionChoice:
    """The precision of a run: as configured, as its checkpoint says (resume), or decided for `auto`."""
    accelerator = target.accelerator
    if requested != "auto":
        return PrecisionChoice(requested, requested, "as configured, no probe")
    if resumed_with:
        return PrecisionChoice(resumed_with, requested, "as chosen when the run started (its checkpoint)")
    if accelerator == "cuda":
        return PrecisionChoice(BF16, requested, "bf16-mixed on CUDA")
    if accelerator != "cpu":
        return PrecisionChoice(FP32, requested, f"fp32 on {accelerator}")
    flags = cpu_bf16_flags()
    if not flags:
        return PrecisionChoice(FP32, requested, "fp32: this CPU lacks avx512_bf16 and amx_bf16 (no probe)")
    if target.processes > 1:
        reason = f"fp32: {target.processes} CPU processes (the probe runs alone)"
        return PrecisionChoice(FP32, requested, reason)
    try:
        probe = cached_probe(
            f"{target.shape_key}|channels_last {channels_last}",
            lambda: probe_step_rates(
                target.model,
                target.input_shape,
                target.num_classes,
                target.batch_size,
                channels_last=channels_last,
                run_images=target.run_images,
            ),
            ProbeResult,
        )
    except ProbeNotWorthIt as short:
        return PrecisionChoice(FP32, requested, f"fp32, {short}")
    precision = decide(probe.fp32_images_per_s, probe.bf16_images_per_s)
    source = "cached probe" if probe.cached else "probe"
    reason = (
        f"{source} on this CPU ({'+'.join(flags)}), batch {probe.batch}: fp32 {probe.fp32_images_per_s:,.0f} "
        f"img/s, bf16 {probe.bf16_images_per_s:,.0f} img/s ({probe.speedup:.2f}x; bf16 needs "
        f"{BF16_MARGIN:.2f}x) in {probe.seconds:.1f} s"
    )
    return PrecisionChoice(precision, requested, reason, probe)


def probe_step_rates(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    *,
    channels_last: bool,
    pairs: int = PROBE_PAIRS,
    budget_s: float = PROBE_SECONDS,
    run_images: int | None = None,
) -> ProbeResult:
    """Time training steps of a copy of `model` in fp32 and bf16 autocast, interleaved; best step each way."""
    timed = time_training_ways(
        model,
        input_shape,
        num_classes,
        batch_size,
        ways=((channels_last, False), (channels_last, True)),
        pairs=pairs,
        budget_s=budget_s,
        run_images=run_images,
    )
    fp32, bf16 = timed.images_per_s
    return ProbeResult(
        batch=timed.batch,
        pairs=timed.pairs,
        fp32_images_per_s=fp32,
        bf16_images_per_s=bf16,
        seconds=timed.seconds,
    )


@dataclass(frozen=True)
class WayTimes:
    """Training-step throughput of each way a probe compared (best of its timed steps)."""

    batch: int
    pairs: int  # timed rounds of one step each way
    images_per_s: tuple[float, ...]  # in the order of the ways
    seconds: float  # wall time of the whole probe, warm-up included


def time_training_ways(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    *,
    ways: tuple[tuple[bool, bool], ...],  # (channels_last, bf16 autocast) of each way
    pairs: int = PROBE_PAIRS,
    budget_s: float = PROBE_SECONDS,
    run_images: int | None = None,
) -> WayTimes:
    """Time forward/backward/SGD steps of one copy of `model` per way on random inputs, interleaved.

    While the first way's step takes longer than PROBE_STEP_S the batch is cut to what that step's time
    says fits (down to PROBE_MIN_BATCH), so a large model costs seconds too. A step too slow at its first
    call is timed again before the batch is cut: the first call at a shape builds oneDNN's kernels, and on a
    busy machine that alone cut lenet5's probe batch from 128 to 8, where the timings were set-up and noise
    (20 against 44 images/s: cached, every later run of the 93 % recipe trained NCHW, which the probe of an
    idle machine measures at 2,422 images/s against 4,043 channels_last; benchmarks/RESULTS.md).
    When the warm-up alone used the budget, the warm-up steps are the figures (the other ways' first steps
    include their kernel set-up: a bias towards the first way, the default). The model, its BatchNorm
    statistics and the global random state are left as they were. With `run_images`, a probe that would
    train more than 1/PROBE_WORTH of the run's images raises ProbeNotWorthIt instead: before any step when
    even the smallest batch would, else once the batch is sized.
    """
    started = time.perf_counter()
    _check_worth(run_images, min(batch_size, PROBE_MIN_BATCH), len(ways), pairs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        copies = [_probe_copy(model, channels_last) for channels_last, _ in ways]
        batch = max(1, min(batch_size, PROBE_BATCH))
        while True:  # warm-up: oneDNN builds its kernels on the first call of each shape
            steps = [_training_step(*copy_, input_shape, num_classes, batch) for copy_ in copies]
            first = steps[0](ways[0][1])
            if first > PROBE_STEP_S and batch > PROBE_MIN_BATCH:
                first = min(first, steps[0](ways[0][1]))  # now without the kernel set-up
            if first <= PROBE_STEP_S or batch <= PROBE_MIN_BATCH:
                break
            batch = max(PROBE_MIN_BATCH, min(batch // 2, int(batch * PROBE_STEP_S / first)))
        _check_worth(run_images, batch, len(ways), pairs)
        warm = [first] + [step(bf16) for step, (_, bf16) in zip(steps[1:], ways[1:])]
        times: list[list[float]] = [[] for _ in ways]
        for _ in range(pairs):
            if time.perf_counter() - started > budget_s:
                break
            for index, (step, (_, bf16)) in enumerate(zip(steps, ways)):
                times[index].append(step(bf16))
    best = [min(taken) if taken else warmed for taken, warmed in zip(times, warm)]
    return WayTimes(
        batch=batch,
        pairs=len(times[-1]),
        images_per_s=tuple(round(batch / seconds, 1) for seconds in best),
        seconds=round(time.perf_counter() - started, 2),
    )


class ProbeNotWorthIt(Exception):
    """The run trains too few images to repay a probe; the message says how many each would train."""

    def __init__(self, run_images: int, probe_images: int) -> None:
        super().__init__(
            f"no probe: the run trains {run_images:,} images, fewer than {PROBE_WORTH}x the "
            f"{probe_images:,} a probe trains"
        )


def _check_worth(run_images: int | None, batch: int, ways: int, pairs: int) -> None:
    """Raise ProbeNotWorthIt when a probe at `batch` (a warm-up and `pairs` steps per way) would train more
    than 1/PROBE_WORTH of the run's images."""
    probe_images = batch * ways * (1 + pairs)
    if run_images is not None and run_images < PROBE_WORTH * probe_images:
        raise ProbeNotWorthIt(run_images, probe_images)


def _probe_copy(model: nn.Module, channels_last: bool) -> tuple[nn.Module, torch.optim.Optimizer, bool]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    probe_model = copy.deepcopy(model).cpu().to(memory_format=memory_format).train()
    optimizer = torch.optim.SGD(probe_model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, fused=True)
    return probe_model, optimizer, channels_last


def _training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    channels_last: bool,
    input_shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
) -> Callable[[bool], float]:
    """A function running one forward/backward/SGD step (bf16 autocast or not) and returning its seconds."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, *input_shape).contiguous(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch,))

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


_memo: dict[str, Any] = {}


def cached_probe(shape_key: str, measure: Callable[[], Probe], kind: type[Probe]) -> Probe:
    """The probe of this machine and model shape: from this process, the machine's cache file, or measured
    now (and stored). `kind` is the probe's dataclass (with a `cached` field). One process measures at a
    time (a lock beside the cache file): two runs started together (a study's workers, a test's reference
    and victim) wait for one measurement and share its decision instead of measuring each other's load. A
    cache file that cannot be read or written is ignored (the probe runs)."""
    key = f"{_machine_key()}|{shape_key}"
    if key in _memo:
        return replace(_memo[key], cached=True)  # measured earlier in this process, not now
    path = _cache_path()
    with _probe_lock(path):
        stored = _read_cache(path)
        if _usable_figures(stored.get(key)):
            try:
                _memo[key] = kind(**{**stored[key], "cached": True})
                return _memo[key]
            except TypeError:
                pass  # written by another version: measure again
        result = measure()
        _memo[key] = result
        stored[key] = asdict(result)
        with contextlib.suppress(OSError):  # a read-only home: the decision still holds for this process
            safeio.atomic_write_text(path, json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return result


def _usable_figures(entry: Any) -> bool:
    """A cached probe whose figures a decision can use: numbers, finite, throughputs above 0 (an edited or
    damaged entry, `"nchw_images_per_s": "fast"` or a 0 rate, is measured again instead of crashing)."""
    if not isinstance(entry, dict):
        return False
    for name, value in entry.items():
        if name == "cached":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if value < 0 or (name.endswith("_images_per_s") and value == 0):
            return False
    return True


@contextlib.contextmanager
def _probe_lock(path: Path, wait_s: float = PROBE_LOCK_WAIT_S) -> Iterator[None]:
    """Hold `<cache file>.lock` while probing; after `wait_s` (a holder stopped with SIGSTOP, say) or where
    the lock cannot be made (a read-only home), go on without it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (closed by the with below)
    except OSError:
        yield
        return
    with handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        yield  # the lock goes with the handle


def _machine_key() -> str:
    """CPU model and bf16 flags, host, torch version and thread count: what the probe's outcome depends on."""
    flags = "+".join(cpu_bf16_flags()) or "no bf16 flags"
    threads = torch.get_num_threads()
    return f"{_cpu_model()}|{flags}|{platform.node()}|torch {torch.__version__}|threads {threads}"


CPU_MODEL_FIELDS = ("model name", "cpu family", "model", "stepping")


def _cpu_model() -> str:
    """The CPU's name with its family, model and stepping: cloud VMs name different generations alike
    ("AMD EPYC"), and a VM's host name can outlive a move to another CPU."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in CPU_MODEL_FIELDS and name not in fields:
                fields[name] = value.strip()
            if not line.strip() and fields:
                break  # the first processor's block names them all
        if fields:
            return " ".join(f"{name} {fields[name]}" for name in CPU_MODEL_FIELDS if name in fields)
    return platform.processor() or "cpu"


def _cache_path() -> Path:
    return cache_root() / CACHE_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return stored if isinstance(stored, dict) else {}
