"""DDP on CPU, for real: `cnnlab train --devices 2 --strategy ddp` runs two processes (gloo), Lightning
starting the second by running the command again. Rank zero alone locks the folder, prints and writes
result.json, metrics.csv, checkpoints and TensorBoard; each rank trains a disjoint shard of every epoch's
permutation; the metrics are those of the whole split; a killed DDP run resumes; and the test accuracy is
that of one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cnnlab import cli, runfolder
from cnnlab.data import InMemoryLoader
from tests.test_lifecycle import metric_rows

EPOCHS = 5
BASE = [
    "train",
    "--model",
    "lenet5",
    "--data",
    "digits",
    "--epochs",
    str(EPOCHS),
    "--optimizer",
    "adam",
    "--lr",
    "0.005",
    "--set",
    "model.activation=relu",
    "--set",
    "train.accelerator=cpu",
]
DDP = ["--batch-size", "32", "--devices", "2", "--strategy", "ddp"]  # global batch 2 x 32
SINGLE = ["--batch-size", "64", "--devices", "1"]
EPOCH_LINE = "Epoch: "

# Runs the real CLI; Lightning re-runs this same script for rank 1, so both ranks record the training
# positions they are served (into $PROBE_DIR, not the run folder) through the loader they train on.
PROBE = textwrap.dedent(
    """
    import json, os, sys

    from cnnlab.data import loader

    served = loader.InMemoryLoader.__iter__


    def recording(self):
        if self.shuffle:  # the training loader
            record = {
                "rank": self.rank, "world": self.world_size, "epoch": self.epoch, "n": len(self.labels),
                "positions": self.epoch_indices().tolist(), "pid": os.getpid(),
            }
            name = os.path.join(os.environ["PROBE_DIR"], f"rank{self.rank}.jsonl")
            with open(name, "a") as handle:
                handle.write(json.dumps(record) + "\\n")
        yield from served(self)


    loader.InMemoryLoader.__iter__ = recording
    from cnnlab.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}
    env.pop("CNNLAB_QUIET", None)  # the epoch lines are what is checked
    return env


def writer_pids(run_dir: Path) -> set[str]:
    """Processes that wrote TensorBoard files: events.out.tfevents.<time>.<host>.<pid>.<n>."""
    return {path.name.split(".")[-2] for path in (run_dir / "tensorboard").glob("events.out.tfevents.*")}


def run(command: list[str], env: dict[str, str], timeout: float = 240) -> tuple[int, str, str]:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-rank DDP run through the probe: (run folder, stdout, stderr, served positions)."""
    root = tmp_path_factory.mktemp("ddp")
    probe = root / "probe.py"
    probe.write_text(PROBE)
    (root / "served").mkdir()
    out = root / "run"
    code, stdout, stderr = run(
        [sys.executable, str(probe), *BASE, *DDP, "--out", str(out)],
        environment(PROBE_DIR=str(root / "served")),
    )
    assert code == 0, stdout + stderr
    served = [
        json.loads(line)
        for path in sorted((root / "served").glob("rank*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return out, stdout, stderr, served


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The same run in one process with the same global batch (64)."""
    out = tmp_path_factory.mktemp("single") / "run"
    code, stdout, stderr = run(
        [sys.executable, "-m", "cnnlab", *BASE, *SINGLE, "--out", str(out)], environment()
    )
    assert code == 0, stdout + stderr
    return out


@pytest.mark.slow
def test_rank_zero_alone_prints_and_writes(ddp_run):
    out, stdout, stderr, served = ddp_run
    lines = stdout.splitlines()
    assert [line.split(",")[0] for line in lines if line.startswith(EPOCH_LINE)] == [
        f"Epoch: {epoch}" for epoch in range(EPOCHS)
    ], stdout
    closing = [line for line in lines if line.startswith("completed:")]
    assert len(closing) == 1 and str(out) in closing[0], stdout
    assert "Traceback" not in stderr and "in use by" not in stderr, stderr
    assert len(list(out.rglob("result.json"))) == 1
    result = runfolder.read_result(out)
    assert result["status"] == "completed" and result["epochs_run"] == EPOCHS
    assert result["provenance"]["processes"] == 2
    assert [int(row["epoch"]) for row in metric_rows(out)] == list(range(EPOCHS))
    pids = {record["rank"]: record["pid"] for record in served}
    assert len(set(pids.values())) == 2, "two processes trained"
    assert writer_pids(out) == {str(pids[0])}, "rank zero alone wrote TensorBoard files"
    assert json.loads((out / ".cnnlab-run").read_text())["pid"] == pids[0], "rank zero held the folder"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (out / runfolder.ERROR_LOG).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".cnnlab-run"] == []


