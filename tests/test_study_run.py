"""Studies end to end on digits with tiny runs: resume after a kill, two processes on one storage, select,
ensembles from saved predictions, status, and smoke runs of the shipped quickstart and transfer specs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from cnnlab import cli
from cnnlab.study import runner
from cnnlab.study.queue import RunQueue
from cnnlab.study.runner import WorkerOptions, default_storage, join_as_worker, plan_study, run_study
from cnnlab.study.status import study_status
from tests.worker_output import run_lines

STUDIES = Path(__file__).resolve().parents[1] / "studies"
TINY = {
    "model.name": "lenet5",
    "model.activation": "relu",
    "data.name": "digits",
    "data.subset": 150,
    "data.batch_size": 32,
    "optim.optimizer": "adam",
    "optim.lr": 0.01,
    "train.epochs": 2,
}
GRID_2X2_2SEEDS_3FOLDS = {
    "base": TINY,
    "grid": {"optim.lr": [0.003, 0.02], "data.batch_size": [16, 32]},
    "seeds": [0, 1],
    "cv": {"folds": 3},
    "ensembles": [
        {"name": "mean", "members": ["0.003", "0.02"], "method": "mean"},
        {"name": "vote", "members": ["0.003", "0.02"], "method": "vote"},
    ],
}
FAST = WorkerOptions(heartbeat_s=1, poll_s=0.1)


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_metrics(study_dir: Path) -> dict:
    """(configuration, seed, fold) → (best val acc, test acc), from every run's result.json."""
    table = {}
    for path in sorted(study_dir.glob("runs/*/result.json")):
        result = json.loads(path.read_text())
        tags = result["tags"]
        key = (tags["configuration"], tags["seed"], tags["fold"], tags["role"])
        table[key] = (result["status"], result["best"]["val_acc"], (result["test"] or {}).get("acc"))
    return table


