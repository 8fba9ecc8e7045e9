"""The --out folder of a study, a tune and a suite: one kind and one spec per folder, checked before anything
is written and claimed under the folder's lock; files cnnlab did not write are refused and never removed;
a run recorded completed whose result is gone trains again; a damaged study.json, study.db or tune space
is one line (exit 2)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest

from cnnlab import cli, runfolder
from cnnlab.study import runner, suite, tune
from cnnlab.study.checks import FOLDER_LOCK
from cnnlab.study.queue import WorkerOptions
from cnnlab.study.runner import StudyFolderError, claim_study, plan_study, run_study
from cnnlab.study.status import study_status
from cnnlab.train import RunResult
from tests.test_study_run import TINY, write_spec
from tests.worker_output import run_lines

ONE_EPOCH = {**TINY, "train.epochs": 1}
FAST = WorkerOptions(heartbeat_s=1, poll_s=0.1)


def quiet(line: str) -> None:
    pass


def two_run_spec(path: Path, name: str, second_lr: float) -> Path:
    return write_spec(path, {"name": name, "base": ONE_EPOCH, "grid": {"optim.lr": [0.01, second_lr]}})


def claimed(spec: Path, out: Path, **options) -> None:
    """A study folder set up as `study run` sets it up (study.yaml, splits, study.json, a filled queue),
    without training."""
    queue = claim_study(plan_study(spec, out), spec, WorkerOptions(**options), log=quiet)
    queue.storage.engine.dispose()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder (hidden ones included) → sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def refused(capsys, *args: str) -> str:
    """Run the CLI, expect exit 2 with one line on stderr and no traceback; returns the line."""
    capsys.readouterr()
    code = cli.main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tune_spec(path: Path, name: str, space: dict) -> Path:
    return write_spec(
        path, {"name": name, "base": {**ONE_EPOCH, "data.subset": 100}, "space": space, "cv": {"folds": 2}}
    )


# 1. Two specs started at once: the second is refused; the same spec twice shares the folder ---------------


def start_second_while_first_holds_the_lock(monkeypatch, second) -> tuple[dict, threading.Thread]:
    """Arrange that the next claim of a study folder in this thread, while it holds the folder's lock
    (before it writes), starts `second(log)` in another thread and waits until that one waits for the lock.
    Returns what the second thread will have seen, and the thread."""
    seen: dict = {}
    waiting = threading.Event()
    original = runner.prepare_study_dir

    def log(line: str) -> None:
        if line.startswith("waiting for another cnnlab process"):
            waiting.set()

    def in_thread() -> None:
        try:
            seen["result"] = second(log)
        except Exception as error:  # noqa: BLE001 - handed to the test
            seen["error"] = error

    def prepare_after_the_second_waits(*args, **kwargs):
        if threading.current_thread() is not thread:
            thread.start()
            assert waiting.wait(60), "the second process did not wait for the folder's lock"
        return original(*args, **kwargs)

    thread = threading.Thread(target=in_thread)
    monkeypatch.setattr(runner, "prepare_study_dir", prepare_after_the_second_waits)
    return seen, thread


def test_a_second_spec_started_at_once_on_a_new_folder_is_refused(tmp_path, monkeypatch):
    first = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    second = two_run_spec(tmp_path / "s2.yaml", "s2", 0.003)
    out = tmp_path / "R"
    seen, thread = start_second_while_first_holds_the_lock(
        monkeypatch, lambda log: run_study(second, out, options=FAST, log=log)
    )
    claimed(first, out)
    thread.join(120)
    assert isinstance(seen.get("error"), StudyFolderError), seen
    assert "s1.yaml" in str(seen["error"]) and "--restart" in str(seen["error"])
    assert json.loads((out / "study.json").read_text())["name"] == "s1"
    assert not (out / "runs").exists(), "the refused process trained nothing"


def test_the_same_spec_started_twice_at_once_shares_the_folder_and_its_queue(tmp_path, monkeypatch):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "R"

    def second(log):
        queue = claim_study(plan_study(spec, out), spec, WorkerOptions(), log=log)
        trials = len(queue.storage.get_all_trials(queue.study_id))
        queue.storage.engine.dispose()
        return trials

    seen, thread = start_second_while_first_holds_the_lock(monkeypatch, second)
    claimed(spec, out)
    thread.join(120)
    assert seen.get("result") == 2, seen  # both joined one queue, filled once


# 2. Study, tune and suite folders are told apart; a refused suite writes nothing ---------------------------


def test_a_study_tune_or_suite_is_refused_in_a_folder_of_another_kind(tmp_path, capsys):
    study_spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    search = tune_spec(tmp_path / "t.yaml", "t", {"optim.lr": [0.01, 0.002]})
    suite_spec = write_spec(
        tmp_path / "suite.yaml", {"name": "su", "studies": [{"name": "a", "base": ONE_EPOCH}]}
    )
    study_dir, tune_dir, suite_dir = tmp_path / "study", tmp_path / "tune", tmp_path / "suite"
    claimed(study_spec, study_dir)
    tune.claim_tune_folder(tune.load_tune_spec(search), search, tune_dir, "sqlite:///x.db", (), log=quiet)
    loaded = suite.load_suite(suite_spec, suite_dir)
    suite.claim_suite_folder(loaded, suite_dir, suite.check_suite(loaded, suite_dir), None, (), restart=False)
    before = {folder: snapshot(folder) for folder in (study_dir, tune_dir, suite_dir)}
    cases = [
        (("tune", str(search), "--out", str(study_dir)), "holds a study"),
        (("study", "run", str(study_spec), "--out", str(tune_dir)), "holds a tune"),
        (("study", "run", str(suite_spec), "--out", str(study_dir)), "holds a study"),
        (("study", "run", str(study_spec), "--out", str(suite_dir)), "holds a suite"),
        (("study", "run", str(study_spec), "--out", str(suite_dir), "--restart"), "holds a suite"),
        (("tune", str(search), "--out", str(suite_dir)), "holds a suite"),
    ]
    for args, wanted in cases:
        assert wanted in refused(capsys, *args)
    assert before == {folder: snapshot(folder) for folder in before}, "nothing was written or removed"


def test_a_second_suite_is_refused_before_it_rewrites_the_suite_files(tmp_path, capsys):
    def suite_with(lr: float) -> Path:
        studies = [{"name": "b", "base": ONE_EPOCH, "grid": {"optim.lr": [lr]}}]
        return write_spec(tmp_path / f"suite-{lr}.yaml", {"name": "su", "studies": studies})

    out = tmp_path / "suite"
    first = suite.load_suite(suite_with(0.01), out)
    plans = suite.check_suite(first, out)
    suite.claim_suite_folder(first, out, plans, None, (), restart=False)
    for study, plan in plans:
        claimed(study.spec_path, plan.study_dir)
    before = snapshot(out)
    line = refused(capsys, "study", "run", str(suite_with(0.05)), "--out", str(out))
    assert "holds study 'b'" in line
    assert snapshot(out) == before, "suite.yaml, suite.json and suite-specs/b.yaml are untouched"
    other = write_spec(
        tmp_path / "other.yaml", {"name": "other", "studies": [{"name": "c", "base": ONE_EPOCH}]}
    )
    assert "holds suite 'su'" in refused(capsys, "study", "run", str(other), "--out", str(out))
    assert snapshot(out) == before


# 3. A tune folder holds one spec ---------------------------------------------------------------------------


def test_a_tune_of_another_spec_is_refused_and_changes_nothing(tmp_path, capsys):
    first = tune_spec(tmp_path / "t1.yaml", "t1", {"optim.lr": [0.01, 0.002]})
    second = tune_spec(tmp_path / "t2.yaml", "t2", {"optim.lr": [0.01, 0.003]})
    out = tmp_path / "tune"
    url = f"sqlite:///{out / 'tune.db'}"
    tune.claim_tune_folder(tune.load_tune_spec(first), first, out, url, (), log=quiet)
    before = snapshot(out)
    line = refused(capsys, "tune", str(second), "--out", str(out), "--trials", "1")
    assert "t1.yaml" in line and "t2.yaml" in line and "--restart" in line
    assert snapshot(out) == before
    assert cli.main(["tune", str(second), "--out", str(out), "--trials", "1", "--restart"]) == 0
    assert json.loads((out / "tune.json").read_text())["name"] == "t2"


# 4. Files cnnlab did not write ------------------------------------------------------------------------------


def test_a_folder_with_foreign_files_is_refused_even_with_restart(tmp_path, capsys):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "U"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "mydata.txt").write_text("x\n")
    (out / "results.csv").write_text("a,b\n")
    before = snapshot(out)
    for extra in ((), ("--restart",)):
        line = refused(capsys, "study", "run", str(spec), "--out", str(out), *extra)
        assert "did not write" in line
    assert snapshot(out) == before


def test_restart_removes_only_what_the_study_wrote(tmp_path):
    first = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    second = two_run_spec(tmp_path / "s2.yaml", "s2", 0.003)
    out = tmp_path / "R"
    claimed(first, out)
    run_dir = out / "runs" / "0123456789ab"
    with runfolder.hold(run_dir, "0123456789ab"):
        (run_dir / runfolder.CONFIG_FILE).write_text("model: {}\n")
        runfolder.checkpoint_path(run_dir).parent.mkdir()
        runfolder.checkpoint_path(run_dir).write_bytes(b"weights")
    (run_dir / "notes.txt").write_text("mine\n")
    gone = out / "runs" / "ba9876543210"
    with runfolder.hold(gone, "ba9876543210"):
        (gone / runfolder.CONFIG_FILE).write_text("model: {}\n")
    claim_study(
        plan_study(second, out), second, WorkerOptions(), restart=True, log=quiet
    ).storage.engine.dispose()
    assert (run_dir / "notes.txt").read_text() == "mine\n", "a file cnnlab did not write stays"
    assert not (run_dir / runfolder.CONFIG_FILE).exists() and not runfolder.checkpoint_path(run_dir).exists()
    assert not gone.exists()
    assert json.loads((out / "study.json").read_text())["name"] == "s2"


def test_a_retry_queue_kept_in_the_study_folder_is_not_a_foreign_file(tmp_path):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "R"
    claimed(spec, out)
    claimed(spec, out, storage=f"sqlite:///{out / 'retry.db'}")  # docs: retry failed runs on a fresh queue
    claimed(spec, out)  # and back: the folder still holds only what cnnlab wrote
    assert (out / "retry.db").is_file()


def test_a_run_folder_whose_marker_appears_between_two_looks_is_not_foreign(tmp_path, monkeypatch):
    """A worker checks the folder while the planner creates a run folder: empty when listed, its marker
    written just after. That is cnnlab at work, not a file cnnlab did not write."""
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "S"
    claimed(spec, out)
    being_made = out / "runs" / "0123456789ab"
    being_made.mkdir(parents=True)
    real_is_run_folder = runfolder.is_run_folder

    def marker_written_meanwhile(folder):
        answer = real_is_run_folder(folder)
        (Path(folder) / runfolder.MARKER_FILE).touch()
        return answer

    monkeypatch.setattr(runfolder, "is_run_folder", marker_written_meanwhile)
    runner.check_out_folder(out, runner.STUDY_FOLDER)


def test_a_file_renamed_away_after_the_listing_is_not_foreign(tmp_path, monkeypatch):
    """A temporary file (study.json's, a splits file's) renamed into place after the folder was listed."""
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "S"
    claimed(spec, out)
    real_iterdir = Path.iterdir
    gone = {
        out: out / ".study.json.0badf00d.tmp",
        out / "splits": out / "splits" / ".2b28453340f8.json.0badf00d.tmp",
    }

    def listed_before_the_rename(folder):
        yield from real_iterdir(folder)
        if folder in gone:
            yield gone[folder]  # listed, then renamed into place: it no longer exists when looked at

    monkeypatch.setattr(Path, "iterdir", listed_before_the_rename)
    runner.check_out_folder(out, runner.STUDY_FOLDER)


def test_a_folder_whose_first_marker_is_being_written_is_not_foreign_but_other_files_still_are(tmp_path):
    """A --worker-only process (or a second planner) looks while the planner writes study.yaml: the folder
    holds only that file's temporary name, no marker yet. It is cnnlab at work (1 look in 6 refused it when a
    worker polled a starting planner); a file beside it still makes the folder foreign."""
    out = tmp_path / "S"
    out.mkdir()
    (out / ".study.yaml.0badf00d.tmp").write_text("base: {}\n")
    (out / FOLDER_LOCK).touch()
    runner.check_out_folder(out, runner.STUDY_FOLDER)
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(StudyFolderError, match="did not write.*notes.txt"):
        runner.check_out_folder(out, runner.STUDY_FOLDER)
    (out / "notes.txt").unlink()
    (out / ".report.html.0badf00d.tmp").write_text("<html>")  # cnnlab's name, but no study marks the folder
    with pytest.raises(StudyFolderError, match="did not write"):
        runner.check_out_folder(out, runner.STUDY_FOLDER)


# 5. A run recorded completed whose result is gone trains again ----------------------------------------------


def test_a_deleted_or_damaged_run_is_trained_again_and_status_agrees(tmp_path):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "R"
    assert run_study(spec, out, options=FAST, log=quiet).counts["completed"] == 2
    deleted, damaged = sorted(path.name for path in (out / "runs").iterdir())
    shutil.rmtree(out / "runs" / deleted)
    result = out / "runs" / damaged / "result.json"
    result.write_text(result.read_text()[:100])  # truncated
    status = study_status(out)
    assert status.counts["completed"] == 0 and status.counts["pending"] == 2
    lines: list[str] = []
    outcome = run_study(spec, out, options=FAST, log=lines.append)
    output = "\n".join(lines)
    assert outcome.counts["completed"] == 2 and outcome.trained == 2, output
    assert sorted(run_lines(output, "requeued")) == sorted([deleted, damaged]), output
    for run_id in (deleted, damaged):
        assert runfolder.completed_result(out / "runs" / run_id) is not None
    assert study_status(out).counts["completed"] == 2
    bogus = json.loads(result.read_text())
    result.write_text(json.dumps({**bogus, "status": "bogus"}))
    assert study_status(out).counts["pending"] == 1
    lines.clear()
    assert run_study(spec, out, options=FAST, log=lines.append).trained == 1
    assert runfolder.completed_result(out / "runs" / damaged) is not None


# 6. A damaged study.json ------------------------------------------------------------------------------------


def test_status_of_a_malformed_study_json_is_one_line(tmp_path, capsys):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "R"
    claimed(spec, out)
    plan = json.loads((out / "study.json").read_text())
    for runs in ([{"index": "a"}], [{"index": 0}], "x", [7]):
        (out / "study.json").write_text(json.dumps({**plan, "runs": runs}))
        line = refused(capsys, "study", "status", str(out))
        assert "study.json" in line and "study run" in line


# 8. The queue's database ------------------------------------------------------------------------------------


def test_a_queue_file_that_is_not_a_database_says_how_to_fix_it(tmp_path, capsys):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "R"
    claimed(spec, out)
    (out / "study.db").write_text("garbage\n")
    line = refused(capsys, "study", "run", str(spec), "--out", str(out))
    assert "study.db" in line and "not a readable SQLite database" in line and "move" in line
    (out / "study.db").rename(tmp_path / "study.db.damaged")  # what the message says to do
    claimed(spec, out)  # a new queue
    assert study_status(out).counts["pending"] == 2


def test_an_in_memory_storage_is_refused_before_anything_is_written(tmp_path, capsys):
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    search = tune_spec(tmp_path / "t.yaml", "t", {"optim.lr": [0.01, 0.002]})
    for url in ("sqlite://", "sqlite:///:memory:"):
        assert "in-memory" in refused(
            capsys, "study", "run", str(spec), "--out", str(tmp_path / "R"), "--storage", url
        )
        assert "in-memory" in refused(
            capsys, "tune", str(search), "--out", str(tmp_path / "T"), "--storage", url
        )
    assert not (tmp_path / "R").exists() and not (tmp_path / "T").exists()


# 7. Tune: categorical choices checked up front, failed trials without tracebacks ----------------------------


def test_an_unknown_categorical_choice_is_refused_before_the_tune_starts(tmp_path, capsys):
    search = tune_spec(tmp_path / "t.yaml", "t", {"model.name": ["lenet5", "nosuchmodel"]})
    line = refused(capsys, "tune", str(search), "--out", str(tmp_path / "T"))
    assert "space.model.name" in line and "nosuchmodel" in line
    assert not (tmp_path / "T").exists()


def test_more_folds_than_images_of_a_class_is_refused_before_the_tune_starts(tmp_path, capsys):
    """Every trial would fail the same way (the search used to go on failing trial after trial, forever
    with a large budget): one line naming cv.folds, nothing written. A categorical choice is checked too."""
    raw = {"name": "t", "base": {**ONE_EPOCH, "data.subset": 100}, "space": {"optim.lr": [0.01]}}
    search = write_spec(tmp_path / "t.yaml", {**raw, "cv": {"folds": 50}, "trials": 1000})
    line = refused(capsys, "tune", str(search), "--out", str(tmp_path / "T"))
    assert line.startswith("cnnlab: error: tune spec cv.folds=50: data.folds=50 needs at least 50 training")
    search = write_spec(tmp_path / "t.yaml", {**raw, "space": {"data.subset": [100, 20]}, "cv": {"folds": 5}})
    line = refused(capsys, "tune", str(search), "--out", str(tmp_path / "T"))
    assert "space.data.subset[1]=20: tune spec cv.folds=5: data.folds=5 needs at least 5 training" in line
    assert not (tmp_path / "T").exists()


def test_failed_trials_print_one_line_each_and_no_traceback(tmp_path, monkeypatch, capfd):
    search = tune_spec(tmp_path / "t.yaml", "t", {"optim.lr": [0.01, 0.002]})

    def diverging_fit(config, out_dir, **kwargs):
        return RunResult("diverged", Path(out_dir), {"reason": "non-finite loss at epoch 0"})

    monkeypatch.setattr(tune, "fit", diverging_fit)
    lines: list[str] = []
    outcome = tune.run_tune(search, tmp_path / "T", trials=2, log=lines.append)
    captured = capfd.readouterr()
    assert outcome.best_trial is None
    assert "Traceback" not in captured.err + captured.out and "failed with" not in captured.err, captured.err
    failed = [line for line in lines if line.startswith("trial ") and " failed: " in line]
    assert len(failed) >= 2 and all("diverged" in line for line in failed), lines


def test_a_trial_whose_run_another_tune_process_trains_waits_for_it_instead_of_failing(tmp_path, monkeypatch):
    """Two tune processes drew the same params: the second finds the fold's run folder held by the first
    (RunFolderBusy) and waits, then takes the run's result; before, its trial failed ("in use")."""
    search = tune_spec(tmp_path / "t.yaml", "t", {"optim.lr": [0.01]})
    folders: list[Path] = []

    def fit_held_elsewhere_at_first(config, out_dir, **kwargs):
        folders.append(Path(out_dir))
        if len(folders) == 1:
            raise runfolder.RunFolderBusy(f"run folder {out_dir} is in use by process 1 on elsewhere")
        return RunResult("completed", Path(out_dir), {"best": {"val_acc": 0.5}})

    monkeypatch.setattr(tune, "fit", fit_held_elsewhere_at_first)
    monkeypatch.setattr(tune, "BUDGET_POLL_S", 0.01)
    lines: list[str] = []
    outcome = tune.run_tune(search, tmp_path / "T", trials=1, log=lines.append)
    assert outcome.finished == 1 and outcome.best_value == 0.5, lines
    assert folders[0] == folders[1] and len(folders) == 3  # the busy fold again, then fold 1
    assert [line for line in lines if "waiting" in line] == [
        f"trial 0 fold 0: another process is training its run {folders[0].name} "
        "(a trial of the same params); waiting for it"
    ]


