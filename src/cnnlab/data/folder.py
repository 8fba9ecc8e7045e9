"""`folder:PATH` datasets: preflight scan, one decode per image, colour conversion, and the decode cache.

A folder holds one subfolder per class (class names are the sorted subfolder names), or `train/` and
`test/` folders that each hold the class subfolders. Hidden entries (a leading dot, `__MACOSX`) are ignored
and reported; files without an image suffix are counted and skipped; an empty class or a symlink that leaves
the root stops the load. Every image is decoded once at the requested size and the result is cached as a
uint8 tensor file under `$CNNLAB_CACHE/folders/`, keyed by the folder, the size and the conversion settings
and checked against each file's (size, mtime_ns, inode, ctime_ns), so later runs decode only files that
changed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab import safeio
from cnnlab.data.imageset import ImageSet, take
from cnnlab.data.locations import CACHE_ENV, cache_root
from cnnlab.errors import ConfigError, DataError, WeightsError, describe_os_error

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 64  # side of folder images when data.image_size is unset (shorter side + centre crop)
DEFAULT_BACKGROUND = (255, 255, 255)  # white behind transparent pixels unless data.background says otherwise
MAX_IMAGE_PIXELS = 89_478_485  # pixel cap read from the header before decoding (Pillow's own warning level)
EARLY_REDUCE_PIXELS = 4096 * 4096  # images above this many decoded pixels are box-reduced before conversion
EARLY_REDUCE_MARGIN = 4  # ... by an integer factor that keeps the shorter side >= 4x the target side
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM"})
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
IGNORED_NAMES = frozenset({"__MACOSX"})  # folders zip tools leave behind, ignored like hidden ones
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
FOLDER_TEST_SEED = 0  # the test share of a folder without train/ and test/ is fixed, independent of run seeds
CACHE_FORMAT = 3  # bump when decoding changes so old cache files are not reused (3: early reduce)
DECODE_WORKERS = min(8, os.cpu_count() or 1)  # threads decoding images (Pillow releases the GIL)


@dataclasses.dataclass(frozen=True)
class FolderOptions:
    """How folder images are decoded and what happens to bad files."""

    image_size: int = DEFAULT_IMAGE_SIZE
    background: tuple[int, ...] = DEFAULT_BACKGROUND
    bad_images: str = "error"  # error | skip
    test_fraction: float = 0.2
    max_pixels: int = MAX_IMAGE_PIXELS


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What the preflight scan found under one class root (paths relative to it)."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[tuple[str, int], ...]  # (relative path, class index) of files with an image suffix
    hidden: tuple[str, ...]  # ignored hidden entries
    non_images: tuple[str, ...]  # files without an image suffix (skipped)
    empty_classes: tuple[str, ...]  # class folders without a single image file
    outside_links: tuple[str, ...]  # symlinks that resolve outside the root
    skipped_links: tuple[str, ...] = ()  # loops, and links into another class or back up the tree (skipped)
    special_files: tuple[str, ...] = ()  # FIFOs, sockets, devices (skipped, never opened)
    dangling_links: tuple[str, ...] = ()  # symlinks whose target does not exist (skipped)

    def problems(self) -> list[str]:
        """What stops a load: no classes, empty classes, symlinks leaving the root."""
        found = []
        if not self.class_names:
            found.append("no class subfolders (expected one subfolder of images per class)")
        twins = _normalisation_twins(self.class_names)
        if twins:
            found.append(
                f"class folders whose names differ only in their Unicode form: {'; '.join(twins)} (one name "
                "written two ways, e.g. copied from macOS and Linux: their images would be two classes; "
                "merge them into one folder)"
            )
        if self.empty_classes:
            found.append(
                f"empty class folders (no image files): {', '.join(self.empty_classes)} (add images to them "
                "or remove them)"
            )
        if self.outside_links:
            found.append(
                f"symlinks leaving the folder: {', '.join(self.outside_links)} (copy those images into the "
                "folder or remove the links)"
            )
        return found

    def check(self) -> None:
        """Raise a DataError naming every problem the scan found."""
        if self.problems():
            raise DataError(f"folder {self.root}: {'; '.join(self.problems())}")


def _normalisation_twins(names: Sequence[str]) -> list[str]:
    """Groups of names that are one name in another Unicode form ('café' composed and decomposed), each as
    `ascii()` forms joined by ' and ' (printed, they look the same)."""
    by_form: dict[str, list[str]] = {}
    for name in names:
        by_form.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    return [" and ".join(ascii(name) for name in group) for group in by_form.values() if len(group) > 1]


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """The image files under one folder, found by the rules of a class folder (paths relative to it)."""

    root: Path
    files: tuple[str, ...]  # sorted
    hidden: tuple[str, ...]
    non_images: tuple[str, ...]
    outside_links: tuple[str, ...]  # symlinks leaving the folder (not followed)
    skipped_links: tuple[str, ...]  # loops and links back up the tree (not followed)
    special_files: tuple[str, ...]  # FIFOs, sockets, devices (never opened)
    dangling_links: tuple[str, ...] = ()  # symlinks whose target does not exist (skipped)

    def check(self) -> None:
        """Raise a DataError for symlinks leaving the folder: their images would be read from elsewhere."""
        if self.outside_links:
            raise DataError(
                f"folder {self.root}: symlinks leaving the folder: {', '.join(self.outside_links)}; copy "
                "those images into the folder or remove the links"
            )


@dataclasses.dataclass(frozen=True)
class FolderLoad:
    """A decoded class root: the good images, the bad files, and how much decoding this load did."""

    image_set: ImageSet
    scan: FolderScan
    bad_files: tuple[tuple[str, str], ...]  # (relative path, reason)
    decoded: int  # images decoded by this load (0 when the cache covered everything)
    cache_file: Path


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason."""


