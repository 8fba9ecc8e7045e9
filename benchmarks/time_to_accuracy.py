"""Time to a target Fashion-MNIST test accuracy from a cold start, with the shipped recipes in recipes/.

Each repetition is a new process, `python -m cnnlab train -c RECIPE --out DIR --set train.seed=S`, timed
from launch to exit: imports, reading the dataset files, training, evaluating the test split (10,000 images)
and writing the run directory all count. The test accuracy is the run's own (`result.json` `test.acc`), so
the time is the time to a model of that accuracy on disk. A recipe reaches its target when the test
accuracy is at least the target; every repetition is reported, including misses.

Two more measurements, each its own set of runs (so they never slow the timed ones down):

- `--curve`: one run per recipe with `train.test_every_epoch` (the test split scored after every epoch),
  drawn as test accuracy against cumulative training seconds (`epoch_time_s`) into
  benchmarks/time_to_accuracy.png, with the target lines;
- `--parity`: the recipes in fp32 (`train.precision=32-true`) and in bf16 (`bf16-mixed`), seeds 0..N-1 each
  way: test accuracy and wall time as mean ± std, to show bf16 reaches the same accuracy within noise.

    python benchmarks/time_to_accuracy.py                     # CPU recipes (92% in 90 s, 93% in 180 s)
    python benchmarks/time_to_accuracy.py --device cuda       # the GPU recipe (94%)
    python benchmarks/time_to_accuracy.py --recipe R.yaml --target 0.92   # any run config
    python benchmarks/time_to_accuracy.py --curve --parity --record       # also the curve and parity
    python benchmarks/time_to_accuracy.py --quick             # seconds: generated data, 1 epoch, subset
    python benchmarks/time_to_accuracy.py --record            # also write the section of RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SECTION = "Time to accuracy"
ROOT = Path(__file__).resolve().parent.parent
CURVE_FILE = Path(__file__).with_name("time_to_accuracy.png")
RECIPES = {  # device -> (recipe, target test accuracy, time budget in seconds from the issue)
    "cpu": [
        (ROOT / "recipes" / "fashion-mnist-92.yaml", 0.92, 90.0),
        (ROOT / "recipes" / "fashion-mnist-93.yaml", 0.93, 180.0),
    ],
    "cuda": [(ROOT / "recipes" / "fashion-mnist-94-gpu.yaml", 0.94, 15.0)],
}
QUICK_OVERRIDES = ["train.epochs=1", "data.subset=500"]


@dataclass(frozen=True)
class Attempt:
    """One cold-start run: wall seconds from launch to exit, the run's test accuracy and training time."""

    seed: int
    wall_s: float
    test_acc: float
    train_s: float
    epochs: int
    precision: str = ""  # what the run trained in (result.json `precision.precision`)
    curve: tuple[tuple[float, float], ...] = ()  # (cumulative training s, test accuracy) per epoch, --curve


def cold_run(
    recipe: Path, seed: int, device: str, overrides: list[str], out_dir: Path, threads: int | None = None
) -> Attempt:
    """Train the recipe in a new process and read back its result."""
    sets = [f"train.seed={seed}", f"train.accelerator={device}", "train.devices=1", *overrides]
    command = [sys.executable, "-m", "cnnlab", "train", "-c", str(recipe), "--out", str(out_dir)]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "CNNLAB_QUIET": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the new process
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}:\n{completed.stderr[-2000:]}")
    summary = json.loads((out_dir / "result.json").read_text())
    precision = (summary.get("precision") or {}).get("precision", "")
    return Attempt(
        seed,
        wall,
        summary["test"]["acc"],
        summary["train_time_s"],
        summary["epochs_run"],
        precision,
        epoch_curve(out_dir),
    )