# 9. Missing training data: refused before anything is written or trains ------------------------------------


def test_a_missing_data_folder_is_refused_before_a_study_suite_or_tune_writes_anything(tmp_path, capsys):
    missing = {**ONE_EPOCH, "data.name": f"folder:{tmp_path / 'no-photos'}"}
    study_spec = write_spec(tmp_path / "s.yaml", {"name": "s", "base": missing})
    suite_spec = write_spec(
        tmp_path / "suite.yaml",
        {"name": "su", "studies": [{"name": "a", "base": ONE_EPOCH}, {"name": "b", "base": missing}]},
    )
    search = write_spec(
        tmp_path / "t.yaml", {"name": "t", "base": missing, "space": {"optim.lr": [0.01]}, "cv": {"folds": 2}}
    )
    cases = [
        ("S", ("study", "run", str(study_spec)), "no-photos"),
        ("SU", ("study", "run", str(suite_spec)), "study 'b'"),
        ("T", ("tune", str(search), "--trials", "1"), "no-photos"),
    ]
    for out, args, wanted in cases:
        assert wanted in refused(capsys, *args, "--out", str(tmp_path / out))
        assert not (tmp_path / out).exists(), f"{out}: nothing written (nor the suite's study 'a' trained)"


def test_a_subset_beside_a_stages_per_class_names_the_stage_before_anything_is_written(tmp_path, capsys):
    # the docs' fast pass (--set base.data.subset=...) on transfer.yaml, whose transfer stage sets per_class
    spec = write_spec(
        tmp_path / "s.yaml",
        {"name": "s", "base": ONE_EPOCH, "stages": [{"name": "few", "base": {"data.per_class": 5}}]},
    )
    line = refused(capsys, "study", "run", str(spec), "--out", str(tmp_path / "S"))
    assert "stage 'few'" in line and "data.per_class" in line, line
    assert not (tmp_path / "S").exists()


