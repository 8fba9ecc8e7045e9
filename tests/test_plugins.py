"""Your own network through the `cnnlab.models` entry point: a real package, installed in the test, trains
from the CLI; a checkpoint naming a plugin's model never imports it by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.models import plugins, registry

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


@pytest.mark.slow
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

    images = tmp_path / "mine"
    images.mkdir()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(images / "ramp.png")
    explained = cnnlab(
        site, "explain", "--plugin", "tinynet", "--checkpoint", str(run), "--images", str(images),
        "--out", str(tmp_path / "cams"),
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    assert (tmp_path / "cams" / "ramp.png").is_file()


@pytest.mark.slow
def test_an_unknown_plugin_is_one_line(site, tmp_path):
    failed = cnnlab(site, "train", "--plugin", "no_such_plugin", "--out", str(tmp_path / "r"))
    assert failed.returncode == 2 and "could not be imported" in failed.stderr
    assert not (tmp_path / "r").exists()


BROKEN_BUILDERS = """
from torch import nn

from cnnlab.models import ModelInfo, register_model


def no_image_size(*, num_classes, in_chans):
    return nn.Linear(in_chans, num_classes)


def not_a_head(*, num_classes, in_chans, image_size=None):
    return nn.Linear(in_chans, num_classes)


for name, builder in (("no_image_size_net", no_image_size), ("not_a_head_net", not_a_head)):
    register_model(
        ModelInfo(
            name=name, family="x", source="plugin", default_input_size=(1, 28, 28), native_classes=10,
            switches={}, first_conv="conv", classifier="fc", builder=builder,
        )
    )
"""


@pytest.fixture
def plugin_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path for plugin modules; the registry and the loaded-plugin set are restored after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_LOADED", set())
    return tmp_path


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("import sys\nsys.exit(0)\n", "called sys.exit(0) while it was imported"),
        ("raise SystemExit('bye')\n", "called sys.exit('bye')"),
        ("raise RuntimeError('boom\\nmore')\n", "could not be imported (RuntimeError: boom)"),
        (
            "import dataclasses\nfrom cnnlab.models import model_info, register_model\n"
            "register_model(dataclasses.replace(model_info('lenet5'), name='resnet18', builder=print))\n",
            "'resnet18' is registered twice: the zoo already has a torchvision model of that name",
        ),
    ],
)
def test_a_plugin_that_exits_raises_or_takes_a_zoo_name_is_one_line(
    plugin_folder: Path, capsys: pytest.CaptureFixture, code: str, words: str
) -> None:
    (plugin_folder / "bad_plugin.py").write_text(code)
    assert main(["models", "--plugin", "bad_plugin", "--json", "lenet5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("cnnlab: error: model.plugin='bad_plugin'") and words in captured.err
    assert registry.model_info("resnet18").source == "torchvision"


def test_what_a_plugin_prints_goes_to_stderr_not_into_json(
    plugin_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    (plugin_folder / "chatty_plugin.py").write_text("print('hello from the plugin')\n")
    assert main(["models", "--plugin", "chatty_plugin", "--json", "lenet5"]) == 0
    captured = capsys.readouterr()
    assert [row["name"] for row in json.loads(captured.out)] == ["lenet5"]
    assert "hello from the plugin" in captured.err


def test_registering_the_same_model_again_changes_nothing(plugin_folder: Path) -> None:
    info = registry.model_info("lenet5")
    assert registry.register_model(info) is info  # e.g. a module imported, then its entry point


def test_a_plugin_model_that_cannot_be_built_is_a_note_in_the_listing_and_one_line_in_train(
    plugin_folder: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    (plugin_folder / "broken_plugin.py").write_text(BROKEN_BUILDERS)
    assert main(["models", "--plugin", "broken_plugin", "no_image_size_net", "not_a_head_net"]) == 0
    out = capsys.readouterr().out
    assert "no_image_size_net: model 'no_image_size_net' (a plugin's) could not be built" in out
    assert "TypeError" in out and "not an nn.Module that mixes in cnnlab.models.ClassifierHeadMixin" in out
    for name, words in (("no_image_size_net", "fix its builder"), ("not_a_head_net", "ClassifierHeadMixin")):
        out_dir = tmp_path / name
        argv = [
            "train",
            "--plugin",
            "broken_plugin",
            "--model",
            name,
            "--data",
            "digits",
            "--out",
            str(out_dir),
        ]
        assert main([*argv, "--set", "data.subset=100"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and not out_dir.exists()
