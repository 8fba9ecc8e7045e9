"""Realistic study folders for tests, written as docs/architecture.md describes ("One run", "Studies").

`make_study(root)` writes a 2-fold × 3-seed study of three configurations (lenet5 with dropout 0 and 0.5,
resnet20_cifar) with metrics.csv, val/test predictions, the images/*.npz a finished run saves for its report,
one failed and one diverged run, an ensemble, and study.yaml/study.json. `make_staged_study(root)` writes a
two-stage study like studies/transfer.yaml (a pretraining stage whose runs initialise a fine-tuning stage);
`make_grid_study(root)` a two-axis grid like studies/cv-hparams.yaml.
Accuracies are drawn from a fixed RNG, so tests recompute every number from the files. Reusable by anyone
who needs finished run directories without training.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab import runfolder
from cnnlab.config import config_hash, dump_yaml, from_dict, to_dict
from cnnlab.runfolder import ImageSamples

CLASS_NAMES = tuple(str(digit) for digit in range(10))
VAL_SIZE = 60
TEST_SIZE = 100
EPOCHS = 5
HARDEST = 12  # highest-loss images a run keeps
AUGMENTED = 8  # training images of the augmentation grid
FOLDS = 2
PROVENANCE = {
    "versions": {"python": "3.11.2", "torch": "2.14.1", "torchvision": "0.29.1", "lightning": "2.6.6"},
    "device": "cpu",
    "hostname": "lab-pc",
    "git_commit": "0123abcd",
}
# configuration name → (overrides, mean test accuracy, parameters, GFLOPs, seconds per run)
CONFIGURATIONS: dict[str, tuple[dict[str, Any], float, int, float, float]] = {
    "lenet_plain": ({"model.name": "lenet5", "model.dropout": 0.0}, 0.86, 61706, 0.000429, 8.0),
    "lenet_dropout": ({"model.name": "lenet5", "model.dropout": 0.5}, 0.90, 61706, 0.000429, 8.5),
    "resnet": ({"model.name": "resnet20_cifar"}, 0.95, 272474, 0.0411, 41.0),
}
BASE = {"data.name": "digits", "data.folds": FOLDS, "train.epochs": EPOCHS, "optim.lr": 0.05}
# status → the reason result.json records (as train writes it); a completed run has none
REASONS = {
    "failed": "DataError: fold file unreadable (simulated failure)",
    "diverged": "non-finite loss (nan) at epoch 2; last good checkpoint kept",
    "interrupted": "interrupted by SIGTERM after 2 epoch(s)",
}
# the staged study: each stage's classes and each configuration's mean test accuracy
STAGED_BASE = {"data.name": "digits", "train.epochs": EPOCHS, "optim.lr": 0.05}
PRETRAIN_CLASSES = tuple(str(digit) for digit in range(8))
FINETUNE_CLASSES = ("6", "7", "8", "9")
PRETRAIN_ACCURACY = {"lenet5": 0.97, "resnet20_cifar": 0.985}
FINETUNE_ACCURACY = {("lenet5", "scratch"): 0.72, ("lenet5", "full"): 0.80}
FINETUNE_ACCURACY |= {("resnet20_cifar", "scratch"): 0.75, ("resnet20_cifar", "full"): 0.86}


def make_study(
    root: Path, *, paired: bool = True, failures: bool = True, ensemble: bool = True, images: bool = True
) -> Path:
    """Write a finished study under `root`; `paired=False` gives lenet5+dropout its own seeds (3, 4, 5);
    `images=False` leaves out the runs' images/*.npz (runs of cnnlab versions before them)."""
    root.mkdir(parents=True, exist_ok=True)
    plan = []
    for name, (overrides, accuracy, params, gflops, seconds) in CONFIGURATIONS.items():
        seeds = (3, 4, 5) if name == "lenet_dropout" and not paired else (0, 1, 2)
        for seed in seeds:
            for fold in range(FOLDS):
                status = _status(name, seed, fold) if failures else "completed"
                rng = np.random.default_rng([len(plan), seed, fold])
                config = {**BASE, **overrides, "train.seed": seed, "data.fold": fold}
                run_dir = write_run(
                    root / "runs",
                    config,
                    status=status,
                    accuracy=accuracy,
                    rng=rng,
                    params=params,
                    gflops=gflops,
                    seconds=seconds,
                    tags={"role": "grid"},
                    images=images,
                )
                plan.append({"run_id": run_dir.name, "overrides": overrides, "seed": seed, "fold": fold})
    if ensemble:
        members = [
            plan[0]["run_id"],
            next(p["run_id"] for p in plan if p["overrides"].get("model.name") == "resnet20_cifar"),
        ]
        write_ensemble(root, "lenet_resnet", members)
    (root / "study.yaml").write_text(yaml.safe_dump(_spec(paired), sort_keys=False))
    (root / "study.json").write_text(json.dumps({"runs": plan}, indent=2))
    return root


