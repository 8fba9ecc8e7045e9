"""Lightning's trainer options checked before a run writes anything: accelerator, devices, strategy,
precision, a C++ compiler for train.compile, and one process for the learning-rate finder. Lightning itself
would only reject them inside `Trainer(...)`, after the run folder exists, and torch.compile at the first
training step."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import StrategyRegistry

from cnnlab import config as cfg
from cnnlab.errors import ConfigError, first_line, unknown_choice
from cnnlab.train.distributed import run_ranks

ACCELERATORS = ("auto", "cpu", "cuda", "gpu")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


def check_trainer_options(config: cfg.RunConfig) -> None:
    """Raise ConfigError naming the key when Lightning could not honour a train.* option on this machine."""
    train = config.train
    if train.accelerator not in ACCELERATORS:
        raise unknown_choice("train.accelerator", train.accelerator, ACCELERATORS)
    if train.accelerator in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.accelerator={train.accelerator} needs a CUDA GPU and none is visible here; "
            "use auto or cpu"
        )
    if train.precision not in PRECISIONS:
        raise unknown_choice("train.precision", train.precision, PRECISIONS)
    _check_strategy(train.strategy)
    _check_devices(train.devices)
    if train.compile:
        _check_compiler()
    if config.optim.lr == "auto" and run_ranks(config).world_size > 1:
        raise ConfigError(
            "optim.lr=auto runs the learning-rate finder in one process; find the rate with a one-process "
            "run (its result.json records lr_finder.lr) and give it as --lr for the DDP run"
        )


def _check_compiler() -> None:
    """`torch.compile` (inductor) builds C++ at the first step: without a compiler the run fails there."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # InvalidCxxCompiler; other failures of the search mean the same to a user
        fix = "install one (apt-get install g++, or set $CXX) or set train.compile=false"
        raise ConfigError(
            f"train.compile=true needs a C++ compiler for torch.compile and none works here "
            f"({first_line(error)}); {fix}"
        ) from None


def _check_strategy(strategy: str) -> None:
    allowed = ("auto", *StrategyRegistry.available_strategies())
    if strategy not in allowed:
        raise unknown_choice("train.strategy", strategy, allowed)


def _check_devices(devices: str) -> None:
    """auto, -1 (all), a positive count, or a comma-separated list of device indices."""
    if devices in ("auto", "-1"):
        return
    parts = [part.strip() for part in devices.split(",")]
    if all(part.isdigit() for part in parts) and (len(parts) > 1 or int(parts[0]) >= 1):
        return
    raise ConfigError(
        f"train.devices={cfg.short(devices)} is not understood; use auto, -1 (all), a count such as 2, "
        "or device indices such as 0,1"
    )
