"""A report's files, written all or nothing: report.html, report.md, results.csv (one study's report) and the
figures in report_files/, which this module owns.

Everything is rendered first, then each file is written to a temporary file beside it and, once all are
written, renamed into place (`safeio.atomic_replace_files`), so a failure (a full disk, an unwritable file, a
signal, a figure that raises) leaves the previous report whole, never a mix of two. Two reports of one folder
take turns (an flock of the folder itself), and the one holding it first removes what a killed writer left
(its temporary files), which therefore never pile up or trip a later run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from cnnlab.report.collect import ReportError
from cnnlab.report.document import PLOT_DIR, Document, Figure, render_html, render_markdown
from cnnlab.report.figure_cache import CACHE_FILE
from cnnlab.safeio import atomic_replace_files, temp_files, text_bytes

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
CSV_FILE = "results.csv"
# every figure a report draws: a PNG of report_files/ of such a name (or `<part>-<name>`) is the report's own
PLOT_NAMES = (
    "grid_heatmap",
    "learning_curves",
    "test_curves",
    "lr_schedule",
    "confusion_matrix",
    "per_class_accuracy",
    "accuracy_vs_cost",
    "ensemble_vs_members",
    "augmented_samples",
    "highest_loss",
    "confused_pairs",
    "gradcam",
)
TURN_WAIT_S = 60.0  # how long a report waits for another writer of the same folder


def write_report_files(
    folder: Path, document: Document, results: str | None = None
) -> tuple[Path, Path, Path | None, tuple[Path, ...]]:
    """Write the document's report.html, report.md and figures (and results.csv when `results` is given) into
    `folder`, all or nothing; remove figures an earlier report wrote that this one no longer has. Returns
    the paths of the HTML, the Markdown, the CSV (None without one) and the figures."""
    folder = folder.resolve()
    texts = {HTML_FILE: render_html(document), MARKDOWN_FILE: render_markdown(document)}
    texts |= {CSV_FILE: results} if results is not None else {}
    files = {folder / name: text_bytes(text) for name, text in texts.items()}
    plots = _plot_files(folder / PLOT_DIR, document.figures)
    _check_targets(folder, [*files, *plots], render_markdown(Document(document.title)).split("\n", 1)[0])
    folder.mkdir(parents=True, exist_ok=True)  # a combined report's folder may be new
    with _turn(folder) as alone:
        if alone:
            _remove_leftovers(folder)
        atomic_replace_files(plots | files, remove=_stale_plots(folder / PLOT_DIR, plots))
    csv_path = folder / CSV_FILE if results is not None else None
    return folder / HTML_FILE, folder / MARKDOWN_FILE, csv_path, tuple(plots)


def _plot_files(plot_dir: Path, figures: Sequence[Figure]) -> dict[Path, bytes]:
    return {plot_dir / f"{figure.name}.png": figure.png for figure in figures}


def _check_targets(folder: Path, paths: Sequence[Path], heading: str) -> None:
    """Refuse, before anything is written, a report file that is a folder or a link to nowhere, a
    report_files that is not a folder (each would stop the report half way), and a report.html, report.md or
    results.csv that cnnlab did not write (`heading`: the first line of the report.md to be written)."""
    plot_dir = folder / PLOT_DIR
    for path in [plot_dir, *paths]:
        if path.is_symlink() and not path.exists():
            raise ReportError(
                f"cannot write the report: {path} is a link to {os.readlink(path)}, which does not exist; "
                "remove the link (or create its target) and report again"
            )
    if plot_dir.exists() and not plot_dir.is_dir():
        raise ReportError(
            f"cannot write the report: {plot_dir} is a file, but the report keeps its figures in a folder "
            "of that name; move the file away and report again"
        )
    for path in paths:
        if path.is_dir():
            raise ReportError(
                f"cannot write the report: {path} is a folder, not a file; move it away and report again"
            )
        if path.name in OWN_STARTS and path.exists() and not _written_by_cnnlab(path, heading):
            raise ReportError(
                f"cannot write the report: {path} was not written by cnnlab (a report never replaces a file "
                "it did not write); move or rename it and report again"
            )


# How the text files a report writes begin: an existing file that begins otherwise is the user's
OWN_STARTS = {
    HTML_FILE: ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',),
    MARKDOWN_FILE: ("# Study report: ", "# Suite report: "),
    CSV_FILE: ("ident,configuration,stage,",),
}


def _written_by_cnnlab(path: Path, heading: str) -> bool:
    """Does this existing report.html, report.md or results.csv begin as the report writes it (a report.md
    also when it begins with the heading about to be written)?"""
    try:
        with path.open("rb") as file:
            head = file.read(512).decode("utf-8", errors="replace")
    except OSError:
        return False
    if path.name == MARKDOWN_FILE and head.split("\n", 1)[0] == heading:
        return True
    return head.startswith(OWN_STARTS[path.name])


@contextlib.contextmanager
def _turn(folder: Path) -> Iterator[bool]:
    """Hold an exclusive flock of the folder itself while the report is written (a second writer waits up to
    TURN_WAIT_S, then writes without it: a holder stopped with SIGSTOP never hangs it); yields whether it is
    held (False also where the file system has no flock: then nothing is cleaned up)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield _flock(descriptor, time.monotonic() + TURN_WAIT_S)
    finally:
        os.close(descriptor)  # releases the lock


def _flock(descriptor: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        except OSError:  # a file system without flock (some network mounts)
            return False


def _remove_leftovers(folder: Path) -> None:
    """The temporary files of a report writer that was killed before it could remove them."""
    plot_dir = folder / PLOT_DIR
    patterns = [folder / name for name in (HTML_FILE, MARKDOWN_FILE, CSV_FILE)]
    patterns += [plot_dir / "*.png", plot_dir / CACHE_FILE]
    for pattern in patterns:
        for path in temp_files(pattern):
            path.unlink(missing_ok=True)


def _stale_plots(plot_dir: Path, plots: Mapping[Path, bytes]) -> list[Path]:
    """Figures an earlier report wrote (their own names, or those names prefixed by `combine`) that this
    report does not have."""
    if not plot_dir.is_dir():
        return []
    return [
        path
        for path in sorted(plot_dir.glob("*.png"))
        if path not in plots
        and any(path.stem == name or path.stem.endswith(f"-{name}") for name in PLOT_NAMES)
    ]
