"""`train.channels_last: auto`: the memory layout a run trains in, measured on this machine for this model.

channels_last (NHWC) lets oneDNN and cuDNN pick their fastest convolutions for most nets, but not for all:
on a 2-core AVX2 AMD EPYC (torch 2.14.1, 2026-12-01) lenet5 with BatchNorm trained at 4,300 images/s
channels_last against 6,400 in the default NCHW layout (1.5x), while resnet20_cifar and densenet_cifar were
1.2x and 1.5x faster channels_last. So `auto` measures:

- CUDA, another accelerator, or several CPU processes (DDP: every process must agree): channels_last, no
  probe.
- One CPU process: a probe times fp32 training steps of copies of the model both ways, interleaved
  (`cnnlab.train.precision.time_training_ways`: the same batch, warm-up and budget as the precision probe),
  and trains NCHW only when that was at least `NCHW_MARGIN` times faster (channels_last is the default it must
  beat). The figures are cached beside the precision probe's (`<cache>/precision.json`), so only the first
  run of a model shape on a machine pays the probe.
- A run too short to repay the probe (`cnnlab.train.precision.PROBE_WORTH`) trains channels_last unprobed.
- `true` / `false` are used as given; a resumed run trains in the layout its checkpoint records.

The layout changes the speed, not the arithmetic a user asked for; the run id hashes `auto`, not the outcome.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from cnnlab.train.precision import ProbeNotWorthIt, ProbeTarget, cached_probe, time_training_ways

NCHW_MARGIN = 1.10  # NCHW must train this much faster than channels_last to be chosen


@dataclass(frozen=True)
class LayoutProbe:
    """fp32 training-step throughput channels_last and NCHW (best of the timed steps)."""

    batch: int
    pairs: int
    channels_last_images_per_s: float
    nchw_images_per_s: float
    seconds: float
    cached: bool = False

    @property
    def nchw_speedup(self) -> float:
        return self.nchw_images_per_s / self.channels_last_images_per_s


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a run trains in and why: result.json's `layout` and the run's second line."""

    channels_last: bool
    requested: bool | str  # train.channels_last as configured
    reason: str
    probe: LayoutProbe | None = None

    @property
    def name(self) -> str:
        return "channels_last" if self.channels_last else "nchw"

    def as_dict(self) -> dict[str, Any]:
        """result.json's `layout` entry (the probe's figures with NCHW's speedup, or null)."""
        probe = None
        if self.probe is not None:
            probe = {**asdict(self.probe), "nchw_speedup": round(self.probe.nchw_speedup, 3)}
        return {"layout": self.name, "requested": self.requested, "reason": self.reason, "probe": probe}

    def line(self) -> str:
        """One line for the start of the run."""
        requested = str(self.requested).lower()  # as YAML writes it: true, false, auto
        return f"layout: {self.name} (train.channels_last {requested}: {self.reason})"


def choose_layout(
    requested: bool | str, target: ProbeTarget, *, resumed_with: bool | None = None
) -> LayoutChoice:
    """The layout of a run: as configured, as its checkpoint says (resume), or measured for `auto`."""
    if requested != "auto":
        return LayoutChoice(bool(requested), requested, "as configured, no probe")
    if resumed_with is not None:
        return LayoutChoice(resumed_with, requested, "as chosen when the run started (its checkpoint)")
    if target.accelerator != "cpu":
        return LayoutChoice(True, requested, f"channels_last on {target.accelerator}, no probe")
    if target.processes > 1:
        reason = f"channels_last: {target.processes} CPU processes (the probe runs alone)"
        return LayoutChoice(True, requested, reason)
    try:
        probe = cached_probe(
            f"layout|{target.shape_key}",
            lambda: probe_layout_rates(
                target.model,
                target.input_shape,
                target.num_classes,
                target.batch_size,
                run_images=target.run_images,
            ),
            LayoutProbe,
        )
    except ProbeNotWorthIt as short:
        return LayoutChoice(True, requested, f"channels_last, {short}")
    nchw = probe.nchw_speedup >= NCHW_MARGIN
    source = "cached probe" if probe.cached else "probe"
    reason = (
        f"{source}, fp32 batch {probe.batch}: channels_last {probe.channels_last_images_per_s:,.0f} img/s, "
        f"nchw {probe.nchw_images_per_s:,.0f} img/s ({probe.nchw_speedup:.2f}x; nchw needs "
        f"{NCHW_MARGIN:.2f}x) in {probe.seconds:.1f} s"
    )
    return LayoutChoice(not nchw, requested, reason, probe)


def probe_layout_rates(
    model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, batch_size: int, **timing: Any
) -> LayoutProbe:
    """Time fp32 training steps of `model` channels_last and NCHW, interleaved (channels_last first)."""
    timed = time_training_ways(
        model, input_shape, num_classes, batch_size, ways=((True, False), (False, False)), **timing
    )
    channels_last, nchw = timed.images_per_s
    return LayoutProbe(
        batch=timed.batch,
        pairs=timed.pairs,
        channels_last_images_per_s=channels_last,
        nchw_images_per_s=nchw,
        seconds=timed.seconds,
    )
