"""Using a trained model: probabilities, scores, `evaluate`, `predict` and `export`."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io as text_io
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.data import InMemoryLoader, Splits, load_split
from cnnlab.data import folder as folder_data
from cnnlab.data.catalog import FOLDER_PREFIX
from cnnlab.data.folder import IMAGE_SUFFIXES
from cnnlab.data.imageset import ImageSet
from cnnlab.errors import ConfigError, DataError, WeightsError
from cnnlab.runfolder import RunFolderError
from cnnlab.train.checkpoint import TrainedModel, build_trained_model, load_trained_model

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int,
    tta: str = "none",
) -> np.ndarray:
    """Softmax probabilities (N, K) for uint8 images, in order, with the model in eval mode; `tta="flip"`
    averages them with those of the horizontally mirrored images (train.tta)."""
    model = model.to(device).eval()
    loader = InMemoryLoader(
        images,
        torch.zeros(len(images), dtype=torch.int64),
        batch_size=batch_size,
        shuffle=False,
        augment="none",
        mean=mean,
        std=std,
        seed=0,
        device=device,
        drop_last=False,
        rank=0,
        world_size=1,
        channels_last=False,
    )
    chunks = [_probs(model, batch, tta).cpu() for batch, _ in loader]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def _probs(model: nn.Module, batch: torch.Tensor, tta: str) -> torch.Tensor:
    probs = torch.softmax(model(batch).float(), dim=1)
    if tta == "flip":
        probs = (probs + torch.softmax(model(batch.flip(-1)).float(), dim=1)) / 2
    return probs


def score_predictions(
    probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of predicted probabilities."""
    predicted = probs.argmax(axis=1)
    picked = probs[np.arange(len(labels)), labels]
    per_class = {}
    for index, name in enumerate(class_names):
        mask = labels == index
        per_class[str(name)] = float((predicted[mask] == index).mean()) if mask.any() else None
    return {
        "acc": float((predicted == labels).mean()),
        "loss": float(-np.log(np.clip(picked, 1e-12, 1)).mean()),
        "per_class_accuracy": per_class,
    }


def load_model(path: str | Path) -> TrainedModel:
    """A trained model from a run directory (always its own checkpoint), a checkpoint file or an `export`
    directory."""
    path = Path(path)
    if (path / MANIFEST).is_file() and not runfolder.is_run_folder(path):
        return load_exported(path)
    return load_trained_model(path)


def evaluate_checkpoint(
    path: str | Path, *, data: str | None = None, split: str = "test", data_dir: str | None = None
) -> dict[str, Any]:
    """Metrics of a trained model on a dataset split (the run's own dataset unless `data` names another)."""
    trained = load_model(path)
    data_config = _data_config(trained, data, data_dir)
    images, labels = _split_images(trained, data_config, split, Path(path))
    if data and len(_class_names(data_config)) != len(trained.class_names):
        raise ConfigError(
            f"--data {data} has {len(_class_names(data_config))} classes but the model was "
            f"trained on {len(trained.class_names)}"
        )
    _check_input(trained, images, data_config.name)
    probs = _predict(trained, images, batch_size=data_config.eval_batch_size)
    scores = score_predictions(probs, labels.numpy(), trained.class_names)
    return _finite_or_none({"split": split, "dataset": data_config.name, "images": len(labels), **scores})


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities (weights that hold them give a NaN loss) as None: printed JSON stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class WrittenPredictions:
    """What `predict_images` wrote: the CSV, its row count and the model's classes (label index order)."""

    path: Path
    rows: int
    class_names: list[str]


def predict_images(
    path: str | Path, images: str, out: str | Path, *, fmt: str = "kaggle", data_dir: str | None = None
) -> WrittenPredictions:
    """Write predictions for an image folder (searched recursively) or a dataset's test split as CSV
    (kaggle: id,label; probs: id and one probability per class). Ids are file stems when those are unique,
    else paths relative to the folder (see `prediction_ids`)."""
    check_predictions_out(out, checkpoint=path)
    check_images_folder(images, dataset_allowed=True)
    trained = load_model(path)
    if Path(images).is_dir():
        files, pixels = read_model_images(trained, images)
        ids = prediction_ids(files)
    else:
        data_config = _data_config(trained, images, data_dir)
        test = load_split(data_config, "test")
        pixels = test.images
        ids = _dataset_ids(data_config, test)
    _check_input(trained, pixels, images)
    probs = _predict(trained, pixels, batch_size=256)
    rows = sorted(zip(ids, probs), key=lambda item: _id_sort_key(item[0]))
    safeio.atomic_write_text(out, _predictions_csv(rows, trained.class_names, fmt))
    return WrittenPredictions(Path(out), len(rows), trained.class_names)


