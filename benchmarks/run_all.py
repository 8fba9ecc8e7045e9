"""Every benchmark in one command: each script writes its section of RESULTS.md, then the summary on top.

Runs, in order and each in its own process (so one's memory and threads never slow the next): data_loader.py,
throughput.py (fp32 and, where `precision: auto` could choose it, bf16; resnet20_cifar, densenet_cifar,
lenet5, resnet18), throughput.py again on resnet20_cifar with train.compile (where a C++ compiler is
installed), time_to_accuracy.py (the 92% and 93% recipes, the accuracy-against-time plot, bf16/fp32
parity where bf16 is measured), study_overhead.py — all with `--record` — then writes the "Summary against
the targets" section from their figures, with the machine and the date. Run it on a quiet machine: 35
minutes (a 2-core AMX Xeon) to an hour (a 2-core EPYC).

    python benchmarks/run_all.py                    # everything, recorded in benchmarks/RESULTS.md
    python benchmarks/run_all.py --quick            # seconds per script: checks the chain, records nothing
    python benchmarks/run_all.py --device cuda      # the GPU sections
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTION = "Summary against the targets"
# step -> the script it runs; "compiled" is throughput.py again with train.compile, on resnet20_cifar only
SCRIPTS = {
    "data_loader": "data_loader",
    "throughput": "throughput",
    "compiled": "throughput",
    "time_to_accuracy": "time_to_accuracy",
    "study_overhead": "study_overhead",
}
QUICK = {
    "data_loader": ["--repeats", "1", "--batches", "2"],
    "throughput": ["--quick", "--generated"],
    "compiled": ["--quick", "--generated", "--compile"],
    "time_to_accuracy": ["--quick"],
    "study_overhead": ["--quick"],
}
COMPILED_MODELS = ["resnet20_cifar"]  # the model of the c/a target


def script_arguments(name: str, args: argparse.Namespace) -> list[str]:
    """The command-line arguments one step runs with."""
    if args.quick:
        return list(QUICK[name])
    extra = ["--curve"] if name == "time_to_accuracy" else []
    if name == "time_to_accuracy" and (args.device == "cuda" or common.cpu_bf16_flags()):
        extra += ["--parity", str(args.parity)]  # bf16 is measured only where `auto` could choose it
    if name == "compiled":
        extra += ["--compile", "--models", *COMPILED_MODELS]
    return ["--device", args.device, *extra, "--record"]


def steps_to_run() -> list[str]:
    """Every step; the compiled one only where torch.compile can build (a C++ compiler is installed)."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:  # no working compiler: train.compile is refused here, so there is nothing to measure
        print("no C++ compiler: the train.compile throughput is not measured", flush=True)
        return [name for name in SCRIPTS if name != "compiled"]
    return list(SCRIPTS)


def run_script(name: str, arguments: list[str], json_path: Path) -> dict[str, Any]:
    """Run one benchmark step in a new process; its headline figures."""
    command = [sys.executable, str(HERE / f"{SCRIPTS[name]}.py"), *arguments, "--json", str(json_path)]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads(json_path.read_text())


def figure(value: float | None, template: str = "{:.2f}") -> str:
    return "-" if value is None else template.format(value)


def throughput_rows(figures: dict[str, Any], label: str = "") -> list[str]:
    """Summary rows of throughput.py: c/a, c/b, bf16/fp32 and the share of peak per model and precision."""
    rows = []
    for model, by_precision in figures["models"].items():
        for precision, values in by_precision.items():
            if not isinstance(values, dict):
                continue
            rows.append(
                f"| {model}, {precision}{label} | {values['fit_images_per_s']:,.0f} img/s | c/a "
                f"{figure(values['c_over_a'])} | c/b {figure(values['c_over_b'])} | "
                f"{figure(values['of_peak'], '{:.0%}')} of the {precision} GEMM peak |"
            )
        if "bf16_over_fp32" in by_precision:
            speedup = by_precision["bf16_over_fp32"]
            rows.append(f"| {model}{label} | cnnlab fit bf16 / fp32 {speedup:.2f}x | | | |")
    return rows


def summary_lines(results: dict[str, dict[str, Any]], argv: list[str], device: str) -> list[str]:
    """The summary section: targets and what each script measured (medians)."""
    lines = [
        *common.header("python benchmarks/run_all.py " + " ".join(argv), device),
        "",
        "Medians of each script's repetitions; the sections below hold every figure (min / median / max).",
        "Targets: c/a >= 2.5 and bf16/fp32 >= 1.6 (on an AVX512-BF16 CPU) on resnet20_cifar; c/b >= 0.95; "
        "densenet_cifar time per FLOP <= 1.5x resnet20_cifar's; Fashion-MNIST >= 92% in <= 90 s and >= 93% "
        "in <= 180 s from a cold start; study overhead <= 2 s per run.",
        "",
        "| what | figure | | | |",
        "|---|---|---|---|---|",
        *throughput_rows(results["throughput"]),
        *throughput_rows(results.get("compiled", {"models": {}}), label=" with train.compile"),
    ]
    for name, values in results["time_to_accuracy"]["recipes"].items():
        budget = values["budget_s"]
        lines.append(
            f"| {name} | {values['median_wall_s']:.1f} s median wall (budget {figure(budget, '{:.0f} s')}) | "
            f"{values['reached']}/{values['runs']} runs >= {values['target']:.0%} | "
            f"{', '.join(values['precision'])} | |"
        )
    overhead, loader = results["study_overhead"], results["data_loader"]
    lines += [
        f"| study overhead | {overhead['marginal_s']:.2f} s marginal per run | "
        f"{figure(overhead['per_run_in_worker_s'])} s per run in the worker | "
        f"{overhead['fixed_s']:.1f} s fixed per study | |",
        f"| data loader | in-memory / torchvision {loader['in_memory_over_torchvision']:.1f}x | | | |",
        "",
        *results["throughput"].get("lines", []),
    ]
    return lines


def main(argv: list[str] | None = None, run: Callable[[str, list[str], Path], dict] = run_script) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--parity", type=int, default=3, help="seeds per precision of the bf16/fp32 parity")
    parser.add_argument("--quick", action="store_true", help="seconds per script; records nothing")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-bench-all-"))
    results = {
        name: run(name, script_arguments(name, args), folder / f"{name}.json") for name in steps_to_run()
    }
    lines = summary_lines(results, argv, args.device)
    print("\n".join(lines))
    if not args.quick:
        common.record_section(SECTION + (" (GPU)" if args.device == "cuda" else ""), lines)
        print(f"recorded in {common.RESULTS}")


if __name__ == "__main__":
    main()