def resolve_folder(path: str) -> Path:
    """The absolute folder of `folder:PATH` (relative paths are taken from the working directory)."""
    if not path.strip():
        raise ConfigError("data.name='folder:' needs a path, e.g. folder:data/cats-vs-dogs")
    return Path(path).expanduser().absolute()


def class_roots(root: Path) -> dict[str, Path]:
    """{"all": root} for a plain folder, or {"train": root/train, "test": root/test} (train/test layout).

    A root holding a `train/` or `test/` folder is meant as the train/test layout, so both must hold class
    subfolders; anything else (e.g. Kaggle's unlabeled test/ images) stops the load instead of becoming
    classes named "train" and "test".
    """
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"folder {root} {problem} (data.name=folder:PATH needs a folder of class subfolders)")
    train, test = root / "train", root / "test"
    if not (train.is_dir() or test.is_dir()):
        return {"all": root}
    if _has_subfolder(train) and _has_subfolder(test):
        return {"train": train, "test": test}
    raise DataError(_layout_message(root, train, test))


def _layout_message(root: Path, train: Path, test: Path) -> str:
    """What is wrong with a half train/test layout, and what to do about it."""
    if not _has_subfolder(train):
        labelled, unlabelled = test, train
    else:
        labelled, unlabelled = train, test
    if not _has_subfolder(labelled):
        return (
            f"folder {root} has train/ and/or test/ but neither holds class subfolders: give train/ and "
            "test/ one subfolder per class, or point folder: at a folder of class subfolders"
        )
    if not unlabelled.is_dir():
        return (
            f"folder {root} has {labelled.name}/ with class subfolders but no {unlabelled.name}/: give "
            f"{unlabelled.name}/ the same class subfolders, or point folder: at {labelled} and let cnnlab "
            "split off a test part (data.test_fraction)"
        )
    return (
        f"folder {root} has {labelled.name}/ with class subfolders but {unlabelled.name}/ holds no class "
        f"subfolders (Kaggle's unlabeled test images?): give {unlabelled.name}/ one subfolder per class, or "
        f"point folder: at {labelled} and let cnnlab split off a test part (data.test_fraction); predict "
        f"unlabeled images with `cnnlab predict --images {unlabelled}`"
    )