def check_predictions_out(out: str | Path, *, checkpoint: str | Path) -> None:
    """`predict --out` may be a new file or a predictions CSV cnnlab wrote (re-running predict replaces it);
    never a folder, the checkpoint itself, a file in a run's checkpoints/, or any other existing file."""
    out = Path(out)
    shown = cfg.quoted(out)
    if out.is_dir():
        raise ConfigError(f"--out {shown} is a folder; give the CSV file to write, e.g. preds.csv")
    _check_parent_is_folder(out)
    if out.exists() and out.resolve() == Path(checkpoint).resolve():
        raise ConfigError(
            f"--out {shown} is the --checkpoint itself; write the predictions to e.g. preds.csv"
        )
    if _in_run_checkpoints(out):
        raise ConfigError(
            f"--out {shown} is in a run's checkpoints/ folder, which holds only checkpoints; "
            "write the predictions elsewhere, e.g. preds.csv"
        )
    if out.exists() and not out.is_file():  # /dev/null, /dev/stdout, a FIFO: a rename would replace it
        raise ConfigError(
            f"--out {shown} is not a regular file (a device, pipe or socket); cnnlab writes the predictions "
            "to a file it replaces atomically: give a file name, e.g. preds.csv"
        )
    if out.exists() and not _is_predictions_csv(out):
        raise ConfigError(
            f"--out {shown} exists and is not a predictions CSV written by cnnlab predict; cnnlab replaces "
            "only its own predictions: give a new file name, or move that file away first"
        )


def _check_parent_is_folder(out: Path) -> None:
    """The folders above `out` are folders (missing ones are created), not files."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"--out {cfg.quoted(out)}: {cfg.quoted(parent)} is a file, not a folder; give a path "
                    "in a folder, e.g. preds.csv"
                )
            return


def _in_run_checkpoints(out: Path) -> bool:
    folder = out.resolve().parent
    return folder.name == runfolder.CHECKPOINTS_DIR and runfolder.is_run_folder(folder.parent)


def _is_predictions_csv(path: Path) -> bool:
    """An empty file, or a CSV whose header and first row have the shape `_predictions_csv` writes."""
    if path.stat().st_size == 0:
        return True
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            head = [row for _, row in zip(range(2), csv.reader(handle))]
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    header, first = head[0] if head else [], head[1] if len(head) > 1 else None
    if header == ["id", "label"]:
        return first is None or (len(first) == 2 and first[1].isdigit())
    if len(header) < 2 or header[0] != "id":
        return False
    return first is None or (len(first) == len(header) and all(_is_probability(v) for v in first[1:]))


def _is_probability(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def prediction_ids(files: list[Path]) -> list[str]:
    """One id per image file (paths relative to the images folder): file stems, as Kaggle wants them
    (test1/1.jpg -> 1), when they are unique; otherwise every file's relative path (cat/0.png, 1.jpg)."""
    stems = [file.stem for file in files]
    if len(set(stems)) == len(stems):
        return stems
    return [file.as_posix() for file in files]


def _dataset_ids(data_config: cfg.DataConfig, test: ImageSet) -> list[str]:
    """Ids of a dataset's test split: its file stems when unique, else (folders) paths relative to the
    class root, else class/stem (numbered where even those repeat); row numbers for datasets without files."""
    if not test.ids:
        return [str(i) for i in range(len(test.labels))]
    ids = list(test.ids)
    if len(set(ids)) == len(ids):
        return ids
    paths = _folder_test_paths(data_config, test)
    if paths is not None:
        return paths
    named = [f"{test.class_names[label]}/{stem}" for label, stem in zip(test.labels.tolist(), ids)]
    return named if len(set(named)) == len(named) else [f"{n}#{i}" for i, n in enumerate(named)]