def epoch_curve(out_dir: Path) -> tuple[tuple[float, float], ...]:
    """(cumulative training seconds, test accuracy) after each epoch, when the run scored the test split
    every epoch (metrics.csv `test_acc`); empty otherwise."""
    with open(out_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not rows[0].get("test_acc"):
        return ()
    seconds, points = 0.0, []
    for row in rows:
        seconds += float(row["epoch_time_s"])
        points.append((round(seconds, 2), float(row["test_acc"])))
    return tuple(points)


def draw_curves(
    curves: dict[str, tuple[tuple[float, float], ...]], targets: dict[str, float], path: Path
) -> None:
    """Test accuracy against training seconds, one line per recipe, with its target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        line = axes.plot([p[0] for p in points], [p[1] * 100 for p in points], marker="o", label=name)[0]
        axes.axhline(targets[name] * 100, color=line.get_color(), linestyle="--", linewidth=0.8)
    axes.set_xlabel("training seconds (cumulative epoch_time_s)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(85, 95)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def mean_std(values: list[float]) -> str:
    """`mean ± std` (sample std; 0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def parity_rows(recipe: Path, runs: dict[str, list[Attempt]]) -> list[str]:
    """Markdown rows: test accuracy and wall time as mean ± std per precision of one recipe."""
    rows = []
    for precision, attempts in runs.items():
        accuracies = [a.test_acc for a in attempts]
        walls = [a.wall_s for a in attempts]
        spread = statistics.stdev(walls) if len(walls) > 1 else 0.0
        rows.append(
            f"| {recipe.name} | {precision} | {len(attempts)} | {mean_std(accuracies)} | "
            f"{statistics.mean(walls):.1f} ± {spread:.1f} |"
        )
    return rows


def recipe_rows(recipe: Path, target: float, budget: float | None, attempts: list[Attempt]) -> list[str]:
    """Markdown rows: every attempt, then the min / median / max line."""
    budget_text = f"{budget:.0f} s" if budget else "-"
    rows = []
    for attempt in attempts:
        reached = "yes" if attempt.test_acc >= target else "no"
        rows.append(
            f"| {recipe.name} | seed {attempt.seed} | {attempt.wall_s:.1f} | {attempt.train_s:.1f} | "
            f"{attempt.test_acc:.4f} | {reached} |"
        )
    walls = [a.wall_s for a in attempts]
    accuracies = [a.test_acc for a in attempts]
    reached = sum(a.test_acc >= target for a in attempts)
    rows.append(
        f"| **{recipe.name}** (target {target:.0%}, budget {budget_text}) | min / median / max | "
        f"**{common.format_spread(walls)}** | {common.format_spread([a.train_s for a in attempts])} | "
        f"{common.format_spread(accuracies, 4)} | {reached}/{len(attempts)} |"
    )
    return rows


def real_fashion_mnist(data_dir: str | None) -> str:
    """Where Fashion-MNIST was found; exits when it is absent (accuracy on generated data means nothing)."""
    from cnnlab.data import get_spec, locate

    location = locate(get_spec("fashion-mnist"), data_dir)
    if location is None:
        sys.exit(
            "time_to_accuracy: Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or pass "
            "--data-dir / set CNNLAB_DATA to a folder with its four IDX .gz files); --quick runs without it"
        )
    return f"Fashion-MNIST (real files, 60,000 training / 10,000 test images) from {location.directory}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--recipe", type=Path, help="a run config YAML instead of the shipped recipes")
    parser.add_argument("--target", type=float, default=0.92, help="target test accuracy for --recipe")
    parser.add_argument("--repeats", type=int, default=3, help="cold-start runs per recipe (seeds 0..)")
    parser.add_argument(
        "--long-repeats",
        type=int,
        default=2,
        help="cold-start runs of a recipe without a time budget (one given with --recipe)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: torch's own)")
    parser.add_argument("--data-dir", help="folder holding Fashion-MNIST's IDX files (else the usual lookup)")
    parser.add_argument("--quick", action="store_true", help="generated data, 1 epoch on a subset, 1 run")
    parser.add_argument("--curve", action="store_true", help=f"also one run per recipe for {CURVE_FILE.name}")
    parser.add_argument("--parity", type=int, default=0, metavar="N", help="also N seeds in fp32 and in bf16")
    parser.add_argument("--record", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    parser.add_argument("--json", help="also write the headline figures to this file (run_all.py)")
    return parser.parse_args(argv)


def timed_rows(recipes, args, device, overrides, folder: Path) -> tuple[list[str], dict]:
    """The timed cold starts of every recipe: table rows and the headline figures per recipe."""
    lines, figures = [], {}
    for recipe, target, budget in recipes:
        attempts = []
        for seed in range(args.repeats if budget else min(args.repeats, args.long_repeats)):
            attempt = cold_run(
                recipe, seed, device, overrides, folder / f"{recipe.stem}-{seed}", args.threads
            )
            attempts.append(attempt)
            print(
                f"  {recipe.name} seed {seed}: {attempt.wall_s:.1f} s wall, {attempt.train_s:.1f} s "
                f"training, {attempt.epochs} epochs, {attempt.precision}, test accuracy "
                f"{attempt.test_acc:.4f}",
                flush=True,
            )
        lines += recipe_rows(recipe, target, budget, attempts)
        figures[recipe.name] = {
            "target": target,
            "budget_s": budget,
            "median_wall_s": statistics.median(a.wall_s for a in attempts),
            "reached": sum(a.test_acc >= target for a in attempts),
            "runs": len(attempts),
            "test_acc": [a.test_acc for a in attempts],
            "precision": sorted({a.precision for a in attempts}),
        }
    return lines, figures


def curve_lines(recipes, args, device, overrides, folder: Path, path: Path) -> list[str]:
    """One run per recipe scoring the test split every epoch; the plot and a table of its points."""
    from cnnlab import config as cfg

    if "train.test_every_epoch" not in cfg.all_keys():
        return ["", "Accuracy against time: not drawn (this cnnlab has no `train.test_every_epoch`)."]
    curves, targets = {}, {}
    for recipe, target, _ in recipes:
        sets = [*overrides, "train.test_every_epoch=true"]
        attempt = cold_run(recipe, 0, device, sets, folder / f"{recipe.stem}-curve", args.threads)
        curves[recipe.name], targets[recipe.name] = attempt.curve, target
    draw_curves(curves, targets, path)
    lines = [
        "",
        f"Accuracy against time (`--curve`: seed 0, the test split scored after every epoch in a run of its "
        f"own): ![test accuracy against training seconds]({path.name})",
        "",
        "| recipe | (training s, test accuracy) after each epoch |",
        "|---|---|",
    ]
    for name, points in curves.items():
        lines.append(f"| {name} | " + ", ".join(f"({s:.0f} s, {a:.4f})" for s, a in points) + " |")
    return lines


def parity_lines(recipes, args, device, overrides, folder: Path) -> list[str]:
    """The recipes in fp32 and in bf16, seeds 0..N-1 each way, interleaved: accuracy and wall mean ± std."""
    lines = [
        "",
        f"bf16 / fp32 accuracy parity (`--parity {args.parity}`: seeds 0..{args.parity - 1} each way, "
        "interleaved):",
        "",
        "| recipe | train.precision | runs | test accuracy mean ± std | wall s mean ± std |",
        "|---|---|---:|---:|---:|",
    ]
    for recipe, _, _ in recipes:
        runs: dict[str, list[Attempt]] = {"32-true": [], "bf16-mixed": []}
        for seed in range(args.parity):
            for precision, attempts in runs.items():
                sets = [*overrides, f"train.precision={precision}"]
                out_dir = folder / f"{recipe.stem}-{precision}-{seed}"
                attempts.append(cold_run(recipe, seed, device, sets, out_dir, args.threads))
                print(
                    f"  parity {recipe.name} {precision} seed {seed}: {attempts[-1].test_acc:.4f}", flush=True
                )
        lines += parity_rows(recipe, runs)
    return lines


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    recipes = [(args.recipe, args.target, None)] if args.recipe else RECIPES[device]
    overrides = list(args.set)
    if args.quick:
        data_dir, source = common.fashion_data_dir({"train": 1000, "t10k": 200})
        overrides += [*QUICK_OVERRIDES, f"data.data_dir={data_dir}"]
        args.repeats = 1
    else:
        source = real_fashion_mnist(args.data_dir)
        overrides += [f"data.data_dir={args.data_dir}"] if args.data_dir else []
    if args.threads:
        torch.set_num_threads(args.threads)  # so the machine line reports the runs' thread count
    print(f"data: {source}\nmachine: {common.machine(device)}", flush=True)
    load_before = common.load_average()
    lines = [
        *common.header("python benchmarks/time_to_accuracy.py " + " ".join(argv), device),
        "",
        f"Data: {source}. Wall seconds from launching `python -m cnnlab train -c RECIPE` to its exit "
        "(imports, data loading, the precision probe where there is one, training, test evaluation, writing "
        "the run directory); the training time alone is `train_time_s` of result.json.",
        "",
        "| recipe | run | wall s | training s | test accuracy | reached |",
        "|---|---|---:|---:|---:|---|",
    ]
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-bench-tta-"))
    try:
        rows, figures = timed_rows(recipes, args, device, overrides, folder)
        lines += rows
        if args.curve:
            lines += curve_lines(recipes, args, device, overrides, folder, CURVE_FILE)
        if args.parity:
            lines += parity_lines(recipes, args, device, overrides, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines += ["", f"Load average: {load_before} at the start, {common.load_average()} at the end."]
    print("\n".join(lines))
    common.write_json(args.json, {"recipes": figures})
    if args.record:
        common.record_section(SECTION + (" (GPU)" if device == "cuda" else ""), lines)
        print(f"recorded in {common.RESULTS}")
    return figures


if __name__ == "__main__":
    main()
