"""Your own network through the `cnnlab.models` entry point: a real package, installed in the test, trains
from the CLI; a checkpoint naming a plugin's model never imports it by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PLUGIN = """
from torch import nn

from cnnlab.models import ClassifierHeadMixin, ModelInfo, register_model


class TinyNet(ClassifierHeadMixin, nn.Module):
    classifier_path = "fc"
    first_conv_path = "conv"

    def __init__(self, *, num_classes, in_chans=3, image_size=None, dropout=0.0):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 32, 5, padding=2)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(128, num_classes)
        self._init_head(dropout)

    def forward_features(self, x):
        return self.pool(self.conv(x).relu()).flatten(1)


def register():
    register_model(
        ModelInfo(
            name="tinynet", family="tiny", source="plugin", default_input_size=(1, 28, 28), native_classes=10,
            switches={"dropout": None}, first_conv="conv", classifier="fc", builder=TinyNet,
        )
    )
"""
PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "cnnlab-tinynet"
version = "0.1"

[project.entry-points."cnnlab.models"]
tinynet = "tinynet:register"

[tool.setuptools]
py-modules = ["tinynet"]
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The plugin package built and installed (pip, no network) into its own site folder."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "cnnlab-tinynet"
    package.mkdir()
    (package / "tinynet.py").write_text(textwrap.dedent(PLUGIN))
    (package / "pyproject.toml").write_text(PYPROJECT)
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(package)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return target


def cnnlab(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "CNNLAB_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, env=env)


def test_a_registered_plugin_network_trains_from_the_cli(site, tmp_path):
    listed = cnnlab(site, "models", "--plugin", "tinynet", "tinynet")
    assert listed.returncode == 0 and "tinynet" in listed.stdout, listed.stderr
    run = tmp_path / "run"
    trained = cnnlab(
        site, "train", "--plugin", "tinynet", "--model", "tinynet", "--data", "digits", "--epochs", "3",
        "--optimizer", "adam", "--lr", "0.01", "--set", "data.subset=600", "--out", str(run),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["config"]["model"]["plugin"] == "tinynet"
    assert result["test"]["acc"] > 0.3  # well above chance (10 classes) after three epochs

    refused = cnnlab(site, "evaluate", "--checkpoint", str(run))
    assert refused.returncode == 2 and "pass --plugin tinynet" in refused.stderr
    assert refused.stderr.count("\n") == 1
    evaluated = cnnlab(site, "evaluate", "--plugin", "tinynet", "--checkpoint", str(run))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["acc"] == pytest.approx(result["test"]["acc"])


def test_an_unknown_plugin_is_one_line(site, tmp_path):
    failed = cnnlab(site, "train", "--plugin", "no_such_plugin", "--out", str(tmp_path / "r"))
    assert failed.returncode == 2 and "could not be imported" in failed.stderr
    assert not (tmp_path / "r").exists()
