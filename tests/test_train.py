"""One run: artefacts, determinism, divergence, transfer, evaluate/predict/export, user errors."""

from __future__ import annotations

import csv
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from onnx.reference import ReferenceEvaluator  # the onnx extra, part of the dev extra

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.cli import main
from cnnlab.data import load_split
from cnnlab.errors import ConfigError
from cnnlab.train import evaluate_checkpoint, fit, load_model
from cnnlab.train.checkpoint import model_state
from cnnlab.train.inference import predict_probs
from cnnlab.train.resolve import resolve_config


def tiny(**dotted) -> cfg.RunConfig:
    """lenet5 on a digits subset: a run that takes a second or two on one core."""
    base = {
        "model.name": "lenet5",
        "model.activation": "relu",
        "data.name": "digits",
        "data.subset": 400,
        "data.batch_size": 32,
        "optim.lr": 0.05,
        "train.epochs": 2,
    }
    return cfg.from_dict({**base, **dotted})


def read_metrics(path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return fit(tiny(), out)


def test_run_directory_has_every_artefact(tiny_run):
    out = tiny_run.out_dir
    assert tiny_run.status == "completed"
    for name in (
        "config.yaml",
        "result.json",
        "metrics.csv",
        "splits.json",
        "predictions/val.npz",
        "predictions/test.npz",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    rows = read_metrics(out / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"}
    summary = safeio.read_json(out / "result.json")
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert summary["params"] == 61_706 and summary["gflops"] > 0
    assert 0.0 <= summary["test"]["acc"] <= 1.0 and set(summary["per_class_accuracy"]) == set("0123456789")
    assert summary["provenance"]["versions"]["torch"] == torch.__version__
    assert summary["train_images_per_s"] > 0
    assert cfg.load_yaml(out / "config.yaml")["data"]["image_size"] == 28


def test_saved_test_probabilities_match_reported_accuracy(tiny_run):
    saved = np.load(tiny_run.out_dir / "predictions" / "test.npz")
    accuracy = float((saved["probs"].argmax(1) == saved["labels"]).mean())
    assert accuracy == pytest.approx(tiny_run.summary["test"]["acc"])
    assert np.allclose(saved["probs"].sum(1), 1, atol=1e-4)


def test_completed_run_is_not_trained_again(tiny_run):
    again = fit(tiny(), tiny_run.out_dir)
    assert again.summary == tiny_run.summary


def test_same_config_and_seed_give_bitwise_equal_weights(tiny_run, tmp_path):
    twin = fit(tiny(), tmp_path / "twin")
    first = model_state(safeio.load_checkpoint(tiny_run.out_dir / "checkpoints" / "last.ckpt"))
    second = model_state(safeio.load_checkpoint(twin.out_dir / "checkpoints" / "last.ckpt"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    timing = "epoch_time_s"
    strip = [
        {k: v for k, v in row.items() if k != timing}
        for row in read_metrics(tiny_run.out_dir / "metrics.csv")
    ]
    assert strip == [
        {k: v for k, v in row.items() if k != timing} for row in read_metrics(twin.out_dir / "metrics.csv")
    ]


def test_non_finite_loss_marks_run_diverged_and_keeps_best_checkpoint(tmp_path, monkeypatch):
    from cnnlab.train import system

    original = system.ClassifierSystem.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch >= 1 else loss

    monkeypatch.setattr(system.ClassifierSystem, "training_step", poisoned)
    result = fit(tiny(**{"train.epochs": 3}), tmp_path / "nan")
    assert result.status == "diverged" and "non-finite" in result.summary["reason"]
    assert result.summary["epochs_run"] == 1
    trained = load_model(tmp_path / "nan" / "checkpoints" / "best.ckpt")
    assert all(torch.isfinite(p).all() for p in trained.model.parameters())


def test_huge_learning_rate_exits_with_diverged_code(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "lenet5",
            "--set",
            "model.activation=relu",
            "--set",
            "data.subset=200",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--lr",
            "1e6",
            "--out",
            str(tmp_path / "boom"),
        ]
    )
    assert code == 3
    assert safeio.read_json(tmp_path / "boom" / "result.json")["status"] == "diverged"
    err = capsys.readouterr().err
    assert "diverged" in err and "lower optim.lr" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet20_cifarr"], "unknown model 'resnet20_cifarr' (did you mean resnet20_cifar"),
        (["--data", "digitz"], "digitz"),
        (["--set", "optim.lrr=0.1"], "unknown config key 'optim.lrr' (did you mean optim.lr"),
        (["--set", "train.epochs=many"], "train.epochs must be an integer, got 'many'"),
        (["--optimizer", "adamx"], "optim.optimizer='adamx' is not allowed"),
        (
            [
                "--model",
                "alexnet",
                "--set",
                "model.stem=imagenet",
                "--data",
                "digits",
                "--set",
                "data.subset=100",
            ],
            "'alexnet' (model.stem=imagenet) cannot take the run's 1x28x28 input",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CNNLAB_MARKER'], 'w').write('pwned')",))


def test_evaluate_refuses_code_running_checkpoint(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "marker"
    monkeypatch.setenv("CNNLAB_MARKER", str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert main(["evaluate", "--checkpoint", str(evil)]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_evaluate_prints_json_metrics_equal_to_the_run(tiny_run, capsys):
    assert main(["evaluate", "--checkpoint", str(tiny_run.out_dir / "checkpoints" / "best.ckpt")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["acc"] == pytest.approx(tiny_run.summary["test"]["acc"])
    assert metrics["images"] == 360


def test_export_round_trip_and_hash_check(tiny_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(tiny_run.out_dir), "--out", str(out)]) == 0
    manifest = safeio.read_json(out / "manifest.json")
    assert manifest["architecture"] == "lenet5" and manifest["input_size"] == [1, 28, 28]
    assert manifest["sha256"]["model.safetensors"] == safeio.sha256_file(out / "model.safetensors")
    exported = load_model(out)
    original = load_model(tiny_run.out_dir)
    for key, value in original.model.state_dict().items():
        assert torch.equal(exported.model.state_dict()[key], value)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err


def test_onnx_export_computes_the_models_logits_for_any_batch_size_without_tracer_warnings(
    tiny_run, tmp_path
):
    """model.onnx, run by onnx's reference evaluator (no runtime needed), gives the PyTorch model's logits for
    batches of 1 and 5 (the batch axis is dynamic); lenet5's input-size check is not traced into a warning."""
    out = tmp_path / "export"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", "--checkpoint", str(tiny_run.out_dir), "--out", str(out), "--onnx"]) == 0
    assert not [w for w in caught if "Tracer" in type(w.message).__name__], [str(w.message) for w in caught]
    session = ReferenceEvaluator(str(out / "model.onnx"))
    model = load_model(out).model.eval()
    for batch in (1, 5):
        images = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        (logits,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images).numpy()
        gap = float(np.abs(logits - expected).max())
        assert logits.shape == (batch, 10) and np.allclose(logits, expected, atol=1e-4), gap


def test_predict_kaggle_and_probs_match_the_models_argmax_per_file(tiny_run, tmp_path):
    from PIL import Image

    from cnnlab.data import load_split
    from cnnlab.train.inference import predict_probs

    test = load_split(tiny().data, "test")
    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(1, 13):  # ids 1..12: Kaggle sorts them numerically (10 after 9)
        Image.fromarray(test.images[number, 0].numpy(), mode="L").save(folder / f"{number}.png")
    (folder / ".DS_Store").write_bytes(b"junk")
    trained = load_model(tiny_run.out_dir)
    probs = predict_probs(
        trained.model,
        test.images[1:13],
        mean=tuple(trained.meta["mean"]),
        std=tuple(trained.meta["std"]),
        device=torch.device("cpu"),
        batch_size=64,
    )
    kaggle, table = tmp_path / "kaggle.csv", tmp_path / "probs.csv"
    assert (
        main(
            ["predict", "--checkpoint", str(tiny_run.out_dir), "--images", str(folder), "--out", str(kaggle)]
        )
        == 0
    )
    rows = list(csv.reader(kaggle.read_text().splitlines()))
    assert rows[0] == ["id", "label"]
    assert rows[1:] == [[str(n), str(int(probs[n - 1].argmax()))] for n in range(1, 13)]
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tiny_run.out_dir),
                "--images",
                str(folder),
                "--out",
                str(table),
                "--format",
                "probs",
            ]
        )
        == 0
    )
    header, *values = list(csv.reader(table.read_text().splitlines()))
    assert header == ["id", *trained.class_names]
    assert np.allclose(np.array([row[1:] for row in values], dtype=float), probs, atol=1e-5)


def test_last_checkpoint_is_refreshed_even_when_validation_does_not_improve(tmp_path):
    frozen = fit(tiny(**{"optim.lr": 1e-12, "optim.weight_decay": 0.0}), tmp_path / "flat")
    rows = read_metrics(frozen.out_dir / "metrics.csv")
    assert rows[0]["val_acc"] == rows[1]["val_acc"]  # epoch 1 is not a new best
    assert safeio.load_checkpoint(frozen.out_dir / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert safeio.load_checkpoint(frozen.out_dir / "checkpoints" / "best.ckpt")["epoch"] == 0


def test_test_every_epoch_writes_test_columns_lines_and_scalars(tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("CNNLAB_QUIET", raising=False)
    out = tmp_path / "e1"
    fit(tiny(**{"train.epochs": 2, "train.test_every_epoch": True}), out)
    rows = read_metrics(out / "metrics.csv")
    assert list(rows[0])[-2:] == ["test_loss", "test_acc"] and len(rows) == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch: ")]
    assert len(lines) == 2 and all(", test " in line and len(line) <= 80 for line in lines), lines
    assert f"test {100 * float(rows[1]['test_acc']):.1f}%" in lines[1]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    per_epoch = [event.value for event in events.Scalars("test_acc")][:2]
    assert per_epoch == pytest.approx([float(row["test_acc"]) for row in rows])


def test_test_scores_never_choose_the_checkpoint_or_stop_early(tmp_path, monkeypatch):
    from cnnlab.train.callbacks import EpochTester

    def misleading(self, pl_module):  # test accuracy best at epoch 0, then falling: selection must not care
        epoch = pl_module.current_epoch
        row = {"test_acc": 1.0 if epoch == 0 else 0.0, "test_loss": 0.0 if epoch == 0 else 9.0}
        for name, value in row.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)
        return row

    monkeypatch.setattr(EpochTester, "score", misleading)
    out = tmp_path / "e1"
    config = tiny(**{"train.epochs": 3, "train.test_every_epoch": True, "train.early_stopping": 1})
    result = fit(config, out)
    rows = read_metrics(out / "metrics.csv")
    val = [float(row["val_acc"]) for row in rows]
    best_by_val = val.index(max(val))
    assert result.summary["best"]["epoch"] == best_by_val
    assert safeio.load_checkpoint(out / "checkpoints" / "best.ckpt")["epoch"] == best_by_val
    if best_by_val > 0:  # early stopping on test_acc would have stopped after epoch 1
        assert result.summary["epochs_run"] >= 2
    assert result.summary["test"]["acc"] < 1.0  # the final test score is the best checkpoint's own


def test_ema_checkpoints_hold_the_average_and_keep_the_live_weights(tmp_path):
    run = fit(tiny(**{"train.ema": 0.9}), tmp_path / "ema")
    assert run.status == "completed"
    checkpoint = safeio.load_checkpoint(run.out_dir / "checkpoints" / "last.ckpt")
    average, live = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert average.keys() == live.keys()
    assert any(not torch.equal(average[key], live[key]) for key in average), "the average is not the live net"
    # the scores are the average's: evaluating the kept checkpoint gives the reported test accuracy
    assert evaluate_checkpoint(run.out_dir)["acc"] == pytest.approx(run.summary["test"]["acc"])


def test_flip_tta_averages_the_image_and_its_mirror(tmp_path):
    config = tiny(**{"train.tta": "flip", "optim.lr": 0.005})
    run = fit(config, tmp_path / "tta")
    trained = load_model(run.out_dir)
    test = load_split(resolve_config(config).data, "test")
    scoring = {
        "mean": tuple(trained.meta["mean"]),
        "std": tuple(trained.meta["std"]),
        "device": torch.device("cpu"),
        "batch_size": 256,
    }
    plain = predict_probs(trained.model, test.images, **scoring)
    mirrored = predict_probs(trained.model, test.images.flip(-1), **scoring)
    saved = np.load(run.out_dir / "predictions" / "test.npz")["probs"]
    assert np.allclose(saved, (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(saved, plain, atol=1e-3), "the mirror counted"


@pytest.mark.parametrize(
    "dotted, message",
    [
        ({"train.tta": "rotate"}, "train.tta='rotate' is not allowed; allowed: none, flip"),
        ({"train.ema": 1.5}, "train.ema=1.5 is out of range; it must be in (0, 1), e.g. 0.999"),
    ],
)
def test_ema_and_tta_values_are_checked(dotted, message):
    with pytest.raises(ConfigError) as error:
        cfg.from_dict(dotted)
    assert str(error.value) == message


def test_fit_checks_its_python_arguments_before_training(tmp_path):
    config = cfg.from_dict({"model.name": "lenet5", "data.name": "digits", "train.epochs": 1})
    out = tmp_path / "run"
    for args, kwargs, message in [
        ((config, out), {"tags": "abc"}, "tags are a mapping"),
        ((config, out), {"tags": {"x": object()}}, "tags must be JSON values"),
        (({"model.name": "lenet5"}, out), {}, "fit takes a RunConfig"),
        ((config, None), {}, "out_dir is a folder path"),
    ]:
        with pytest.raises(ConfigError, match=message):
            fit(*args, **kwargs)
    assert not out.exists()  # nothing trained, nothing written
    for tree in (None, [1], "x"):
        with pytest.raises(ConfigError, match="a run config is a mapping of config keys"):
            cfg.from_dict(tree)


def test_float16_weights_that_overflow_say_which_precision_to_use(tmp_path, capsys):
    argv = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--optimizer", "adam"]
    code = main(
        [*argv, "--set", "data.subset=100", "--set", "train.precision=16-true", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1
    assert "non-finite training loss" in err and "use 16-mixed, bf16-mixed or 32-true" in err


def test_a_failed_runs_reason_is_one_line(tmp_path, monkeypatch, capsys):
    from cnnlab.train import system

    def crash(self, batch, batch_idx):
        raise RuntimeError("Error(s) in loading:\n\tsize mismatch for fc.weight")

    monkeypatch.setattr(system.ClassifierSystem, "training_step", crash)
    argv = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--set", "data.subset=100"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "RuntimeError: Error(s) in loading:\\n\\tsize mismatch for fc.weight" in err
    )
    assert "size mismatch" in (tmp_path / "error.log").read_text()


def test_a_run_out_of_memory_says_which_keys_size_its_batches(tmp_path, monkeypatch, capsys):
    """A real allocation the CPU allocator refuses, inside a training step: the failed run's one line leads
    with the batch sizes to lower, then torch's own message."""
    from cnnlab.train import system

    def allocate_too_much(self, batch, batch_idx):
        return torch.empty(2**50, dtype=torch.uint8)  # 1 PB: refused at once, nothing allocated

    monkeypatch.setattr(system.ClassifierSystem, "training_step", allocate_too_much)
    argv = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--set", "data.subset=100"]
    assert main([*argv, "--set", "data.batch_size=64", "--out", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "cnnlab: run failed: out of memory at data.batch_size=64, data.eval_batch_size=1024, "
        "data.image_size=28: lower them; RuntimeError: [enforce fail"
    ), line
    assert "can't allocate memory" in line and runfolder.read_result(tmp_path)["status"] == "failed"