def cnnlab_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_QUIET": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def read_until(process: subprocess.Popen, wanted, lines: list[str], timeout: float = 120) -> str:
    """Read the process's output line by line until `wanted(line, lines)` holds; returns that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before the expected line:\n{''.join(lines)}")
        lines.append(line)
        if wanted(line, lines):
            return line
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 2×2 grid × 2 seeds × 3 folds study run without interruption (24 runs)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    spec = write_spec(root / "grid.yaml", GRID_2X2_2SEEDS_3FOLDS)
    outcome = run_study(spec, root / "study", options=FAST, log=lambda line: None)
    assert outcome.counts["completed"] == 24 and sum(outcome.counts.values()) == 24
    return root / "study"


def test_killed_study_continues_with_only_its_unfinished_runs(tmp_path, uninterrupted, monkeypatch):
    spec = write_spec(tmp_path / "grid.yaml", GRID_2X2_2SEEDS_3FOLDS)
    study_dir = tmp_path / "study"
    process = cnnlab_process("study", "run", str(spec), "--out", str(study_dir), "--heartbeat", "1")
    lines: list[str] = []
    read_until(
        process, lambda line, seen: sum(" completed " in s for s in seen) >= 6 and " start " in line, lines
    )
    process.send_signal(signal.SIGKILL)  # mid-run: it has just started its seventh run
    process.wait(timeout=30)
    finished = sum(
        json.loads(p.read_text())["status"] == "completed" for p in study_dir.glob("runs/*/result.json")
    )
    assert 6 <= finished < 24

    status = study_status(study_dir)
    assert status.counts["completed"] == finished and sum(status.counts.values()) == 24

    import cnnlab.study.runner

    trained = []
    real_fit = cnnlab.study.runner.fit

    def counting_fit(config, out_dir, **kwargs):
        trained.append(Path(out_dir).name)
        return real_fit(config, out_dir, **kwargs)

    monkeypatch.setattr(cnnlab.study.runner, "fit", counting_fit)  # the fit the runner calls
    outcome = run_study(spec, study_dir, options=FAST, log=lambda line: None)
    assert len(trained) == 24 - finished, "only the unfinished runs execute"
    assert outcome.trained == 24 - finished and outcome.counts["completed"] == 24
    assert run_metrics(study_dir) == run_metrics(uninterrupted), "same table as an uninterrupted study"


def test_ensemble_accuracy_equals_a_direct_computation_from_member_probabilities(uninterrupted):
    for method in ("mean", "vote"):
        result = json.loads((uninterrupted / "ensembles" / method / "result.json").read_text())
        assert result["kind"] == "ensemble" and result["method"] == method and len(result["members"]) == 24
        members = [
            np.load(uninterrupted / "runs" / run_id / "predictions" / "test.npz")
            for run_id in result["members"]
        ]
        order = [np.argsort(m["indices"]) for m in members]
        probs = np.stack([m["probs"][o] for m, o in zip(members, order)])
        labels = members[0]["labels"][order[0]]
        if method == "mean":
            predicted = probs.mean(axis=0).argmax(axis=1)
        else:
            votes = np.stack([(probs.argmax(axis=2) == k).sum(axis=0) for k in range(probs.shape[2])], axis=1)
            predicted = (votes + 0.5 * probs.mean(axis=0)).argmax(axis=1)
        assert result["test"]["acc"] == pytest.approx(float(np.mean(predicted == labels)), abs=1e-12)
        assert result["val"] is None  # under k-fold the members validated on different folds
        saved = np.load(uninterrupted / "ensembles" / method / "predictions" / "test.npz")
        assert saved["probs"].shape == probs.shape[1:]


def test_status_command_counts_runs(uninterrupted, capsys):
    assert cli.main(["study", "status", str(uninterrupted)]) == 0
    counts = "24 runs: 24 completed, 0 running, 0 interrupted, 0 failed, 0 diverged, 0 pending"
    assert counts in capsys.readouterr().out
    assert cli.main(["study", "status", str(uninterrupted.parent)]) == 2
    assert "not a study folder" in capsys.readouterr().err


def test_status_reads_the_folder_without_loading_torch_or_the_training_stack(uninterrupted):
    # status took the tune folder's file names from study.checks, which loads data, models and Lightning:
    # 10 s before the first line on a 2-core machine, for reading study.json and the queue
    heavy = ("torch", "lightning", "torchvision", "cnnlab.train", "cnnlab.models", "cnnlab.data")
    code = (
        "import sys\nfrom cnnlab.cli import main\n"
        f"assert main(['study', 'status', {str(uninterrupted)!r}]) == 0\n"
        f"print('loaded:', sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "24 completed" in done.stdout and done.stdout.strip().splitlines()[-1] == "loaded: []"


def test_two_processes_share_one_storage_and_retry_a_killed_workers_run(tmp_path):
    raw = {
        "base": {**TINY, "data.subset": 300, "train.epochs": 3},
        "grid": {"optim.lr": [0.003, 0.01, 0.03]},
        "seeds": [0, 1],
    }
    spec = write_spec(tmp_path / "pair.yaml", raw)
    study_dir = tmp_path / "study"
    first = cnnlab_process("study", "run", str(spec), "--out", str(study_dir), "--heartbeat", "1")
    second = cnnlab_process("study", "run", str(spec), "--out", str(study_dir), "--heartbeat", "1")
    first_lines: list[str] = []
    killed_line = read_until(first, lambda line, seen: bool(run_lines(line, "start")), first_lines)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    (killed_run,) = run_lines(killed_line, "start")
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output
    lines = first_lines + output.splitlines()
    completed = run_lines("\n".join(lines), "completed")
    assert sorted(completed) == sorted(set(completed)) and len(completed) == 6, (
        "every run completed exactly once"
    )
    assert killed_run in completed and f"start    {killed_run}" in output, (
        "the killed worker's run was retried"
    )
    assert study_status(study_dir).counts["completed"] == 6


def test_select_touches_the_test_split_only_in_the_retrained_run(tmp_path, monkeypatch):
    import cnnlab.train.run as run_module

    raw = {
        "base": TINY,
        "grid": {"optim.lr": [0.0001, 0.02]},
        "seeds": [0, 1],
        "cv": {"folds": 2},
        "select": {"metric": "best.val_acc"},
    }
    spec = write_spec(tmp_path / "select.yaml", raw)
    test_loads = []
    real_load_split = run_module.load_split

    def spying_load_split(data, split):
        if split == "test":
            test_loads.append((data.folds, data.val_fraction, data.splits_file))
        return real_load_split(data, split)

    monkeypatch.setattr(run_module, "load_split", spying_load_split)
    run_study(spec, tmp_path / "study", options=FAST, log=lambda line: None)
    results = [json.loads(p.read_text()) for p in (tmp_path / "study").glob("runs/*/result.json")]
    members = [r for r in results if r["tags"]["role"] == "member"]
    finals = [r for r in results if r["tags"]["role"] == "final"]
    assert len(members) == 8 and len(finals) == 1
    # only the retrained run touches the test split (checked before training, scored after: one memoised read)
    assert set(test_loads) == {(None, 0.0, None)}, "the test split is loaded by the retrained run only"
    assert all(r["test"] is None for r in members) and finals[0]["test"]["acc"] is not None
    assert [p.parent.parent.name for p in (tmp_path / "study").glob("runs/*/predictions/test.npz")] == [
        finals[0]["run_id"]
    ]
    means = {}
    for label in ("optim.lr=0.0001", "optim.lr=0.02"):
        means[label] = np.mean([r["best"]["val_acc"] for r in members if r["tags"]["configuration"] == label])
    best = max(means, key=means.get)
    assert finals[0]["tags"]["configuration"] == best and finals[0]["config"]["optim"]["lr"] == float(
        best.split("=")[1]
    )
    assert finals[0]["config"]["data"]["folds"] is None and finals[0]["config"]["data"]["val_fraction"] == 0.0
    selection = json.loads((tmp_path / "study" / "select.json").read_text())
    assert selection["chosen"] == best and selection["final_runs"] == {"0": finals[0]["run_id"]}


def test_tune_two_processes_share_storage_and_trial_budget(tmp_path):
    raw = {
        "base": {**TINY, "train.epochs": 1},
        "cv": {"folds": 3},
        "pruner": "none",
        "space": {"optim.lr": {"low": 0.001, "high": 0.05, "log": True}, "data.batch_size": [16, 32]},
    }
    spec = write_spec(tmp_path / "tune.yaml", raw)
    out = tmp_path / "tune"
    processes = [
        cnnlab_process("tune", str(spec), "--out", str(out), "--trials", "6", "--heartbeat", "1")
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=240)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    summary = json.loads((out / "tune.json").read_text())
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert len(complete) == 6, "the budget counts over both processes, exactly (each alone would run 6)"
    for trial in complete:  # objective = mean 3-fold validation accuracy of the trial's runs
        folds = [
            json.loads(p.read_text())
            for p in out.glob("runs/*/result.json")
            if json.loads(p.read_text())["tags"]["trial"] == trial["number"]
        ]
        if len(folds) == 3:  # (a trial whose params repeat an earlier one reuses that trial's runs)
            assert trial["value"] == pytest.approx(np.mean([f["best"]["val_acc"] for f in folds]))
    best = max(complete, key=lambda t: t["value"])
    assert summary["best"]["value"] == best["value"]
    best_config = yaml.safe_load((out / "best.yaml").read_text())
    assert best_config["optim"]["lr"] == best["params"]["optim.lr"]
    assert best_config["data"]["batch_size"] == best["params"]["data.batch_size"]
    assert any("best of" in output for output in outputs)


def test_quickstart_smoke_prints_table_and_report_path(tmp_path, capsys):
    code = cli.main(
        [
            "study",
            "run",
            str(STUDIES / "quickstart.yaml"),
            "--out",
            str(tmp_path / "q"),
            "--set",
            "base.train.epochs=1",
            "--set",
            "base.data.subset=100",
            "--set",
            "base.data.test_subset=40",
            "--heartbeat",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert ": 6 completed (" in out and "ensemble all-nets (mean of 6 runs)" in out
    assert f"report: {tmp_path / 'q' / 'report.html'}" in out and (tmp_path / "q" / "report.html").is_file()
    assert "net=resnet20" in out  # the results table lists the configurations


def test_transfer_smoke_chains_pretraining_into_fine_tuning(tmp_path):
    overrides = [
        "base.data.name=digits",
        "seeds=[0]",
        "stages.pretrain.base.data.per_class=10",
        "stages.pretrain.base.train.epochs=1",
        "stages.transfer.base.data.per_class=10",
        "stages.transfer.base.train.epochs=1",
    ]
    outcome = run_study(
        STUDIES / "transfer.yaml", tmp_path / "t", options=FAST, overrides=overrides, log=lambda line: None
    )
    assert outcome.counts["completed"] == 8 and sum(outcome.counts.values()) == 8
    results = [json.loads(p.read_text()) for p in (tmp_path / "t").glob("runs/*/result.json")]
    pretrain = {r["run_id"]: r for r in results if r["tags"]["stage"] == "pretrain"}
    for result in results:
        if result["tags"]["stage"] == "transfer" and "recipe=scratch" not in result["tags"]["configuration"]:
            source = Path(result["config"]["train"]["init"].removeprefix("run:")).name
            assert pretrain[source]["config"]["model"]["name"] == result["config"]["model"]["name"]
            assert result["class_names"] == ["5", "6", "7", "8", "9"]
    from cnnlab.report import write_report

    paths = write_report(tmp_path / "t")
    report = paths.markdown.read_text()
    headline = report.index("## Results: stage transfer")
    pretraining = report.index("## Stage pretrain (feeds transfer)")
    starred = [line for line in report.splitlines() if line.startswith("| ★")]
    assert headline < pretraining and len(starred) == 1
    assert report.index(starred[0]) < pretraining, "the ★ best row is the transfer stage's"
    assert "pretrain" not in paths.table and "recipe=" in paths.table


def test_workers_option_runs_every_run_once_across_local_processes(tmp_path):
    raw = {"base": {**TINY, "train.epochs": 1}, "grid": {"optim.lr": [0.003, 0.01]}, "seeds": [0, 1]}
    spec = write_spec(tmp_path / "workers.yaml", raw)
    process = cnnlab_process(
        "study", "run", str(spec), "--out", str(tmp_path / "w"), "--workers", "2", "--heartbeat", "1"
    )
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    completed = run_lines(output, "completed")
    assert len(completed) == 4 and len(set(completed)) == 4, output
    assert ": 4 completed (" in output and (tmp_path / "w" / "report.html").is_file()


def test_a_worker_started_before_its_planner_waits_for_it_and_creates_nothing(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY, "seeds": [0, 1]})
    study = tmp_path / "study"
    plan = plan_study(spec, study)
    lines: list[str] = []
    joined: list = []

    def join() -> None:
        try:
            joined.append(join_as_worker(plan, spec, default_storage(study), FAST, log=lines.append))
        except Exception as error:  # shown by the assertion below, not lost in a thread's traceback
            joined.append(error)

    worker = threading.Thread(target=join)
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive() and not joined and not study.exists(), "the worker waits and writes nothing"
    assert len(lines) == 1 and lines[0].startswith("waiting up to 10 min for a `cnnlab study run` without")
    planned = time.monotonic()
    outcome = run_study(spec, study, options=FAST, log=lambda line: None)
    assert time.monotonic() - planned < 50, "the planner did not wait for a marker (60 s) from the worker"
    worker.join(timeout=30)
    assert len(joined) == 1 and isinstance(joined[0], RunQueue), joined or "the worker still waits"
    (queue,) = joined
    assert not queue.created and outcome.counts["completed"] == 2 and queue.drained(2)
    assert len(lines) == 1, "said once"


def test_a_waiting_worker_stops_when_a_planner_of_another_spec_takes_the_folder(tmp_path, capsys):
    mine = write_spec(tmp_path / "mine.yaml", {"base": TINY, "seeds": [0]})
    theirs = write_spec(tmp_path / "theirs.yaml", {"base": TINY, "seeds": [1]})
    study = tmp_path / "study"
    worker = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "study", "run", str(mine), "--out", str(study), "--worker-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CNNLAB_QUIET": "1"},
    )
    assert worker.stdout.readline().startswith("waiting up to 10 min for a `cnnlab study run` without")
    assert cli.main(["study", "run", str(theirs), "--out", str(study)]) == 0
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 2, out + err
    assert err.strip().startswith(f"cnnlab: error: study folder {str(study)!r} holds study"), err
    assert err.strip().endswith("a --worker-only process joins with the spec the folder was started with")
    assert len(err.strip().splitlines()) == 1


def test_a_worker_whose_planner_never_comes_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cnnlab.study.runner.QUEUE_WAIT_S", 1.0)
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY, "seeds": [0]})
    study = tmp_path / "study"
    assert cli.main(["study", "run", str(spec), "--out", str(study), "--worker-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error: no `cnnlab study run` without --worker-only came to plan study")
    assert "within 1 s; start one (the same spec, --out and --storage) first" in err and "\n" not in err
    assert not study.exists()


def flaky_claims(monkeypatch, failures: int | None) -> None:
    """RunQueue.claim fails as a dropped database connection does, `failures` times (None: always)."""
    real_claim = RunQueue.claim
    count = {"failed": 0}

    def claim(self, claimable):
        if failures is None or count["failed"] < failures:
            count["failed"] += 1
            raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")
        return real_claim(self, claimable)

    monkeypatch.setattr(RunQueue, "claim", claim)


def test_a_worker_whose_queue_database_fails_a_while_says_so_and_goes_on(tmp_path, monkeypatch):
    flaky_claims(monkeypatch, failures=2)
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY, "seeds": [0, 1]})
    lines: list[str] = []
    outcome = run_study(spec, tmp_path / "study", options=FAST, log=lines.append)
    assert outcome.counts["completed"] == 2 and outcome.trained == 2
    failed = [line for line in lines if line.startswith("the queue's database sqlite:///")]
    assert len(failed) == 2, lines  # said once as it failed, once as it came back
    assert failed[0].endswith("failed (server closed the connection unexpectedly); trying again")
    assert failed[1].endswith("answers again")


def test_a_worker_whose_queue_database_stays_down_stops_with_one_line(tmp_path, monkeypatch, capsys):
    flaky_claims(monkeypatch, failures=None)
    monkeypatch.setattr("cnnlab.study.runner.STORAGE_OUTAGE_S", 0.0)
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY, "seeds": [0]})
    assert cli.main(["study", "run", str(spec), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnlab: error: the queue's database sqlite:///") and "\n" not in err, err
    assert "every run keeps its checkpoints: run the same command again once the database is back" in err


def test_a_queue_database_failing_outside_the_work_loop_is_one_line(tmp_path, monkeypatch, capsys):
    """After its runs, a planner reads the queue for its report: a database lost then is one line, exit 2."""
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY, "seeds": [0]})
    real_work = runner.work

    def states(self):
        raise optuna.exceptions.StorageInternalError("server closed the connection unexpectedly\nmore")

    def work_then_lose_the_database(*args, **kwargs):
        done = real_work(*args, **kwargs)
        monkeypatch.setattr(RunQueue, "states", states)
        return done

    monkeypatch.setattr(runner, "work", work_then_lose_the_database)
    assert cli.main(["study", "run", str(spec), "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cnnlab: error: the queue's database failed (server closed the connection unexpectedly); every run "
        "keeps its checkpoints: run the same command again once the database answers"
    )


def test_worker_flags_left_out_take_the_worker_options_defaults(tmp_path, capsys, monkeypatch):
    """`study run` (and `--worker-only`) without --heartbeat / --max-attempts passes WorkerOptions' defaults,
    and the help text states them."""
    seen = []

    def fake_run_study(spec, out, **kwargs):
        seen.append(kwargs["options"])
        raise SystemExit(0)

    monkeypatch.setattr("cnnlab.study.runner.run_study", fake_run_study)
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY, "seeds": [0]})
    for extra in ([], ["--worker-only"]):
        with pytest.raises(SystemExit):
            cli.main(["study", "run", str(spec), "--out", str(tmp_path / "s"), *extra])
    assert seen == [WorkerOptions(), WorkerOptions()]
    assert cli.main(["study", "run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {WorkerOptions().heartbeat_s})" in text
    assert f"(default {WorkerOptions().max_attempts};" in text


def tune_trials(out: Path) -> list:
    """Every trial in the tune folder's storage, in order."""
    url = f"sqlite:///{out / 'tune.db'}"
    (summary,) = optuna.get_all_study_summaries(url)
    return optuna.load_study(study_name=summary.study_name, storage=url).trials