def _report_layout_leftovers(root: Path) -> None:
    """Log what a train/test root holds besides train/ and test/ (e.g. a val/ folder), as the scan does."""
    names = sorted(entry.name for entry in os.scandir(root) if entry.name not in ("train", "test"))
    _warn_entries(
        root,
        (
            ([name for name in names if _ignored(name)], "ignored %d hidden entries"),
            (
                [name for name in names if not _ignored(name)],
                "skipped %d entries beside train/ and test/ (not part of the dataset)",
            ),
        ),
    )


def _has_subfolder(directory: Path) -> bool:
    """True when `directory` exists and has at least one visible subfolder."""
    if not directory.is_dir():
        return False
    return any(entry.is_dir() and not _ignored(entry.name) for entry in os.scandir(directory))


def _ignored(name: str) -> bool:
    """Hidden files and folders (a leading dot) and zip leftovers are never part of a dataset."""
    return name.startswith(".") or name in IGNORED_NAMES


def scan_folder(root: Path) -> FolderScan:
    """Preflight scan of a class root: class folders, image files, and everything ignored or rejected."""
    try:
        return _scan(root)
    except OSError as error:
        raise _scan_error(root, error) from None


def list_image_files(folder: Path) -> ImageFiles:
    """Every image file under `folder`, subfolders included, found as in a class folder of a dataset:
    hidden entries and non-images skipped, FIFOs and devices never opened, symlink loops never followed,
    links leaving `folder` recorded instead of followed (for `cnnlab predict` and `cnnlab explain`)."""
    files: list[str] = []
    found = _found_lists()
    try:
        real = folder.resolve()
        _walk(folder, "", (real, real), files, found, {real})
    except OSError as error:
        raise _scan_error(folder, error) from None
    return ImageFiles(
        folder,
        tuple(sorted(files)),
        tuple(found["hidden"]),
        tuple(found["non_images"]),
        tuple(found["outside"]),
        tuple(found["skipped"]),
        tuple(found["special"]),
        tuple(found["dangling"]),
    )


def _scan_error(root: Path, error: OSError) -> DataError:
    """A file-system error met while listing a folder (an unreadable subfolder, say), as one line."""
    return DataError(f"cannot scan folder {root}: {error.strerror or error} ({error.filename})")


def _found_lists() -> dict[str, list[str]]:
    """Empty lists of the entries a walk leaves out, by kind."""
    return {kind: [] for kind in ("hidden", "non_images", "outside", "skipped", "special", "dangling")}


def _scan(root: Path) -> FolderScan:
    """The scan itself (file-system errors are turned into a DataError by scan_folder)."""
    real_root = root.resolve()
    found = _found_lists()
    class_names, class_files, class_reals = [], [], set()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        real = _link_target(entry, real_root, real_root, found, entry.name)
        if real is None:
            continue
        if _ignored(entry.name):
            found["hidden"].append(entry.name)
        elif entry.is_dir():
            if real in class_reals or real == real_root:
                found["skipped"].append(entry.name)  # a second name for a class: never read twice
                continue
            class_reals.add(real)
            files: list[str] = []
            _walk(Path(entry.path), entry.name, (real, real_root), files, found, {real})
            class_names.append(entry.name)
            class_files.append(files)
        else:
            found["non_images"].append(entry.name)
    image_files = tuple((rel, index) for index, files in enumerate(class_files) for rel in sorted(files))
    empty = tuple(name for name, files in zip(class_names, class_files) if not files)
    return FolderScan(
        root,
        tuple(class_names),
        image_files,
        tuple(found["hidden"]),
        tuple(found["non_images"]),
        empty,
        tuple(found["outside"]),
        tuple(found["skipped"]),
        tuple(found["special"]),
        tuple(found["dangling"]),
    )