def _folder_test_paths(data_config: cfg.DataConfig, test: ImageSet) -> list[str] | None:
    """Relative paths (cat/0.png) of a folder dataset's test images, matched by class and file stem; None
    where that match is not one to one (or the dataset is not a folder)."""
    if not data_config.name.startswith(FOLDER_PREFIX):
        return None
    roots = folder_data.class_roots(folder_data.resolve_folder(data_config.name[len(FOLDER_PREFIX) :]))
    scan = folder_data.scan_folder(roots.get("test", roots.get("all")))
    bad = {rel for rel, _ in test.bad_files}
    by_class_and_stem: dict[tuple[int, str], list[str]] = {}
    for rel, label in scan.files:
        if rel not in bad:
            by_class_and_stem.setdefault((label, Path(rel).stem), []).append(Path(rel).as_posix())
    found = [by_class_and_stem.get(key, []) for key in zip(test.labels.tolist(), test.ids)]
    if any(len(paths) != 1 for paths in found):
        return None
    return [paths[0] for paths in found]


def _check_input(trained: TrainedModel, images: torch.Tensor, source: str) -> None:
    """The images' channels and side must be the ones the model was trained on."""
    channels, side = trained.meta["in_chans"], trained.meta["image_size"]
    if tuple(images.shape[1:]) != (channels, side, side):
        got = "x".join(str(n) for n in images.shape[1:])
        raise DataError(
            f"{source} gives {got} images but the model takes {channels}x{side}x{side}; "
            "give it images of the shape it was trained on"
        )


def check_images_folder(images: str | Path, *, dataset_allowed: bool) -> None:
    """`--images` names a folder (or, `dataset_allowed`, a dataset: a bare name or folder:PATH): never empty
    (the working directory) nor a file; a path (with a slash, or starting with . or ~) must be a folder."""
    if not str(images).strip():
        raise ConfigError("--images is empty; give a folder of image files, e.g. --images photos/")
    if Path(images).exists() and not Path(images).is_dir():
        raise ConfigError(
            f"--images {cfg.quoted(images)} is a file; give the folder that holds the images "
            "(every image in it and its subfolders is read)"
        )
    text = str(images)
    path_like = not text.startswith("folder:") and ("/" in text or text.startswith((".", "~")))
    if (path_like or not dataset_allowed) and not Path(images).is_dir():
        raise DataError(f"--images {cfg.quoted(images)}: no such folder; give a folder of image files")


def read_model_images(trained: TrainedModel, folder: str | Path) -> tuple[list[Path], torch.Tensor]:
    """`read_image_files` as the model takes them: its side and channels, transparency over the
    data.background it was trained with."""
    background = cfg.from_dict(trained.meta["config"]).data.background
    meta = trained.meta
    return read_image_files(folder, size=meta["image_size"], channels=meta["in_chans"], background=background)


