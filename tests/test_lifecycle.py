"""The run and the study as units of work: one spec per study folder, one owner per run folder, one identity
per run, interrupts that end a run as `interrupted` and resume it, and lost claims that never execute a run
twice. Real processes and real signals (SIGINT, SIGTERM, SIGKILL, SIGSTOP/SIGCONT)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cnnlab import cli, runfolder
from cnnlab.config import config_hash, from_dict, load_yaml
from tests.test_study_run import TINY, write_spec
from tests.worker_output import pause_outside_a_transaction, progress_lines, queue_trials, run_lines

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_QUIET": "1"}
LONG_RUN = {**TINY, "data.subset": None, "train.epochs": 40}  # ~0.2 s per epoch on one core


def start(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run_here(capsys, *args: str) -> tuple[int, str, str]:
    """The user's next command, in this process: what a fresh process would do after the signalled one ended,
    without the 10 s a fresh process spends importing the training stack."""
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def study_status_output(study: Path) -> str:
    """What `cnnlab study status` prints for the study folder (a fresh process, as a user would run it)."""
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", "study", "status", str(study)],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout


def wait_for_epochs(run_dir: Path, epochs: int, timeout: float = 120) -> list[dict]:
    """Poll metrics.csv until it records `epochs` rows; returns them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = metric_rows(run_dir)
        if len(rows) >= epochs:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} did not reach {epochs} epochs")


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / runfolder.METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def only_run_dir(study_dir: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted((study_dir / "runs").glob("*")) if (study_dir / "runs").is_dir() else []
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no run folder appeared in {study_dir}")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder → sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_resumed(before_kill: list[dict], final: list[dict], epochs: int | None = None) -> None:
    """Every epoch recorded once (all `epochs` of them, when given), and the epochs checkpointed before a kill
    were not trained again."""
    assert [int(row["epoch"]) for row in final] == list(range(len(final) if epochs is None else epochs))
    kept = before_kill[:-1]  # the last row may be newer than the last checkpoint
    assert final[: len(kept)] == kept, "epochs finished before the interrupt were not retrained"


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# 1. A study folder belongs to one spec ---------------------------------------------------------------------


def test_a_different_spec_into_a_study_folder_is_refused_and_nothing_changes(tmp_path, capsys):
    first = write_spec(tmp_path / "first.yaml", {"base": {**TINY, "train.epochs": 1}, "seeds": [0]})
    second = write_spec(
        tmp_path / "second.yaml", {"base": {**TINY, "train.epochs": 1, "optim.lr": 0.05}, "seeds": [0]}
    )
    study = tmp_path / "study"
    assert cli.main(["study", "run", str(first), "--out", str(study), "--heartbeat", "1"]) == 0
    before = snapshot(study)
    capsys.readouterr()
    code = cli.main(["study", "run", str(second), "--out", str(study), "--heartbeat", "1"])
    err = capsys.readouterr().err
    assert code == 2
    line = one_line(err)
    assert str(first) in line and str(second) in line and "--restart" in line
    assert snapshot(study) == before, "study.yaml, study.json and every run are byte-identical"
    assert cli.main(["study", "run", str(second), "--out", str(study), "--restart", "--heartbeat", "1"]) == 0
    plan = json.loads((study / "study.json").read_text())
    assert plan["spec_path"] == str(second) and len(list((study / "runs").iterdir())) == 1


# 2. A worker paused past its heartbeat never executes its run a second time -------------------------------


def test_a_paused_worker_loses_its_claim_and_every_run_executes_once(tmp_path):
    spec = write_spec(
        tmp_path / "pause.yaml",
        {"base": {**LONG_RUN, "train.epochs": 15}, "grid": {"optim.lr": [0.003, 0.01]}, "seeds": [0]},
    )
    study = tmp_path / "study"
    args = ("study", "run", str(spec), "--out", str(study), "--heartbeat", "2")
    sleeper = start(*args)
    try:
        paused_dir = only_run_dir(study)
        wait_for_epochs(paused_dir, 2)
        pause_outside_a_transaction(sleeper, study / "study.db")
        other = start(*args)
        paused_at = time.monotonic()
        wait_until_reaped(study, paused_dir.name, paused_at + 150)  # the other worker took the claim back
        time.sleep(max(0.0, paused_at + 20 - time.monotonic()))
    finally:  # a stopped process outlives a failed test otherwise
        sleeper.send_signal(signal.SIGCONT)
    results = [finish(sleeper), finish(other)]
    for code, out, err in results:
        assert code == 0 and "Traceback" not in out + err, out + err
    matches = [match for _, out, _ in results for match in progress_lines(out)]
    lines = [match.string for match in matches]
    completed = [run_id for _, out, _ in results for run_id in run_lines(out, "completed")]
    run_ids = sorted(path.name for path in (study / "runs").iterdir())
    assert sorted(completed) == run_ids, f"each run completed exactly once:\n{chr(10).join(lines)}"
    # the woken worker notices either mid-run (its heartbeat finds the trial reaped: a "lost" line, the run
    # resumes later from its checkpoint) or, when the queue's database was busy until the run ended, as it
    # records the result (the run was still its own: the folder lock kept the other worker out)
    noticed = [m.string for m in matches if m["state"] == "lost" or "its claim had expired" in m.string]
    assert noticed, f"the woken worker noticed its lost claim:\n{chr(10).join(lines)}"
    for run_id in run_ids:
        result = runfolder.read_result(study / "runs" / run_id)
        assert result["status"] == "completed" and result["epochs_run"] == 15
        assert [int(row["epoch"]) for row in metric_rows(study / "runs" / run_id)] == list(range(15))


def wait_until_reaped(study: Path, run_id: str, deadline: float) -> None:
    """Until the paused worker's trial for the run is failed in the queue (reaped and requeued). Read from
    the storage itself: `study status` falls back to the files while the storage is busy, and a run with no
    result there reads as pending."""
    storage = json.loads((study / "study.json").read_text())["storage"]
    while time.monotonic() < deadline:
        trials = [t for ts in queue_trials(storage, study).values() for t in ts]
        if any(t.state.name == "FAIL" and t.user_attrs.get("run_id") == run_id for t in trials):
            return
        time.sleep(0.5)
    raise AssertionError("the paused worker's claim was never taken back")


# 3. A run killed again and again resumes from its checkpoint each time ------------------------------------


def test_three_sigkills_in_a_row_do_not_use_up_the_run(tmp_path, capsys):
    spec = write_spec(tmp_path / "kill.yaml", {"base": {**LONG_RUN, "train.epochs": 20}, "seeds": [0]})
    study = tmp_path / "study"
    args = ("study", "run", str(spec), "--out", str(study), "--heartbeat", "1")
    recorded = 0
    for _ in range(3):
        process = start(*args)
        rows = wait_for_epochs(only_run_dir(study), recorded + 2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        recorded = len(rows)
        before_kill = rows
    code, out, err = run_here(capsys, *args)
    assert code == 0, out + err
    assert ": 1 completed (this process trained 1, found 0 already completed)" in out
    assert_resumed(before_kill, metric_rows(only_run_dir(study)), 20)
    code, out, err = run_here(capsys, *args)
    assert code == 0 and ": 1 completed (this process trained 0, found 1 already completed)" in out, out + err


# 4. SIGTERM and SIGINT: one line, 143 / 130, recorded as interrupted, resumed -------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_train_interrupted_by_a_signal_is_recorded_and_resumes(tmp_path, capsys, signum, code):
    out_dir = tmp_path / "run"
    args = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "30", "--out", str(out_dir)]
    process = start(*args, "--set", "model.activation=relu")
    rows = wait_for_epochs(out_dir, 3)
    process.send_signal(signum)
    returncode, out, err = finish(process)
    assert returncode == code, err
    line = one_line(err)
    assert line.startswith(f"cnnlab: interrupted by {signal.Signals(signum).name}; resume with: cnnlab train")
    assert line.endswith("--resume")
    result = runfolder.read_result(out_dir)
    assert result["status"] == "interrupted" and result["test"] is None
    assert runfolder.checkpoint_path(out_dir).is_file()
    returncode, out, err = run_here(capsys, *args, "--set", "model.activation=relu", "--resume")
    assert returncode == 0, out + err
    assert_resumed(rows, metric_rows(out_dir), 30)
    assert runfolder.read_result(out_dir)["status"] == "completed"


def test_a_signal_during_the_final_scoring_leaves_no_predictions(tmp_path, capsys, monkeypatch):
    import cnnlab.train.run as run_module
    from cnnlab.errors import Interrupted

    real = run_module._predict_and_save

    def scores_val_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the validation predictions are written, then SIGTERM arrives
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(run_module, "_predict_and_save", scores_val_then_interrupted)
    out_dir = tmp_path / "run"
    args = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--out", str(out_dir)]
    assert cli.main(args) == 143
    assert runfolder.read_result(out_dir)["status"] == "interrupted"
    assert not any((out_dir / "predictions").glob("*.npz")) and not any((out_dir / "images").glob("*.npz"))
    monkeypatch.setattr(run_module, "_predict_and_save", real)
    assert cli.main([*args, "--resume"]) == 0
    assert runfolder.read_predictions(out_dir, "test") is not None


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_study_interrupted_by_a_signal_shows_interrupted_and_resumes(tmp_path, capsys, signum, code):
    spec = write_spec(tmp_path / "stop.yaml", {"base": {**LONG_RUN, "train.epochs": 30}, "seeds": [0]})
    study = tmp_path / "study"
    args = ("study", "run", str(spec), "--out", str(study), "--heartbeat", "1")
    process = start(*args)
    run_dir = only_run_dir(study)
    rows = wait_for_epochs(run_dir, 3)
    process.send_signal(signum)
    returncode, out, err = finish(process)
    assert returncode == code, err
    line = one_line(err)
    assert f"interrupted by {signal.Signals(signum).name}; resume with: cnnlab study run" in line
    assert " interrupted " in out
    status = study_status_output(study)
    assert "1 interrupted" in status and "0 running" in status and "interrupted" in status.splitlines()[-1]
    returncode, out, err = run_here(capsys, *args)
    assert returncode == 0, out + err
    assert_resumed(rows, metric_rows(run_dir), 30)


def test_sigterm_to_a_study_with_workers_stops_every_worker_and_resumes(tmp_path):
    """Only the main process gets SIGTERM: it stops its helper worker, both runs are interrupted, exit 143."""
    # 100 epochs: the helper worker starts its run a process start-up (5-10 s) after the main process starts
    # its own, and 30 epochs (6.9 s on a fast 2-core machine) could end before both runs were under way
    epochs = 100
    raw = {"base": {**LONG_RUN, "train.epochs": epochs}, "seeds": [0, 1]}
    spec = write_spec(tmp_path / "workers.yaml", raw)
    study = tmp_path / "study"
    args = ("study", "run", str(spec), "--out", str(study), "--heartbeat", "1", "--workers", "2")
    process = start(*args)
    deadline = time.monotonic() + 180
    while len(list(study.glob("runs/*/metrics.csv"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    run_dirs = sorted(path.parent for path in study.glob("runs/*/metrics.csv"))
    assert len(run_dirs) == 2, "both workers started a run"
    rows = {run_dir: wait_for_epochs(run_dir, 2) for run_dir in run_dirs}
    process.send_signal(signal.SIGTERM)
    returncode, out, err = finish(process)
    assert returncode == 143, out + err
    assert "interrupted by SIGTERM; resume with: cnnlab study run" in one_line(err)
    assert out.count(" interrupted ") == 2, out
    assert not any(runfolder.is_held(run_dir) for run_dir in run_dirs), "no helper outlived the study"
    status = study_status_output(study)
    assert "2 interrupted" in status and "0 running" in status, status
    # resumed: both runs go on from their checkpoints (stopped again two epochs later: running 2 x 100 epochs
    # to the end cost a minute or two; the one-worker test above resumes a study to its end)
    stopped_at = {run_dir: len(metric_rows(run_dir)) for run_dir in run_dirs}
    resumed = start(*args)
    for run_dir, recorded in stopped_at.items():
        wait_for_epochs(run_dir, recorded + 2)
    resumed.send_signal(signal.SIGTERM)
    returncode, out, err = finish(resumed)
    assert returncode == 143, out + err
    assert out.count(" interrupted ") == 2, out
    for run_dir, before in rows.items():
        assert_resumed(before, metric_rows(run_dir))


# 5. train --out never touches what it does not own -------------------------------------------------------


def test_train_out_refuses_foreign_files_another_run_and_a_second_process(tmp_path, capsys):
    foreign = tmp_path / "mine"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "predictions").mkdir()
    (foreign / "checkpoints" / "my_model.pt").write_bytes(b"user weights")
    (foreign / "predictions" / "preds.csv").write_text("id,label\n1,0\n")
    before = snapshot(foreign)
    base = ["train", "--data", "digits", "--epochs", "1", "--set", "data.subset=100"]
    assert cli.main([*base, "--model", "lenet5", "--out", str(foreign)]) == 2
    assert "files that cnnlab did not write" in one_line(capsys.readouterr().err)
    assert snapshot(foreign) == before

    run = tmp_path / "run"
    assert cli.main([*base, "--model", "lenet5", "--out", str(run)]) == 0
    completed = snapshot(run)
    capsys.readouterr()
    assert cli.main([*base, "--model", "resnet20_cifar", "--out", str(run)]) == 2
    assert "holds another run" in one_line(capsys.readouterr().err) and snapshot(run) == completed
    assert cli.main([*base, "--model", "resnet20_cifar", "--out", str(run), "--overwrite"]) == 0
    assert runfolder.read_result(run)["model"] == "resnet20_cifar"

    busy = tmp_path / "busy"
    long_args = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "200", "--out", str(busy)]
    first = start(*long_args)
    wait_for_epochs(busy, 1)
    code, _, err = finish(start(*long_args))
    first.send_signal(signal.SIGTERM)
    finish(first)
    assert code == 2 and f"in use by process {first.pid}" in one_line(err)


def test_train_out_refuses_a_users_config_and_result_even_with_overwrite(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: x\n")
    (mine / "result.json").write_text('{"status": "failed"}')
    (mine / "metrics.csv").write_text("a,b\n")
    before = snapshot(mine)
    base = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--out", str(mine)]
    for extra in ([], ["--overwrite"]):
        assert cli.main([*base, *extra]) == 2
        assert "files that cnnlab did not write" in one_line(capsys.readouterr().err)
        assert snapshot(mine) == before


def test_resume_refuses_a_last_checkpoint_of_another_run(tmp_path, capsys):
    base = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--set", "data.subset=100"]
    other, run = tmp_path / "other", tmp_path / "run"
    assert cli.main([*base, "--out", str(other)]) == 0
    (run / "checkpoints").mkdir(parents=True)
    (run / runfolder.MARKER_FILE).write_text("")
    shutil.copy(other / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert cli.main([*base, "--lr", "0.05", "--out", str(run), "--resume"]) == 2
    message = one_line(capsys.readouterr().err)
    assert "saved by another run" in message and "without --resume" in message
    assert runfolder.read_result(run) is None


def test_a_signal_landing_in_a_finalizer_still_stops_the_command(tmp_path):
    """Python drops an exception raised inside __del__ or a weakref callback; the signal must not be lost."""
    script = tmp_path / "finalizer.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from cnnlab.errors import Interrupted\n"
        "from cnnlab.interrupts import signals_raise\n"
        "class Collected:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sum(range(10000))  # the handler runs here, inside the finalizer\n"
        "try:\n"
        "    with signals_raise():\n"
        "        Collected()\n"
        "        time.sleep(5)\n"
        "except Interrupted as stop:\n"
        "    sys.exit(stop.exit_code)\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert "Exception ignored" not in done.stderr


def test_a_signal_the_parent_ignores_stays_ignored(tmp_path):
    """A command started with `&` from a script has SIGINT ignored (the script's Ctrl-C spares it): a SIGINT
    must not stop it, while SIGTERM still does."""
    script = tmp_path / "background.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from cnnlab.errors import Interrupted\n"
        "from cnnlab.interrupts import signals_raise\n"
        "try:\n"
        "    with signals_raise():\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(0.2)\n"
        "        print('survived SIGINT', flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "except Interrupted as stop:\n"
        "    sys.exit(stop.exit_code)\n"
        "sys.exit(0)\n"
    )
    ignore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731 - as `sh -c 'cmd &'`
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, preexec_fn=ignore_sigint
    )
    assert done.returncode == 143, done.stderr
    assert "survived SIGINT" in done.stdout


# 6. One identity: location-free run ids, absolute paths ---------------------------------------------------


def test_a_copied_study_trains_nothing_and_reports_the_same_numbers(tmp_path, capsys):
    spec = write_spec(
        tmp_path / "copy.yaml", {"base": {**TINY, "train.epochs": 1}, "grid": {"optim.lr": [0.003, 0.01]}}
    )
    original = tmp_path / "original"
    assert cli.main(["study", "run", str(spec), "--out", str(original), "--heartbeat", "1"]) == 0
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    (copy / "study.db").unlink()  # a fresh queue: only the run ids can tell that the runs are done
    capsys.readouterr()
    assert cli.main(["study", "run", str(spec), "--out", str(copy), "--heartbeat", "1"]) == 0
    assert "this process trained 0, found 2 already completed" in capsys.readouterr().out
    assert (copy / "results.csv").read_text() == (original / "results.csv").read_text()
    for run_dir in (copy / "runs").iterdir():
        result = runfolder.read_result(run_dir)
        resolved = from_dict(load_yaml(run_dir / "config.yaml"))
        hashes = (result["run_id"], result["provenance"]["config_hash"], config_hash(resolved))
        identity = {*hashes, run_dir.name}
        assert len(identity) == 1
    run_dir = next((copy / "runs").iterdir())
    evaluated = subprocess.run(
        [sys.executable, "-m", "cnnlab", "evaluate", "--checkpoint", str(run_dir)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd="/",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0.0 <= json.loads(evaluated.stdout)["acc"] <= 1.0


def test_relative_data_and_init_paths_are_stored_absolute(tmp_path, monkeypatch):
    for label, shade in (("dark", 40), ("light", 215)):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (16, 16), (shade + i, shade, shade)).save(tmp_path / "pics" / label / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    base = ["train", "--model", "lenet5", "--epochs", "1", "--set", "data.image_size=16"]
    assert cli.main([*base, "--data", "folder:pics", "--out", "pre"]) == 0
    assert cli.main([*base, "--data", "folder:pics", "--init", "run:pre", "--out", "tuned"]) == 0
    config = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text())
    assert config["data"]["name"] == f"folder:{tmp_path / 'pics'}"
    assert config["train"]["init"] == f"run:{tmp_path / 'pre'}"
    monkeypatch.chdir("/")
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "tuned")]) == 0


# 8. One reader and one writer of each run file --------------------------------------------------------------


def test_only_runfolder_names_reads_or_writes_the_run_files():
    source = Path(runfolder.__file__).parent
    offenders = []
    for path in sorted(source.rglob("*.py")):
        if path.name == "runfolder.py":
            continue
        code = path.read_text()
        for needle in ('"result.json"', '"metrics.csv"', '"predictions"', "np.savez", "np.load("):
            if needle in code:
                offenders.append(f"{path.relative_to(source)}: {needle}")
    assert offenders == []