def _walk(
    directory: Path,
    rel: str,
    roots: tuple[Path, Path],
    files: list[str],
    found: dict[str, list[str]],
    visited: set[Path],
) -> None:
    """Collect image files under one class folder (`roots`: its real path and the dataset's), recording
    hidden, non-image, escaping and skipped entries; paths are `rel`/name ("" for the folder itself)."""
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        entry_rel = f"{rel}/{entry.name}" if rel else entry.name
        real = _link_target(entry, roots[0], roots[1], found, entry_rel)
        if real is None:
            continue
        if _ignored(entry.name):
            found["hidden"].append(entry_rel)
        elif entry.is_dir():
            if real in visited:
                found["skipped"].append(entry_rel)  # a link back up the tree
            else:
                _walk(Path(entry.path), entry_rel, roots, files, found, visited | {real})
        elif Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
            found["non_images"].append(entry_rel)
        elif entry.is_file():  # a regular file (or a link to one): reading a FIFO or a device would hang
            files.append(entry_rel)
        else:
            found["special"].append(entry_rel)


def _link_target(
    entry: os.DirEntry, allowed: Path, real_root: Path, found: dict[str, list[str]], rel: str
) -> Path | None:
    """The real path of an entry; None (recorded) for a symlink that loops, leaves the root, or points
    outside `allowed` (its class folder: a link into another class would read an image under two labels)."""
    path = Path(entry.path)
    if not entry.is_symlink():
        return path.resolve() if entry.is_dir() else path
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:  # a dangling link: its image was moved or deleted
        found["dangling"].append(rel)
        return None
    except (OSError, RuntimeError):  # a loop
        found["skipped"].append(rel)
        return None
    if not real.is_relative_to(real_root):
        found["outside"].append(rel)
        return None
    if not real.is_relative_to(allowed):
        found["skipped"].append(rel)
        return None
    return real


