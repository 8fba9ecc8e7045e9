"""Build a study's report as one document and write it as `report.html`, `report.md` and `results.csv`.

The report is built once, as a `cnnlab.report.document.Document` of sections, paragraphs, tables and figures,
and rendered by two thin templates, so every section is written once and reads the same in both files:
`report.html` is self-contained (inline CSS, figures as base64 PNG data URIs; it opens from a file or an
e-mail attachment), `report.md` links the same PNGs, written to `report_files/` beside it. `results.csv` is
not part of the document: it is the table's full-precision numbers, one row per configuration. The files
are written all or nothing (`cnnlab.report.files`).

In a study with stages the headline table, its best row and the figures are the final stage's (the stage the
study exists for); each earlier stage gets its own section and table after it, with no best row.

For a report over several studies (one section per sub-study):

    parts = [(name, build_document(folder)) for name, folder in studies]
    write_report(suite_folder, combine("Suite report: x", parts))

`build_document(folder)` builds one study's document, `document.combine(title, [(name, document), ...])`
makes each document a section (headings one level down, figure files prefixed with its name), and
`write_report(folder, document)` writes any document's report.html, report.md and report_files/ (without
results.csv, which belongs to one study).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cnnlab import runfolder
from cnnlab.report.collect import (
    Configuration,
    PendingRun,
    ReportError,
    RunRecord,
    Study,
    format_value,
    load_study,
)
from cnnlab.report.document import (
    PLOT_DIR,
    Block,
    Bullets,
    Code,
    Document,
    Facts,
    Figure,
    Folded,
    Paragraph,
    Section,
    Table,
    visible_controls,
)
from cnnlab.report.figure_cache import cached_plots, inputs_key
from cnnlab.report.files import write_report_files
from cnnlab.report.plots import FIGURES, GRID, IMAGES, TEST_CURVE_NOTE, Plot, make_plots
from cnnlab.report.statistics import (
    MIN_PAIRS,
    ConfigurationRow,
    PairedComparison,
    Summary,
    TwoFactorGrid,
    configuration_rows,
    describe,
    format_effect,
    format_p,
    paired_comparisons,
    selected_ident,
    stage_rows,
    two_factor_grid,
    uncompared_pairs,
)
from cnnlab.runfolder import resolved_folder
from cnnlab.version import __version__

__all__ = [
    "PLOT_DIR",
    "ReportPaths",
    "build_document",
    "build_report",
    "format_results_table",
    "incomplete_line",
    "write_report",
]

IMAGES_NOTE = (
    "Thumbnails each run saved at its end (images/*.npz in its folder); captions name the images shown, "
    "left to right, by file name (folder datasets) or by index in their split (#index)."
)
BEST_NOTE = "best: highest mean validation accuracy (the test split is never used to choose)"
FLAG_MARK = "†"
NOT_LEARNING = "Runs that did not learn"
FLAG_NOTE = (
    f"{FLAG_MARK} a completed run of this configuration was flagged as not learning (see {NOT_LEARNING}); "
    "it is still averaged in, so read this row and its comparisons with care."
)
NOT_LEARNING_NOTE = (
    "These runs completed, but the health check at the end of training (result.json `flags`) found they did "
    f"not learn or their loss spiked. Their configurations are marked {FLAG_MARK} in the tables; their "
    "numbers are averaged like every completed run, so no comparison should be read off them unawares."
)
EPOCH_NOTE = (
    "`Val_acc` and `Val_loss` are the validation metrics of each epoch (metrics.csv val_acc, val_loss). "
    "`Test_acc` and `Test_loss` appear only for runs that logged the test split after every epoch "
    f"(train.test_every_epoch): {TEST_CURVE_NOTE}; the table's test accuracy is evaluated once, at the end."
)
TEST_METRICS = ("test_acc", "test_loss")  # metrics.csv's per-epoch test columns (train.test_every_epoch)
CSV_SUMMARIES = ("val_acc", "test_acc")
NO_FIGURES = "No figures: no run has completed yet (figures are drawn from completed runs only)."
RUNS_OPEN_UP_TO = 30  # the per-run table starts folded for bigger studies


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """What `write_report` wrote, and the results table as terminal text, followed by the study-incomplete
    line when planned runs are left (`csv` None and `table` empty for a document that is not one study's,
    such as a combined one)."""

    html: Path
    markdown: Path
    csv: Path | None
    plots: tuple[Path, ...]
    table: str


@dataclasses.dataclass(frozen=True)
class Report:
    """A study with its computed table, comparisons and figures: everything the document is built from."""

    study: Study
    rows: list[ConfigurationRow]
    comparisons: list[PairedComparison]
    plots: list[Plot]
    generated: str

    @property
    def headline_rows(self) -> list[ConfigurationRow]:
        """The final stage's rows: the headline table (every row for a study without stages)."""
        return stage_rows(self.rows, self.study.final_stage)

    @property
    def earlier_stages(self) -> list[tuple[str | None, list[ConfigurationRow]]]:
        """(stage, its rows) for each stage before the final one, in study order."""
        return [(stage, stage_rows(self.rows, stage)) for stage in self.study.stages[:-1]]

    @property
    def flagged(self) -> frozenset[str]:
        """Idents of the configurations with a completed run flagged as not learning."""
        return flagged_configurations(self.study)


