"""The one place that resolves a dataset name: known datasets, where their files are, how to load a split.

Lookup order for file-backed datasets: `data_dir`, `$CNNLAB_DATA`, system paths (`/usr/share/datasets`,
where Debian's `dataset-fashion-mnist` installs its IDX files), the download cache, then torchvision's
download (skipped when `$CNNLAB_OFFLINE=1`). `load_split` is memoised per process, so a study worker
loads each dataset once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import torch

from cnnlab.config import DataConfig, quoted
from cnnlab.data import folder as folder_data
from cnnlab.data import locations
from cnnlab.data.augment import parse_augment
from cnnlab.data.generated import (
    SYNTHETIC_CHANNELS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_SIZE,
    SYNTHETIC_SIZES,
    digits_split,
    synthetic_split,
)
from cnnlab.data.imageset import ImageSet, apply_subset, apply_test_subset, resize_images, select_classes
from cnnlab.data.readers import (
    file_exists,
    read_cifar_batches,
    read_cifar_class_names,
    read_idx_images,
    read_idx_labels,
)
from cnnlab.errors import ConfigError, DataError, first_line, unknown_choice

SPLITS = ("train", "test")
FOLDER_PREFIX = "folder:"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_HOW = "put the four IDX files (train-images-idx3-ubyte[.gz], ...) in --data-dir or $CNNLAB_DATA"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its format, nominal sizes and how a user gets its files."""

    name: str
    kind: str  # idx | cifar | digits | synthetic
    shape: tuple[int, int, int]  # (C, H, W) as stored
    sizes: tuple[int, int]  # nominal (train, test) image counts
    num_classes: int
    torchvision_class: str | None = None  # the torchvision dataset class used to download it
    folder_name: str = ""  # torchvision's folder for it (FashionMNIST, cifar-10-batches-py)
    class_names: tuple[str, ...] = ()  # fixed names (IDX datasets); CIFAR reads them from its meta file
    how_to_get: str = ""
    cifar_files: tuple[tuple[str, ...], tuple[str, ...], str, str, str] | None = (
        None  # train, test, meta, keys
    )


_DIGITS_NAMES = tuple(str(d) for d in range(10))
_FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_KMNIST_NAMES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
_CIFAR10_FILES = (
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "label_names",
    "labels",
)
_CIFAR100_FILES = (("train",), ("test",), "meta", "fine_label_names", "fine_labels")
_CIFAR_HOW = "extract {archive} (https://www.cs.toronto.edu/~kriz/cifar.html) into --data-dir or $CNNLAB_DATA"

_DOWNLOAD = ", or run once with network access to download"


def _idx_spec(name: str, torchvision_class: str, class_names: tuple[str, ...], how: str = "") -> DatasetSpec:
    """An MNIST-format dataset: 60,000 + 10,000 grey 28x28 images in IDX files."""
    return DatasetSpec(
        name,
        "idx",
        (1, 28, 28),
        (60000, 10000),
        10,
        torchvision_class,
        torchvision_class,
        class_names,
        f"{how}{_IDX_HOW}{_DOWNLOAD} them",
    )


def _cifar_spec(
    name: str,
    classes: int,
    torchvision_class: str,
    folder: str,
    archive: str,
    files: tuple[tuple[str, ...], tuple[str, ...], str, str, str],
) -> DatasetSpec:
    """A CIFAR dataset: 50,000 + 10,000 colour 32x32 images in the python pickles of `archive`."""
    return DatasetSpec(
        name,
        "cifar",
        (3, 32, 32),
        (50000, 10000),
        classes,
        torchvision_class,
        folder,
        how_to_get=_CIFAR_HOW.format(archive=archive) + f"{_DOWNLOAD} it",
        cifar_files=files,
    )


SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", "digits", (1, 28, 28), (1437, 360), 10, class_names=_DIGITS_NAMES),
        _idx_spec("mnist", "MNIST", _DIGITS_NAMES),
        _idx_spec(
            "fashion-mnist", "FashionMNIST", _FASHION_NAMES, "apt-get install dataset-fashion-mnist, or "
        ),
        _idx_spec("kmnist", "KMNIST", _KMNIST_NAMES),
        _cifar_spec(
            "cifar10", 10, "CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz", _CIFAR10_FILES
        ),
        _cifar_spec(
            "cifar100", 100, "CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz", _CIFAR100_FILES
        ),
        DatasetSpec(
            "synthetic",
            "synthetic",
            (SYNTHETIC_CHANNELS, SYNTHETIC_SIZE, SYNTHETIC_SIZE),
            (SYNTHETIC_SIZES["train"], SYNTHETIC_SIZES["test"]),
            SYNTHETIC_CLASSES,
        ),
    )
}


