"""Time to a target Fashion-MNIST test accuracy from a cold start, with the shipped recipes in recipes/.

Each repetition is a new process, `python -m cnnlab train -c RECIPE --out DIR --set train.seed=S`, timed
from launch to exit: imports, reading the dataset files, training, evaluating the test split (10,000 images)
and writing the run directory all count. The test accuracy is the run's own (`result.json` `test.acc`), so
the time is the time to a model of that accuracy on disk. A recipe reaches its target when the test
accuracy is at least the target; every repetition is reported, including misses.

    python benchmarks/time_to_accuracy.py                     # CPU recipes (92% and 93%)
    python benchmarks/time_to_accuracy.py --device cuda       # the GPU recipe (94%)
    python benchmarks/time_to_accuracy.py --recipe R.yaml --target 0.92   # any run config
    python benchmarks/time_to_accuracy.py --quick             # seconds: generated data, 1 epoch, subset
    python benchmarks/time_to_accuracy.py --record            # also write the section of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
RECIPES = {  # device -> (recipe, target test accuracy, time budget in seconds from the issue)
    "cpu": [
        (ROOT / "recipes" / "fashion-mnist-92.yaml", 0.92, 180.0),
        (ROOT / "recipes" / "fashion-mnist-93.yaml", 0.93, None),
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
    return Attempt(seed, wall, summary["test"]["acc"], summary["train_time_s"], summary["epochs_run"])


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--recipe", type=Path, help="a run config YAML instead of the shipped recipes")
    parser.add_argument("--target", type=float, default=0.92, help="target test accuracy for --recipe")
    parser.add_argument("--repeats", type=int, default=3, help="cold-start runs per recipe (seeds 0..)")
    parser.add_argument(
        "--long-repeats",
        type=int,
        default=2,
        help="cold-start runs of recipes without a time budget (the 93%% recipe: ~9 min each on 2 cores)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: torch's own)")
    parser.add_argument("--data-dir", help="folder holding Fashion-MNIST's IDX files (else the usual lookup)")
    parser.add_argument("--quick", action="store_true", help="generated data, 1 epoch on a subset, 1 run")
    parser.add_argument("--record", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
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
        *common.header("python benchmarks/time_to_accuracy.py " + " ".join(sys.argv[1:]), device),
        "",
        f"Data: {source}. Wall seconds from launching `python -m cnnlab train -c RECIPE` to its exit "
        "(imports, data loading, training, test evaluation, writing the run directory); the training "
        "time alone is `train_time_s` of result.json.",
        "",
        "| recipe | run | wall s | training s | test accuracy | reached |",
        "|---|---|---:|---:|---:|---|",
    ]
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-bench-tta-"))
    try:
        for recipe, target, budget in recipes:
            attempts = []
            for seed in range(args.repeats if budget else min(args.repeats, args.long_repeats)):
                out_dir = folder / f"{recipe.stem}-{seed}"
                attempt = cold_run(recipe, seed, device, overrides, out_dir, args.threads)
                attempts.append(attempt)
                print(
                    f"  {recipe.name} seed {seed}: {attempt.wall_s:.1f} s wall, {attempt.train_s:.1f} s "
                    f"training, {attempt.epochs} epochs, test accuracy {attempt.test_acc:.4f}",
                    flush=True,
                )
            lines += recipe_rows(recipe, target, budget, attempts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines += ["", f"Load average: {load_before} at the start, {common.load_average()} at the end."]
    print("\n".join(lines))
    if args.record:
        common.record_section(SECTION + (" (GPU)" if device == "cuda" else ""), lines)
        print(f"recorded in {common.RESULTS}")


if __name__ == "__main__":
    main()
