"""`cnnlab models`: the zoo table and its JSON form, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

import cnnlab.models
from cnnlab.cli import main
from cnnlab.models import ZooRow, describe_zoo, list_models
from cnnlab.models.zoo import format_gflops


@pytest.fixture(scope="module")
def whole_zoo() -> list[ZooRow]:
    """The whole zoo at each model's own input size, described once (it takes seconds) for both outputs."""
    return describe_zoo()


@pytest.fixture
def zoo_json(
    whole_zoo: list[ZooRow], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> list[dict]:
    """`cnnlab models --json`, parsed."""
    monkeypatch.setattr(cnnlab.models, "describe_zoo", _described_once(whole_zoo))
    assert main(["models", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _described_once(rows: list[ZooRow]) -> Callable[..., list[ZooRow]]:
    """Stand-in for describe_zoo that serves the cached description of the default listing only."""

    def describe(
        names: object = None, *, input_size: object = None, num_classes: object = None
    ) -> list[ZooRow]:
        assert (names, input_size, num_classes) == (None, None, None)
        return rows

    return describe


def test_json_lists_every_model_with_params_and_gflops(zoo_json: list[dict]) -> None:
    assert [row["name"] for row in zoo_json] == list_models()
    by_name = {row["name"]: row for row in zoo_json}
    assert all(row["params"] > 0 and row["gflops"] > 0 for row in zoo_json)
    assert by_name["resnet18"]["params"] == 11_689_512
    assert by_name["resnet18"]["input_size"] == "3x224x224" and by_name["resnet18"]["num_classes"] == 1000
    assert by_name["resnet50"]["pretrained"] == ["IMAGENET1K_V1", "IMAGENET1K_V2"]
    assert by_name["lenet5"]["params"] == 61_706
    assert by_name["lenet5"]["gflops"] == pytest.approx(833_040 / 1e9)
    assert by_name["densenet264"]["pretrained"] == []


def test_table_carries_the_same_data(
    zoo_json: list[dict],
    whole_zoo: list[ZooRow],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setattr(cnnlab.models, "describe_zoo", _described_once(whole_zoo))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "input", "params"]
    for row in zoo_json:
        line = next(line for line in lines if line.split()[0] == row["name"])
        assert f"{row['params']:,}" in line.split()
        assert format_gflops(row["gflops"]) in line.split()
        assert row["family"] in line.split()
        assert all(name in line for name in row["pretrained"])


def test_input_size_applies_to_every_model(capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["models", "--json", "--input-size", "1x28x28", "--num-classes", "10", "lenet5", "resnet50"])
        == 0
    )
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["lenet5"]["params"] == 61_706
    assert (rows["resnet50"]["input_size"], rows["resnet50"]["stem"]) == ("1x28x28", "small")
    assert rows["resnet50"]["num_classes"] == 10


def test_a_model_named_twice_is_listed_once(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--json", "lenet5", "resnet20_cifar", "lenet5"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["lenet5", "resnet20_cifar"]


def test_input_too_small_is_a_note_not_a_crash(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--input-size", "3x8x8", "vgg11", "lenet5", "resnet20_cifar"]) == 0
    out = capsys.readouterr().out
    assert "vgg11: cannot take a 3x8x8 input" in out
    assert "lenet5: lenet5 cannot take a 8x8 input: it needs at least 12x12 pixels" in out
    cells = {line.split()[0]: re.split(r"\s{2,}", line) for line in out.splitlines()[1:4]}
    assert cells["vgg11"][4] == "-" and cells["lenet5"][3:5] == ["-", "-"]  # no GFLOPs; no parameters either
    assert cells["resnet20_cifar"][3] == "272,378"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["models", "--input-size", "banana"], ["--input-size", "'banana'", "CxHxW", "1x28x28"]),
        (["models", "--input-size", "1x28x32"], ["--input-size", "square"]),
        (["models", "resnet19"], ["unknown model 'resnet19'", "did you mean resnet18"]),
        (["models", "--num-classes", "0", "lenet5"], ["num_classes must be a positive integer, got 0"]),
    ],
)
def test_user_errors_are_one_line_exit_2(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("cnnlab: error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert all(word in captured.err for word in words), captured.err


def test_a_reader_that_stops_early_is_no_error():
    """`cnnlab models | head -1`: the pipe closes before cnnlab writes; that is the reader's choice."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # closed before cnnlab has started writing: every write meets a broken pipe
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err == b"", err
