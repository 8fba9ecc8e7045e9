"""Paths inside study, suite and tune spec files: `~`, relative to the spec, odd files given as specs."""

import pytest
import yaml

from cnnlab.study.spec import load_study_spec, load_tune_spec
from cnnlab.study.suite import load_suite

RUN = {"model.name": "lenet5", "data.name": "digits", "train.epochs": 1}


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "run.yaml").write_text(yaml.safe_dump(RUN))
    return home


def test_tilde_in_a_spec_base_file_is_the_home_folder(tmp_path, home):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "s.yaml").write_text('base: "~/run.yaml"\n')
    assert load_study_spec(specs / "s.yaml").base["model.name"] == "lenet5"
    tune = 'base: "~/run.yaml"\nspace: {optim.lr: {low: 0.01, high: 0.1}}\ncv: {folds: 2}\n'
    (specs / "t.yaml").write_text(tune)
    assert load_tune_spec(specs / "t.yaml").base["model.name"] == "lenet5"


def test_tilde_in_suite_entries_is_the_home_folder(tmp_path, home):
    (home / "s1.yaml").write_text("base: run.yaml\n")  # relative to s1.yaml's own folder
    suite = tmp_path / "specs" / "suite.yaml"
    suite.parent.mkdir()
    suite.write_text('studies:\n  - "~/s1.yaml"\n  - {name: inline, base: "~/run.yaml"}\n')
    loaded = load_suite(suite, tmp_path / "out")
    assert [study.name for study in loaded.studies] == ["s1", "inline"]
    assert loaded.studies[0].spec_path == home / "s1.yaml"
    assert loaded.studies[1].inline["base"] == str(home / "run.yaml")


def test_a_report_never_replaces_a_report_file_the_user_wrote(tmp_path, capsys):
    """`cnnlab report DIR` on a folder of single runs that also holds the user's own report.md (notes),
    results.csv or report.html: before, each was overwritten without a word."""
    from cnnlab.cli import main
    from tests.report_fixtures import make_study

    root = make_study(tmp_path / "study", images=False)
    assert main(["report", str(root)]) == 0  # its own files are replaced, again and again
    assert main(["report", str(root)]) == 0
    for name in ("report.md", "results.csv", "report.html"):
        (root / name).rename(root / f"{name}.own")
        (root / name).write_text("# My notes\n")
        capsys.readouterr()
        assert main(["report", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not written by cnnlab" in err and name in err, err
        assert (root / name).read_text() == "# My notes\n"
        (root / f"{name}.own").replace(root / name)
    assert main(["report", str(root)]) == 0


def test_a_folder_through_a_symlink_loop_is_one_line_for_study_tune_report_and_status(tmp_path, capsys):
    # before, each ended in pathlib's RuntimeError traceback, exit 1
    from cnnlab.cli import main

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"base": RUN}))
    search = tmp_path / "t.yaml"
    search.write_text(yaml.safe_dump({"base": RUN, "space": {"optim.lr": [0.01]}, "cv": {"folds": 2}}))
    for folder in (tmp_path / "a", tmp_path / "a" / "x"):
        for args in (
            ["study", "run", str(spec), "--out", str(folder)],
            ["tune", str(search), "--out", str(folder)],
            ["report", str(folder)],
            ["study", "status", str(folder)],
        ):
            capsys.readouterr()
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "loop" in err and "Traceback" not in err, err