def write_run(
    runs_root: Path,
    dotted: Mapping[str, Any],
    *,
    status: str = "completed",
    accuracy: float = 0.9,
    rng: np.random.Generator | None = None,
    params: int = 61706,
    gflops: float = 0.000429,
    seconds: float = 8.0,
    tags: Mapping[str, Any] | None = None,
    classes: Sequence[str] = CLASS_NAMES,
    images: bool = True,
    flags: Sequence[str] = (),
    test_every_epoch: bool = False,
) -> Path:
    """Write one run directory (config.yaml, result.json, metrics.csv, predictions) and return it.

    `status` is completed, failed (no metrics), diverged or interrupted (two epochs, no test); a completed run
    also gets images/*.npz unless `images` is false, and `flags` (result.json: why it may not have learned,
    as train/health.py words them). `test_every_epoch` adds metrics.csv's per-epoch test_acc and test_loss
    (train.test_every_epoch)."""
    rng = rng or np.random.default_rng(0)
    config = from_dict({"data.augment": "none", **dotted})  # resolved, as train records it (no recipe gap)
    run_dir = runs_root / config_hash(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(config))
    result = _result(config, status, tags or {}, params, gflops, classes)
    result["reason"] = REASONS.get(status)
    if status != "failed":
        _write_trained(
            run_dir, result, status, accuracy, rng, seconds, len(classes), images, test_every_epoch
        )
    if status == "completed":
        result["flags"] = list(flags)
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return run_dir


def write_ensemble(root: Path, name: str, members: Sequence[str]) -> Path:
    """Write ensembles/<name>/ from the members' saved probabilities (mean rule), as the study runner does."""
    folder = root / "ensembles" / name
    accuracies = {}
    for split in ("val", "test"):
        loaded = [np.load(root / "runs" / member / "predictions" / f"{split}.npz") for member in members]
        probs = np.mean([data["probs"] for data in loaded], axis=0)
        labels = loaded[0]["labels"]
        accuracies[split] = float((probs.argmax(axis=1) == labels).mean())
        if split == "test":
            (folder / "predictions").mkdir(parents=True, exist_ok=True)
            np.savez(
                folder / "predictions" / "test.npz",
                probs=probs.astype(np.float32),
                labels=labels,
                indices=np.arange(len(labels)),
            )
    result = {
        "kind": "ensemble",
        "name": name,
        "method": "mean",
        "members": list(members),
        "val": {"acc": accuracies["val"]},
        "test": {"acc": accuracies["test"]},
        "per_class_accuracy": {},
        "class_names": list(CLASS_NAMES),
    }
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    return folder


