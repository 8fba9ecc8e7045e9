"""A run that did not learn is flagged (result.json, closing line), and TensorBoard gets the learning rate,
the test scalars and the hyperparameters (E5)."""

from __future__ import annotations

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnlab import cli, runfolder
from cnnlab.train.health import learning_flags

DIGITS = ["--model", "lenet5", "--data", "digits", "--set", "data.subset=300"]


@pytest.mark.parametrize(
    ("forced", "flag"),
    [
        (["--lr", "10"], "loss spiked: train_loss"),  # lenet-classic's Adam at 1000x its rate: blown up
        (["--lr", "1e-9"], "did not learn"),  # a frozen network: the weights do not move
        (["--optimizer", "sgd", "--lr", "0.1"], "did not learn"),  # the sigmoid LeNet under CIFAR settings
    ],
)
def test_a_broken_run_is_flagged_in_result_and_closing_line(tmp_path, capsys, forced, flag):
    out = tmp_path / "broken"
    assert cli.main(["train", *DIGITS, "--epochs", "1", *forced, "--out", str(out)]) == 0
    result = runfolder.read_result(out)
    assert result["status"] == "completed" and any(text.startswith(flag) for text in result["flags"])
    closing = capsys.readouterr().out.strip().splitlines()[-1]
    assert closing.startswith("completed: ") and f"— {result['flags'][0]}" in closing


def test_a_learning_run_is_not_flagged_and_tensorboard_has_lr_test_and_hparams(tmp_path, capsys):
    out = tmp_path / "ok"
    args = ["train", *DIGITS, "--epochs", "3", "--optimizer", "adam", "--lr", "0.003", "--out", str(out)]
    assert cli.main([*args, "--set", "model.activation=relu"]) == 0
    result = runfolder.read_result(out)
    assert result["flags"] == [] and "did not learn" not in capsys.readouterr().out
    events = EventAccumulator(str(out / runfolder.TENSORBOARD_DIR))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert any(tag.startswith("lr-") for tag in scalars)
    assert {"test_acc", "test_loss", "train_loss", "val_acc"} <= set(scalars)
    assert events.Scalars("test_acc")[-1].value == pytest.approx(result["test"]["acc"], abs=1e-6)
    assert len(events.Scalars(next(tag for tag in scalars if tag.startswith("lr-")))) == 3  # one per epoch


def test_flags_name_a_majority_class_run_and_a_loss_spike():
    rows = [
        {"epoch": 0, "train_loss": 2.3, "val_loss": 1_253_485.0},
        {"epoch": 1, "train_loss": 2.2, "val_loss": 2.1},
    ]
    flags = learning_flags(rows, 0.434, [43, 20, 15, 12, 10])
    assert flags[0].startswith("did not learn") and "0.430" in flags[0]
    assert flags[1].startswith("loss spiked: val_loss 1.253e+06 at epoch 0")
    assert learning_flags(rows[1:], 0.9, [50, 50]) == []
    assert learning_flags([{"epoch": 0, "train_loss": math.nan, "val_loss": 0.5}], 0.6, [50, 50]) == []


def test_a_run_without_validation_split_is_judged_on_its_training_accuracy():
    rows = [
        {"epoch": 0, "train_acc": 0.09, "train_loss": 2.3},
        {"epoch": 1, "train_acc": 0.11, "train_loss": 2.3},
    ]
    flags = learning_flags(rows, None, [10] * 10)
    assert flags == [
        "did not learn: best training accuracy 0.110 is not clearly above always predicting the majority "
        "class (0.100)"
    ]
    assert learning_flags([{**rows[1], "train_acc": 0.8}], None, [10] * 10) == []
    assert learning_flags([], None, [10] * 10) == []