def decode_image(
    path: Path,
    *,
    size: int,
    background: tuple[int, ...] = DEFAULT_BACKGROUND,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode one file to uint8 (3, size, size) RGB: header checks first, then a full decode and conversion.

    Raises BadImage for a file that is not an allowed image, claims more than `max_pixels` in its header
    (checked before anything is allocated), trips Pillow's decompression-bomb check, or fails to decode
    completely (whatever Pillow raises: its plugins meet damaged files with TypeError, KeyError, ... too).
    Pillow's DecompressionBombWarning is a BadImage only where warnings of that category are errors, as
    `decode_images` makes them (a filter changed on worker threads would race).
    """
    try:
        with Image.open(path) as image:
            _check_header(image, max_pixels)
            image.draft(None, (size, size))  # JPEG: decode at a reduced scale still >= size
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            rgb = to_rgb(image, background, reduce_for=size)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # Pillow's own cap
        raise BadImage(_bomb_reason(error, max_pixels)) from None
    except UnidentifiedImageError:
        raise BadImage("empty file" if _is_empty(path) else "not an image Pillow can identify") from None
    except Exception as error:  # noqa: BLE001  (TypeError, KeyError, ...: whatever a damaged file raises)
        raise BadImage(_reason(error)) from None
    return np.ascontiguousarray(_fit_square(rgb, size).transpose(2, 0, 1))


def decode_images(
    paths: Sequence[Path],
    *,
    size: int,
    background: tuple[int, ...] = DEFAULT_BACKGROUND,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[np.ndarray | str]:
    """`decode_image` of every file on DECODE_WORKERS threads, in order: pixels, or a bad file's reason.

    Pillow's DecompressionBombWarning is an error meanwhile (set here, on the calling thread, never on the
    workers), so an image over Pillow's limit is a bad file like any other."""
    decode = functools.partial(_decode_or_reason, size=size, background=background, max_pixels=max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with concurrent.futures.ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
            return list(pool.map(decode, paths))


def _bomb_reason(error: Exception, max_pixels: int) -> str:
    """Why Pillow's decompression-bomb check refused an image, with the cap that applied."""
    claimed = re.search(r"\((\d+) pixels\)", str(error))
    cap = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    return f"header claims {claimed[1] if claimed else 'too many'} pixels, over the cap of {cap}"


def _check_header(image: Any, max_pixels: int) -> None:
    """Format allow-list and pixel cap, from the header alone."""
    if image.format not in ALLOWED_FORMATS:
        raise BadImage(
            f"format {image.format} is not allowed (allowed: {', '.join(sorted(ALLOWED_FORMATS))})"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"header claims {width}x{height} pixels, over the cap of {max_pixels}")
    if width < 1 or height < 1:
        raise BadImage(f"header claims an empty {width}x{height} image")


def to_rgb(
    image: Any, background: tuple[int, ...] = DEFAULT_BACKGROUND, *, reduce_for: int | None = None
) -> np.ndarray:
    """uint8 (H, W, 3) RGB from any Pillow mode: 16-bit scaled by 1/257, alpha over `background`.

    `reduce_for`: the side the result is resized to next; a much larger image is box-reduced (`early_reduce`)
    once it is 8-bit L, RGB or RGBA, so the later copies stay small."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_grey(image)
    elif image.mode in ("F", "1"):
        image = image.convert("L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = early_reduce(image if image.mode == "RGBA" else image.convert("RGBA"), reduce_for)
        return np.asarray(_over_background(rgba, background))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # palette, CMYK, ...: the same pixels as the conversion below
    return np.asarray(early_reduce(image, reduce_for).convert("RGB"))


def early_reduce(image: Any, side: int | None) -> Any:
    """An image of more than EARLY_REDUCE_PIXELS box-reduced by the integer factor that keeps its shorter
    side at least EARLY_REDUCE_MARGIN x `side`; any other image (or `side` None) unchanged."""
    if side is None or image.width * image.height <= EARLY_REDUCE_PIXELS:
        return image
    factor = min(image.size) // (EARLY_REDUCE_MARGIN * side)
    return image.reduce(factor) if factor >= 2 else image


def _sixteen_bit_to_grey(image: Any) -> Any:
    """16-bit greyscale as 8-bit `L` (rounded /257), or `LA` when a tRNS colour marks transparent pixels."""
    wide = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    grey = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = Image.fromarray(np.where(wide == transparent, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))


def _over_background(rgba: Any, background: tuple[int, ...]) -> Any:
    """RGBA composited over a solid background by Pillow's integer blend (one RGB copy, no float arrays)."""
    backdrop = Image.new("RGB", rgba.size, tuple(background))
    backdrop.paste(rgba, mask=rgba.getchannel("A"))
    return backdrop


def _fit_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and crop the centre square (bilinear, antialiased by Pillow)."""
    height, width = rgb.shape[:2]
    if (height, width) == (size, size):
        return rgb
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR, box=box))


def _is_empty(path: Path) -> bool:
    """True for a zero-byte file."""
    return path.is_file() and path.stat().st_size == 0


def _reason(error: BaseException) -> str:
    """A short, one-line reason for a failed decode."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


def check_background(background: tuple[int, ...]) -> tuple[int, int, int]:
    """data.background as an RGB triple (one value means grey); anything else is a ConfigError."""
    if len(background) == 1:
        background = tuple(background) * 3
    if len(background) != 3 or not all(0 <= v <= 255 for v in background):
        raise ConfigError(
            f"data.background={list(background)} must be 1 or 3 integers in 0..255, e.g. [255, 255, 255]"
        )
    return background  # type: ignore[return-value]


def load_folder(root: Path, options: FolderOptions) -> FolderLoad:
    """Scan and decode one class root, reusing the decode cache; bad files are listed, never decoded twice."""
    scan = scan_folder(root)
    scan.check()
    report_ignored(scan)
    background = check_background(options.background)
    cache_file = _cache_file(scan.root, options.image_size, background, options.max_pixels)
    stamps = [_stamp(scan.root / rel) for rel, _ in scan.files]
    previous = _read_cache(cache_file, options.image_size)
    pixels, bad, decoded = _decode_missing(
        scan, stamps, previous, options.image_size, background, options.max_pixels
    )
    if decoded or set(previous) != {rel for rel, _ in scan.files}:
        _write_cache(cache_file, scan, stamps, pixels, bad)
    good = [i for i in range(len(scan.files)) if i not in bad]
    images = (
        torch.from_numpy(np.stack([pixels[i] for i in good]))
        if good
        else torch.zeros((0, 3, options.image_size, options.image_size), dtype=torch.uint8)
    )
    labels = torch.tensor([scan.files[i][1] for i in good], dtype=torch.int64)
    ids = tuple(Path(scan.files[i][0]).stem for i in good)
    bad_files = tuple((scan.files[i][0], reason) for i, reason in sorted(bad.items()))
    image_set = ImageSet(images, labels, scan.class_names, ids, bad_files)
    return FolderLoad(image_set, scan, bad_files, decoded, cache_file)


def report_ignored(scan: FolderScan | ImageFiles) -> None:
    """Log what the scan ignored, so a user notices files that are not part of the dataset."""
    ignored = (
        (scan.hidden, "ignored %d hidden entries"),
        (
            scan.skipped_links,
            "skipped %d symlinks that loop or point into another class or back up the tree "
            "(an image is read once, under one label)",
        ),
        (scan.non_images, "skipped %d non-image files"),
        (scan.special_files, "skipped %d entries that are not regular files (FIFOs, sockets, devices)"),
        (scan.dangling_links, "skipped %d symlinks whose target does not exist (a moved or deleted image?)"),
    )
    _warn_entries(scan.root, ignored)


def _warn_entries(root: Path, ignored: Sequence[tuple[Sequence[str], str]]) -> None:
    """One warning per kind of entry left out of the dataset: how many (`what` holds a %d), the first ten."""
    for entries, what in ignored:
        if entries:
            log.warning(f"folder %s: {what}: %s", root, len(entries), ", ".join(entries[:10]))


def _stamp(path: Path) -> tuple[int, ...]:
    """(size, mtime_ns, inode, ctime_ns) of a file: what the cache compares to notice a changed file.

    The inode and ctime change when a file is replaced or moved (`mv`), even one that keeps its size and
    mtime (two files swapped after `touch -d`), so the cache never serves old pixels under a new label.
    """
    stat = path.stat() if path.exists() else None
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns) if stat else (-1, -1, -1, -1)