def make_staged_study(root: Path, *, plan: bool = True) -> Path:
    """A study like studies/transfer.yaml: stage `pretrain` (8 classes, one seed, high accuracy) trains lenet5
    and resnet20_cifar; stage `finetune` (4 classes, seeds 0-2) trains each net from scratch or from
    its pretrained run. `plan=False` leaves out study.json, so only the `run:` inits order the stages."""
    runs, entries, pretrained = root / "runs", [], {}
    for model, accuracy in PRETRAIN_ACCURACY.items():
        config = {**STAGED_BASE, "data.classes": list(PRETRAIN_CLASSES), "model.name": model, "train.seed": 0}
        tags = _stage_tags("pretrain", {"model.name": model})
        pretrained[model] = _staged_run(runs, config, tags, accuracy, PRETRAIN_CLASSES, entries)
    for (model, recipe), accuracy in FINETUNE_ACCURACY.items():
        init = f"run:{pretrained[model]}" if recipe == "full" else "scratch"
        for seed in (0, 1, 2):
            config = {
                **STAGED_BASE,
                "data.classes": list(FINETUNE_CLASSES),
                "model.name": model,
                "train.seed": seed,
            }
            tags = _stage_tags("finetune", {"model.name": model, "recipe": recipe})
            config["train.init"] = init
            _staged_run(runs, config, tags, accuracy, FINETUNE_CLASSES, entries)
    if plan:
        (root / "study.json").write_text(json.dumps({"stages": ["pretrain", "finetune"], "runs": entries}))
    return root


GRID_BATCH_SIZES = (32, 128)
GRID_LRS = (0.01, 0.05, 0.2)


def make_grid_study(root: Path, *, select: bool = True) -> Path:
    """A study like studies/cv-hparams.yaml: a two-axis grid (data.batch_size × optim.lr) of lenet5 runs on
    seeds 0 and 1, the planner's tags on every run (`point`: axis → value label), and with `select` the
    select stage's run retrained on all training data (role final, no grid point)."""
    runs, entries = root / "runs", []
    for b, batch_size in enumerate(GRID_BATCH_SIZES):
        for lr_index, lr in enumerate(GRID_LRS):
            point = {"data.batch_size": str(batch_size), "optim.lr": format(lr, "g")}
            for seed in (0, 1):
                config = {
                    **STAGED_BASE,
                    "model.name": "lenet5",
                    "data.batch_size": batch_size,
                    "optim.lr": lr,
                }
                config["train.seed"] = seed
                tags = {**_stage_tags("main", point), "study": "grid"}
                accuracy = 0.78 + 0.06 * lr_index - 0.03 * b
                _staged_run(runs, config, tags, accuracy, CLASS_NAMES, entries)
    if select:
        config = {
            **STAGED_BASE,
            "model.name": "lenet5",
            "data.batch_size": 32,
            "optim.lr": 0.2,
            "train.seed": 0,
        }
        config["data.val_fraction"] = 0.0  # retrained on all training data
        tags = {"study": "grid", "stage": "main", "role": "final", "configuration": "selected", "point": {}}
        _staged_run(runs, config, tags, 0.8, CLASS_NAMES, entries)
    (root / "study.json").write_text(json.dumps({"stages": ["main"], "runs": entries}))
    return root


def _stage_tags(stage: str, point: Mapping[str, str]) -> dict[str, Any]:
    """The tags a study's planner gives a run (study/plan.py PlannedRun.tags)."""
    label = " ".join(f"{axis}={value}" for axis, value in point.items())
    return {"study": "staged", "stage": stage, "role": "member", "configuration": label, "point": dict(point)}


def _staged_run(
    runs: Path,
    config: dict[str, Any],
    tags: dict[str, Any],
    accuracy: float,
    classes: Sequence[str],
    entries: list[dict[str, Any]],
) -> Path:
    """Write one run of the staged study and add its study.json entry."""
    rng = np.random.default_rng([len(entries), config["train.seed"]])
    run_dir = write_run(runs, config, accuracy=accuracy, rng=rng, tags=tags, classes=classes)
    entries.append({"run_id": run_dir.name, "stage": tags["stage"], "seed": config["train.seed"]})
    return run_dir


def read_results(root: Path) -> list[dict[str, Any]]:
    """Every run's result.json under root/runs (what tests recompute the report from)."""
    return [json.loads(path.read_text()) for path in sorted((root / "runs").glob("*/result.json"))]


def _status(name: str, seed: int, fold: int) -> str:
    """One failed and one diverged run, both in the resnet configuration."""
    if (name, seed, fold) == ("resnet", 2, 1):
        return "failed"
    if (name, seed, fold) == ("resnet", 1, 0):
        return "diverged"
    return "completed"