@pytest.mark.slow
def test_each_rank_trains_a_disjoint_shard_of_each_epochs_permutation(ddp_run):
    *_, served = ddp_run
    by_epoch: dict[int, dict[int, list[int]]] = {}
    for record in served:
        assert record["world"] == 2
        by_epoch.setdefault(record["epoch"], {})[record["rank"]] = record["positions"]
    assert sorted(by_epoch) == list(range(EPOCHS)) and all(sorted(r) == [0, 1] for r in by_epoch.values())
    n = served[0]["n"]
    for epoch, ranks in by_epoch.items():
        # the one-process loader's permutation of this epoch (a function of seed and epoch only)
        whole = InMemoryLoader(
            torch.zeros((n, 1, 1, 1), dtype=torch.uint8), torch.zeros(n), batch_size=64, shuffle=True, seed=0
        ).epoch_indices(epoch)
        padded = torch.cat([whole, whole[: len(whole) % 2]]).tolist()
        assert ranks[0] == padded[0::2] and ranks[1] == padded[1::2], (
            f"epoch {epoch}: shards of the permutation"
        )
        assert len(ranks[0]) == len(ranks[1]) == (n + 1) // 2
        assert set(ranks[0]) | set(ranks[1]) == set(range(n))
        assert len(set(ranks[0]) & set(ranks[1])) == n % 2, "disjoint (but for the one padding image)"
    assert by_epoch[0][0] != by_epoch[1][0], "a new permutation every epoch"


@pytest.mark.slow
def test_metrics_are_those_of_the_whole_validation_split(ddp_run):
    out, *_ = ddp_run
    result = runfolder.read_result(out)
    val = runfolder.read_predictions(out, "val")  # rank zero, best checkpoint, every validation image
    accuracy = float(np.mean(val.probs.argmax(axis=1) == val.labels))
    assert result["best"]["val_acc"] == pytest.approx(accuracy, abs=1.01 / len(val.labels))
    loss = float(np.mean(-np.log(val.probs[np.arange(len(val.labels)), val.labels] + 1e-12)))
    assert result["best"]["val_loss"] == pytest.approx(loss, rel=2e-3)


@pytest.mark.slow
def test_ddp_accuracy_is_that_of_one_process_with_the_same_global_batch(ddp_run, single_run):
    out, *_ = ddp_run
    ddp, single = runfolder.read_result(out), runfolder.read_result(single_run)
    print(f"test accuracy: 2-rank DDP {ddp['test']['acc']:.4f}, one process {single['test']['acc']:.4f}")
    assert single["test"]["acc"] > 0.85
    assert abs(ddp["test"]["acc"] - single["test"]["acc"]) <= 0.03
    # the same batches in the same order: the first epoch's mean training loss agrees closely
    first_ddp, first_single = metric_rows(out)[0], metric_rows(single_run)[0]
    assert float(first_ddp["train_loss"]) == pytest.approx(float(first_single["train_loss"]), rel=0.02)


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_to_the_uninterrupted_result(tmp_path, ddp_run):
    reference, *_ = ddp_run
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cnnlab", *BASE, *DDP, "--out", str(out)]
    process = subprocess.Popen(
        command,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: rank 0 and the rank Lightning started
    )
    deadline = time.monotonic() + 180
    while len(metric_rows(out)) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "the DDP run did not reach epoch 2"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    before = metric_rows(out)
    assert len(before) < EPOCHS and runfolder.read_result(out) is None
    code, stdout, stderr = run([*command, "--resume"], environment())
    assert code == 0, stdout + stderr
    assert sum(line.startswith("completed:") for line in stdout.splitlines()) == 1
    rows = metric_rows(out)
    assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS))
    assert rows[: len(before) - 1] == before[: len(before) - 1], "checkpointed epochs are not retrained"
    assert len(writer_pids(out)) == 2, "the killed rank zero and the resumed one wrote TensorBoard files"

    def scores(folder: Path) -> list[float]:
        keys = ("train_loss", "train_acc", "val_loss", "val_acc")
        return [float(row[key]) for row in metric_rows(folder) for key in keys]

    assert scores(out) == pytest.approx(scores(reference), rel=1e-5), "same epochs as the uninterrupted run"
    assert runfolder.read_result(out)["test"]["acc"] == pytest.approx(
        runfolder.read_result(reference)["test"]["acc"], abs=1e-9
    )


def test_a_study_or_tune_of_ddp_runs_is_refused_before_anything_is_written(tmp_path, capsys):
    base = {"model.name": "lenet5", "data.name": "digits", "train.epochs": 1}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"base": base, "seeds": [0]}))
    tune = tmp_path / "tune.yaml"
    tune.write_text(yaml.safe_dump({"base": base, "cv": {"folds": 2}, "space": {"optim.lr": [0.1]}}))
    ddp = [
        "--set",
        "base.train.accelerator=cpu",
        "--set",
        "base.train.devices=2",
        "--set",
        "base.train.strategy=ddp",
    ]
    for command in (["study", "run", str(study)], ["tune", str(tune)]):
        out = tmp_path / command[0]
        assert cli.main([*command, "--out", str(out), *ddp]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "2 processes" in err and "train.devices=1" in err, err
        assert not out.exists()


def test_the_lr_finder_with_ddp_is_refused_before_the_run_folder_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([*BASE, "--lr", "auto", "--devices", "2", "--strategy", "ddp", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "finder in one process" in err, err
    assert not out.exists()


def test_strategies_that_start_processes_from_python_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([*BASE, "--devices", "2", "--strategy", "ddp_spawn", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train.strategy=ddp_spawn" in err, err
    assert "torchrun" in err and not out.exists()
