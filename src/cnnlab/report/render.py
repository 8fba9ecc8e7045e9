"""Render a study into `report.html` (self-contained), `report.md` and `results.csv`, and a terminal table.

`report.html` carries its CSS inline and its figures as base64 PNG data URIs, so it opens from a file or an
e-mail attachment. `report.md` links the same PNGs, written to `report_files/` beside it. Every file is
written atomically.

In a study with stages the headline table, its best row and the figures are the final stage's (the stage the
study exists for); each earlier stage gets its own section and table after it, with no best row.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import html
import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cnnlab import runfolder
from cnnlab.report.collect import Configuration, RunRecord, Study, format_value, load_study
from cnnlab.report.plots import FIGURES, IMAGES, Plot, make_plots
from cnnlab.report.statistics import (
    ConfigurationRow,
    PairedComparison,
    Summary,
    configuration_rows,
    describe,
    format_effect,
    format_p,
    paired_comparisons,
    stage_rows,
)
from cnnlab.safeio import atomic_write_bytes, atomic_write_text
from cnnlab.version import __version__

PLOT_DIR = "report_files"
PLOT_NAMES = (
    "learning_curves",
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
IMAGES_NOTE = (
    "Thumbnails each run saved at its end (images/*.npz in its folder); captions name the images shown, "
    "left to right, by file name (folder datasets) or by index in their split (#index)."
)
BEST_NOTE = "best: highest mean validation accuracy (the test split is never used to choose)"
EPOCH_NOTE = (
    "`Test_acc` and `Test_loss` in these lines are the validation metrics of each epoch "
    "(metrics.csv records validation, not test, per epoch; the test split is evaluated once at the end)."
)
CSV_SUMMARIES = ("val_acc", "test_acc")
NO_FIGURES = "No figures: no run has completed yet (figures are drawn from completed runs only)."
_NUMBER_LIKE = re.compile(  # cells right-aligned in HTML tables: numbers, mean ± std, intervals, p-values
    r"^(?:[-+]?[\d,.]+(?: ± [\d.]+)?(?: \(\d+×\d+\))?|\[[-\d., ]+\]|—|p [<=] [\d.]+|[\d.]+e[-+]?\d+)$"
)
RUNS_OPEN_UP_TO = 30  # the per-run table starts folded for bigger studies


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """What `write_report` wrote, and the results table as terminal text."""

    html: Path
    markdown: Path
    csv: Path
    plots: tuple[Path, ...]
    table: str


@dataclasses.dataclass(frozen=True)
class Report:
    """A study with its computed table, comparisons and figures: everything the renderers need."""

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


def build_report(study_dir: str | Path) -> Report:
    """Read the study's files and compute the table, the paired comparisons and the figures."""
    study = load_study(study_dir)
    rows = configuration_rows(study)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Report(study, rows, paired_comparisons(study), make_plots(study, rows), generated)


def write_report(study_dir: str | Path) -> ReportPaths:
    """Write report.html, report.md, results.csv and report_files/*.png into `study_dir`."""
    report = build_report(study_dir)
    root = report.study.root
    plot_paths = _write_plots(root / PLOT_DIR, report.plots)
    csv_path = atomic_write_text(root / "results.csv", results_csv(report.rows))
    markdown_path = atomic_write_text(root / "report.md", render_markdown(report))
    html_path = atomic_write_text(root / "report.html", render_html(report))
    return ReportPaths(
        html_path, markdown_path, csv_path, tuple(plot_paths), format_results_table(report.headline_rows)
    )


def format_results_table(source: str | Path | Study | Sequence[ConfigurationRow]) -> str:
    """The results table as aligned plain text for a terminal: the final stage's rows of a study folder or
    Study, or the rows given."""
    if isinstance(source, (str, Path)):
        source = load_study(source)
    if isinstance(source, Study):
        rows = stage_rows(configuration_rows(source), source.final_stage)
    else:
        rows = list(source)
    header, body = table_cells(rows, marker="*")
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(_align(cell, width, i) for i, (cell, width) in enumerate(zip(line, widths))).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + f"\n* {BEST_NOTE}"