def test_the_same_spec_with_other_overrides_is_refused_saying_what_changed(tmp_path, capsys):
    # a student reruns a study with one --set changed (more epochs) into the same --out
    spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    out = tmp_path / "study"
    claimed(spec, out)
    before = snapshot(out)
    line = refused(capsys, "study", "run", str(spec), "--out", str(out), "--set", "base.train.epochs=2")
    assert "--set overrides differ" in line and "study.yaml" in line and "--restart" in line, line
    assert snapshot(out) == before
    other = two_run_spec(tmp_path / "s2.yaml", "s2", 0.003)
    assert "overrides differ" not in refused(capsys, "study", "run", str(other), "--out", str(out))


def test_an_out_folder_inside_the_photo_folder_trained_on_is_refused(tmp_path, capsys):
    """Its report figures (PNG) would be read as a new class of that dataset by the next study."""
    from PIL import Image

    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (40 * i, 0, 0) if label == "cat" else (0, 40 * i, 0)).save(
                photos / label / f"{i}.png"
            )
    before = snapshot(photos)
    base = {key: value for key, value in ONE_EPOCH.items() if key != "data.subset"}
    base["data.name"] = f"folder:{photos}"
    study_spec = write_spec(tmp_path / "s.yaml", {"name": "s", "base": base})
    suite_spec = write_spec(tmp_path / "suite.yaml", {"name": "su", "studies": [{"name": "a", "base": base}]})
    search = write_spec(
        tmp_path / "t.yaml", {"name": "t", "base": base, "space": {"optim.lr": [0.01]}, "cv": {"folds": 2}}
    )
    cases = [
        (("study", "run", str(study_spec)), photos / "out"),
        (("study", "run", str(study_spec)), photos / "cat" / "out"),
        (("study", "run", str(suite_spec)), photos / "suite"),
        (("tune", str(search), "--trials", "1"), photos / "tune"),
    ]
    for args, out in cases:
        assert "inside the photo folder" in refused(capsys, *args, "--out", str(out))
    assert snapshot(photos) == before and sorted(p.name for p in photos.iterdir()) == ["cat", "dog"]