def dataset_names() -> list[str]:
    """Every dataset name `data.name` accepts (folders as `folder:PATH`)."""
    return [*SPECS, f"{FOLDER_PREFIX}PATH"]


def get_spec(name: str) -> DatasetSpec:
    """The spec of a named dataset; an unknown name is a ConfigError listing the known ones."""
    if name not in SPECS:
        raise unknown_choice("dataset", name, dataset_names())
    return SPECS[name]


class IncompleteDataset(DataError):
    """A folder the user named holds some of a dataset's files but not all (`cnnlab data` lists it)."""


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a file-backed dataset was found: its folder and which search place it came from."""

    directory: Path
    origin: str


def locate(spec: DatasetSpec, data_dir: str | None) -> Location | None:
    """The first folder in the lookup order that holds all of the dataset's files, or None.

    A folder the user named (`--data-dir`, `$CNNLAB_DATA`) that holds only some of them is an error, never
    skipped: the copy found further down the list would be used without a word."""
    for root, origin in locations.search_roots(data_dir):
        candidates = _candidate_dirs(spec, root)
        for candidate in candidates:
            if _has_all_files(spec, candidate):
                return Location(candidate, origin)
        if origin in locations.USER_ORIGINS:
            _refuse_incomplete(spec, candidates, origin)
    return None


def _refuse_incomplete(spec: DatasetSpec, candidates: list[Path], origin: str) -> None:
    """A DataError for the first candidate folder that holds some, but not all, of the dataset's files."""
    for candidate in candidates:
        missing = _missing_files(spec, candidate)
        if len(missing) < len(_file_names(spec)):
            raise IncompleteDataset(
                f"{spec.name}: {origin} folder {quoted(candidate)} holds only some of its files: missing "
                f"{', '.join(missing)}; add them (the dataset's original files) or remove the others"
            )


def _candidate_dirs(spec: DatasetSpec, root: Path) -> list[Path]:
    """Layouts accepted under one search root: our name, torchvision's layout, or the root itself (unless
    the root is named for another dataset: MNIST, Fashion-MNIST and KMNIST share their file names, so a
    `fashion-mnist` folder holding its files directly must not be found as `mnist`)."""
    if spec.kind == "idx":
        named = [root / spec.name, root / spec.folder_name / "raw", root / spec.folder_name]
    else:
        named = [root / spec.folder_name, root / spec.name / spec.folder_name, root / spec.name]
    return named if _named_for_another(spec, root) else [*named, root]


def _named_for_another(spec: DatasetSpec, folder: Path) -> bool:
    """Is `folder` named like another dataset of the catalog (its name or torchvision's folder name)?"""
    name = folder.name.lower()
    return any(
        name in (other.name.lower(), (other.folder_name or "").lower())
        for other in SPECS.values()
        if other.name != spec.name and other.kind == spec.kind
    )


def _has_all_files(spec: DatasetSpec, directory: Path) -> bool:
    """True when `directory` holds every file of both splits."""
    return not _missing_files(spec, directory)


def _file_names(spec: DatasetSpec) -> list[str]:
    """The files of both splits (IDX files without `.gz`: either form is accepted)."""
    if spec.kind == "idx":
        return [n for split in SPLITS for n in IDX_FILES[split]]
    train, test, meta, _, _ = spec.cifar_files  # type: ignore[misc]
    return [*train, *test, meta]


def _missing_files(spec: DatasetSpec, directory: Path) -> list[str]:
    """The dataset's files that `directory` lacks as readable files (all of them when it is no folder)."""
    if spec.kind == "idx":
        return [f"{n}[.gz]" for n in _file_names(spec) if _idx_path(directory, n) is None]
    return [n for n in _file_names(spec) if not file_exists(directory / n)]