def table_cells(rows: Sequence[ConfigurationRow], marker: str) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the results table (accuracies in %, shared by every renderer)."""
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
            row.label,
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
    """`Epoch: N, Train_acc, Train_loss, Test_acc, Test_loss, Lr` lines, one per metrics.csv row."""
    metrics = run.metrics or {}
    epochs = metrics.get("epoch")
    if epochs is None:
        return []
    columns = [
        ("Train_acc", "train_acc"),
        ("Train_loss", "train_loss"),
        ("Test_acc", "val_acc"),
        ("Test_loss", "val_loss"),
    ]
    lines = []
    for index, epoch in enumerate(epochs):
        parts = [f"Epoch: {_epoch(epoch)}"]
        parts += [f"{name}: {_fixed(_at(metrics, column, index), 4)}" for name, column in columns]
        lr = _at(metrics, "lr", index)
        parts.append(f"Lr: {'—' if lr is None else format(lr, '.6g')}")
        lines.append(", ".join(parts))
    return lines


def render_markdown(report: Report) -> str:
    """report.md: table, comparisons in words, figures (linked PNGs), provenance and per-epoch appendix."""
    study = report.study
    out = [f"# Study report: {study.root.name}", "", _summary_line(report), "", f"## {_results_title(study)}"]
    out += ["", *_md_table(*table_cells(report.headline_rows, marker="★")), ""]
    out += [line for note in _table_notes(report) for line in (note, "")]
    for stage, rows in report.earlier_stages:
        out += [f"## {_stage_title(study, stage)}", "", *_md_table(*table_cells(rows, marker="★")), ""]
        out += [_stage_note(study, stage), ""]
    out += _md_comparisons(report.comparisons)
    out += _md_incomplete(study)
    out += ["## Figures", ""] + ([] if report.plots else [NO_FIGURES, ""])
    for plot in _section(report, FIGURES):
        out += [f"### {plot.title}", "", f"![{plot.title}]({PLOT_DIR}/{plot.name}.png)", "", plot.caption, ""]
    out += [f"## {IMAGES}", "", IMAGES_NOTE, ""] if _section(report, IMAGES) else []
    for plot in _section(report, IMAGES):
        out += [f"### {plot.title}", "", f"![{plot.title}]({PLOT_DIR}/{plot.name}.png)", "", plot.caption, ""]
    out += _md_ensembles(study)
    out += ["## Runs", "", *_md_table(_RUN_HEADER, _run_cells(study)), ""]
    out += _md_provenance(report)
    out += ["## Appendix: per-epoch lines", "", EPOCH_NOTE, ""]
    for run in study.runs:
        lines = epoch_lines(run)
        if lines:
            out += [f"### {_run_title(study, run)}", "", "```text", *lines, "```", ""]
    return "\n".join(out)


def render_html(report: Report) -> str:
    """report.html: the same content, one self-contained page (inline CSS, figures as data URIs)."""
    study = report.study
    title = f"Study report: {study.root.name}"
    parts = [f"<h1>{_e(title)}</h1>", f"<p class='summary'>{_e(_summary_line(report))}</p>"]
    parts += [
        f"<h2>{_e(_results_title(study))}</h2>",
        _html_results_table(report.headline_rows),
        *(f"<p class='note'>{_e(note)}</p>" for note in _table_notes(report)),
    ]
    for stage, rows in report.earlier_stages:
        parts += [f"<h2>{_e(_stage_title(study, stage))}</h2>", _html_results_table(rows)]
        parts.append(f"<p class='note'>{_e(_stage_note(study, stage))}</p>")
    parts += _html_comparisons(report.comparisons)
    parts += _html_incomplete(study)
    parts += ["<h2>Figures</h2>"] + [_html_figure(plot) for plot in _section(report, FIGURES)]
    parts += [] if report.plots else [f"<p class='note'>{_e(NO_FIGURES)}</p>"]
    if _section(report, IMAGES):
        parts += [f"<h2>{_e(IMAGES)}</h2>", f"<p class='note'>{_e(IMAGES_NOTE)}</p>"]
        parts += [_html_figure(plot) for plot in _section(report, IMAGES)]
    parts += _html_ensembles(study)
    folded = "" if len(study.runs) <= RUNS_OPEN_UP_TO else " (click to show)"
    parts += [
        "<h2>Runs</h2>",
        f"<details{' open' if not folded else ''}><summary>{len(study.runs)} runs{folded}"
        f"</summary>{_html_table(_RUN_HEADER, _run_cells(study))}</details>",
    ]
    parts += _html_provenance(report)
    parts += _html_epoch_lines(study)
    return _HTML_PAGE.format(title=_e(title), style=_STYLE, body="\n".join(parts))


def _section(report: Report, section: str) -> list[Plot]:
    """The report's plots that go into one section (Figures, or the images behind the numbers)."""
    return [plot for plot in report.plots if plot.section == section]