def test_an_interrupted_tune_trial_is_retried_first_and_resumes_its_runs(tmp_path, monkeypatch):
    from cnnlab.errors import Interrupted
    from cnnlab.study import tune

    raw = {
        "base": {**TINY, "train.epochs": 1},
        "cv": {"folds": 2},
        "pruner": "none",
        "space": {"optim.lr": {"low": 0.001, "high": 0.05, "log": True}},
    }
    spec, out = write_spec(tmp_path / "tune.yaml", raw), tmp_path / "tune"
    real_fit, fits = tune.fit, []

    def fit_interrupted_in_fold_1(config, run_dir, **kwargs):
        fits.append(run_dir.name)
        if len(fits) == 2:
            raise Interrupted(signal.SIGINT)
        return real_fit(config, run_dir, **kwargs)

    monkeypatch.setattr(tune, "fit", fit_interrupted_in_fold_1)
    with pytest.raises(Interrupted):
        tune.run_tune(spec, out, trials=2, log=lambda line: None)
    interrupted = tune_trials(out)[0]
    assert interrupted.state == optuna.trial.TrialState.FAIL and "SIGINT" in interrupted.user_attrs["reason"]
    tune.run_tune(spec, out, trials=2, log=lambda line: None)
    trials = tune_trials(out)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"], "none left running"
    assert trials[1].params == interrupted.params, "the interrupted params are taken first"
    assert fits[2:4] == fits[0:2], "the retry reuses fold 0's run and resumes fold 1's"


@pytest.mark.parametrize(
    ("made", "said"),
    [
        ({"tune.json": "{}", "tune.db": ""}, "is a `cnnlab tune` folder, not a study folder"),
        ({".cnnlab-run": "", "result.json": "{}"}, "is one run's folder, not a study folder"),
        (None, "no such folder"),
    ],
)
def test_study_status_of_a_tune_a_run_or_no_folder_says_what_it_is(tmp_path, capsys, made, said):
    folder = tmp_path / "out"
    if made is not None:
        folder.mkdir()
        for name, text in made.items():
            (folder / name).write_text(text)
    assert cli.main(["study", "status", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: ") and said in err and len(err.strip().splitlines()) == 1