def _idx_path(directory: Path, base: str) -> Path | None:
    """The raw IDX file if present, else its `.gz`, else None."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if file_exists(candidate):
            return candidate
    return None


def ensure_local(spec: DatasetSpec, data_dir: str | None, *, download: bool) -> Location:
    """Find the dataset's files, downloading them with torchvision when allowed and nothing was found."""
    found = locate(spec, data_dir)
    if found is not None:
        return found
    reason = "not attempted"
    if download and locations.offline():
        reason = f"skipped (${locations.OFFLINE_ENV} is set)"
    elif download:
        target = locations.download_root(data_dir)
        try:
            _download(spec, target)
        except (OSError, RuntimeError, ValueError) as error:
            reason = f"failed ({type(error).__name__}: {first_line(error)})"
        else:
            found = locate(spec, str(target))
            if found is not None:
                return Location(found.directory, "download")
            reason = f"gave no usable files in {target}"
    searched = ", ".join(f"{root} ({origin})" for root, origin in locations.search_roots(data_dir))
    raise DataError(
        f"dataset {spec.name!r} not found locally; searched {searched}; download {reason}; "
        f"to get it: {spec.how_to_get}"
    )


def _download(spec: DatasetSpec, root: Path) -> None:
    """Download (and extract) a dataset's files into `root` with torchvision's own downloader."""
    import torchvision.datasets as tv_datasets  # ~2.7 s: only to download (docs/architecture.md, Imports)
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(tv_datasets, spec.torchvision_class or "")
    if spec.kind == "idx":
        dataset_class(root=str(root), train=True, download=True)
    else:
        download_and_extract_archive(
            dataset_class.url, str(root), filename=dataset_class.filename, md5=dataset_class.tgz_md5
        )


@functools.lru_cache(maxsize=4)
def _read_files(spec: DatasetSpec, directory: Path, split: str) -> ImageSet:
    """One split of a file-backed dataset as stored (memoised: files are read once per process)."""
    if spec.kind == "idx":
        image_file, label_file = (_idx_path(directory, base) for base in IDX_FILES[split])
        images, labels = read_idx_images(image_file), read_idx_labels(label_file)  # type: ignore[arg-type]
        names = spec.class_names
    else:
        train, test, meta, names_key, label_key = spec.cifar_files  # type: ignore[misc]
        files = [directory / n for n in (train if split == "train" else test)]
        images, labels = read_cifar_batches(files, label_key)
        names = read_cifar_class_names(directory / meta, names_key)
    _check_consistent(spec, directory, images, labels, names)
    return ImageSet(images, labels, tuple(names))