def read_image_files(
    folder: str | Path,
    *,
    size: int,
    channels: int,
    background: tuple[int, ...] = folder_data.DEFAULT_BACKGROUND,
) -> tuple[list[Path], torch.Tensor]:
    """(paths relative to `folder`, uint8 images) of the image files in it and its subfolders, sorted, found
    and decoded like a class folder of a training dataset (`folder_data.list_image_files`)."""
    folder = Path(folder)
    found = folder_data.list_image_files(folder)
    found.check()
    folder_data.report_ignored(found)
    if not found.files:
        raise DataError(
            f"no image files in {folder} or its subfolders (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    files = sorted(Path(rel) for rel in found.files)
    decoded = folder_data.decode_images([folder / file for file in files], size=size, background=background)
    bad = [f"{file.as_posix()} ({reason})" for file, reason in zip(files, decoded) if isinstance(reason, str)]
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {folder}: {'; '.join(bad)}; remove or fix them")
    return files, _to_channels(torch.from_numpy(np.stack(decoded)), channels)


def _to_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB uint8 images with the model's channel count: 3 as they are, 1 as ITU-R 601 luma (PIL's "L")."""
    if channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (pixels.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if channels != 3:
        raise ConfigError(f"cannot feed folder images to a model with {channels} input channels (1 or 3)")
    return pixels


def export_checkpoint(path: str | Path, out_dir: str | Path, *, onnx: bool = False) -> Path:
    """Write model.safetensors and manifest.json (SHA-256, architecture, classes, input size, stats) into a
    new or empty folder, or over a previous export (`check_export_out`). The files are replaced together
    (`safeio.atomic_replace_files`): an export stopped on the way (Ctrl-C during the ONNX trace, a full disk)
    leaves the previous export whole, never new weights beside the old manifest."""
    out_dir = Path(out_dir)
    previous = check_export_out(out_dir)
    trained = load_model(path)
    state = {key: value.contiguous() for key, value in trained.model.state_dict().items()}
    contents = {out_dir / WEIGHTS: safetensors_bytes(state)}
    input_size = [trained.meta["in_chans"], trained.meta["image_size"], trained.meta["image_size"]]
    if onnx:
        contents[out_dir / ONNX] = _export_onnx(trained.model, input_size)
    manifest = {
        "architecture": trained.meta["model"],
        "model_hparams": trained.meta["model_hparams"],
        "classes": trained.class_names,
        "input_size": input_size,
        "normalization": {"mean": trained.meta["mean"], "std": trained.meta["std"]},
        "sha256": {path.name: hashlib.sha256(data).hexdigest() for path, data in contents.items()},
        "config": trained.meta["config"],
    }
    contents[out_dir / MANIFEST] = safeio.json_text(manifest).encode()
    # a previous export's model.onnx (maybe of another model) goes when this export has none
    stale = [out_dir / ONNX] if ONNX in previous and not onnx else []
    safeio.atomic_replace_files(contents, remove=stale)
    return out_dir


def check_export_out(out_dir: Path) -> set[str]:
    """`export --out` must be a new or empty folder, or a previous export (its manifest recognised), which
    is replaced; never a file, a run folder, or a folder of other files. Returns the files the previous
    export's manifest lists (empty for a new folder)."""
    shown = cfg.quoted(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(
            f"--out {shown} is a file; give a folder for model.safetensors and manifest.json, e.g. export/"
        )
    killed_writes = _killed_export_writes(out_dir)
    if not out_dir.is_dir() or all(path in killed_writes for path in out_dir.iterdir()):
        return set()
    if runfolder.is_run_folder(out_dir):
        raise RunFolderError(
            f"--out {shown} is a run folder; export into a new folder beside it, "
            f"e.g. {out_dir.resolve().name}-export"
        )
    listed = _export_files(out_dir / MANIFEST)
    if listed is None:
        raise RunFolderError(
            f"--out {shown} holds files that are not a cnnlab export; give a new or empty folder "
            "(cnnlab replaces only a previous export there)"
        )
    return listed


def _killed_export_writes(out_dir: Path) -> set[Path]:
    """The temporary files an export killed while writing (SIGKILL, a lost machine) left in `out_dir`
    (`safeio.atomic_replace_files` names them after the export's files): cnnlab's own, so a folder holding
    only these is still empty to a new export. They are left alone: another export may be writing them."""
    return {temp for name in (WEIGHTS, ONNX, MANIFEST) for temp in safeio.temp_files(out_dir / name)}


def _export_files(manifest_path: Path) -> set[str] | None:
    """The files a cnnlab export manifest lists (its sha256 keys), or None when the file is not one."""
    try:
        hashes = _read_manifest(manifest_path)["sha256"]
    except WeightsError:
        return None
    return set(hashes) if isinstance(hashes, dict) else None


def load_exported(export_dir: str | Path) -> TrainedModel:
    """Load an `export` directory after checking every file's SHA-256 against its manifest."""

    export_dir = Path(export_dir)
    manifest = _read_manifest(export_dir / MANIFEST)
    weights = export_dir / WEIGHTS
    expected = manifest["sha256"].get(WEIGHTS) if isinstance(manifest["sha256"], dict) else None
    if not weights.is_file():
        raise WeightsError(f"{weights} is missing; re-run `cnnlab export`")
    if safeio.sha256_file(weights) != expected:
        raise WeightsError(
            f"{weights} does not match the SHA-256 in {export_dir / MANIFEST} (corrupt or "
            "modified); re-run `cnnlab export`"
        )
    size, stats = manifest["input_size"], manifest["normalization"]
    if not (isinstance(size, list) and len(size) == 3 and isinstance(stats, dict)):
        raise WeightsError(f"{export_dir / MANIFEST}: input_size or normalization is malformed")
    meta = {
        "model": manifest["architecture"],
        "model_hparams": manifest["model_hparams"],
        "class_names": manifest["classes"],
        "in_chans": size[0],
        "image_size": size[1],
        "mean": stats.get("mean"),
        "std": stats.get("std"),
        "config": manifest["config"],
    }
    return build_trained_model(meta, safeio.load_checkpoint(weights), source=export_dir / MANIFEST)


MANIFEST_KEYS = (
    "architecture",
    "model_hparams",
    "classes",
    "input_size",
    "normalization",
    "sha256",
    "config",
)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = safeio.read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise WeightsError(f"cannot read {path}: {error}; re-run `cnnlab export` into a new folder") from None
    missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise WeightsError(f"{path} lacks {', '.join(missing)}; re-run `cnnlab export` into a new folder")
    return manifest


def _export_onnx(model: nn.Module, input_size: list[int]) -> bytes:
    """The model as ONNX bytes (traced into a temporary folder, never into --out)."""
    try:
        import onnx  # noqa: F401  (an optional extra: probed here, only when --onnx asks for it)
    except ImportError:
        raise ConfigError("--onnx needs the onnx package: pip install 'cnnlab[onnx]'") from None
    example = torch.zeros(1, *input_size)
    with tempfile.TemporaryDirectory(prefix="cnnlab-onnx-") as folder:
        traced = Path(folder) / ONNX
        torch.onnx.export(
            model.float().eval(),
            (example,),
            str(traced),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        return traced.read_bytes()


def _data_config(trained: TrainedModel, data: str | None, data_dir: str | None) -> cfg.DataConfig:
    config = cfg.from_dict(trained.meta["config"]).data
    changes = {key: value for key, value in {"name": data, "data_dir": data_dir}.items() if value}
    if data:
        changes.update(subset=None, per_class=None, splits_file=None)
    return dataclasses.replace(config, **changes)


def _class_names(data_config: cfg.DataConfig) -> tuple[str, ...]:
    return load_split(data_config, "test").class_names


def _split_images(
    trained: TrainedModel, data_config: cfg.DataConfig, split: str, path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "test":
        test = load_split(data_config, "test")
        return test.images, test.labels
    train = load_split(data_config, "train")
    if split == "train":
        return train.images, train.labels
    splits_file = _run_dir(path) / runfolder.SPLITS_FILE
    if data_config.splits_file and not splits_file.is_file():
        splits_file = Path(data_config.splits_file)  # a study run: the study's shared splits
    if split != "val" or not splits_file.is_file():
        raise ConfigError(
            f"--split {split!r}: use test, train, or val (val needs the run directory's "
            "splits.json beside checkpoints/)"
        )
    fold = data_config.split_index
    splits = Splits.load(splits_file)
    try:
        splits.check_labels(train.labels, source=str(splits_file))
    except DataError:  # another --data (or a changed dataset): those indices would pick other images
        raise ConfigError(
            f"--split val: {cfg.quoted(splits_file)} holds the validation part of the {splits.num_samples} "
            f"training images the run was made with, not of the {len(train.labels)} training images of "
            f"{data_config.name!r} now; use --split test or train"
        ) from None
    _, val_idx = splits.indices(fold)
    index = torch.as_tensor(val_idx)
    return train.images[index], train.labels[index]


def _run_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent.parent


def _predict(trained: TrainedModel, images: torch.Tensor, *, batch_size: int) -> np.ndarray:
    """Class probabilities of a trained model for uint8 images, normalised with its training statistics."""
    mean, std = tuple(trained.meta["mean"]), tuple(trained.meta["std"])
    tta = trained.meta.get("config", {}).get("train", {}).get("tta", "none")  # older checkpoints: none
    return predict_probs(
        trained.model, images, mean=mean, std=std, device=_device(), batch_size=batch_size, tta=tta
    )


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _id_sort_key(identifier: str) -> tuple[int, int | str]:
    """Numeric ids sort numerically (Kaggle's 1, 2, 10), others alphabetically, numbers first."""
    return (0, int(identifier)) if identifier.isdigit() else (1, identifier)


def _predictions_csv(rows: list[tuple[str, np.ndarray]], class_names: list[str], fmt: str) -> str:
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "kaggle":
        writer.writerow(["id", "label"])
        writer.writerows([identifier, int(probs.argmax())] for identifier, probs in rows)
    elif fmt == "probs":
        writer.writerow(["id", *class_names])
        writer.writerows([identifier, *(f"{p:.6f}" for p in probs)] for identifier, probs in rows)
    else:
        raise ConfigError(f"--format {fmt!r} is not allowed; allowed: kaggle, probs")
    return buffer.getvalue()
