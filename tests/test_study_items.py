"""Study items of issue 13: `--set` into a named grid option, per-model inits, the shipped cats-vs-dogs spec
run offline on a local folder and local weights files, the test subset, and suites (one command for E3)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnlab import cli
from cnnlab import config as cfg
from cnnlab.data import load_split
from cnnlab.errors import ConfigError
from cnnlab.study.checks import check_plan
from cnnlab.study.plan import expand
from cnnlab.study.spec import apply_overrides, load_study_spec, parse_study_spec

STUDIES = Path(__file__).resolve().parents[1] / "studies"
CATS_VS_DOGS = STUDIES / "cats-vs-dogs.yaml"
MODELS = ("resnext50_32x4d", "densenet121")


def test_set_reaches_a_key_inside_a_named_grid_option():
    spec = load_study_spec(CATS_VS_DOGS, ["grid.recipe.fine-tune.train.init=file:/w/a.pth"])
    recipe = next(axis for axis in spec.stages[0].grid if axis.key == "recipe")
    choices = dict(recipe.choices)
    assert choices["fine-tune"]["train.init"] == "file:/w/a.pth"
    assert choices["fine-tune"]["train.finetune"] == "full"  # the option's other keys are kept
    assert choices["scratch"]["train.init"] == "scratch"


def test_set_into_an_unknown_option_or_axis_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match=r"grid axis 'recipe' has no option 'finetune' \(did you mean"):
        load_study_spec(CATS_VS_DOGS, ["grid.recipe.finetune.train.init=file:/w/a.pth"])
    with pytest.raises(ConfigError, match="the grid has no named axis 'recipes'.*named axes: recipe"):
        load_study_spec(CATS_VS_DOGS, ["grid.recipes.fine-tune.train.init=scratch"])
    # a dotted config key still sets (or adds) a value axis
    tree = apply_overrides({"grid": {"optim.lr": [0.1]}}, ["grid.optim.lr=[0.2, 0.3]"])
    assert tree["grid"]["optim.lr"] == [0.2, 0.3]


def test_per_model_init_gives_each_model_its_own_weights_file(tmp_path):
    raw = {
        "base": {"data.name": "digits", "train.epochs": 1},
        "grid": {
            "model.name": ["resnet18", "resnet34"],
            "recipe": {
                "scratch": {"train.init": "scratch"},
                "tuned": {"train.init": {"resnet18": "file:r18.pth", "resnet34": "file:r34.pth"}},
            },
        },
    }
    plan = expand(parse_study_spec(raw), tmp_path / "study")
    inits = {(run.config.model.name, run.point["recipe"]): run.config.train.init for run in plan.runs}
    assert inits[("resnet18", "tuned")] == f"file:{Path('r18.pth').absolute()}"
    assert inits[("resnet34", "tuned")] == f"file:{Path('r34.pth').absolute()}"
    assert inits[("resnet18", "scratch")] == "scratch"
    raw["grid"]["model.name"] = ["resnet18", "resnet50"]
    with pytest.raises(ConfigError, match="train.init has no entry for model 'resnet50'.*add resnet50:"):
        expand(parse_study_spec(raw), tmp_path / "other")
    raw["grid"]["recipe"]["tuned"]["train.init"] = {"resnet18": "file:r18.pth", "resnet50": [1]}
    with pytest.raises(ConfigError, match="grid.recipe.tuned: train.init must be a string"):
        parse_study_spec(raw)


def test_missing_per_model_weights_file_stops_the_plan_before_any_run(tmp_path):
    present = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, present)
    raw = {
        "base": {"data.name": "digits"},
        "grid": {
            "model.name": ["resnet18", "resnet34"],
            "train.init": [{"resnet18": f"file:{present}", "resnet34": f"file:{tmp_path / 'nope.pth'}"}],
        },
    }
    with pytest.raises(ConfigError, match=r"model.name=resnet34.*weights file .*nope.pth' not found"):
        check_plan(expand(parse_study_spec(raw), tmp_path / "study"))


def test_test_subset_is_stratified_fixed_and_recorded(tmp_path):
    data = cfg.from_dict({"data": {"name": "digits", "test_subset": 100}}).data
    first, again = load_split(data, "test"), load_split(data, "test")
    full = load_split(cfg.from_dict({"data.name": "digits"}).data, "test")
    assert len(first) == 100 and torch.equal(first.labels, again.labels)
    assert torch.equal(first.images, again.images)
    counts = np.bincount(first.labels.numpy(), minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11  # stratified: about a tenth per class
    assert len(load_split(data, "train")) == len(load_split(cfg.from_dict({}).data, "train"))
    with pytest.raises(
        ConfigError, match=rf"data.test_subset=100000 is out of range; it must be in \[1, {len(full)}\]"
    ):
        load_split(cfg.from_dict({"data": {"name": "digits", "test_subset": 100000}}).data, "test")
    with pytest.raises(ConfigError, match="data.test_subset=0 is out of range"):
        cfg.from_dict({"data.test_subset": 0})


def write_photo_folder(root: Path, per_class: int = 10) -> Path:
    """A tiny class-per-subfolder PNG folder: dark cats, bright dogs, each with an inverted square."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (40, 48, 3)) + (150 if label else 0)
            pixels[10:20, 10:20] = 255 - pixels[10:20, 10:20]
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos_and_weights(tmp_path_factory):
    """The folder, and a torchvision-format ImageNet state_dict (1000 classes) for each shipped model."""
    from cnnlab.models import create_model

    root = tmp_path_factory.mktemp("cats-vs-dogs")
    folder = write_photo_folder(root / "photos")
    weights = {}
    for name in MODELS:
        torch.manual_seed(0)
        weights[name] = root / f"{name}.pth"
        torch.save(create_model(name, num_classes=1000).state_dict(), weights[name])
    return folder, weights


