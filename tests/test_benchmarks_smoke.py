"""The benchmark scripts still run (tiny sizes, generated data), and the speed settings keep behaviour."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import config as cfg
from cnnlab.cli import main
from cnnlab.models import create_model
from cnnlab.train.system import ClassifierSystem

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import optimizer_step  # noqa: E402
import run_all  # noqa: E402
import study_overhead  # noqa: E402
import throughput  # noqa: E402
import time_to_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory) -> str:
    """Generated Fashion-MNIST-shaped IDX files (what the scripts use when the dataset is absent)."""
    folder = tmp_path_factory.mktemp("fashion")
    common.write_generated_idx(folder, {"train": 600, "t10k": 100})
    return str(folder)


def test_generated_idx_files_load_as_fashion_mnist(fashion_dir):
    from cnnlab.data import load_local_split

    train = load_local_split(cfg.DataConfig(name="fashion-mnist", data_dir=fashion_dir), "train")
    assert train.images.shape == (600, 1, 28, 28) and train.images.dtype == torch.uint8
    assert sorted(train.labels.unique().tolist()) == list(range(10))


def test_throughput_measures_every_pipeline_in_both_precisions_on_the_same_steps(fashion_dir):
    setting = throughput.Setting(
        "lenet5",
        steps=2,
        batch_size=16,
        device="cpu",
        data_dir=fashion_dir,
        precisions=("32-true", "bf16-mixed"),
    )
    setting.forward_flops = throughput.forward_flops(setting)
    throughput.measure(setting, repeats=1)
    assert setting.pipelines == ("a", "b:32-true", "c:32-true", "b:bf16-mixed", "c:bf16-mixed")
    assert all(len(setting.rates[key]) == 1 and setting.rates[key][0] > 0 for key in setting.pipelines)
    rows = throughput.model_table(setting, peaks={"32-true": 100.0, "bf16-mixed": 200.0})
    assert sum(row.startswith("| (") for row in rows) == 5
    assert sum(row.startswith(("fp32: c/a = ", "bf16: c/a = ")) and "c/b = " in row for row in rows) == 2
    assert any(row.startswith("cnnlab fit bf16 / fp32: ") for row in rows)
    figures = throughput.headline(setting, {"32-true": 100.0, "bf16-mixed": 200.0})
    assert set(figures) == {"32-true", "bf16-mixed", "bf16_over_fp32"}
    assert figures["32-true"]["c_over_a"] > 0 and figures["bf16-mixed"]["of_peak"] > 0


def test_by_operator_splits_each_precisions_step_into_the_groups_and_sums_to_the_step(fashion_dir):
    setting = throughput.Setting("resnet20_cifar", steps=2, batch_size=16, device="cpu", data_dir=fashion_dir)
    setting.precisions = ("32-true", "bf16-mixed")
    totals = throughput.operator_milliseconds(setting, rounds=1)
    assert set(totals) == {"32-true", "bf16-mixed"}
    for groups in totals.values():
        assert groups["convolution forward"] > 0 and groups["BatchNorm backward"] > 0
        assert set(groups) <= {*throughput.OPERATOR_GROUPS.values(), throughput.OTHER_OPERATORS}
    table = throughput.operator_table(totals)
    assert table[0] == "| operator group | fp32 ms/step | bf16 ms/step | fp32 / bf16 |"
    step = table[-1].split(" | ")
    assert step[0] == "| step" and float(step[1]) == pytest.approx(sum(totals["32-true"].values()), abs=0.051)


def test_optimizer_step_times_every_implementation_of_both_optimizers():
    count, times = optimizer_step.measure("lenet5", repeats=2, steps=1)
    assert count == sum(p.numel() for p in create_model("lenet5", num_classes=10, in_chans=1).parameters())
    assert set(times) == {(o, i) for o in optimizer_step.OPTIMIZERS for i in optimizer_step.IMPLEMENTATIONS}
    assert all(len(ms) == 2 and min(ms) > 0 for ms in times.values())
    rows = optimizer_step.table({"lenet5": (count, times)})
    assert len(rows) == 2 + len(optimizer_step.OPTIMIZERS) and rows[2].startswith("| lenet5 | 0.06 M | SGD |")


def test_throughput_measures_bf16_only_where_auto_could_choose_it(monkeypatch):
    monkeypatch.setattr(common, "cpu_bf16_flags", lambda: ())
    assert throughput.default_precisions("cpu") == ("32-true",)
    monkeypatch.setattr(common, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert throughput.default_precisions("cpu") == ("32-true", "bf16-mixed")


def test_time_to_accuracy_cold_run_reads_back_the_test_accuracy(fashion_dir, tmp_path, monkeypatch):
    launch = subprocess.run

    def in_process(command, **kwargs):  # the real `cnnlab train` command line, without a new interpreter
        if command[:3] != [sys.executable, "-m", "cnnlab"]:
            return launch(command, **kwargs)  # e.g. git, asked by the run for its provenance
        return subprocess.CompletedProcess(command, main(command[3:]), "", "")

    monkeypatch.setattr(time_to_accuracy.subprocess, "run", in_process)
    recipe = RECIPES / "fashion-mnist-92.yaml"
    overrides = [*time_to_accuracy.QUICK_OVERRIDES, f"data.data_dir={fashion_dir}"]
    attempt = time_to_accuracy.cold_run(recipe, 0, "cpu", overrides, tmp_path / "run")
    assert attempt.epochs == 1 and 0.0 <= attempt.test_acc <= 1.0 and attempt.wall_s > attempt.train_s > 0
    rows = time_to_accuracy.recipe_rows(recipe, 0.92, 180.0, [attempt])
    assert len(rows) == 2 and rows[-1].endswith(f"| {int(attempt.test_acc >= 0.92)}/1 |")


def test_accuracy_against_time_is_read_from_metrics_and_drawn(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s,test_loss,test_acc\n"
        "0,0.9,0.7,,,0.1,4.5,0.5,0.85\n1,0.5,0.85,,,0.1,4.0,0.3,0.91\n"
    )
    curve = time_to_accuracy.epoch_curve(tmp_path)
    assert curve == ((4.5, 0.85), (8.5, 0.91))
    picture = tmp_path / "curve.png"
    time_to_accuracy.draw_curves({"fashion-mnist-92.yaml": curve}, {"fashion-mnist-92.yaml": 0.92}, picture)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parity_rows_give_mean_and_std_per_precision():
    def attempt(acc: float, precision: str) -> time_to_accuracy.Attempt:
        return time_to_accuracy.Attempt(0, 60.0, acc, 50.0, 10, precision)

    runs = {
        "32-true": [attempt(0.92, "32-true"), attempt(0.93, "32-true")],
        "bf16-mixed": [attempt(0.925, "bf16-mixed"), attempt(0.925, "bf16-mixed")],
    }
    rows = time_to_accuracy.parity_rows(RECIPES / "fashion-mnist-92.yaml", runs)
    assert rows[0] == "| fashion-mnist-92.yaml | 32-true | 2 | 0.9250 ± 0.0071 | 60.0 ± 0.0 |"
    assert "| bf16-mixed | 2 | 0.9250 ± 0.0000 |" in rows[1]


def test_run_all_writes_one_summary_from_every_script():
    fit = {
        "fit_images_per_s": 700.0,
        "c_over_a": 2.6,
        "c_over_b": 1.0,
        "of_peak": 0.8,
        "seconds_per_tflop": 7,
    }
    results = {
        "data_loader": {"in_memory_over_torchvision": 19.3},
        "throughput": {
            "models": {"resnet20_cifar": {"32-true": fit, "bf16-mixed": fit, "bf16_over_fp32": 1.8}},
            "lines": [
                "densenet_cifar time per FLOP / resnet20_cifar's, cnnlab fit ...: fp32 1.20 / 1.30 / 1.40"
            ],
        },
        "time_to_accuracy": {
            "recipes": {
                "fashion-mnist-92.yaml": {
                    "target": 0.92,
                    "budget_s": 90.0,
                    "median_wall_s": 80.0,
                    "reached": 3,
                    "runs": 3,
                    "precision": ["32-true"],
                }
            }
        },
        "study_overhead": {"marginal_s": 0.14, "per_run_in_worker_s": 0.29, "fixed_s": 11.0},
        "compiled": {"models": {"resnet20_cifar": {"bf16-mixed": {**fit, "c_over_a": 2.7}}}},
    }
    lines = run_all.summary_lines(results, [], "cpu")
    text = "\n".join(lines)
    assert "Machine: " in text and "| resnet20_cifar, 32-true | 700 img/s | c/a 2.60 | c/b 1.00 |" in text
    assert "bf16 / fp32 1.80x" in text and "80.0 s median wall (budget 90 s) | 3/3 runs >= 92%" in text
    assert "0.14 s marginal per run" in text and "19.3x" in text and "densenet_cifar time per FLOP" in text
    assert "| resnet20_cifar, bf16-mixed with train.compile | 700 img/s | c/a 2.70 |" in text


def test_run_all_measures_the_compiled_fit_only_where_a_compiler_works(monkeypatch):
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    assert "compiled" not in run_all.steps_to_run()
    compiled = run_all.script_arguments("compiled", argparse.Namespace(quick=False, device="cpu", parity=3))
    assert compiled[-4:] == ["--compile", "--models", "resnet20_cifar", "--record"]


@pytest.mark.parametrize("name", sorted(path.name for path in RECIPES.glob("*.yaml")))
def test_shipped_recipes_are_valid_fashion_mnist_run_configs(name):
    config = cfg.from_dict(cfg.load_yaml(RECIPES / name))
    assert config.data.name == "fashion-mnist"


def test_study_overhead_spec_runs_and_its_log_lines_parse(fashion_dir, tmp_path):
    from cnnlab.study.runner import run_study

    options = argparse.Namespace(subset=200, device="cpu")
    spec = study_overhead.write_spec(tmp_path, 1, options, fashion_dir)
    lines: list[str] = []
    outcome = run_study(spec, tmp_path / "study", log=lines.append)
    assert outcome.counts.get("completed") == 1
    parsed = [study_overhead.RUN_LINE.match(line) for line in lines]
    assert [m.group(3) for m in parsed if m] == ["completed"]


def test_marginal_overhead_is_the_slope_between_study_sizes():
    small = study_overhead.StudyTiming(2, wall_s=20.0, runner_s=(3.0, 2.0), train_s=(1.0, 1.0))
    large = study_overhead.StudyTiming(6, wall_s=32.0, runner_s=(3.0,) + (2.0,) * 5, train_s=(1.0,) * 6)
    slope, fixed = study_overhead.marginal(small, large)
    assert slope == pytest.approx(2.0) and fixed == pytest.approx(14.0)


def test_compiled_forward_keeps_the_state_dict_keys():
    model = create_model("lenet5", num_classes=10, in_chans=1)
    plain = ClassifierSystem(model, num_classes=10, optim=cfg.OptimConfig(), backbone_lr_mult=1.0)
    compiled = ClassifierSystem(
        model, num_classes=10, optim=cfg.OptimConfig(), backbone_lr_mult=1.0, compile=True
    )
    assert compiled.compiled_forward is not None and plain.compiled_forward is None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert all(re.match(r"model\.|train_|val_", key) for key in compiled.state_dict())


FROM_THE_HEAP = """
import torch
from cnnlab.train.speed import keep_freed_memory


def from_the_heap(size=64 << 20):  # above glibc's own mmap threshold (at most 32 MiB)
    block = torch.empty(size, dtype=torch.uint8)
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(address, 16) for address in line.split()[0].split("-"))
            return start <= block.data_ptr() < end
    return False


plain = from_the_heap()
assert keep_freed_memory() is True
print(plain, from_the_heap())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    # glibc maps a block this large on its own and unmaps it when freed, so every training step faults its
    # pages in again; with the setting it comes from the heap, which keeps freed pages for the next step.
    # (Page-fault counts depend on the heap's history and the kernel: benchmarks/RESULTS.md has the speed.)
    measured = subprocess.run([sys.executable, "-c", FROM_THE_HEAP], capture_output=True, text=True)
    assert measured.stdout.split() == ["False", "True"], measured.stderr
