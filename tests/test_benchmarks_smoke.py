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
from cnnlab.train.speed import keep_freed_memory
from cnnlab.train.system import ClassifierSystem

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
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


def test_throughput_measures_all_three_pipelines_on_the_same_steps(fashion_dir):
    setting = throughput.Setting("lenet5", steps=2, batch_size=16, device="cpu", data_dir=fashion_dir)
    setting.forward_flops = throughput.forward_flops(setting)
    throughput.measure(setting, repeats=1)
    assert all(len(setting.rates[key]) == 1 and setting.rates[key][0] > 0 for key in throughput.PIPELINES)
    rows = throughput.model_table(setting, peak=100.0)
    assert sum(row.startswith("| (") for row in rows) == 3
    assert any(row.startswith("c/a = ") and "c/b = " in row for row in rows)


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


@pytest.mark.parametrize("name", sorted(path.name for path in RECIPES.glob("*.yaml")))
def test_shipped_recipes_are_valid_fashion_mnist_run_configs(name):
    config = cfg.from_dict(cfg.load_yaml(RECIPES / name))
    assert config.data.name == "fashion-mnist"


def test_study_overhead_spec_runs_and_its_log_lines_parse(fashion_dir, tmp_path):
    from cnnlab.study import run_study

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_stops_per_step_page_faults():
    import resource

    size = 64 << 20  # above glibc's default mmap threshold: without the setting every one is mmap'd anew
    assert keep_freed_memory() is True
    for _ in range(3):
        torch.empty(size, dtype=torch.uint8).fill_(1)  # grow the heap to fit it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(size, dtype=torch.uint8).fill_(1)  # freed and allocated again
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < size // 4096  # less than one allocation's pages in all (unmapping: 5 x that)
