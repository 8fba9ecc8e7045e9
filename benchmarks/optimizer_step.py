"""Milliseconds per optimizer update: torch's default per-tensor loop, `foreach` and the `fused` kernel that
cnnlab trains with (`cnnlab.train.system.build_optimizer`), for SGD (momentum 0.9, Nesterov, weight decay)
and AdamW, on zoo models from 0.06 M to 57 M parameters.

Each repetition times `--steps` updates of the model's parameters with fixed random gradients after one
warm-up update (which creates the optimizer state); the table shows min / median / max milliseconds over
repetitions, the three implementations interleaved within each repetition, and the loop / fused ratio of
medians. Only the update is timed: a training step adds its forward and backward.

    python benchmarks/optimizer_step.py              # print the table
    python benchmarks/optimizer_step.py --record     # also write its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SECTION = "Optimizer update"
MODELS = {  # name -> (in_chans, classes) as the experiments train them
    "lenet5": (1, 10),
    "resnet20_cifar": (3, 10),
    "resnet50": (1, 10),
    "alexnet": (3, 4),
}
IMPLEMENTATIONS = {"loop": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "SGD": lambda params, **impl: torch.optim.SGD(
        params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, **impl
    ),
    "AdamW": lambda params, **impl: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, **impl),
}


def update_seconds(
    model: nn.Module, make: Callable[..., torch.optim.Optimizer], impl: dict, steps: int
) -> float:
    """Seconds per `optimizer.step()` over `steps` updates, after a warm-up update that creates the state."""
    parameters = list(model.parameters())
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
    optimizer = make(parameters, **impl)
    optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def measure(name: str, repeats: int, steps: int) -> tuple[int, dict[tuple[str, str], list[float]]]:
    """(parameter count, {(optimizer, implementation): [ms per update, one per repetition]})."""
    from cnnlab.models import create_model

    in_chans, classes = MODELS[name]
    model = create_model(name, num_classes=classes, in_chans=in_chans)
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats):
        for optimizer, make in OPTIMIZERS.items():
            for implementation, impl in IMPLEMENTATIONS.items():
                seconds = update_seconds(model, make, impl, steps)
                times.setdefault((optimizer, implementation), []).append(1000 * seconds)
        print(f"  {name} repeat {repeat + 1}/{repeats} done", flush=True)
    return sum(p.numel() for p in model.parameters()), times


def table(results: dict[str, tuple[int, dict[tuple[str, str], list[float]]]]) -> list[str]:
    """Markdown rows: model, parameters, optimizer, ms per update of each implementation, loop / fused."""
    names = list(IMPLEMENTATIONS)
    rows = [
        "| model | parameters | optimizer | " + " | ".join(f"{n} ms" for n in names) + " | loop / fused |",
        "|---|---:|---|" + "---:|" * (len(names) + 1),
    ]
    for model, (count, times) in results.items():
        for optimizer in OPTIMIZERS:
            cells = [common.format_spread(times[(optimizer, n)], 2) for n in names]
            ratio = statistics.median(times[(optimizer, "loop")]) / statistics.median(
                times[(optimizer, "fused")]
            )
            rows.append(
                f"| {model} | {count / 1e6:.2f} M | {optimizer} | " + " | ".join(cells) + f" | {ratio:.1f}x |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed updates per repetition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: one of two shared cores)")
    parser.add_argument("--record", action="store_true", help=f"write the results into {common.RESULTS}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {common.machine('cpu')}", flush=True)
    results = {name: measure(name, args.repeats, args.steps) for name in args.models}
    rows = table(results)
    print("\n".join(rows))
    if args.record:
        command = "python benchmarks/optimizer_step.py " + " ".join(sys.argv[1:])
        lines = [
            *common.header(command.strip(), "cpu"),
            "",
            *rows,
            "",
            "min / median / max over repetitions.",
        ]
        common.record_section(SECTION, lines)


if __name__ == "__main__":
    main()
