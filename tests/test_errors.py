"""The error contract under attack: every user-caused failure is one line on stderr and exit 2 (no
traceback), before anything is written where possible, and nothing already written is lost or half-written.
One regression test per case found by trying cnnlab as an adversarial user (docs/errors.md)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import shlex
import shutil
import signal
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab import cli, console, runfolder
from cnnlab.data import clear_memory_cache
from tests.test_data_support import isolate, write_idx
from tests.test_study_run import TINY, write_spec

TINY_TRAIN = ["--model", "lenet5", "--data", "digits", "--epochs", "1", "--set", "data.subset=100"]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def user_error(capsys, argv: list[str], *, contains: str = "", code: int = 2) -> str:
    """Run the CLI; assert the exit code and exactly one stderr line without a traceback."""
    capsys.readouterr()
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: ") and "Traceback" not in err, err
    assert contains in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


# --- files that are not what they claim ---------------------------------------------------------------


def test_version_prints_the_package_version(capsys):
    from cnnlab.version import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cnnlab {__version__}"


def test_config_and_spec_files_that_are_not_utf8(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model:\n  name: l\xe9net\n".encode("latin-1"))
    user_error(capsys, ["train", "-c", str(latin), "--out", str(tmp_path / "r")], contains="not UTF-8")
    user_error(capsys, ["study", "run", str(latin), "--out", str(tmp_path / "s")], contains="not UTF-8")
    spec = tmp_path / "spec.yaml"
    spec.write_text("base: latin.yaml\n")
    user_error(capsys, ["study", "run", str(spec), "--out", str(tmp_path / "s")], contains="not UTF-8")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_duplicate_keys_and_a_key_given_dotted_and_nested(tmp_path, capsys):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 1\n  epochs: 2\n")
    user_error(capsys, ["train", "-c", str(twice), "--out", str(tmp_path / "r")], contains="given twice")
    both = tmp_path / "both.yaml"
    both.write_text("model.name: lenet5\nmodel:\n  name: alexnet\n")
    user_error(capsys, ["train", "-c", str(both), "--out", str(tmp_path / "r")], contains="given twice")


def test_missing_study_spec_is_named_as_such(tmp_path, capsys):
    user_error(
        capsys,
        ["study", "run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "s")],
        contains="study spec not found",
    )


def test_a_bad_augmentation_preset_fails_before_the_run_starts(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY_TRAIN, "--set", "data.augment=flip+flip", "--out", str(out)]
    user_error(capsys, args, contains="data.augment='flip+flip' repeats an operation")
    assert not out.exists()


def test_more_study_workers_than_cores_is_refused_before_any_starts(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", {"base": TINY})
    workers = str((os.cpu_count() or 1) + 1)
    args = ["study", "run", str(spec), "--out", str(tmp_path / "s"), "--workers", workers]
    user_error(capsys, args, contains=f"--workers {workers} is more than this machine's")
    assert not (tmp_path / "s").exists()


def test_an_interrupted_tune_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    from cnnlab.errors import Interrupted
    from cnnlab.study import tune

    def interrupted(*args, **kwargs):
        raise Interrupted(2)

    monkeypatch.setattr(tune, "run_tune", interrupted)
    args = ["tune", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "t"), "--trials", "3"]
    assert cli.main(args) == 130
    assert (
        capsys.readouterr().err.strip()
        == f"cnnlab: interrupted by SIGINT; resume with: cnnlab {' '.join(args)}"
    )


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.seed=18446744073709551616", "train.seed"),
        ("data.image_size=0", "data.image_size"),
        ("optim.lr=.inf", "optim.lr must be a finite number"),
        ("optim.milestones=[-1]", "optim.milestones"),
        ("train.accelerator=bogus", "train.accelerator"),
        ("train.accelerator=gpu", "needs a CUDA GPU"),
        ("train.precision=bogus", "train.precision"),
        ("train.strategy=bogus", "train.strategy"),
        ("train.num_nodes=0", "train.num_nodes"),
        ("train.devices=-3", "train.devices"),
    ],
)
def test_bad_values_are_refused_before_the_run_folder_exists(tmp_path, capsys, assignment, message):
    out = tmp_path / "run"
    user_error(capsys, ["train", *TINY_TRAIN, "--set", assignment, "--out", str(out)], contains=message)
    assert not out.exists()


def test_compile_without_a_cxx_compiler_is_refused_before_the_run_starts(tmp_path, capsys, monkeypatch):
    # torch.compile would otherwise fail at the first step with inductor's multi-line message (a failed run)
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    cpp_compiler_search.cache_clear()
    out = tmp_path / "run"
    argv = ["train", *TINY_TRAIN, "--set", "train.compile=true", "--out", str(out)]
    user_error(capsys, argv, contains="train.compile=true needs a C++ compiler")
    assert not out.exists()
    cpp_compiler_search.cache_clear()


def test_a_huge_set_value_is_shortened_in_the_message(tmp_path, capsys):
    line = user_error(capsys, ["train", "--set", "model.name=" + "x" * 100_000, "--out", str(tmp_path / "r")])
    assert len(line) < 1000


# --- output folders that cannot be written --------------------------------------------------------------


def test_out_that_is_a_file_under_a_file_or_too_long(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    user_error(capsys, ["train", *TINY_TRAIN, "--out", str(afile)], contains="is a file")
    user_error(capsys, ["train", *TINY_TRAIN, "--out", str(afile / "run")])
    user_error(capsys, ["train", *TINY_TRAIN, "--out", str(tmp_path / ("n" * 300))], contains="too long")
    assert afile.read_text() == "mine"


def test_read_only_output_is_one_line(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr("cnnlab.safeio.atomic_write_bytes", read_only)
    user_error(capsys, ["train", *TINY_TRAIN, "--out", str(tmp_path / "run")], contains="read-only")


def test_predict_out_that_is_a_folder(trained, tmp_path, capsys):
    user_error(
        capsys,
        ["predict", "--checkpoint", str(trained), "--images", "digits", "--out", str(tmp_path)],
        contains="is a folder",
    )


def test_disk_full_stops_the_run_keeps_its_checkpoint_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    real_write = runfolder.write_metrics
    calls = []

    def fills_up(folder, rows):
        calls.append(len(rows))
        if len(rows) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "metrics.csv"))
        return real_write(folder, rows)

    monkeypatch.setattr(runfolder, "write_metrics", fills_up)
    out = tmp_path / "run"
    args = ["train", *TINY_TRAIN[:-4], "--epochs", "3", "--set", "data.subset=100", "--out", str(out)]
    message = user_error(capsys, args, contains="no space left")
    assert message.endswith(f"resume with: cnnlab {' '.join(args)} --resume")  # a plain rerun starts afresh
    assert runfolder.checkpoint_path(out).is_file() and not (out / "result.json").exists()
    monkeypatch.setattr(runfolder, "write_metrics", real_write)
    assert cli.main([*args, "--resume"]) == 0
    assert runfolder.read_result(out)["epochs_run"] == 3


def test_disk_full_while_a_checkpoint_is_saved_is_resumable_not_a_failed_run(tmp_path, capsys, monkeypatch):
    # torch.save reports the full disk as a RuntimeError: it was recorded as a failed run (exit 1), or, with
    # no room left for error.log either, ended on a line without the --resume a rerun needs
    from tests.test_safeio import FullDisk

    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        return real_save(obj, FullDisk() if len(saves) == 3 else f, *args, **kwargs)  # epoch 1's first

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    args = ["train", *TINY_TRAIN[:-4], "--epochs", "2", "--set", "data.subset=100", "--out", str(out)]
    message = user_error(capsys, args, contains="the disk filled while training")
    assert message.endswith(
        f"the checkpoints are kept: free some space; resume with: cnnlab {' '.join(args)} --resume"
    )
    assert "(no space left on the device" in message and "))" not in message
    assert runfolder.checkpoint_path(out).is_file() and not (out / "result.json").exists()
    assert not (out / "error.log").exists() and not list((out / "checkpoints").glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert cli.main([*args, "--resume"]) == 0
    assert runfolder.read_result(out)["epochs_run"] == 2


def _fill_disk_while_scoring(monkeypatch, where: str) -> None:
    """Make the disk fill after training, in one of the writes that score and record the run."""
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "predictions":
        monkeypatch.setattr(runfolder, "write_predictions", lambda *args: (_ for _ in ()).throw(full))
    elif where == "result.json":
        monkeypatch.setattr(runfolder, "write_result", lambda *args: (_ for _ in ()).throw(full))
    else:  # TensorBoard's final scalars: Lightning's logger raises a ValueError from the OSError
        from torch.utils.tensorboard import SummaryWriter

        real_add = SummaryWriter.add_scalar

        def add_scalar(self, tag, *args, **kwargs):
            if tag.startswith("test_"):
                raise full
            return real_add(self, tag, *args, **kwargs)

        monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)


@pytest.mark.parametrize("where", ["predictions", "tensorboard", "result.json"])
def test_disk_full_while_scoring_keeps_the_trained_run_for_resume(tmp_path, capsys, monkeypatch, where):
    # after training, a full disk ended in a line without the --resume that keeps the trained epochs (a plain
    # rerun trains again from scratch), and in TensorBoard's logger in a ValueError traceback (exit 1)
    out = tmp_path / "run"
    args = ["train", *TINY_TRAIN, "--out", str(out)]
    with monkeypatch.context() as patched:
        _fill_disk_while_scoring(patched, where)
        message = user_error(capsys, args, contains="the disk filled while training")
    assert message.endswith(
        f"the checkpoints are kept: free some space; resume with: cnnlab {' '.join(args)} --resume"
    )
    assert "(no space left on the device" in message and "))" not in message
    assert runfolder.checkpoint_path(out).is_file() and runfolder.read_result(out) is None
    assert cli.main([*args, "--resume"]) == 0
    assert runfolder.read_result(out)["status"] == "completed"


def test_tensorboards_writer_thread_dying_on_a_full_disk_prints_no_traceback(capsys, monkeypatch):
    # TensorBoard's event writer thread died on the full disk (or a removed run folder) with "Exception in
    # thread ..." and its traceback before the command's one line; its writer raises the error itself
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # Python's, which prints

    class FullDiskRecords:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")

    def command(args):
        records = queue.Queue()
        records.put(b"an event")
        writer = _AsyncWriterThread(records, FullDiskRecords(), flush_secs=0)
        writer.start()
        writer.join()
        raise writer.exception  # as the writer's next flush does

    monkeypatch.setattr(cli, "_run_models", command)
    user_error(capsys, ["models"], contains="no space left")


@pytest.mark.parametrize("replaced_by", ["nothing", "a file"])
def test_a_run_folder_removed_while_training_stops_the_run_and_is_not_recreated(
    tmp_path, capsys, monkeypatch, replaced_by
):
    # the run went on into a folder its writes recreated, without .cnnlab-run or config.yaml, which the next
    # train then refused as "files that cnnlab did not write" (or recorded a FileNotFoundError as a failed run
    # there); a file put in its place got a line that did not say what happened
    real_write = runfolder.write_metrics
    out = tmp_path / "run"

    def then_removed(folder, rows):
        real_write(folder, rows)
        shutil.rmtree(out)  # by another process, after epoch 0's metrics
        if replaced_by == "a file":
            out.write_text("the user's file\n")

    monkeypatch.setattr(runfolder, "write_metrics", then_removed)
    args = ["train", *TINY_TRAIN[:-4], "--epochs", "2", "--set", "data.subset=100", "--out", str(out)]
    user_error(capsys, args, contains="was removed, moved or replaced while this run worked in it")
    if replaced_by == "a file":
        assert out.read_text() == "the user's file\n"
    else:
        assert not out.exists()
        monkeypatch.setattr(runfolder, "write_metrics", real_write)
        assert cli.main(args) == 0


def test_disk_full_during_a_study_stops_it_cleanly_and_it_resumes(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path / "s.yaml", {"base": {**TINY, "train.epochs": 2}, "seeds": [0, 1]})
    real_write = runfolder.write_metrics

    def fills_up(folder, rows):
        if len(rows) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real_write(folder, rows)

    monkeypatch.setattr(runfolder, "write_metrics", fills_up)
    study = tmp_path / "study"
    args = ["study", "run", str(spec), "--out", str(study), "--heartbeat", "1"]
    user_error(capsys, args, contains="no space left")
    monkeypatch.setattr(runfolder, "write_metrics", real_write)
    assert cli.main(args) == 0
    results = [runfolder.read_result(d) for d in (study / "runs").iterdir()]
    assert sorted(r["status"] for r in results) == ["completed", "completed"]


def test_a_run_folder_removed_during_a_study_stops_it_without_a_failed_run_and_it_resumes(
    tmp_path, capsys, monkeypatch
):
    # the runner recorded the lost folder as a failed run, writing a result.json into a folder it recreated
    spec = write_spec(tmp_path / "s.yaml", {"base": {**TINY, "train.epochs": 2}, "seeds": [0, 1]})
    real_write = runfolder.write_metrics
    removed: list[Path] = []

    def then_removed(folder, rows):
        real_write(folder, rows)
        if not removed:
            removed.append(Path(folder))
            shutil.rmtree(folder)  # by another process, after epoch 0's metrics

    monkeypatch.setattr(runfolder, "write_metrics", then_removed)
    study = tmp_path / "study"
    args = ["study", "run", str(spec), "--out", str(study), "--heartbeat", "1"]
    user_error(capsys, args, contains="the study stopped (nothing is recorded as failed)")
    assert not removed[0].exists()
    monkeypatch.setattr(runfolder, "write_metrics", real_write)
    assert cli.main(args) == 0
    results = [runfolder.read_result(d) for d in (study / "runs").iterdir()]
    assert sorted(r["status"] for r in results) == ["completed", "completed"]


# --- checkpoints, manifests, results ---------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_truncated_checkpoint(run_copy, capsys, fraction):
    best = runfolder.checkpoint_path(run_copy, runfolder.BEST_CHECKPOINT)
    data = best.read_bytes()
    best.write_bytes(data[: int(len(data) * fraction)])
    user_error(capsys, ["evaluate", "--checkpoint", str(best)], contains="truncated")


def test_edited_checkpoint_metadata(run_copy, capsys):
    best = runfolder.checkpoint_path(run_copy, runfolder.BEST_CHECKPOINT)
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["cnnlab"]["model"] = "resnet20_cifar"
    torch.save(checkpoint, best)
    user_error(capsys, ["evaluate", "--checkpoint", str(best)], contains="do not fit")
    del checkpoint["cnnlab"]["config"]
    torch.save(checkpoint, best)
    user_error(capsys, ["evaluate", "--checkpoint", str(best)], contains="'config' is missing")


def test_evaluate_on_data_of_another_shape(trained, capsys):
    user_error(capsys, ["evaluate", "--checkpoint", str(trained), "--data", "synthetic"], contains="3x28x28")


@pytest.mark.parametrize("damage", ["drop_key", "invalid_json", "num_classes", "classes_length"])
def test_damaged_export_manifest(trained, tmp_path, capsys, damage):
    export = tmp_path / "export"
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(export)]) == 0
    manifest_path = export / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "drop_key":
        del manifest["normalization"]
    elif damage == "num_classes":
        manifest["model_hparams"]["num_classes"] = 3
    elif damage == "classes_length":
        manifest["classes"] = ["a", "b"]
    text = "{not json" if damage == "invalid_json" else json.dumps(manifest)
    manifest_path.write_text(text)
    user_error(capsys, ["evaluate", "--checkpoint", str(export)])


def test_resume_onto_a_crafted_checkpoint_is_refused_and_nothing_changes(run_copy, tmp_path, capsys):
    from tests.test_train import _Evil

    os.environ["CNNLAB_MARKER"] = str(tmp_path / "marker")
    (run_copy / "result.json").unlink()  # an unfinished run, so --resume looks at last.ckpt
    torch.save({"state_dict": {}, "payload": _Evil()}, runfolder.checkpoint_path(run_copy))
    before = snapshot(run_copy)
    args = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--set", "data.subset=100"]
    user_error(capsys, [*args, "--out", str(run_copy), "--resume"], contains="refused to load")
    assert snapshot(run_copy) == before and not (tmp_path / "marker").exists()


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_damaged_result_json_of_the_run_counts_as_unfinished(run_copy, capsys, resume):
    # every train into the folder, --resume included, stopped on "cannot read result.json" (and said nothing
    # of what to do): only --overwrite, which retrains from scratch, got past it
    (run_copy / "result.json").write_text('{"run_id": "x", "status": "comp')
    capsys.readouterr()
    assert cli.main(["train", *TINY_TRAIN, "--out", str(run_copy), *resume]) == 0
    warning = capsys.readouterr().err
    assert "cnnlab: warning: cannot read" in warning and "counts as unfinished" in warning
    result = runfolder.read_result(run_copy)
    assert result["status"] == "completed" and result["epochs_run"] == 1


def test_resume_with_a_damaged_best_checkpoint_is_refused_before_training(run_copy, capsys):
    # the run trained its remaining epochs, then could not score best.ckpt (exit 2, no result), and every
    # --resume after that did the same
    (run_copy / "result.json").unlink()  # an unfinished run
    best = runfolder.checkpoint_path(run_copy, runfolder.BEST_CHECKPOINT)
    best.write_bytes(best.read_bytes()[:1000])
    before = snapshot(run_copy)
    args = ["train", *TINY_TRAIN, "--out", str(run_copy), "--resume"]
    message = user_error(capsys, args, contains="best.ckpt: the file is truncated")
    assert message.endswith("run without --resume to start this run afresh")
    assert snapshot(run_copy) == before


def test_overwrite_stopped_while_its_data_loads_leaves_the_other_run_as_is(run_copy, capsys, monkeypatch):
    # the lock had already marked the folder as the new run's: the other run, still whole there, was then
    # refused as "another run" by its own config, and only --overwrite (retraining it) got past
    import cnnlab.train.run as run_module
    from cnnlab.errors import Interrupted

    def interrupted(config):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(run_module, "prepare_run", interrupted)
    assert cli.main(["train", *TINY_TRAIN, "--seed", "1", "--out", str(run_copy), "--overwrite"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(["train", *TINY_TRAIN, "--out", str(run_copy)]) == 0
    assert capsys.readouterr().out.startswith("completed: ")


def test_the_resume_line_of_an_overwriting_run_does_not_overwrite_again(run_copy, capsys, monkeypatch):
    # the line said `... --overwrite --resume`, which cleared the epochs this run had trained and started over
    from cnnlab.errors import Interrupted

    real_write = runfolder.write_metrics

    def interrupted_after_epoch_0(folder, rows):
        real_write(folder, rows)
        if len(rows) == 2:
            raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(runfolder, "write_metrics", interrupted_after_epoch_0)
    args = ["train", *TINY_TRAIN[:-4], "--epochs", "3", "--set", "data.subset=100", "--out", str(run_copy)]
    capsys.readouterr()
    assert cli.main([*args, "--overwrite"]) == 130
    resume = capsys.readouterr().err.strip().split("resume with: ")[1]
    assert resume == f"cnnlab {' '.join(args)} --resume"
    first_epoch = runfolder.read_metrics(run_copy)["epoch_time_s"][0]
    monkeypatch.undo()
    assert cli.main(shlex.split(resume)[1:]) == 0
    assert runfolder.read_metrics(run_copy)["epoch_time_s"][0] == first_epoch  # not trained again


@pytest.mark.parametrize("figure", ['"fast"', "0", "-1", "1e999", "true", "null"])
def test_an_edited_probe_cache_is_measured_again(tmp_path, monkeypatch, figure):
    # a hand-edited ~/.cache/cnnlab/precision.json ended every run in a traceback (TypeError, division by 0)
    from cnnlab.train import precision

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "_memo", {})
    figures = {"batch": 8, "pairs": 3, "fp32_images_per_s": 100.0, "bf16_images_per_s": 150.0, "seconds": 0.1}
    key = f"{precision._machine_key()}|a shape"
    text = json.dumps({key: {**figures, "fp32_images_per_s": "FIGURE"}}).replace('"FIGURE"', figure)
    (tmp_path / precision.CACHE_FILE).write_text(text)
    measured = precision.ProbeResult(**figures)
    probe = precision.cached_probe("a shape", lambda: measured, precision.ProbeResult)
    assert probe == measured and probe.speedup == 1.5


@pytest.mark.parametrize("value", ['"high"', "NaN", "Infinity", "1.5"])
def test_a_result_with_a_bad_score_is_named_by_the_report(run_copy, capsys, value):
    path = run_copy / "result.json"
    path.write_text(path.read_text().replace('"val_acc": ', f'"val_acc": {value}, "was": ', 1))
    user_error(capsys, ["report", str(run_copy.parent)], contains=str(path))


def test_a_nan_loss_gives_strict_json(tmp_path):
    runfolder.write_result(tmp_path, {"status": "completed", "best": {"val_loss": float("nan")}})
    text = (tmp_path / "result.json").read_text()
    assert "NaN" not in text and json.loads(text)["best"]["val_loss"] is None


def test_corrupt_study_json(tmp_path, capsys):
    (tmp_path / "study.json").write_text("{broken")
    user_error(capsys, ["study", "status", str(tmp_path)], contains="study.json")


def test_rejected_storage_url_rewrites_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", {"base": {**TINY, "train.epochs": 1}, "seeds": [0]})
    study = tmp_path / "study"
    assert cli.main(["study", "run", str(spec), "--out", str(study), "--heartbeat", "1"]) == 0
    before = snapshot(study)
    args = ["study", "run", str(spec), "--out", str(study), "--storage", "nosuchdb://x/y"]
    user_error(capsys, args, contains="--storage")
    assert snapshot(study) == before


def test_an_ensemble_named_dot_dot(tmp_path, capsys):
    spec = write_spec(
        tmp_path / "s.yaml",
        {"base": TINY, "grid": {"optim.lr": [0.01]}, "ensembles": [{"name": "..", "members": ["0.01"]}]},
    )
    user_error(capsys, ["study", "run", str(spec), "--out", str(tmp_path / "s")], contains="folder-safe")
    assert not (tmp_path / "s").exists()


# --- data --------------------------------------------------------------------------------------------------


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (30 * i % 255, 100, 200)).save(root / name / f"{i}.png")
    return root


def test_one_class_and_a_filtered_away_class_are_refused(tmp_path, capsys, monkeypatch):
    isolate(monkeypatch, tmp_path)
    one = _folder(tmp_path / "one", {"cat": 6})
    base = ["train", "--model", "lenet5", "--epochs", "1", "--set", "data.image_size=16"]
    user_error(
        capsys, [*base, "--data", f"folder:{one}", "--out", str(tmp_path / "r")], contains="at least 2"
    )
    user_error(
        capsys,
        ["train", *TINY_TRAIN, "--set", "data.classes=[3]", "--out", str(tmp_path / "r")],
        contains="at least 2",
    )
    assert not (tmp_path / "r").exists()


def test_symlink_loops_and_links_back_to_the_root_are_skipped(tmp_path, monkeypatch):
    isolate(monkeypatch, tmp_path)
    root = _folder(tmp_path / "pets", {"cat": 4, "dog": 5})
    (root / "cat" / "self").symlink_to(root / "cat" / "self")  # a link to itself
    (root / "cat" / "loopdir").symlink_to("..")  # back to the dataset root: the dogs again, as cats
    (root / "dog2").symlink_to(root / "dog")  # a second name for a class
    from cnnlab.config import DataConfig
    from cnnlab.data import load_split

    loaded = load_split(DataConfig(name=f"folder:{root}", image_size=8, test_fraction=0.2), "train")
    test = load_split(DataConfig(name=f"folder:{root}", image_size=8, test_fraction=0.2), "test")
    assert loaded.class_names == ("cat", "dog") and len(loaded) + len(test) == 9


def test_a_damaged_decode_cache_is_rebuilt(tmp_path, monkeypatch):
    cache = isolate(monkeypatch, tmp_path)
    root = _folder(tmp_path / "pets", {"cat": 4, "dog": 4})
    from cnnlab.config import DataConfig
    from cnnlab.data import load_split

    data = DataConfig(name=f"folder:{root}", image_size=8)
    first = load_split(data, "train")
    for cache_file in (cache / "folders").glob("*.pt"):
        cache_file.write_bytes(cache_file.read_bytes()[:100])
    clear_memory_cache()
    assert torch.equal(load_split(data, "train").images, first.images)
    for cache_file in (cache / "folders").glob("*.pt"):
        payload = torch.load(cache_file, weights_only=True)
        payload["images"] = payload["images"][:2]  # fewer rows than files
        torch.save(payload, cache_file)
    clear_memory_cache()
    assert torch.equal(load_split(data, "train").images, first.images)


def test_undecodable_and_newline_file_names(tmp_path, capsys, monkeypatch):
    isolate(monkeypatch, tmp_path)
    root = _folder(tmp_path / "pets", {"cat": 12, "dog": 12})
    (root / "cat" / "bad\nname.png").write_bytes(b"not a png")
    with open(os.fsencode(root / "dog") + b"/\xff\xfe.png", "wb") as handle:
        handle.write(b"also not a png")
    base = ["train", "--model", "lenet5", "--epochs", "1", "--set", "data.image_size=16"]
    out = tmp_path / "run"
    line = user_error(capsys, [*base, "--data", f"folder:{root}", "--out", str(out)], contains="bad image")
    assert "bad\\nname.png" in line
    assert (
        cli.main([*base, "--data", f"folder:{root}", "--set", "data.bad_images=skip", "--out", str(out)]) == 0
    )
    assert (
        "\\xff" in (out / "bad_images.txt").read_text()
        or "\udcff" not in (out / "bad_images.txt").read_text()
    )
    assert cli.main(["report", str(out)]) == 0
    images = tmp_path / "unlabeled"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(os.fsencode(images) + b"/\xff.png")
    preds = tmp_path / "preds.csv"
    assert cli.main(["predict", "--checkpoint", str(out), "--images", str(images), "--out", str(preds)]) == 0
    assert preds.read_text().count("\n") == 2


def test_a_garbage_idx_file_is_named(tmp_path, capsys, monkeypatch):
    isolate(monkeypatch, tmp_path)
    data = tmp_path / "fm"
    write_idx(
        data / "train-images-idx3-ubyte", torch.zeros(4, 28, 28, dtype=torch.uint8).numpy(), compress=False
    )
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(os.urandom(64))
    args = ["train", "--model", "lenet5", "--data", "fashion-mnist", "--data-dir", str(data)]
    line = user_error(capsys, [*args, "--out", str(tmp_path / "r")], contains="IDX file")
    assert "AssertionError" not in line


def test_a_missing_weights_file_stops_a_study_before_any_run(tmp_path, capsys):
    raw = {"base": {**TINY, "train.init": f"file:{tmp_path / 'missing.pth'}"}, "seeds": [0, 1]}
    spec = write_spec(tmp_path / "s.yaml", raw)
    study = tmp_path / "study"
    user_error(capsys, ["study", "run", str(spec), "--out", str(study)], contains="missing.pth' not found")
    assert not study.exists()


def test_cnnlab_data_offline_does_not_promise_a_download(tmp_path, capsys, monkeypatch):
    isolate(monkeypatch, tmp_path)
    assert cli.main(["data"]) == 0
    listing = capsys.readouterr().out
    assert "downloaded on first use" not in listing and "CNNLAB_OFFLINE is set" in listing


def test_the_program_exits_with_mains_code_and_skips_the_final_collection(monkeypatch):
    """`cnnlab` and `python -m cnnlab` run `run_program`: main's exit code, after `gc.freeze()` (the
    interpreter's last garbage collection over torch's objects cost ~2 s of every exit)."""
    import gc
    import subprocess
    import sys

    import tomllib

    frozen = []
    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    with pytest.raises(SystemExit) as done:
        cli.run_program()
    assert done.value.code == 3 and frozen == [True]
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts == {"cnnlab": "cnnlab.console:run"}  # which imports and runs cli.run_program
    shown = subprocess.run(
        [sys.executable, "-m", "cnnlab", "train", "--epochs", "x"], capture_output=True, text=True
    )
    assert shown.returncode == 2 and shown.stderr.count("\n") == 1 and "--epochs" in shown.stderr


# Python reading the command line's modules when Ctrl-C comes (an import hook raises it, as the signal would)
CTRL_C_WHILE_IMPORTING = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
from cnnlab.console import run
run()
"""