def _write_plots(folder: Path, plots: Sequence[Plot]) -> list[Path]:
    """Write each figure's PNG; remove figures an earlier report wrote that this one no longer has."""
    written = [atomic_write_bytes(folder / f"{plot.name}.png", plot.png) for plot in plots]
    for name in set(PLOT_NAMES) - {plot.name for plot in plots}:
        (folder / f"{name}.png").unlink(missing_ok=True)
    return written


def _table_notes(report: Report) -> list[str]:
    """What the table's numbers mean, and the study's own selection when it made one."""
    notes = [
        f"★ {BEST_NOTE}. Accuracies in %: mean ± sample std over completed runs; 95% CI of the mean "
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
    selection = study.selection
    if isinstance(selection, dict) and selection.get("chosen"):
        final = ", ".join(str(run) for run in (selection.get("final_runs") or {}).values())
        notes.append(
            f"The study's select stage chose {selection['chosen']} by {selection.get('metric', 'its metric')}"
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


# ---------------------------------------------------------------- Markdown pieces


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [_md_row(header), _md_row(["---"] * len(header))] + [_md_row(cells) for cells in body]


def _md_comparisons(comparisons: Sequence[PairedComparison]) -> list[str]:
    if not comparisons:
        return []
    out = ["## Paired comparisons", ""]
    out += [f"- {describe(comparison)}" for comparison in comparisons] + [""]
    return out + _md_table(_COMPARISON_HEADER, [_comparison_cells(c) for c in comparisons]) + [""]


def _md_incomplete(study: Study) -> list[str]:
    runs = [run for run in study.runs if not run.completed]
    if not runs:
        return []
    out = ["## Runs that did not complete (excluded from the means)", ""]
    return out + [f"- {_run_title(study, run)}: {run.reason or 'no reason recorded'}" for run in runs] + [""]


def _md_ensembles(study: Study) -> list[str]:
    if not study.ensembles:
        return []
    out = [
        "## Ensembles",
        "",
        "| Ensemble | Method | Members | Val acc % | Test acc % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ensemble in study.ensembles:
        members = ", ".join(ensemble.members)
        out.append(
            _md_row(
                [
                    ensemble.name,
                    str(ensemble.result.get("method", "")),
                    members,
                    _percent(ensemble.val_acc),
                    _percent(ensemble.test_acc),
                ]
            )
        )
    return out + [""]


def _md_provenance(report: Report) -> list[str]:
    study = report.study
    out = ["## Provenance", ""] + [f"- {name}: {value}" for name, value in _provenance(report)] + [""]
    if study.spec_text is not None:
        out += [f"### Study spec ({study.spec_name})", "", "```yaml", study.spec_text.rstrip(), "```", ""]
    else:
        out += ["No study.yaml: this report was made from run folders alone.", ""]
    out += ["### Resolved configurations", ""]
    for configuration in study.configurations:
        out += [
            f"#### {configuration.title}",
            "",
            "```yaml",
            _resolved_config(configuration).rstrip(),
            "```",
            "",
        ]
    return out


# ---------------------------------------------------------------- HTML pieces


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _html_table(
    header: Sequence[str], body: Sequence[Sequence[str]], row_class: Callable[[int], str] | None = None
) -> str:
    """A table whose number-like cells are right-aligned; `row_class` styles rows (e.g. the best one)."""
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    rows = []
    for index, cells in enumerate(body):
        tds = "".join(
            f"<td class='num'>{_e(c)}</td>" if _NUMBER_LIKE.match(str(c)) else f"<td>{_e(c)}</td>"
            for c in cells
        )
        css = row_class(index) if row_class else ""
        rows.append(f"<tr class='{css}'>{tds}</tr>" if css else f"<tr>{tds}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def _html_results_table(rows: Sequence[ConfigurationRow]) -> str:
    header, body = table_cells(rows, marker="★")
    return _html_table(header, body, row_class=lambda index: "best" if rows[index].best else "")


def _html_comparisons(comparisons: Sequence[PairedComparison]) -> list[str]:
    if not comparisons:
        return []
    sentences = "".join(f"<li>{_e(describe(comparison))}</li>" for comparison in comparisons)
    table = _html_table(_COMPARISON_HEADER, [_comparison_cells(c) for c in comparisons])
    return ["<h2>Paired comparisons</h2>", f"<ul class='sentences'>{sentences}</ul>", table]


def _html_incomplete(study: Study) -> list[str]:
    runs = [run for run in study.runs if not run.completed]
    if not runs:
        return []
    items = "".join(
        f"<li>{_e(_run_title(study, run))}: <b>{_e(run.reason or 'no reason recorded')}</b></li>"
        for run in runs
    )
    return [
        "<h2>Runs that did not complete</h2>",
        "<p class='note'>Listed here, excluded from the means.</p>",
        f"<ul>{items}</ul>",
    ]


def _html_figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f"<figure><h3>{_e(plot.title)}</h3><img alt='{_e(plot.title)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
    )


def _html_ensembles(study: Study) -> list[str]:
    if not study.ensembles:
        return []
    body = [
        [
            e.name,
            str(e.result.get("method", "")),
            ", ".join(e.members),
            _percent(e.val_acc),
            _percent(e.test_acc),
        ]
        for e in study.ensembles
    ]
    return [
        "<h2>Ensembles</h2>",
        _html_table(["Ensemble", "Method", "Members", "Val acc %", "Test acc %"], body),
    ]


def _html_provenance(report: Report) -> list[str]:
    study = report.study
    items = "".join(
        f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in _provenance(report)
    )
    out = ["<h2>Provenance</h2>", f"<table class='provenance'>{items}</table>"]
    if study.spec_text is not None:
        out.append(
            f"<details open><summary>Study spec ({_e(study.spec_name)})</summary>"
            f"<pre>{_e(study.spec_text)}</pre></details>"
        )
    else:
        out.append("<p class='note'>No study.yaml: this report was made from run folders alone.</p>")
    for configuration in study.configurations:
        out.append(
            f"<details><summary>Resolved configuration {_e(configuration.title)}</summary>"
            f"<pre>{_e(_resolved_config(configuration))}</pre></details>"
        )
    return out


def _html_epoch_lines(study: Study) -> list[str]:
    blocks = []
    for run in study.runs:
        lines = epoch_lines(run)
        if lines:
            blocks.append(
                f"<details><summary>{_e(_run_title(study, run))}</summary><pre>{_e(chr(10).join(lines))}"
                "</pre></details>"
            )
    if not blocks:
        return []
    return ["<h2>Per-epoch lines</h2>", f"<p class='note'>{_e(EPOCH_NOTE.replace('`', ''))}</p>", *blocks]


# ---------------------------------------------------------------- small formatters


def _align(cell: str, width: int, column: int) -> str:
    return cell.ljust(width) if column < 3 else cell.rjust(width)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _fixed(value: object, digits: int) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def _integer(value: float | int | None) -> str:
    return "—" if value is None else f"{round(value):,}"


def _significant(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _maybe(value: object) -> str:
    return "—" if value is None else str(value)


def _epoch(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else str(value)


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


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d1d1f;
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1240px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.summary, .note, figcaption { color: #555; font-size: 0.92em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #d8d8d8; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #f0f2f5; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #fff3c4; font-weight: 600; }
table.provenance th { background: #f7f7f7; font-weight: 600; width: 14em; }
ul.sentences li { margin-bottom: 0.5em; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f6f8fa; padding: 10px 12px; overflow-x: auto; font-size: 0.85em; border-radius: 4px; }
details { margin: 6px 0; }
summary { cursor: pointer; }
"""

_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""
