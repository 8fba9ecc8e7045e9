"""What `cnnlab data` prints: the table of known datasets, and the details of one (never downloads)."""

from __future__ import annotations

from cnnlab.config import DataConfig
from cnnlab.data import folder as folder_data
from cnnlab.data.catalog import (
    FOLDER_PREFIX,
    SPECS,
    DatasetSpec,
    IncompleteDataset,
    get_spec,
    load_local_split,
    locate,
)
from cnnlab.data.imageset import ImageSet
from cnnlab.data.locations import OFFLINE_ENV, offline
from cnnlab.errors import one_line

_SOURCES = {"digits": "bundled with scikit-learn", "synthetic": "generated on the fly"}


def dataset_table(data_dir: str | None = None) -> str:
    """One row per known dataset: where its files were found (or not), nominal sizes, shape, classes."""
    rows = [("NAME", "TRAIN", "TEST", "SHAPE", "CLASSES", "FOUND")]
    for spec in SPECS.values():
        rows.append(
            (
                spec.name,
                f"{spec.sizes[0]:,}",
                f"{spec.sizes[1]:,}",
                _shape(spec.shape),
                str(spec.num_classes),
                _where(spec, data_dir),
            )
        )
    rows.append((f"{FOLDER_PREFIX}PATH", "-", "-", "3xSxS", "-", "any folder with one subfolder per class"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _where(spec: DatasetSpec, data_dir: str | None) -> str:
    """Where a dataset's files are, or what happens when it is first used."""
    if spec.kind in _SOURCES:
        return _SOURCES[spec.kind]
    try:
        found = locate(spec, data_dir)
    except IncompleteDataset as error:  # a folder the user named holds only some files: say so, list the rest
        return one_line(str(error))
    if found:
        return f"{found.directory} ({found.origin})"
    if offline():
        return f"not found locally (${OFFLINE_ENV} is set: put its files in --data-dir or $CNNLAB_DATA)"
    return "not found locally (a download is tried on first use; offline, put its files in $CNNLAB_DATA)"


def _shape(shape: tuple[int, ...]) -> str:
    """(C, H, W) as CxHxW."""
    return "x".join(str(n) for n in shape)


def describe_dataset(data: DataConfig) -> str:
    """Details of one dataset: where it is, split sizes, image shape and classes with their counts."""
    if data.name.startswith(FOLDER_PREFIX):
        return describe_folder(data)
    spec = get_spec(data.name)
    train, test = load_local_split(data, "train"), load_local_split(data, "test")
    if spec.kind in _SOURCES:
        where = _SOURCES[spec.kind]
    else:
        found = locate(spec, data.data_dir)
        where = f"{found.directory} ({found.origin})" if found else "?"
    return "\n".join([f"dataset: {spec.name}", f"found:   {where}", *_split_lines(train, test)])


def _split_lines(train: ImageSet, test: ImageSet) -> list[str]:
    """Sizes, shape and per-class counts of a train/test pair."""
    counts = train.class_counts()
    classes = ", ".join(f"{one_line(name)} ({count:,})" for name, count in zip(train.class_names, counts))
    return [
        f"train:   {len(train):,} images",
        f"test:    {len(test):,} images",
        f"shape:   {_shape(train.shape)} uint8",
        f"classes ({len(train.class_names)}, training counts): {classes}",
    ]


def describe_folder(data: DataConfig) -> str:
    """Preflight scan of `folder:PATH`, then a decode (through the cache) under the data config's policy."""
    root = folder_data.resolve_folder(data.name[len(FOLDER_PREFIX) :])
    lines = [one_line(f"dataset: {FOLDER_PREFIX}{root}")]
    options = folder_data.FolderOptions(
        image_size=data.image_size or folder_data.DEFAULT_IMAGE_SIZE,
        background=tuple(data.background),
        bad_images=data.bad_images,
        test_fraction=data.test_fraction,
    )
    roots = folder_data.class_roots(root)
    for part, class_root in roots.items():
        scan = folder_data.scan_folder(class_root)
        lines.extend(_scan_lines(part, scan))
        scan.check()
    splits = folder_data.load_folder_splits(root, options)
    lines.extend(_split_lines(splits["train"], splits["test"]))
    bad = folder_data.excluded_files(root, splits)
    if bad:
        lines.append(
            one_line(
                f"excluded {len(bad)} bad image file(s) (data.bad_images=skip): "
                + "; ".join(f"{rel} ({reason})" for rel, reason in bad)
            )
        )
    return "\n".join(lines)


def _scan_lines(part: str, scan: folder_data.FolderScan) -> list[str]:
    """What the preflight scan of one class root found."""
    label = "" if part == "all" else f"{part}/ "
    lines = [f"{label}scan:  {len(scan.class_names)} class folders, {len(scan.files):,} image files"]
    if scan.hidden:
        lines.append(f"  ignored {len(scan.hidden)} hidden entries: {', '.join(scan.hidden)}")
    if scan.non_images:
        lines.append(f"  skipped {len(scan.non_images)} non-image files: {', '.join(scan.non_images)}")
    lines.extend(f"  problem: {problem}" for problem in scan.problems())
    return [one_line(line) for line in lines]  # a file name may hold a newline