def build_report(source: str | Path | Study, report_dir: Path | None = None) -> Report:
    """Read the study's files and compute the table, the paired comparisons and the figures (kept in the
    figure cache of the folder the report goes to: `report_dir`, by default the study's own)."""
    if isinstance(source, Study):  # built in memory: its files may not be what it holds
        study, rows = source, configuration_rows(source)
        plots = make_plots(study, rows)
    else:
        key = inputs_key(resolved_folder(source))  # before reading: see inputs_key
        study = load_study(source)
        rows = configuration_rows(study)
        plots = cached_plots(report_dir or study.root, key, lambda: make_plots(study, rows))
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Report(study, rows, paired_comparisons(study), plots, generated)


def build_document(source: str | Path | Study | Report) -> Document:
    """One study's report as a document: every section, in reading order, for both renderers."""
    report = source if isinstance(source, Report) else build_report(source)
    sections = [
        _results_section(report),
        *(_stage_section(report, stage, rows) for stage, rows in report.earlier_stages),
        _comparisons_section(report),
        _incomplete_section(report.study),
        _not_learning_section(report.study),
        _figures_section(report),
        _images_section(report),
        _ensembles_section(report.study),
        _runs_section(report.study),
        _provenance_section(report),
        _appendix_section(report.study),
    ]
    lines = [Paragraph(line) for line in status_lines(report.study)]
    return Document(
        f"Study report: {report.study.title}",
        (Paragraph(_summary_line(report), "summary"), *lines),
        tuple(section for section in sections if section is not None),
    )


def status_lines(study: Study) -> list[str]:
    """The lines under the summary (and the terminal table): the study-incomplete line, then one line per run
    found in several folders."""
    incomplete = incomplete_line(study)
    return ([incomplete] if incomplete else []) + copies_lines(study)


def copies_lines(study: Study) -> list[str]:
    """`run 172871b984a1 found in 2 folders (r_a, r_b); counted once`, one per run found more than once."""
    return [
        f"run {run_id} found in {len(folders)} folders ({', '.join(folders)}); counted once"
        for run_id, folders in study.copies
    ]


def write_report(
    source: str | Path | Report, document: Document | None = None, *, into: str | Path | None = None
) -> ReportPaths:
    """Write report.html, report.md and report_files/*.png, all or nothing (`cnnlab.report.files`): a study's
    own report (and its results.csv) when `document` is None, from its folder or its built Report, else the
    document given (a combined one, say) into the folder given. `into`: write them into this folder instead
    of the study's own (`cnnlab report --out`, for a study on a read-only disk, say)."""
    if document is not None:
        folder = source.study.root if isinstance(source, Report) else Path(source)
        html_path, markdown_path, _, plot_paths = write_report_files(report_folder(folder, into), document)
        return ReportPaths(html_path, markdown_path, None, plot_paths, "")
    if isinstance(source, Report):
        report, folder = source, report_folder(source.study.root, into)
    else:  # the folder checked before the figure cache is written to it
        folder = report_folder(resolved_folder(source), into)
        report = build_report(source, folder)
    html_path, markdown_path, csv_path, plot_paths = write_report_files(
        folder, build_document(report), results_csv(report.rows)
    )
    table = format_results_table(
        report.headline_rows, flagged=report.flagged, best_note=best_meaning(report.study)
    )
    table += "".join(f"\n{visible_controls(line)}" for line in status_lines(report.study))
    return ReportPaths(html_path, markdown_path, csv_path, plot_paths, table)


