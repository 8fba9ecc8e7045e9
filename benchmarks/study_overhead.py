"""Per-run overhead inside a study: many 1-epoch runs on a small subset, timed against their training time.

Each repetition runs `cnnlab study run` (a new process, one worker, default SQLite queue) on a study of
`--runs` seeds of one small configuration (lenet5, ReLU, Fashion-MNIST subset of `--subset` images, 1 epoch,
holdout validation, test evaluation, checkpoints, predictions: everything a study run does), and a second
study of `--baseline-runs` runs. Figures:

- per run inside the worker: the time the runner spent on a run (its log line) minus the run's pure
  training time (`train_time_s` in result.json): set-up, validation, checkpoints, test evaluation, writing;
  the first run of a worker also loads the data (reported apart);
- marginal overhead per run: the slope of (study wall time - total training time) over the number of runs
  between the two study sizes, i.e. what one more run costs beyond its training, fixed costs (imports,
  planning, storage, report) excluded;
- fixed cost per study: the intercept of that line.

    python benchmarks/study_overhead.py                  # CPU, 3 repetitions
    python benchmarks/study_overhead.py --device cuda
    python benchmarks/study_overhead.py --quick          # seconds, generated data
    python benchmarks/study_overhead.py --record
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SECTION = "Study overhead"
# the runner's per-run log line: "[i/n] completed <run id> ... <seconds> s" (then notes or flags)
RUN_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\w+)\s+(\w+) .*? ([0-9.]+) s(?=$| \(| \[)")


@dataclass(frozen=True)
class StudyTiming:
    """One `cnnlab study run`: wall time, and per run (in order) the runner's time and the training time."""

    runs: int
    wall_s: float
    runner_s: tuple[float, ...]
    train_s: tuple[float, ...]

    @property
    def non_training_s(self) -> float:
        """Study wall time not spent training."""
        return self.wall_s - sum(self.train_s)


def write_spec(folder: Path, runs: int, args: argparse.Namespace, data_dir: str | None) -> Path:
    """A study spec of `runs` seeds of one 1-epoch lenet5 configuration on a Fashion-MNIST subset."""
    base = {
        "model.name": "lenet5",
        "model.activation": "relu",
        "data.name": "fashion-mnist",
        "data.subset": args.subset,
        "data.batch_size": 64,
        "train.epochs": 1,
        "train.accelerator": args.device,
        "train.devices": "1",
    }
    if data_dir:
        base["data.data_dir"] = data_dir
    spec = {"name": f"overhead-{runs}", "base": base, "grid": {}, "seeds": list(range(runs))}
    path = folder / f"overhead-{runs}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_study(spec: Path, out_dir: Path, runs: int, threads: int | None = None) -> StudyTiming:
    """Run the study in a new process; the wall time, and per-run times from the log and result files."""
    env = {**os.environ, "CNNLAB_QUIET": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the new process
    command = [sys.executable, "-m", "cnnlab", "study", "run", str(spec), "--out", str(out_dir)]
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}:\n{completed.stderr[-2000:]}")
    runner: dict[str, float] = {}
    for line in completed.stdout.splitlines():
        match = RUN_LINE.match(line.strip())
        if match and match.group(3) == "completed":
            runner[match.group(4)] = float(match.group(5))
    order = list(runner)
    train = {}
    for run_id in order:
        summary = json.loads((out_dir / "runs" / run_id / "result.json").read_text())
        train[run_id] = summary["train_time_s"]
    if len(order) != runs:
        raise RuntimeError(f"expected {runs} completed runs, found {len(order)} in:\n{completed.stdout}")
    return StudyTiming(runs, wall, tuple(runner[r] for r in order), tuple(train[r] for r in order))