def _check_consistent(
    spec: DatasetSpec, directory: Path, images: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...]
) -> None:
    """Counts match, images have the dataset's shape and every label indexes a class; errors name the
    folder."""
    if tuple(images.shape[1:]) != tuple(spec.shape):
        stored = "x".join(str(side) for side in images.shape[1:])
        raise DataError(
            f"{spec.name} in {directory}: images are {stored}, not {'x'.join(map(str, spec.shape))}; the "
            "files are damaged or of another dataset: put the original files there"
        )
    if len(images) != len(labels):
        raise DataError(f"{spec.name} in {directory}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        raise DataError(f"{spec.name} in {directory}: labels outside 0..{len(names) - 1}")


@dataclasses.dataclass(frozen=True)
class _LoadKey:
    """Everything a split depends on, resolved (absolute paths) so it can key the per-process memo."""

    name: str
    data_dir: str | None
    data_env: str | None
    system_dirs: tuple[str, ...]
    image_size: int | None
    classes: tuple[str, ...] | None
    subset: int | None
    per_class: int | None
    bad_images: str
    test_fraction: float
    background: tuple[int, ...]
    download: bool


def load_split(data: DataConfig, split: str) -> ImageSet:
    """A split ("train" or "test") of `data.name` with `image_size`, `classes`, `subset`/`per_class` applied.

    `subset`/`per_class` apply to the training split only, `test_subset` to the test split. Memoised per
    process.
    """
    image_set = _load_memoised(_resolve_key(data, download=True), _check_split(split))
    return apply_test_subset(image_set, data.test_subset) if split == "test" else image_set


def excluded_images(data: DataConfig) -> tuple[tuple[str, str], ...]:
    """The images of a folder dataset that `data.bad_images: skip` excluded from both splits, named from the
    folder (a run's bad_images.txt); () for a named dataset."""
    if not data.name.startswith(FOLDER_PREFIX):
        return ()
    root = folder_data.resolve_folder(data.name[len(FOLDER_PREFIX) :])
    key = _resolve_key(data, download=True)  # the whole test split: data.test_subset drops no bad file
    splits = {split: _load_memoised(key, split) for split in ("train", "test")}
    return folder_data.excluded_files(root, splits)


def load_local_split(data: DataConfig, split: str) -> ImageSet:
    """Like `load_split`, but never downloads (for `cnnlab data`)."""
    return _load_memoised(_resolve_key(data, download=False), _check_split(split))


def clear_memory_cache() -> None:
    """Forget every memoised split (the next load reads files or the decode cache again)."""
    _load_memoised.cache_clear()
    _read_files.cache_clear()
    _generated.cache_clear()
    folder_data.load_folder_splits.cache_clear()


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    return split


def _resolve_key(data: DataConfig, *, download: bool) -> _LoadKey:
    """The memo key of a data config: paths made absolute, environment captured."""
    name = data.name
    if name.startswith(FOLDER_PREFIX):
        name = FOLDER_PREFIX + str(folder_data.resolve_folder(name[len(FOLDER_PREFIX) :]))
    else:
        get_spec(name)
    data_dir = locations.data_dir_folder(data.data_dir)
    return _LoadKey(
        name,
        str(data_dir) if data_dir else None,
        os.environ.get(locations.DATA_ENV),
        tuple(locations.SYSTEM_DATA_DIRS),
        data.image_size,
        data.classes,
        data.subset,
        data.per_class,
        data.bad_images,
        data.test_fraction,
        tuple(data.background),
        download,
    )


@functools.lru_cache(maxsize=8)
def _load_memoised(key: _LoadKey, split: str) -> ImageSet:
    """Load, select classes, subset and resize one split (the per-process memo behind `load_split`): only
    the images kept are resized, each on its own, so the order changes no pixel."""
    image_set = _load_native(key, split)
    if key.classes:
        image_set = select_classes(image_set, key.classes)
    if split == "train":
        image_set = apply_subset(image_set, subset=key.subset, per_class=key.per_class)
    if key.image_size is not None and not key.name.startswith(FOLDER_PREFIX):
        image_set = dataclasses.replace(image_set, images=resize_images(image_set.images, key.image_size))
    return image_set


def _load_native(key: _LoadKey, split: str) -> ImageSet:
    """The split at the dataset's own size (folders: decoded at the requested size)."""
    if key.name.startswith(FOLDER_PREFIX):
        options = folder_data.FolderOptions(
            image_size=key.image_size or folder_data.DEFAULT_IMAGE_SIZE,
            background=key.background,
            bad_images=key.bad_images,
            test_fraction=key.test_fraction,
        )
        return folder_data.load_folder_split(Path(key.name[len(FOLDER_PREFIX) :]), split, options)
    spec = get_spec(key.name)
    if spec.kind in ("digits", "synthetic"):
        return _generated(spec.kind, split, key.image_size if spec.kind == "synthetic" else None)
    location = ensure_local(spec, key.data_dir, download=key.download)
    return _read_files(spec, location.directory, split)


@functools.lru_cache(maxsize=4)
def _generated(kind: str, split: str, size: int | None) -> ImageSet:
    """digits or synthetic (synthetic is generated directly at the requested size)."""
    return digits_split(split) if kind == "digits" else synthetic_split(split, size)


def native_side(data: DataConfig) -> int:
    """The square side a dataset is served at: data.image_size, else the folder default or its stored side."""
    if data.image_size is not None:
        return data.image_size
    if data.name.startswith(FOLDER_PREFIX):
        return folder_data.DEFAULT_IMAGE_SIZE
    return get_spec(data.name).shape[-1]


def check_data_config(data: DataConfig) -> None:
    """Validate the data keys that config.py cannot check alone (dataset name, augmentation preset,
    data_dir is a folder)."""
    locations.data_dir_folder(data.data_dir)
    if data.name.startswith(FOLDER_PREFIX):
        folder_data.resolve_folder(data.name[len(FOLDER_PREFIX) :])
        folder_data.check_background(tuple(data.background))
    else:
        get_spec(data.name)
    if data.augment is not None:  # None: the run's recipe chooses (cnnlab.train.recipes)
        parse_augment(data.augment)
    if data.image_size is not None and data.image_size < 1:
        raise ConfigError(f"data.image_size={data.image_size} is out of range; it must be at least 1")