def report_folder(root: Path, into: str | Path | None) -> Path:
    """Where the report of the study or suite in `root` goes: `root`, or `into` unless that is the folder of
    another study, suite or run (its own report would be replaced by this one)."""
    if into is None or Path(into).resolve() == root.resolve():
        return root
    into = Path(into)
    if into.exists() and not into.is_dir():
        raise ReportError(f"--out {into} is a file, not a folder; give a folder for the report files")
    for name in (runfolder.PLAN_FILE, runfolder.SUITE_FILE, runfolder.RESULT_FILE):
        if (into / name).exists():
            raise ReportError(
                f"--out {into} is the folder of another study or run (it holds {name}); give a new folder, "
                "or one that holds only reports"
            )
    return into


def format_results_table(
    source: str | Path | Study | Sequence[ConfigurationRow],
    *,
    flagged: frozenset[str] = frozenset(),
    best_note: str = BEST_NOTE,
) -> str:
    """The results table as aligned plain text for a terminal: the final stage's rows of a study folder or
    Study, or the rows given; configurations in `flagged` (found by itself for a folder or Study) get a †.
    Control characters in labels are shown escaped, so a row stays one line."""
    if isinstance(source, (str, Path)):
        source = load_study(source)
    if isinstance(source, Study):
        flagged = flagged_configurations(source)
        best_note = best_meaning(source)
        rows = stage_rows(configuration_rows(source), source.final_stage)
    else:
        rows = list(source)
    header, body = table_cells(rows, marker="*", flagged=flagged)
    body = [[visible_controls(cell) for cell in cells] for cells in body]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(_align(cell, width, i) for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    shown = {row.ident for row in rows} & flagged
    best = f"\n* {visible_controls(best_note)}" if any(row.best for row in rows) else ""
    return "\n".join(lines) + best + (f"\n{FLAG_NOTE}" if shown else "")


def best_meaning(study: Study) -> str:
    """What the best mark means: the study's own selection when its select stage chose, else BEST_NOTE."""
    selection = study.selection or {}
    if selected_ident(study) is None:
        return BEST_NOTE
    return (
        f"best: the configuration the study's select stage chose by {selection.get('metric', 'its metric')}"
    )


def table_cells(
    rows: Sequence[ConfigurationRow], marker: str, flagged: frozenset[str] = frozenset()
) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the results table (accuracies in %, shared by every renderer); the
    label of a configuration in `flagged` ends in †."""
    incomplete = any(row.failed or row.diverged or row.interrupted for row in rows)
    header = [
        "",
        "#",
        "Configuration",
        "n",
        "Val acc %",
        "Val 95% CI",
        "Test acc %",
        "Test 95% CI",
        "Params",
        "GFLOPs",
        "Train time (s)",
        "Images/s",
    ] + (["Not completed"] if incomplete else [])
    body = []
    for row in rows:
        cells = [
            marker if row.best else "",
            row.ident,
            f"{row.label} {FLAG_MARK}" if row.ident in flagged else row.label,
            _n_cell(row),
            mean_std(row.val_acc),
            interval(row.val_acc),
            mean_std(row.test_acc),
            interval(row.test_acc),
            _integer(row.params),
            _significant(row.gflops),
            _fixed(row.train_time_s, 1),
            _integer(row.images_per_s),
        ]
        body.append(cells + ([_incomplete_cell(row)] if incomplete else []))
    return header, body


def incomplete_line(study: Study) -> str | None:
    """`Study incomplete: 2 of 3 planned runs pending (no result yet), 1 interrupted; ...` for a study whose
    plan still has runs to train, None for a finished study (or a folder of runs without a plan)."""
    if not study.incomplete:
        return None
    left = []
    waiting = len(study.pending) - study.running
    if waiting:
        left.append(f"{waiting} of {study.planned} planned runs pending (no result yet)")
    if study.running:
        of_planned = "" if left else f" of {study.planned} planned runs"
        left.append(f"{study.running}{of_planned} running (a live process is training them)")
    if study.interrupted:
        of_planned = "" if left else f" of {study.planned} planned runs"
        left.append(f"{study.interrupted}{of_planned} interrupted")
    if not waiting and not study.interrupted:
        return f"Study incomplete: {', '.join(left)}; report again when they finish."
    return (
        f"Study incomplete: {', '.join(left)}; run `cnnlab study run` again (same spec, same --out) to "
        "finish it."
    )


def flagged_configurations(study: Study) -> frozenset[str]:
    """Idents of the configurations with a completed run whose result.json has `flags`."""
    return frozenset(c.ident for c in study.configurations if any(run.flags for run in c.completed_runs))


def mean_std(summary: Summary | None) -> str:
    """`97.53 ± 0.41` in percent (just the mean for a single run, `—` for none)."""
    if summary is None:
        return "—"
    if not math.isfinite(summary.std):
        return f"{100 * summary.mean:.2f}"
    return f"{100 * summary.mean:.2f} ± {100 * summary.std:.2f}"


def interval(summary: Summary | None) -> str:
    """`[96.90, 98.16]` in percent, clipped to what an accuracy can be; `—` when fewer than two runs."""
    if summary is None or not math.isfinite(summary.ci_low):
        return "—"
    return f"[{max(0.0, 100 * summary.ci_low):.2f}, {min(100.0, 100 * summary.ci_high):.2f}]"


def results_csv(rows: Sequence[ConfigurationRow]) -> str:
    """results.csv: one row per configuration of every stage, full-precision numbers (accuracies as
    fractions)."""
    keys = [key for key in rows[0].settings if key != "tags.stage"] if rows else []  # the stage column
    columns = ["ident", "configuration", "stage", "best", *keys, "n", "seeds", "folds"]
    columns += ["failed", "diverged", "interrupted"]
    for name in CSV_SUMMARIES:
        columns += [f"{name}_mean", f"{name}_std", f"{name}_ci_low", f"{name}_ci_high"]
    columns += ["params", "gflops", "train_time_s", "train_images_per_s"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values: list[Any] = [
            row.ident,
            row.label,
            "" if row.stage is None else row.stage,
            int(row.best),
            *(_csv_setting(row.settings[k]) for k in keys),
            row.n,
            row.seeds,
            row.folds,
            row.failed,
            row.diverged,
            row.interrupted,
        ]
        for name in CSV_SUMMARIES:
            summary = getattr(row, name)
            values += [_csv_number(getattr(summary, f, None)) for f in ("mean", "std", "ci_low", "ci_high")]
        values += [_csv_number(v) for v in (row.params, row.gflops, row.train_time_s, row.images_per_s)]
        writer.writerow(values)
    return buffer.getvalue()


def epoch_lines(run: RunRecord) -> list[str]:
    """`Epoch: N, Train_acc, Train_loss, Val_acc, Val_loss, [Test_acc, Test_loss,] Lr` lines, one per
    metrics.csv row; the test pair only for a run that logged the test split every epoch."""
    metrics = run.metrics or {}
    epochs = metrics.get("epoch")
    if epochs is None:
        return []
    columns = [
        ("Train_acc", "train_acc"),
        ("Train_loss", "train_loss"),
        ("Val_acc", "val_acc"),
        ("Val_loss", "val_loss"),
    ]
    if any(_logged(metrics, column) for column in TEST_METRICS):
        columns += [("Test_acc", "test_acc"), ("Test_loss", "test_loss")]
    lines = []
    for index, epoch in enumerate(epochs):
        parts = [f"Epoch: {_epoch(epoch)}"]
        parts += [f"{name}: {_fixed(_at(metrics, column, index), 4)}" for name, column in columns]
        lr = _at(metrics, "lr", index)
        parts.append(f"Lr: {'—' if lr is None else format(lr, '.6g')}")
        lines.append(", ".join(parts))
    return lines


# ---------------------------------------------------------------- the document's sections, in order


def _results_section(report: Report) -> Section:
    """The headline table (the final stage's), what its numbers mean, and its two-factor grid."""
    notes = [Paragraph(note, "note") for note in _table_notes(report)]
    grid = _grid_section(report, report.study.final_stage)
    return Section(
        _results_title(report.study),
        (_results_table(report.headline_rows, report.flagged), *notes),
        (grid,) if grid else (),
    )


def _stage_section(report: Report, stage: str | None, rows: list[ConfigurationRow]) -> Section:
    """An earlier stage's table, with no best row."""
    study = report.study
    notes = [Paragraph(_stage_note(study, stage), "note")]
    if {row.ident for row in rows} & report.flagged:
        notes.append(Paragraph(FLAG_NOTE, "note"))
    grid = _grid_section(report, stage)
    return Section(
        _stage_title(study, stage), (_results_table(rows, report.flagged), *notes), (grid,) if grid else ()
    )


def _results_table(rows: Sequence[ConfigurationRow], flagged: frozenset[str]) -> Table:
    header, body = table_cells(rows, marker="★", flagged=flagged)
    return Table(tuple(header), tuple(tuple(cells) for cells in body), tuple(row.best for row in rows))


def _grid_section(report: Report, stage: str | None) -> Section | None:
    """A stage whose grid has two axes as a grid: mean validation accuracy ± std, one factor as rows and
    the other as columns (the final stage's with its heat map)."""
    grid = two_factor_grid(report.study, report.rows, stage)
    if grid is None or not any(row.val_acc for row in grid.cells.values()):
        return None
    blocks: list[Block] = [
        Paragraph(
            f"Mean validation accuracy % ± sample std over completed runs, {grid.row_axis} as rows and "
            f"{grid.column_axis} as columns; each cell names its configuration (★ the best, "
            f"{FLAG_MARK} flagged).",
            "note",
        ),
        _grid_table(grid, report.flagged),
    ]
    if stage == report.study.final_stage:
        blocks += [_figure(plot) for plot in report.plots if plot.section == GRID]
    return Section(f"Grid: {grid.row_axis} × {grid.column_axis}", tuple(blocks))


def _grid_table(grid: TwoFactorGrid, flagged: frozenset[str]) -> Table:
    header = (f"{grid.row_axis} \\ {grid.column_axis}", *grid.column_values)
    body = []
    for row_value in grid.row_values:
        cells = [row_value]
        for column_value in grid.column_values:
            row = grid.cells.get((row_value, column_value))
            if row is None:
                cells.append("—")
                continue
            marks = ("★" if row.best else "") + (FLAG_MARK if row.ident in flagged else "")
            cells.append(f"{mean_std(row.val_acc)} ({row.ident}{marks})")
        body.append(tuple(cells))
    return Table(header, tuple(body))


def _comparisons_section(report: Report) -> Section | None:
    comparisons = report.comparisons
    uncompared = _uncompared_note(report.study, comparisons)
    if not comparisons:
        return Section("Paired comparisons", (uncompared,)) if uncompared else None
    sentences = tuple(describe(c) + _flag_caution(c, report.flagged) for c in comparisons)
    table = Table(tuple(_COMPARISON_HEADER), tuple(tuple(_comparison_cells(c)) for c in comparisons))
    return Section("Paired comparisons", (Bullets(sentences), table, *([uncompared] if uncompared else [])))


def _uncompared_note(study: Study, comparisons: list[PairedComparison]) -> Paragraph | None:
    """Why configurations one setting apart have no comparison: too few shared seeds/folds."""
    pairs = uncompared_pairs(study, comparisons)
    if not pairs:
        return None
    named = ", ".join(f"{first} and {second}" for first, second in pairs[:5])
    more = f" and {len(pairs) - 5} more pairs" if len(pairs) > 5 else ""
    return Paragraph(
        f"Not compared: {named}{more} differ in one setting but share fewer than {MIN_PAIRS} completed "
        "seeds/folds, and one run per side cannot tell a difference from run-to-run noise; give the study "
        "more seeds (e.g. seeds: [0, 1, 2]) to compare them.",
        "note",
    )


def _flag_caution(comparison: PairedComparison, flagged: frozenset[str]) -> str:
    """A warning after a comparison sentence when either side has a run that did not learn."""
    marked = [ident for ident in (comparison.better, comparison.worse) if ident in flagged]
    if not marked:
        return ""
    verb = "has" if len(marked) == 1 else "each have"
    flagged_runs = f"a run flagged as not learning ({FLAG_MARK}, see {NOT_LEARNING})"
    return f" Caution: {' and '.join(marked)} {verb} {flagged_runs}."


def _incomplete_section(study: Study) -> Section | None:
    """Each run that did not complete, with its reason, then each planned run with no result yet."""
    runs = [run for run in study.runs if not run.completed]
    if not runs and not study.pending:
        return None
    items = [f"{_run_title(study, run)}: {run.reason or 'no reason recorded'}" for run in runs]
    items += [_pending_title(study, pending) for pending in study.pending]
    return Section("Runs that did not complete (excluded from the means)", (Bullets(tuple(items)),))


def _not_learning_section(study: Study) -> Section | None:
    """Each completed run flagged by the health check, with its configuration, seed/fold and flags."""
    runs = [run for run in study.runs if run.flags]
    if not runs:
        return None
    items = tuple(f"{_run_title(study, run)}: {'; '.join(run.flags)}" for run in runs)
    return Section(NOT_LEARNING, (Paragraph(NOT_LEARNING_NOTE, "note"), Bullets(items)))


def _figures_section(report: Report) -> Section:
    figures = [_figure(plot) for plot in report.plots if plot.section == FIGURES]
    return Section("Figures", tuple(figures) if report.plots else (Paragraph(NO_FIGURES, "note"),))


def _images_section(report: Report) -> Section | None:
    figures = [_figure(plot) for plot in report.plots if plot.section == IMAGES]
    return Section(IMAGES, (Paragraph(IMAGES_NOTE, "note"), *figures)) if figures else None


def _figure(plot: Plot) -> Figure:
    return Figure(plot.name, plot.title, plot.caption, plot.png)


def _ensembles_section(study: Study) -> Section | None:
    if not study.ensembles:
        return None
    body = [
        (
            e.name,
            str(e.result.get("method", "")),
            ", ".join(e.members),
            _percent(e.val_acc),
            _percent(e.test_acc),
        )
        for e in study.ensembles
    ]
    header = ("Ensemble", "Method", "Members", "Val acc %", "Test acc %")
    return Section("Ensembles", (Table(header, tuple(body)),))


def _runs_section(study: Study) -> Section:
    """Every run with its status (the table folded in HTML for a big study)."""
    count = len(study.runs)
    table = Table(tuple(_RUN_HEADER), tuple(tuple(cells) for cells in _run_cells(study)))
    return Section("Runs", (Folded(f"All {count} runs", (table,), open=count <= RUNS_OPEN_UP_TO),))


def _provenance_section(report: Report) -> Section:
    """Versions, hardware, commits and dates; the study spec as given; each configuration's settings."""
    study = report.study
    blocks: list[Block] = [Facts(tuple(_provenance(report)))]
    if study.spec_text is not None:
        spec = Code(study.spec_text.rstrip() + "\n", "yaml")
        blocks.append(Folded(f"Study spec ({study.spec_name})", (spec,), open=True))
    else:
        blocks.append(Paragraph("No study.yaml: this report was made from run folders alone.", "note"))
    resolved = tuple(
        Folded(f"Resolved configuration {c.title}", (Code(_resolved_config(c), "yaml"),))
        for c in study.configurations
    )
    return Section("Provenance", tuple(blocks), (Section("Resolved configurations", resolved),))


def _appendix_section(study: Study) -> Section | None:
    """The classic per-epoch lines of every run that recorded metrics.csv."""
    blocks: list[Block] = []
    for run in study.runs:
        lines = epoch_lines(run)
        if lines:
            blocks.append(Folded(_run_title(study, run), (Code("\n".join(lines) + "\n"),)))
    if not blocks:
        return None
    return Section("Appendix: per-epoch lines", (Paragraph(EPOCH_NOTE, "note"), *blocks))


def _table_notes(report: Report) -> list[str]:
    """What the table's numbers mean, and the study's own selection when it made one."""
    notes = [
        f"★ {best_meaning(report.study)}. Accuracies in %: mean ± sample std over completed runs; "
        "95% CI of the mean "
        "(Student's t, shown clipped to 0–100; results.csv keeps it unclipped). Validation accuracy is each "
        "run's best epoch."
    ]
    study = report.study
    if study.staged:
        earlier = ", ".join(str(stage) for stage in study.stages[:-1])
        notes.append(
            f"This table is stage {study.final_stage}, the stage the study exists for; the earlier stage(s) "
            f"{earlier} have their own tables below."
        )
    if {row.ident for row in report.headline_rows} & report.flagged:
        notes.append(FLAG_NOTE)
    selection = study.selection
    if isinstance(selection, dict) and selection.get("chosen"):
        final = ", ".join(str(run) for run in (selection.get("final_runs") or {}).values())
        notes.append(
            f"The study's select stage chose {selection['chosen']} by "
            f"{selection.get('metric', 'its metric')}"
            + (f" and retrained it on all training data (runs {final})." if final else ".")
        )
    return notes


def _results_title(study: Study) -> str:
    """`Results`, or `Results: stage finetune` for the final stage of a study with stages."""
    return f"Results: stage {study.final_stage}" if study.staged else "Results"


def _stage_title(study: Study, stage: str | None) -> str:
    """`Stage pretrain (feeds finetune)`: the heading of an earlier stage's section."""
    fed = ", ".join(str(name) for name in study.feeds(stage))
    return f"Stage {stage} (feeds {fed})" if fed else f"Stage {stage}"


def _stage_note(study: Study, stage: str | None) -> str:
    """Why an earlier stage's table has no best row."""
    fed = ", ".join(str(name) for name in study.feeds(stage))
    feeding = f"Its runs initialise stage {fed}; it" if fed else "It"
    return (
        f"{feeding} is measured on its own data and classes, so its rows are not ranked: ★ marks only the "
        f"best configuration of stage {study.final_stage}."
    )


def _summary_line(report: Report) -> str:
    runs = report.study.runs
    states = (runfolder.COMPLETED, runfolder.FAILED, runfolder.DIVERGED, runfolder.INTERRUPTED)
    counts = {status: sum(run.status == status for run in runs) for status in states}
    datasets = sorted({str(run.result.get("dataset") or run.settings.get("data.name")) for run in runs})
    interrupted = f", {counts[runfolder.INTERRUPTED]} interrupted" if counts[runfolder.INTERRUPTED] else ""
    text = (
        f"{len(report.study.configurations)} configuration(s), {len(runs)} run(s): "
        f"{counts[runfolder.COMPLETED]} completed, {counts[runfolder.FAILED]} failed, "
        f"{counts[runfolder.DIVERGED]} diverged{interrupted}. Data: {', '.join(datasets)}."
    )
    if report.study.ensembles:
        text += f" {len(report.study.ensembles)} ensemble(s)."
    return text + f" Report written {report.generated} by cnnlab {__version__}."


def _n_cell(row: ConfigurationRow) -> str:
    """`6 (3×2)` when the completed runs cover every seed × fold, else just the count."""
    if row.folds > 1 and row.seeds > 1 and row.n == row.seeds * row.folds:
        return f"{row.n} ({row.seeds}×{row.folds})"
    return str(row.n)


def _incomplete_cell(row: ConfigurationRow) -> str:
    parts = [f"{row.failed} failed"] if row.failed else []
    parts += [f"{row.diverged} diverged"] if row.diverged else []
    parts += [f"{row.interrupted} interrupted"] if row.interrupted else []
    return ", ".join(parts)


_RUN_HEADER = [
    "Run",
    "Configuration",
    "Seed",
    "Fold",
    "Status",
    "Epochs",
    "Best val acc %",
    "Test acc %",
    "Train time (s)",
    "Folder",
]


def _run_cells(study: Study) -> list[list[str]]:
    cells = []
    for configuration in study.configurations:
        for run in configuration.runs:
            status = run.status if run.completed else f"{run.status}: {run.reason or 'no reason recorded'}"
            status += f" {FLAG_MARK}" if run.flags else ""
            cells.append(
                [
                    run.run_id,
                    configuration.ident,
                    _maybe(run.seed),
                    _maybe(run.fold),
                    status,
                    _maybe(run.result.get("epochs_run")),
                    _percent(run.val_acc),
                    _percent(run.test_acc),
                    _fixed(run.result.get("train_time_s"), 1),
                    str(run.run_dir.relative_to(study.root)),
                ]
            )
    return cells


def _run_title(study: Study, run: RunRecord) -> str:
    configuration = study.configuration_of(run)
    where = [f"seed {run.seed}"] + ([f"fold {run.fold}"] if run.fold is not None else [])
    return f"{configuration.title} — {', '.join(where)} ({run.status}, {run.run_dir.relative_to(study.root)})"


def _pending_title(study: Study, pending: PendingRun) -> str:
    """`stage finetune: recipe=full — seed 1 (pending: no result yet)`, the stage named only in a staged
    study."""
    label = f"stage {pending.stage}: {pending.configuration}" if study.staged else pending.configuration
    if pending.role == runfolder.ROLE_FINAL:
        label += " (retrained on all training data)"
    where = [f"seed {_maybe(pending.seed)}"] + ([f"fold {pending.fold}"] if pending.fold is not None else [])
    state = "running: a live process is training it" if pending.running else "pending: no result yet"
    return f"{label} — {', '.join(where)} ({state})"


def _provenance(report: Report) -> list[tuple[str, str]]:
    """(item, value) pairs: versions, hardware, git commits and dates, gathered over every run."""
    runs = report.study.runs
    versions: dict[str, set[str]] = {}
    for run in runs:
        for package, version in ((run.result.get("provenance") or {}).get("versions") or {}).items():
            versions.setdefault(package, set()).add(str(version))
    items = [(f"{package} version", ", ".join(sorted(found))) for package, found in sorted(versions.items())]
    for field, name in (("device", "Device"), ("hostname", "Host"), ("git_commit", "Git commit")):
        items.append((name, _distinct(runs, field)))
    dates = sorted(str(d) for d in (_prov(run, "date") for run in runs) if d)
    items.append(("Runs dated", f"{dates[0]} to {dates[-1]}" if dates else "not recorded"))
    items.append(("Report written", f"{report.generated} by cnnlab {__version__}"))
    return items


def _distinct(runs: Sequence[RunRecord], field: str) -> str:
    found = sorted({str(value) for value in (_prov(run, field) for run in runs) if value})
    return ", ".join(found) if found else "not recorded"


def _prov(run: RunRecord, field: str) -> Any:
    return (run.result.get("provenance") or {}).get(field)


def _resolved_config(configuration: Configuration) -> str:
    """The configuration's settings as nested YAML (seed and fold vary per run and are listed separately)."""
    nested: dict[str, Any] = {}
    for key, value in configuration.settings.items():
        if key.startswith("tags."):
            continue
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    runs = ", ".join(_run_name(run) for run in configuration.runs)
    return yaml.safe_dump(nested, sort_keys=False) + f"# runs: {runs}\n"


def _run_name(run: RunRecord) -> str:
    name = f"seed {run.seed}" + (f"/fold {run.fold}" if run.fold is not None else "")
    return name if run.completed else f"{name} ({run.status})"


def _comparison_cells(comparison: PairedComparison) -> list[str]:
    return [
        f"{comparison.better} vs {comparison.worse}",
        comparison.key,
        str(comparison.n),
        "test" if comparison.metric == "test" else "validation",
        f"{100 * comparison.mean_difference:+.2f}",
        format_p(comparison.t_p),
        format_p(comparison.wilcoxon_p) if comparison.wilcoxon_p is not None else "—",
        format_effect(comparison.d_z),
    ]


_COMPARISON_HEADER = [
    "Pair (better vs worse)",
    "Differs in",
    "n",
    "Metric",
    "Mean difference (points)",
    "Paired t-test",
    "Wilcoxon",
    "d_z",
]


# ---------------------------------------------------------------- small formatters


def _align(cell: str, width: int, column: int) -> str:
    return cell.ljust(width) if column < 3 else cell.rjust(width)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _fixed(value: object, digits: int) -> str:
    """`8.0`; a number too big to read digit by digit (1e15 or more) in scientific notation."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}" if abs(value) < 1e15 else f"{value:.3g}"


def _integer(value: float | int | None) -> str:
    """`61,706`; a count too big to read digit by digit (1e15 or more) in scientific notation."""
    if value is None:
        return "—"
    return f"{round(value):,}" if abs(value) < 1e15 else f"{value:.3g}"


def _significant(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _maybe(value: object) -> str:
    return "—" if value is None else str(value)


def _epoch(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else str(value)


def _logged(metrics: dict[str, Any], column: str) -> bool:
    """Whether a metrics.csv column exists and has at least one value."""
    values = metrics.get(column)
    return values is not None and any(math.isfinite(value) for value in values)


def _at(metrics: dict[str, Any], column: str, index: int) -> float | None:
    values = metrics.get(column)
    if values is None or index >= len(values) or not math.isfinite(values[index]):
        return None
    return float(values[index])


def _csv_number(value: object) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _csv_setting(value: object) -> str:
    return format_value(value)