@pytest.mark.parametrize("module", ["cnnlab.cli", "yaml", "cnnlab.config"])  # what `cnnlab` loads first
def test_ctrl_c_while_the_program_starts_is_one_line_and_exit_130(module):
    """A Ctrl-C in the first tenth of a second, before cnnlab's signal handling, printed a traceback of the
    import machinery (and the process died of SIGINT)."""
    import subprocess
    import sys

    started = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING, module, "models"], capture_output=True, text=True
    )
    assert started.returncode == 130 and started.stderr == "cnnlab: interrupted by SIGINT\n", started.stderr


def test_ctrl_c_before_mains_own_handling_is_one_line_and_exit_130(monkeypatch, capsys):
    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", ctrl_c)
    with pytest.raises(SystemExit) as done:
        try:
            console.run()
        except KeyboardInterrupt:  # not left to end the test session
            pytest.fail("the program let the KeyboardInterrupt through")
    assert done.value.code == 130 and capsys.readouterr().err == "cnnlab: interrupted by SIGINT\n"


def test_another_runs_folder_names_the_settings_that_differ(run_copy, capsys):
    # e.g. a resume with --devices given this time: the message says which setting makes it another run
    before = snapshot(run_copy)
    argv = ["train", *TINY_TRAIN, "--devices", "1", "--resume", "--out", str(run_copy)]
    line = user_error(capsys, argv, contains="holds another run")
    assert "train.devices is '1' here, 'auto' there; use another --out" in line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("value", ["y", "offline", "2"])