def cats_vs_dogs_args(folder: Path, inits: dict, out: Path) -> list[str]:
    mapping = "{" + ", ".join(f"{model}: 'file:{path}'" for model, path in inits.items()) + "}"
    return [
        "study",
        "run",
        str(CATS_VS_DOGS),
        "--out",
        str(out),
        "--set",
        f"base.data.name=folder:{folder}",
        "--set",
        "base.data.image_size=64",
        "--set",
        "base.data.batch_size=8",
        "--set",
        "base.train.epochs=1",
        "--set",
        f"grid.recipe.fine-tune.train.init={mapping}",
    ]


@pytest.mark.slow
def test_shipped_cats_vs_dogs_runs_offline_on_a_local_folder_and_local_weights(
    photos_and_weights, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    folder, weights = photos_and_weights
    out = tmp_path / "study"
    assert cli.main(cats_vs_dogs_args(folder, weights, out)) == 0, capsys.readouterr().err
    results = [json.loads(path.read_text()) for path in out.glob("runs/*/result.json")]
    assert len(results) == 4 and {r["status"] for r in results} == {"completed"}
    tuned = {
        r["config"]["model"]["name"]: r["config"]["train"]["init"]
        for r in results
        if r["tags"]["point"]["recipe"] == "fine-tune"
    }
    assert tuned == {name: f"file:{weights[name]}" for name in MODELS}
    assert (out / "report.html").is_file()
    # E1 as stated: Adam 1e-3 from the first step, the whole net fine-tuned at that rate, per-epoch test lines
    assert {r["config"]["optim"]["warmup_epochs"] for r in results} == {0}
    assert {
        r["config"]["train"]["backbone_lr_mult"] for r in results if r["config"]["train"]["init"] != "scratch"
    } == {1.0}
    for path in out.glob("runs/*/metrics.csv"):
        assert {"test_acc", "test_loss"} <= set(path.read_text().splitlines()[0].split(",")), path


@pytest.mark.slow
def test_cats_vs_dogs_with_a_missing_weights_file_stops_before_any_run(photos_and_weights, tmp_path, capsys):
    folder, weights = photos_and_weights
    out = tmp_path / "study"
    inits = {**weights, "densenet121": tmp_path / "missing.pth"}
    assert cli.main(cats_vs_dogs_args(folder, inits, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pth' not found" in err and "densenet121" in err
    assert not (out / "runs").exists()


@pytest.mark.slow
def test_a_study_whose_runs_fail_exits_1(photos_and_weights, tmp_path, capsys):
    folder, weights = photos_and_weights
    out = tmp_path / "study"
    swapped = {"densenet121": weights["resnext50_32x4d"]}  # resnext's weights cannot initialise a densenet
    args = [*cats_vs_dogs_args(folder, swapped, out), "--set", "grid.model.name=[densenet121]"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed or diverged" in err
    states = sorted(json.loads(p.read_text())["status"] for p in out.glob("runs/*/result.json"))
    assert states == ["completed", "failed"]


E3_FAST = [
    "studies.*.seeds=[0]",
    "studies.*.base.data.name=digits",
    "studies.*.base.data.subset=200",
    "studies.*.base.data.test_subset=40",
    "studies.*.base.data.batch_size=50",
    "studies.*.base.train.epochs=1",
    "studies.regularization.grid.model.dropout=[0.5]",
    "studies.regularization.base.model.name=lenet5",  # its AlexNet: 15 s a run here; the zoo tests train it
    "studies.cv-hparams.cv.folds=2",
    "studies.cv-hparams.grid.optim.lr=[0.05]",
    "studies.cv-hparams.grid.data.batch_size=[50]",
    "studies.depth.grid.model.name=[resnet18]",
]


@pytest.mark.slow
def test_e3_suite_runs_every_study_into_one_folder_with_one_report(tmp_path, capsys):
    out = tmp_path / "e3"
    args = ["study", "run", str(STUDIES / "e3.yaml"), "--out", str(out)]
    args += [word for item in E3_FAST for word in ("--set", item)]
    assert cli.main(args) == 0, capsys.readouterr().err
    names = ["regularization", "cv-hparams", "depth", "ensemble", "lenet"]
    for name in names:
        assert (out / name / "study.json").is_file() and (out / name / "report.html").is_file()
        for result in (out / name).glob("runs/*/result.json"):
            record = json.loads(result.read_text())
            assert record["status"] == "completed"
            assert record["config"]["data"]["test_subset"] == 40
            predictions = result.parent / "predictions" / "test.npz"
            if record["test"] and predictions.is_file():
                assert len(np.load(predictions)["labels"]) == 40  # the test subset, not all 360 images
    report = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert report.startswith("# Suite report: e3") and "<h1>Suite report: e3</h1>" in html
    for name in names:  # one section per study, its own sections one level down
        assert f"\n## {name}\n" in report and f"<h2>{name}</h2>" in html
    assert "\n### Results" in report
    assert (out / "ensemble" / "ensembles").is_dir()
    assert (out / "cv-hparams" / "select.json").is_file()
    capsys.readouterr()
    # status covers every sub-study; running again trains nothing (resume)
    assert cli.main(["study", "status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status["studies"]) == set(names) and not status["not_started"]
    assert all(s["counts"]["completed"] == len(s["runs"]) for s in status["studies"].values())
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("this process trained 0,") == len(names)
    assert cli.main(["report", str(out)]) == 0


def test_suite_overrides_must_name_a_study(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"studies": [str(STUDIES / "quickstart.yaml")]}))
    out = str(tmp_path / "out")
    assert cli.main(["study", "run", str(suite), "--out", out, "--set", "seeds=[0]"]) == 2
    assert "studies.<name>.<spec key>" in capsys.readouterr().err
    assert cli.main(["study", "run", str(suite), "--out", out, "--set", "studies.quick.seeds=[0]"]) == 2
    err = capsys.readouterr().err
    assert "no study 'quick' (did you mean quickstart?)" in err and len(err.strip().splitlines()) == 1
    assert not Path(out).exists()


def test_a_tune_spec_takes_one_init():
    from cnnlab.study.spec import parse_tune_spec

    raw = {
        "base": {"model.name": "resnet18", "train.init": {"resnet18": "file:a.pth"}},
        "space": {"optim.lr": [0.1]},
        "cv": {"folds": 2},
    }
    with pytest.raises(ConfigError, match="base.train.init must be one init"):
        parse_tune_spec(raw)
