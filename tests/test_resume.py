"""Exact resume: a run SIGKILLed mid-epoch and resumed ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnlab import config as cfg
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


def load_last(out) -> dict:
    return safeio.load_checkpoint(out / "checkpoints" / "last.ckpt")


def final_weights(out) -> dict[str, torch.Tensor]:
    return model_state(load_last(out))


@pytest.mark.parametrize("extra", [(), ("--set", "train.ema=0.9")], ids=["plain", "ema"])
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path, extra):
    """With train.ema the weight average is state too: the kept checkpoint's average and live weights both."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = train(reference, *extra)
    victim = train(killed, *extra)
    deadline = time.monotonic() + 240
    while not epochs_done(killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = epochs_done(killed)
    assert rows, "the run to kill never finished its first epoch"
    time.sleep(float(rows[0]["epoch_time_s"]) * 0.4)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(epochs_done(killed)) == 1 and not (killed / "result.json").exists(), "not killed mid-epoch 1"

    resumed = train(killed, *extra, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()
    expected, actual = final_weights(reference), final_weights(killed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    if extra:  # last.ckpt's state_dict is the average; the live weights the resumed run trained on
        live = [load_last(out)["current_model_state"] for out in (reference, killed)]
        assert all(torch.equal(live[0][key], live[1][key]) for key in live[0])
    assert [r["val_acc"] for r in epochs_done(reference)] == [r["val_acc"] for r in epochs_done(killed)]


TINY = {
    "model.name": "lenet5",
    "data.name": "digits",
    "data.subset": 100,
    "train.epochs": 2,
    "train.test": False,
}


def unfinished_run(out, monkeypatch) -> None:
    """A 2-epoch run that failed in its second epoch: checkpoints/last.ckpt holds epoch 0."""
    from cnnlab.train import fit, system

    original = system.ClassifierSystem.training_step

    def crash_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch >= 1:
            raise RuntimeError("machine lost")
        return original(self, batch, batch_idx)

    with monkeypatch.context() as patched:
        patched.setattr(system.ClassifierSystem, "training_step", crash_in_epoch_two)
        assert fit(cfg.from_dict(TINY), out).status == "failed"


def test_resume_removes_the_writes_that_a_kill_cut_short(tmp_path, monkeypatch):
    from cnnlab.train import fit

    unfinished_run(tmp_path, monkeypatch)
    cut_short = [
        tmp_path / "checkpoints/.last.ckpt.0123abcd.tmp",
        tmp_path / "predictions/.val.npz.89abcdef.tmp",
        tmp_path / ".result.json.4567cdef.tmp",
        tmp_path / "images/.confused.npz.0a1b2c3d.tmp",
    ]
    for path in cut_short:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    keep = tmp_path / "checkpoints" / "notes.txt"
    keep.write_text("mine")
    resumed = fit(cfg.from_dict(TINY), tmp_path, resume=True)
    assert resumed.status == "completed" and resumed.summary["epochs_run"] == 2
    assert not any(path.exists() for path in cut_short) and keep.read_text() == "mine"


def _nan_weights(checkpoint: dict) -> None:
    next(iter(checkpoint["state_dict"].values())).fill_(float("nan"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda checkpoint: checkpoint.pop("optimizer_states"), "it lacks optimizer_states"),
        (lambda checkpoint: checkpoint.__setitem__("epoch", 10**9), "its epoch 1000000000 is not one of"),
        (
            lambda checkpoint: checkpoint["cnnlab"].__setitem__("precision", "fp8"),
            "its precision 'fp8' is not",
        ),
        (
            lambda checkpoint: checkpoint["state_dict"].__setitem__("model.fc.weight", torch.zeros(3, 3)),
            "its weights do not fit the model (fc.weight: [3, 3], the model has [10, 84])",
        ),
        (_nan_weights, "its weights hold NaN or infinity (features.0.weight)"),
    ],
    ids=["no-optimizer", "epoch", "precision", "shape", "nan"],
)
def test_resume_refuses_an_edited_last_checkpoint_in_one_line_and_changes_nothing(
    tmp_path, monkeypatch, capsys, edit, message
):
    from cnnlab.cli import main

    unfinished_run(tmp_path, monkeypatch)
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = safeio.load_checkpoint(last)
    edit(checkpoint)
    torch.save(checkpoint, last)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    argv = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "2", "--set", "data.subset=100"]
    assert main([*argv, "--set", "train.test=false", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "run without --resume" in err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