def test_the_same_spec_from_another_working_directory_is_refused_naming_relative_paths(
    tmp_path, capsys, monkeypatch
):
    # data.data_dir: cache is relative to the working directory, so from elsewhere the runs are other runs
    spec = write_spec(tmp_path / "s.yaml", {"name": "s", "base": {**ONE_EPOCH, "data.data_dir": "cache"}})
    out = tmp_path / "study"
    for place in ("a", "b"):
        (tmp_path / place / "cache").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    claimed(spec, out)
    before = snapshot(out)
    monkeypatch.chdir(tmp_path / "b")
    line = refused(capsys, "study", "run", str(spec), "--out", str(out))
    assert "unchanged" in line and "working directory" in line and "spec file was edited" not in line, line
    assert snapshot(out) == before


def test_an_out_folder_whose_name_is_not_utf8_is_refused_before_anything_runs(tmp_path, capsys):
    # before, each run failed inside TensorBoard (UnicodeEncodeError) and the study exited 1
    import os

    spec = two_run_spec(tmp_path / "s.yaml", "s", 0.002)
    search = tune_spec(tmp_path / "t.yaml", "t", {"optim.lr": [0.01, 0.002]})
    out = os.fsdecode(bytes(tmp_path) + b"/out\xfe")
    for args in (("study", "run", str(spec)), ("tune", str(search), "--trials", "1")):
        assert "not UTF-8" in refused(capsys, *args, "--out", out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s.yaml", "t.yaml"]


def test_an_out_folder_inside_a_study_or_tune_folder_is_refused(tmp_path, capsys):
    # before, the outer study's report (every result.json below it) counted the inner study's runs as its own
    study_spec = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    other = two_run_spec(tmp_path / "s2.yaml", "s2", 0.003)
    search = tune_spec(tmp_path / "t.yaml", "t", {"optim.lr": [0.01, 0.002]})
    suite_spec = write_spec(
        tmp_path / "suite.yaml", {"name": "su", "studies": [{"name": "a", "base": ONE_EPOCH}]}
    )
    study_dir, tune_dir = tmp_path / "study", tmp_path / "tune"
    claimed(study_spec, study_dir)
    tune.claim_tune_folder(tune.load_tune_spec(search), search, tune_dir, "sqlite:///x.db", (), log=quiet)
    before = {folder: snapshot(folder) for folder in (study_dir, tune_dir)}
    for outer in (study_dir, tune_dir):
        for args in (("study", "run", str(other)), ("tune", str(search)), ("study", "run", str(suite_spec))):
            for out in (outer / "inner", outer / "runs" / "inner"):
                line = refused(capsys, *args, "--out", str(out))
                assert "is inside the" in line and str(outer) in line, line
    assert before == {folder: snapshot(folder) for folder in before}, "nothing was written"
    (tmp_path / "project").mkdir()  # a spec file merely named study.yaml does not make a study folder
    (tmp_path / "project" / "study.yaml").write_text("base: {}\n")
    (tmp_path / "project" / "study.json").write_text("{}\n")
    assert check_is_ok(tmp_path / "project" / "runs" / "x")


def check_is_ok(folder: Path) -> bool:
    from cnnlab.study.checks import STUDY_FOLDER, check_out_folder

    check_out_folder(folder, STUDY_FOLDER)
    return True


# 10. --restart while another process works in the folder ----------------------------------------------------


def working_in_background(monkeypatch, module, start) -> tuple[threading.Event, threading.Thread, dict]:
    """Run `start()` (a study or tune process) in another thread whose first `module.fit` waits until the
    returned Event is set, then trains; returns once that fit has begun. The thread's outcome lands in the
    returned dict ("result" or "error")."""
    training, release, seen = threading.Event(), threading.Event(), {}
    real_fit = module.fit

    def fit_when_released(*args, **kwargs):
        training.set()
        assert release.wait(120)
        return real_fit(*args, **kwargs)

    def body() -> None:
        try:
            seen["result"] = start()
        except Exception as error:  # noqa: BLE001 - handed to the test
            seen["error"] = error

    monkeypatch.setattr(module, "fit", fit_when_released)
    thread = threading.Thread(target=body)
    thread.start()
    assert training.wait(120), seen
    return release, thread, seen


def test_restart_is_refused_while_another_process_works_on_the_study(tmp_path, monkeypatch, capsys):
    first = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    second = two_run_spec(tmp_path / "s2.yaml", "s2", 0.003)
    out = tmp_path / "R"
    release, thread, seen = working_in_background(
        monkeypatch, runner, lambda: run_study(first, out, options=FAST, log=quiet)
    )
    try:
        line = refused(capsys, "study", "run", str(second), "--out", str(out), "--restart")
        assert "is in use by another cnnlab process" in line and "--restart" in line, line
        assert json.loads((out / "study.json").read_text())["name"] == "s1"
        assert (out / "study.db").is_file() and (out / "study.yaml").read_text() == first.read_text()
    finally:
        release.set()
        thread.join(120)
    assert seen["result"].counts["completed"] == 2, seen
    assert cli.main(["study", "run", str(second), "--out", str(out), "--restart"]) == 0, "free again"
    assert json.loads((out / "study.json").read_text())["name"] == "s2"


def test_a_worker_whose_study_a_restart_discarded_before_it_began_is_refused(tmp_path, monkeypatch):
    first = two_run_spec(tmp_path / "s1.yaml", "s1", 0.002)
    second = two_run_spec(tmp_path / "s2.yaml", "s2", 0.003)
    out = tmp_path / "R"
    claimed(first, out)
    real_join = runner.join_as_worker

    def join_then_restart_elsewhere(*args, **kwargs):
        queue = real_join(*args, **kwargs)
        claimed_again = claim_study(plan_study(second, out), second, WorkerOptions(), restart=True, log=quiet)
        claimed_again.storage.engine.dispose()
        return queue

    monkeypatch.setattr(runner, "join_as_worker", join_then_restart_elsewhere)
    with pytest.raises(StudyFolderError, match="joins with the spec the folder was started with"):
        run_study(first, out, worker_only=True, options=FAST, log=quiet)
    assert not (out / "runs").exists(), "the worker trained nothing"


def test_a_tune_restart_is_refused_while_another_tune_works_in_the_folder(tmp_path, monkeypatch, capsys):
    first = tune_spec(tmp_path / "t1.yaml", "t1", {"optim.lr": [0.01, 0.002]})
    second = tune_spec(tmp_path / "t2.yaml", "t2", {"optim.lr": [0.01, 0.003]})
    out = tmp_path / "tune"
    release, thread, seen = working_in_background(
        monkeypatch, tune, lambda: tune.run_tune(first, out, trials=1, log=quiet)
    )
    try:
        line = refused(capsys, "tune", str(second), "--out", str(out), "--trials", "1", "--restart")
        assert "tune folder" in line and "is in use by another cnnlab process" in line, line
        assert json.loads((out / "tune.json").read_text())["name"] == "t1" and (out / "tune.db").is_file()
    finally:
        release.set()
        thread.join(120)
    assert seen["result"].finished == 1, seen