def _result(
    config: Any, status: str, tags: Mapping[str, Any], params: int, gflops: float, classes: Sequence[str]
) -> dict[str, Any]:
    run_id = config_hash(config)
    return {
        "run_id": run_id,
        "status": status,
        "reason": None,
        "model": config.model.name,
        "dataset": config.data.name,
        "class_names": list(classes),
        "epochs_run": 0,
        "best": None,
        "last": None,
        "test": None,
        "per_class_accuracy": {},
        "params": params,
        "gflops": gflops,
        "wall_time_s": 0.5,
        "train_time_s": None,
        "train_images_per_s": None,
        "config": to_dict(config),
        "tags": dict(tags),
        "provenance": {
            **PROVENANCE,
            "seed": config.train.seed,
            "config_hash": run_id,
            "date": f"2026-11-23T10:{config.train.seed:02d}:0{config.data.fold}Z",
        },
    }


def _write_trained(
    run_dir: Path,
    result: dict[str, Any],
    status: str,
    accuracy: float,
    rng: np.random.Generator,
    seconds: float,
    classes: int,
    images: bool = True,
    test_every_epoch: bool = False,
) -> None:
    """Fill metrics.csv, predictions and the metric fields of a run that trained (completed, diverged or
    interrupted: two epochs and no test)."""
    epochs = EPOCHS if status == "completed" else 2
    val = _predictions(VAL_SIZE, accuracy - 0.02 + rng.normal(0, 0.02), rng, classes)
    val_acc = float((val["probs"].argmax(axis=1) == val["labels"]).mean())
    rows = _metric_rows(epochs, val_acc, rng, diverged=status == "diverged")
    if test_every_epoch:
        for row in rows:
            row["test_acc"] = min(1.0, row["val_acc"] + 0.01)
            row["test_loss"] = row["val_loss"] * 0.97
    _write_csv(run_dir / "metrics.csv", rows)
    (run_dir / "predictions").mkdir(exist_ok=True)
    np.savez(run_dir / "predictions" / "val.npz", **val)
    best = max(rows, key=lambda row: row["val_acc"])
    last = rows[-1]
    result.update(
        epochs_run=epochs,
        best={"epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"]},
    )
    result["last"] = {key: last[key] for key in ("epoch", "val_acc", "val_loss", "train_acc", "train_loss")}
    train_time = seconds * (1 + rng.normal(0, 0.05)) * epochs / EPOCHS
    result.update(
        train_time_s=train_time, wall_time_s=train_time + 1.5, train_images_per_s=1500 * epochs / train_time
    )
    if status != "completed":
        return
    test = _predictions(TEST_SIZE, accuracy + rng.normal(0, 0.015), rng, classes)
    np.savez(run_dir / "predictions" / "test.npz", **test)
    result["test"] = {"acc": float((test["probs"].argmax(axis=1) == test["labels"]).mean()), "loss": 0.3}
    predicted = test["probs"].argmax(axis=1)
    result["per_class_accuracy"] = {
        name: float((predicted[test["labels"] == k] == k).mean())
        for k, name in enumerate(result["class_names"])
    }
    if images:
        _write_images(run_dir, test, classes)


def _write_images(run_dir: Path, test: dict[str, np.ndarray], classes: int) -> None:
    """images/*.npz as a finished run leaves them (docs/reports.md), chosen here from its test predictions:
    the HARDEST highest-loss images, every misclassified image, one Grad-CAM image per class (a blob at a
    class-dependent place) and AUGMENTED training images with three shifted copies each."""
    order = np.argsort(test["indices"])
    probs, labels, indices = test["probs"][order], test["labels"][order], test["indices"][order]
    losses = -np.log(probs[np.arange(len(labels)), labels])
    chosen = {
        "hardest": np.argsort(-losses)[:HARDEST],
        "confused": np.flatnonzero(probs.argmax(axis=1) != labels),
        "gradcam": np.array([np.flatnonzero(labels == k)[0] for k in range(min(classes, 8))]),
    }
    for kind, rows in chosen.items():
        samples = ImageSamples(
            split="test",
            images=np.stack(
                [test_image(int(i), int(labels[r])) for r, i in zip(rows, indices[rows])]
                or [np.zeros((1, 28, 28), np.uint8)]
            )[: len(rows)],
            labels=labels[rows],
            indices=indices[rows],
            ids=tuple(f"#{i}" for i in indices[rows]),
            probs=probs[rows],
            maps=np.stack([_blob(int(labels[r])) for r in rows]) if kind == "gradcam" else None,
        )
        runfolder.write_image_samples(run_dir, kind, samples)
    originals = np.stack([test_image(1000 + k, k % classes) for k in range(AUGMENTED)])
    draws = [originals] + [np.roll(originals, shift, axis=3) for shift in (-2, 1, 3)]
    runfolder.write_image_samples(
        run_dir,
        "augmented",
        ImageSamples(
            split="train",
            images=np.concatenate(draws),
            labels=np.tile(np.arange(AUGMENTED) % classes, 4),
            indices=np.tile(np.arange(AUGMENTED), 4),
            ids=tuple(f"#{k}" for k in range(AUGMENTED)) * 4,
            variants=np.repeat(np.arange(4), AUGMENTED),
        ),
    )