def _cache_file(root: Path, size: int, background: tuple[int, ...], max_pixels: int) -> Path:
    """The cache file of one (folder, size, conversion settings) combination."""
    settings = json.dumps(
        [str(root.resolve()), size, list(background), max_pixels, sorted(ALLOWED_FORMATS), CACHE_FORMAT]
    )
    return cache_root() / "folders" / f"{hashlib.sha256(settings.encode()).hexdigest()[:24]}.pt"


def _read_cache(cache_file: Path, size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{relative path: (file stamp, uint8 (3, size, size) pixels or bad reason)} of an earlier load, or {}."""
    if not cache_file.is_file():
        return {}
    try:
        cached = safeio.load_checkpoint(cache_file)
    except WeightsError as error:
        log.warning("ignoring unreadable decode cache %s: %s", cache_file, error)
        return {}
    if cached.get("format") != CACHE_FORMAT:
        return {}
    try:
        return _cache_entries(cached, size)
    except (IndexError, KeyError, TypeError, ValueError, AttributeError) as error:
        log.warning("ignoring a malformed decode cache %s (rebuilding it): %s", cache_file, error)
        return {}


def _cache_entries(cached: dict[str, Any], size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    files, images = cached["files"], cached["images"]
    if len(images) != len(files):
        raise ValueError(f"{len(images)} images for {len(files)} files")
    if files and (images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size)):
        raise ValueError(f"images are {images.dtype} {tuple(images.shape)}, not uint8 (N, 3, {size}, {size})")
    entries: dict[str, tuple[tuple[int, ...], Any]] = {}
    for row, (rel, *stamp) in enumerate(files):
        entries[str(rel)] = (tuple(int(value) for value in stamp), images[row].numpy())
    for rel, *stamp, reason in cached.get("bad", []):
        entries[str(rel)] = (tuple(int(value) for value in stamp), str(reason))
    return entries


def _decode_missing(
    scan: FolderScan,
    stamps: list[tuple[int, ...]],
    previous: dict[str, Any],
    size: int,
    background: tuple[int, ...],
    max_pixels: int,
) -> tuple[dict[int, np.ndarray], dict[int, str], int]:
    """Pixels and bad reasons for every image: from the cache when its stamp matches, else decoded now."""
    pixels: dict[int, np.ndarray] = {}
    bad: dict[int, str] = {}
    todo = []
    for i, ((rel, _), stamp) in enumerate(zip(scan.files, stamps)):
        cached = previous.get(rel)
        if cached is not None and tuple(cached[0]) == stamp:
            (bad if isinstance(cached[1], str) else pixels)[i] = cached[1]
        else:
            todo.append(i)
    decoded = decode_images(
        [scan.root / scan.files[i][0] for i in todo], size=size, background=background, max_pixels=max_pixels
    )
    for i, result in zip(todo, decoded):
        (bad if isinstance(result, str) else pixels)[i] = result
    return pixels, bad, len(todo)


def _decode_or_reason(
    path: Path, *, size: int, background: tuple[int, ...], max_pixels: int
) -> np.ndarray | str:
    """decode_image, with a bad file's reason returned instead of raised (for the thread pool)."""
    try:
        return decode_image(path, size=size, background=background, max_pixels=max_pixels)
    except BadImage as error:
        return str(error)


def _write_cache(
    cache_file: Path,
    scan: FolderScan,
    stamps: list[tuple[int, ...]],
    pixels: dict[int, np.ndarray],
    bad: dict[int, str],
) -> None:
    """Save decoded pixels and bad reasons with each file's stamp, atomically, as a weights_only dict."""
    good = sorted(pixels)
    payload = {
        "format": CACHE_FORMAT,
        "root": str(scan.root),
        "files": [[scan.files[i][0], *stamps[i]] for i in good],
        "images": torch.from_numpy(np.stack([pixels[i] for i in good]))
        if good
        else torch.zeros(0, dtype=torch.uint8),
        "bad": [[scan.files[i][0], *stamps[i], reason] for i, reason in sorted(bad.items())],
    }
    try:
        safeio.atomic_torch_save(payload, cache_file)
    except OSError as error:
        log.warning(
            "could not write the decode cache %s (%s): images are decoded again next time; set $%s to a "
            "writable folder to keep them",
            cache_file,
            describe_os_error(error),
            CACHE_ENV,
        )


def bad_files_message(root: Path, bad_files: tuple[tuple[str, str], ...]) -> str:
    """One line naming every bad file and what to do about it."""
    listed = "; ".join(f"{rel} ({reason})" for rel, reason in bad_files)
    return (
        f"folder {root}: {len(bad_files)} bad image file(s): {listed}; fix or remove them, or set "
        "data.bad_images=skip to exclude them"
    )


def write_bad_files(bad_files: tuple[tuple[str, str], ...], path: Path) -> Path:
    """Write `relative path<TAB>reason` lines (e.g. a run's bad_images.txt), atomically."""
    return safeio.atomic_write_text(path, "".join(f"{rel}\t{reason}\n" for rel, reason in bad_files))


def excluded_files(root: Path, splits: dict[str, ImageSet]) -> tuple[tuple[str, str], ...]:
    """The files `bad_images: skip` excluded from a folder's splits, named from its root: a plain folder's
    splits share one list; with train/ and test/ folders each has its own, relative to its folder, so its
    files are named train/... and test/... (test/cat/1.jpg is not train/'s cat/1.jpg)."""
    if "all" in class_roots(root):
        return splits["train"].bad_files
    return tuple(
        (f"{part}/{rel}", reason) for part in ("train", "test") for rel, reason in splits[part].bad_files
    )


def bad_files_path(cache_file: Path) -> Path:
    """Where `bad_images: skip` records the excluded files of a folder: beside its decode cache."""
    return cache_file.with_suffix(".bad_images.txt")


@functools.lru_cache(maxsize=2)
def load_folder_splits(root: Path, options: FolderOptions) -> dict[str, ImageSet]:
    """{"train": ..., "test": ...} of a folder, after the bad-file policy (memoised per process)."""
    parts = {
        name: _apply_policy(load_folder(path, options), options) for name, path in class_roots(root).items()
    }
    if "all" not in parts:
        _report_layout_leftovers(root)
        _check_same_classes(root, parts["train"], parts["test"])
        return parts
    return _split_test(root, parts["all"], options.test_fraction)


def load_folder_split(root: Path, split: str, options: FolderOptions) -> ImageSet:
    """One split of a folder dataset."""
    return load_folder_splits(root, options)[split]


def _apply_policy(loaded: FolderLoad, options: FolderOptions) -> ImageSet:
    """bad_images=error: stop with the full list; skip: they are already excluded, record the list."""
    if not loaded.bad_files:
        return loaded.image_set
    if options.bad_images != "skip":
        raise DataError(bad_files_message(loaded.scan.root, loaded.bad_files))
    root, count = loaded.scan.root, len(loaded.bad_files)
    try:
        listed = write_bad_files(loaded.bad_files, bad_files_path(loaded.cache_file))
    except OSError as error:  # an unwritable cache: the run still records ImageSet.bad_files
        names = ", ".join(rel for rel, _ in loaded.bad_files[:10])
        why = describe_os_error(error)
        log.warning(
            "folder %s: excluded %d bad image file(s): %s (list not written: %s)", root, count, names, why
        )
    else:
        log.warning("folder %s: excluded %d bad image file(s), listed in %s", root, count, listed)
    return loaded.image_set


def _check_same_classes(root: Path, train: ImageSet, test: ImageSet) -> None:
    """train/ and test/ must hold the same class folders (the message names those only one of them has)."""
    if train.class_names != test.class_names:
        only_train = [name for name in train.class_names if name not in test.class_names]
        only_test = [name for name in test.class_names if name not in train.class_names]
        raise DataError(
            f"folder {root}: train/ and test/ must hold the same class folders; only in train/: "
            f"{_listed(only_train)}; only in test/: {_listed(only_test)}"
        )


def _listed(names: Sequence[str]) -> str:
    """Class names as `ascii()` forms, so that 'café' composed and decomposed differ in print; or 'none'."""
    return ", ".join(ascii(name) for name in names) or "none"


def _split_test(root: Path, image_set: ImageSet, test_fraction: float) -> dict[str, ImageSet]:
    """A fixed stratified test share (FOLDER_TEST_SEED) of a folder without train/ and test/ subfolders."""
    from sklearn.model_selection import train_test_split  # ~1.5 s: only to split (architecture.md, Imports)

    counts = image_set.class_counts()
    too_small = [name for name, count in zip(image_set.class_names, counts) if count < 2]
    if too_small:
        raise DataError(
            f"folder {root}: classes {', '.join(too_small)} have fewer than 2 images; a stratified "
            "test split needs at least 2 per class (or give train/ and test/ subfolders)"
        )
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(image_set)),
            test_size=test_fraction,
            stratify=image_set.labels.numpy(),
            random_state=FOLDER_TEST_SEED,
        )
    except ValueError as error:
        raise DataError(
            f"folder {root}: cannot split off data.test_fraction={test_fraction}: {error}; add images, "
            "change data.test_fraction, or give train/ and test/ subfolders"
        ) from None
    return {"train": take(image_set, np.sort(train_idx)), "test": take(image_set, np.sort(test_idx))}