def marginal(small: StudyTiming, large: StudyTiming) -> tuple[float, float]:
    """(overhead per additional run, fixed cost per study) from two study sizes: a line through both."""
    slope = (large.non_training_s - small.non_training_s) / (large.runs - small.runs)
    return slope, small.non_training_s - slope * small.runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--runs", type=int, default=10, help="runs in the large study")
    parser.add_argument("--baseline-runs", type=int, default=2, help="runs in the small study")
    parser.add_argument("--subset", type=int, default=2000, help="training images per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the study (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="generated data, 1 and 3 runs, one repetition")
    parser.add_argument("--record", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    parser.add_argument("--json", help="also write the headline figures to this file (run_all.py)")
    return parser.parse_args(argv)


def table(larges: list[StudyTiming], lines: list[tuple[float, float]]) -> list[str]:
    """Markdown rows of the figures, each min / median / max over repetitions (or runs)."""
    later = [r - t for timing in larges for r, t in zip(timing.runner_s[1:], timing.train_s[1:], strict=True)]
    first = [timing.runner_s[0] - timing.train_s[0] for timing in larges]
    train = [t for timing in larges for t in timing.train_s]
    per_run_amortised = [timing.non_training_s / timing.runs for timing in larges]
    rows = [
        "| figure (seconds) | min / median / max |",
        "|---|---:|",
        f"| pure training time per run (`train_time_s`) | {common.format_spread(train, 2)} |",
        f"| overhead per run inside the worker (runner time - training), runs 2..N | "
        f"{common.format_spread(later, 2)} |",
        f"| the same for a worker's first run (loads the data) | {common.format_spread(first, 2)} |",
        f"| **marginal overhead per run** (slope over study sizes) | "
        f"{common.format_spread([slope for slope, _ in lines], 2)} |",
        f"| fixed cost per study (intercept: start-up, plan, storage, report) | "
        f"{common.format_spread([fixed for _, fixed in lines], 2)} |",
        f"| (study wall - total training) / runs, {larges[0].runs} runs | "
        f"{common.format_spread(per_run_amortised, 2)} |",
    ]
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.quick:
        args.runs, args.baseline_runs, args.repeats, args.subset = 3, 1, 1, 200
    sizes = {"train": 2000, "t10k": 200} if args.quick else None
    data_dir, source = common.fashion_data_dir(sizes)
    if args.threads:
        torch.set_num_threads(args.threads)  # so the machine line reports the study's thread count
    print(f"data: {source}\nmachine: {common.machine(args.device)}", flush=True)
    load_before = common.load_average()
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-bench-study-"))
    larges, lines = [], []
    try:
        for repeat in range(args.repeats):
            timings = {}
            for runs in (args.baseline_runs, args.runs):
                spec = write_spec(folder, runs, args, data_dir)
                timings[runs] = run_study(spec, folder / f"study-{repeat}-{runs}", runs, args.threads)
                print(
                    f"  repeat {repeat + 1}/{args.repeats}, {runs} runs: wall {timings[runs].wall_s:.1f} s, "
                    f"training {sum(timings[runs].train_s):.1f} s",
                    flush=True,
                )
            larges.append(timings[args.runs])
            lines.append(marginal(timings[args.baseline_runs], timings[args.runs]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = [
        *common.header("python benchmarks/study_overhead.py " + " ".join(argv), args.device),
        "",
        f"Data: {source}. Study: lenet5 (ReLU), {args.subset} training images (10% held out for "
        f"validation), batch 64, 1 epoch, test evaluation; `{args.baseline_runs}` and `{args.runs}` seeds "
        f"per study, one worker, default SQLite storage; {args.repeats} repetitions.",
        "",
        *table(larges, lines),
        "",
        f"Load average: {load_before} at the start, {common.load_average()} at the end.",
    ]
    print("\n".join(report))
    later = [r - t for timing in larges for r, t in zip(timing.runner_s[1:], timing.train_s[1:], strict=True)]
    common.write_json(
        args.json,
        {
            "marginal_s": statistics.median(slope for slope, _ in lines),
            "per_run_in_worker_s": statistics.median(later) if later else None,
            "fixed_s": statistics.median(fixed for _, fixed in lines),
        },
    )
    if args.record:
        common.record_section(SECTION + (" (GPU)" if args.device.startswith("cuda") else ""), report)
        print(f"recorded in {common.RESULTS}")


if __name__ == "__main__":
    main()