def test_image(index: int, label: int) -> np.ndarray:
    """A 1×28×28 image: noise fixed by its index and a bright square whose place shows the label."""
    image = np.random.default_rng(index).integers(0, 60, (1, 28, 28)).astype(np.uint8)
    top, left = 2 + 8 * (label // 3 % 3), 2 + 8 * (label % 3)
    image[0, top : top + 8, left : left + 8] = 230
    return image


def _blob(label: int) -> np.ndarray:
    rows, cols = np.mgrid[0:28, 0:28]
    top, left = 6 + 8 * (label // 3 % 3), 6 + 8 * (label % 3)
    return np.exp(-((rows - top) ** 2 + (cols - left) ** 2) / 18.0).astype(np.float32)


def _predictions(size: int, accuracy: float, rng: np.random.Generator, classes: int) -> dict[str, np.ndarray]:
    """Probabilities whose argmax is right on round(accuracy·size) samples, with realistic confusions."""
    labels = np.arange(size, dtype=np.int64) % classes
    correct = np.zeros(size, dtype=bool)
    correct[rng.permutation(size)[: int(round(np.clip(accuracy, 0, 1) * size))]] = True
    confused = (labels + rng.choice([1, classes - 1, 3], size=size)) % classes
    predicted = np.where(correct, labels, confused)
    probs = rng.dirichlet(np.ones(classes), size=size) * 0.3
    probs[np.arange(size), predicted] += 0.7
    return {
        "probs": probs.astype(np.float32),
        "labels": labels,
        "indices": rng.permutation(size).astype(np.int64),
    }


def _metric_rows(
    epochs: int, final_val_acc: float, rng: np.random.Generator, diverged: bool
) -> list[dict[str, float]]:
    """Per-epoch rows rising to `final_val_acc` at the last epoch (a diverged run ends in a NaN loss)."""
    rows = []
    for epoch in range(epochs):
        progress = 1 - np.exp(-(epoch + 1) / 1.5)
        val_acc = (
            final_val_acc - 0.5 * (1 - progress) * final_val_acc if epoch < epochs - 1 else final_val_acc
        )
        train_acc = min(1.0, val_acc + 0.03 + rng.normal(0, 0.005))
        rows.append(
            {
                "epoch": epoch,
                "train_loss": float(-1.5 * np.log(train_acc) + rng.normal(0, 0.01)),
                "train_acc": train_acc,
                "val_loss": float(-1.7 * np.log(val_acc)),
                "val_acc": val_acc,
                "lr": 0.05 * (1 + np.cos(np.pi * epoch / epochs)) / 2,
                "epoch_time_s": 1.6,
            }
        )
    if diverged:
        rows[-1]["train_loss"] = float("nan")
        rows[-1]["val_acc"] = 0.1
    return rows


def _write_csv(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _spec(paired: bool) -> dict[str, Any]:
    return {
        "base": BASE,
        "grid": {"model": [c[0] for c in CONFIGURATIONS.values()]},
        "seeds": [0, 1, 2] if paired else "0-2, dropout runs 3-5",
        "protocol": {"folds": FOLDS},
        "ensembles": {"lenet_resnet": {"method": "mean"}},
    }
