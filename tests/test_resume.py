"""Exact resume: a run SIGKILLed mid-epoch and resumed ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from cnnlab import safeio
from cnnlab.train.checkpoint import model_state

# Shuffle, augmentation and dropout all on: every source of randomness must replay exactly.
TRAIN_ARGS = [
    "--model",
    "resnet20_cifar",
    "--data",
    "digits",
    "--epochs",
    "3",
    "--batch-size",
    "16",
    "--set",
    "data.subset=480",
    "--set",
    "data.augment=flip+crop",
    "--set",
    "model.dropout=0.3",
    "--set",
    "train.test=false",
]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "CNNLAB_QUIET": "1",
}


def train(out, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", *TRAIN_ARGS, "--out", str(out), *extra],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def epochs_done(out) -> list[dict[str, str]]:
    path = out / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def final_weights(out) -> dict[str, torch.Tensor]:
    return model_state(safeio.load_checkpoint(out / "checkpoints" / "last.ckpt"))


def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = train(reference)
    victim = train(killed)
    deadline = time.monotonic() + 240
    while not epochs_done(killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = epochs_done(killed)
    assert rows, "the run to kill never finished its first epoch"
    time.sleep(float(rows[0]["epoch_time_s"]) * 0.4)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(epochs_done(killed)) == 1 and not (killed / "result.json").exists(), "not killed mid-epoch 1"

    resumed = train(killed, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()
    expected, actual = final_weights(reference), final_weights(killed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert [r["val_acc"] for r in epochs_done(reference)] == [r["val_acc"] for r in epochs_done(killed)]