def test_offline_value_that_is_neither_yes_nor_no_is_refused(monkeypatch, tmp_path, capsys, value):
    # CNNLAB_OFFLINE=y once meant "downloads allowed": the first use of a missing dataset went online
    isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("CNNLAB_OFFLINE", value)
    user_error(capsys, ["data"], contains=f"$CNNLAB_OFFLINE='{value}' is not understood; set it to 1")
    monkeypatch.setenv("CNNLAB_OFFLINE", " Off ")
    assert cli.main(["data"]) == 0


def test_relative_cache_is_named_absolute(monkeypatch, tmp_path):
    from cnnlab.data import locations

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNLAB_CACHE", "cache")
    assert locations.cache_root() == tmp_path / "cache"
    assert dict(locations.search_roots(None))[tmp_path / "cache" / "datasets"] == "download cache"


def test_a_quoted_tilde_in_a_path_argument_means_the_home_folder(tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert cli.main(["train", *TINY_TRAIN, "--out", "~/run"]) == 0
    assert (home / "run" / "result.json").is_file() and not (work / "~").exists()
    assert cli.main(["evaluate", "--checkpoint", "~/run"]) == 0


def test_train_refuses_an_out_whose_path_is_not_utf8_before_training(tmp_path, capsys):
    out = tmp_path / os.fsdecode(b"run\xfe")  # a name TensorBoard cannot write its logs under
    user_error(capsys, ["train", *TINY_TRAIN, "--out", str(out)], contains="is not UTF-8 text")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, named",
    [
        (["train", *TINY_TRAIN, "--out", ""], "--out"),
        (["study", "run", "studies/quickstart.yaml", "--out", ""], "--out"),
        (["report", ""], "dir"),
        (["predict", "--checkpoint", "", "--images", "x", "--out", "p.csv"], "--checkpoint"),
    ],
)
def test_an_empty_path_argument_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, argv, named
):
    """`--out "$OUT"` with OUT unset: "" would be the working directory, the user's own files."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert (
        capsys.readouterr().err
        == f"cnnlab: error: {named} is empty; give a file or folder path (. for this folder)\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "no", ""])
def test_cnnlab_quiet_0_prints_the_epoch_lines(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("CNNLAB_QUIET", value)
    assert cli.main(["train", *TINY_TRAIN, "--out", str(tmp_path / "run")]) == 0
    assert "Epoch: 0, train" in capsys.readouterr().out


def test_a_cnnlab_quiet_that_is_neither_yes_nor_no_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNLAB_QUIET", "please")
    out = tmp_path / "run"
    user_error(
        capsys, ["train", *TINY_TRAIN, "--out", str(out)], contains="$CNNLAB_QUIET='please' is not understood"
    )
    assert not out.exists()


def test_a_name_in_the_wrong_case_gets_a_suggestion_and_a_file_is_not_called_missing(tmp_path, capsys):
    user_error(capsys, ["data", "DIGITS"], contains="unknown dataset 'DIGITS' (did you mean digits?)")
    a_file = tmp_path / "photos.zip"
    a_file.write_bytes(b"PK")
    user_error(capsys, ["data", f"folder:{a_file}"], contains=f"folder {a_file} is a file, not a folder")
