"""The report's figures, drawn with matplotlib's object API (no pyplot state, Agg canvas) into PNG bytes.

Each configuration keeps one colour in every figure. Curves show the mean over a configuration's completed
runs with a band from the lowest to the highest run, so a reader sees both the trend and the spread. In a
study with stages, the learning curves, the confusion matrix and accuracy against cost show the final stage.

The pictures in the section IMAGES (augmented training samples, the highest-loss images, the most-confused
class pairs, Grad-CAM maps) are thumbnails the runs saved at their end (`images/*.npz`); every caption names
the images it shows, in order, by file name (folder datasets) or index in their split.
"""

from __future__ import annotations

import dataclasses
import io
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator
from PIL import Image

from cnnlab.report.collect import Configuration, EnsembleRecord, RunRecord, Study, format_value
from cnnlab.report.statistics import ConfigurationRow, TwoFactorGrid, stage_rows, two_factor_grid
from cnnlab.runfolder import ImageSamples, Predictions

DPI = 110
LEGEND_WIDTH = 70  # characters per legend line before wrapping
ENSEMBLE_COLOUR = "#333333"
CROWDED_BARS = 10  # more bars than this: smaller, slanted member names
FIGURES = "Figures"  # the section of the report a plot goes into
IMAGES = "Images behind the numbers"
GRID = "grid"  # the two-factor grid's heat map, drawn beside its table
LOG_LOSS_NOTE = (
    "Loss panels use a logarithmic y-axis, so a loss spike (or a divergent epoch) does not flatten every "
    "other curve into a line at the bottom."
)
TEST_CURVE_NOTE = "test, per epoch: for the curve only, never used to choose anything"
THUMB_INCHES = 1.25  # side of one thumbnail in the image figures
THUMB_PIXELS = round(THUMB_INCHES * DPI)
GAP_INCHES = 0.08  # between neighbouring thumbnails, and between a title and its thumbnail
HEADING_INCHES = 0.3  # a block's heading line in the augmented samples
PAIR_TEXT_INCHES = 1.9  # the column that names each confused pair
HIGHEST_LOSS_SHOWN = 12  # images in the highest-loss figure (over the best configuration's runs)
CONFUSED_PAIRS_SHOWN = 5  # most-confused class pairs shown
PAIR_EXAMPLES = 6  # example images per pair
AUGMENT_BLOCKS = 4  # distinct data.augment presets shown
OVERLAY_ALPHA = 0.45  # Grad-CAM heat map over the image


@dataclasses.dataclass(frozen=True)
class Plot:
    """One figure: `name` is its file stem in report_files/, `png` its encoded image."""

    name: str
    title: str
    caption: str
    png: bytes
    section: str = FIGURES


def make_plots(study: Study, rows: Sequence[ConfigurationRow]) -> list[Plot]:
    """Every figure the study's files support, in report order (absent data → the figure is skipped)."""
    colours = configuration_colours(study)
    final_rows = stage_rows(rows, study.final_stage)
    best = next((row.ident for row in final_rows if row.best), None)
    candidates = [
        grid_heatmap(two_factor_grid(study, rows, study.final_stage), study.staged),
        learning_curves(study, colours),
        test_curves(study, colours),
        lr_schedule(study, colours),
        confusion_matrix(study, best),
        per_class_accuracy(study),
        accuracy_vs_cost(study, final_rows, colours),
        ensembles_vs_members(study, colours),
        augmented_samples(study),
        highest_loss(study, best),
        confused_pairs(study, best),
        grad_cam(study, best),
    ]
    return [plot for plot in candidates if plot is not None]


def configuration_colours(study: Study) -> dict[str, str]:
    """C1, C2, ... → a hex colour, the same in every figure (tab10, tab20 beyond ten configurations)."""
    count = len(study.configurations)
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    size = 10 if count <= 10 else 20
    return {c.ident: _hex(palette(index % size)) for index, c in enumerate(study.configurations)}


def learning_curves(study: Study, colours: dict[str, str]) -> Plot | None:
    """Train/validation loss and accuracy per epoch of the final stage: mean line, min–max band over runs."""
    curves = _final_curves(study, "val_acc")
    if not curves:
        return None
    layout = [
        ("train_loss", "Training loss (log scale)", 1),
        ("val_loss", "Validation loss (log scale)", 1),
        ("train_acc", "Training accuracy (%)", 100),
        ("val_acc", "Validation accuracy (%)", 100),
    ]
    figure = curve_figure(curves, layout, colours, 7.5)
    return Plot(
        "learning_curves",
        "Learning curves",
        "Mean over each configuration's completed runs; the shaded band spans the lowest to the highest run. "
        + LOG_LOSS_NOTE
        + _stage_note(study),
        _png(figure),
    )


def test_curves(study: Study, colours: dict[str, str]) -> Plot | None:
    """Test loss and accuracy after every epoch (metrics.csv `test_acc`/`test_loss`, written by runs with
    train.test_every_epoch), apart from the validation curves; None when no run logged them."""
    curves = _final_curves(study, "test_acc")
    if not curves:
        return None
    layout = [("test_loss", "Test loss (log scale)", 1), ("test_acc", "Test accuracy (%)", 100)]
    figure = curve_figure(curves, layout, colours, 4.2)
    figure.suptitle(TEST_CURVE_NOTE, fontsize=10)
    return Plot(
        "test_curves",
        "Test curves per epoch",
        f"{TEST_CURVE_NOTE[0].upper()}{TEST_CURVE_NOTE[1:]}. Test loss and accuracy after every epoch "
        "(metrics.csv test_loss and test_acc, logged by runs with train.test_every_epoch), mean over each "
        "configuration's runs that logged them, band from the lowest to the highest run. The best epoch and "
        "the best configuration are chosen on validation only; the table's test accuracy is the kept "
        "checkpoint's, evaluated once at the end. " + LOG_LOSS_NOTE + _stage_note(study),
        _png(figure),
    )


def _final_curves(study: Study, column: str) -> list[tuple[Configuration, list[dict[str, np.ndarray]]]]:
    """(configuration, its completed runs' metrics.csv tables) of the final stage, for runs whose `column`
    has at least one value."""
    curves = []
    for configuration in study.stage_configurations(study.final_stage):
        tables = [
            run.metrics
            for run in configuration.completed_runs
            if run.metrics and column in run.metrics and np.isfinite(run.metrics[column]).any()
        ]
        if tables:
            curves.append((configuration, tables))
    return curves


def curve_figure(
    curves: Sequence[tuple[Configuration, Sequence[dict[str, np.ndarray]]]],
    layout: Sequence[tuple[str, str, float]],
    colours: dict[str, str],
    height: float,
) -> Figure:
    """Panels of per-epoch curves, two per row; losses (scale 1) on a log y-axis."""
    rows = math.ceil(len(layout) / 2)
    figure = Figure(figsize=(11, height + 0.22 * len(curves)), dpi=DPI, layout="constrained")
    panels = np.atleast_2d(figure.subplots(rows, 2, sharex=True, squeeze=False))
    for axes, (column, title, scale) in zip(panels.flat, layout):
        for configuration, tables in curves:
            _band(axes, tables, column, scale, colours[configuration.ident], _legend_label(configuration))
        if scale == 1 and axes.lines:
            _log_scale(axes, "y")
        axes.set_title(title)
        axes.grid(alpha=0.3, which="both" if scale == 1 else "major")
    for axes in panels[-1]:
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    _figure_legend(figure, panels[0, 0])
    return figure


def grid_heatmap(grid: TwoFactorGrid | None, staged: bool) -> Plot | None:
    """Mean validation accuracy of a two-factor grid as a heat map, one factor as rows, one as columns."""
    if grid is None:
        return None
    values = np.full((len(grid.row_values), len(grid.column_values)), np.nan)
    spread = np.full_like(values, np.nan)
    for (row_value, column_value), row in grid.cells.items():
        if row.val_acc is not None:
            place = grid.row_values.index(row_value), grid.column_values.index(column_value)
            values[place], spread[place] = 100 * row.val_acc.mean, 100 * row.val_acc.std
    if not np.isfinite(values).any():
        return None
    figure = Figure(
        figsize=(max(5.5, 1.5 * len(grid.column_values) + 3), max(3.0, 0.9 * len(grid.row_values) + 1.6)),
        dpi=DPI,
        layout="constrained",
    )
    axes = figure.subplots()
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes, label="mean validation accuracy (%)", shrink=0.9)
    axes.set_xticks(range(len(grid.column_values)), grid.column_values)
    axes.set_yticks(range(len(grid.row_values)), grid.row_values)
    axes.set_xlabel(grid.column_axis)
    axes.set_ylabel(grid.row_axis)
    middle = np.nanmean(values)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            text = f"{value:.2f}" + (f"\n± {spread[i, j]:.2f}" if np.isfinite(spread[i, j]) else "")
            ident = grid.cells[(grid.row_values[i], grid.column_values[j])].ident
            colour = "black" if value > middle else "white"
            axes.text(j, i, f"{ident}\n{text}", ha="center", va="center", fontsize=9, color=colour)
    where = f" Stage {grid.stage}." if staged else ""
    return Plot(
        "grid_heatmap",
        f"Mean validation accuracy over {grid.row_axis} × {grid.column_axis}",
        "Mean validation accuracy (%) ± sample std over each configuration's completed runs, "
        f"{grid.row_axis} as rows and {grid.column_axis} as columns (the table above in colour; an empty "
        f"cell has no validated run).{where}",
        _png(figure),
        GRID,
    )


def _best_confusion(study: Study, best: str | None) -> tuple[Any, str, list, list[str], np.ndarray] | None:
    """(configuration, split, predictions, class names, confusion counts summed over its completed runs) of
    the best configuration, None when it has no saved predictions."""
    configuration = next((c for c in study.configurations if c.ident == best), None)
    if configuration is None or not configuration.completed_runs:
        return None
    split, predictions = _best_predictions(configuration.completed_runs)
    if not predictions:
        return None
    names = _class_names(configuration.completed_runs[0], predictions)
    return configuration, split, predictions, names, _confusion_counts(predictions, len(names))


def confusion_matrix(study: Study, best: str | None) -> Plot | None:
    """Confusion matrix of the best configuration, summed over its runs, rows normalised to the true class."""
    summed = _best_confusion(study, best)
    if summed is None:
        return None
    configuration, split, predictions, names, counts = summed
    figure = _confusion_figure(counts, names)
    figure.axes[0].set_title(
        "\n".join(
            textwrap.wrap(f"{configuration.title} — {split} split, {len(predictions)} run(s) summed", 80)
        ),
        fontsize=10,
    )
    return Plot(
        "confusion_matrix",
        "Confusion matrix of the best configuration",
        f"{configuration.title}, {split} split. Rows are the true class, columns the predicted class; "
        f"each cell shows the percentage of its row, summed over {len(predictions)} run(s).",
        _png(figure),
    )


def accuracy_vs_cost(study: Study, rows: Sequence[ConfigurationRow], colours: dict[str, str]) -> Plot | None:
    """Mean accuracy (± std) against parameters (log scale) and against training time per run."""
    metric = "test_acc" if any(row.test_acc for row in rows) else "val_acc"
    points = [row for row in rows if getattr(row, metric) is not None]
    if not points:
        return None
    figure = Figure(figsize=(11, 4.8 + 0.22 * len(points)), dpi=DPI, layout="constrained")
    by_params, by_time = figure.subplots(1, 2, sharey=True)
    labels = {c.ident: _legend_label(c) for c in study.configurations}
    _scatter(by_params, points, "params", metric, colours, labels)
    _scatter(by_time, points, "train_time_s", metric, colours, {})
    _log_scale(by_params, "x")
    by_params.set_xlabel("parameters (log scale)")
    by_time.set_xlabel("training time per run (s)")
    name = "Test" if metric == "test_acc" else "Validation"
    by_params.set_ylabel(f"{name} accuracy (%)")
    for axes in (by_params, by_time):
        axes.grid(alpha=0.3)
    _figure_legend(figure, by_params)
    return Plot(
        "accuracy_vs_cost",
        "Accuracy against size and training time",
        f"{name} accuracy, mean ± std over each configuration's completed runs, against the model's "
        "parameter count and the mean training time of one run. Up and to the left is better."
        + _stage_note(study),
        _png(figure),
    )


def ensembles_vs_members(study: Study, colours: dict[str, str]) -> Plot | None:
    """One bar per member run and one for the ensemble, per ensemble of the study."""
    ensembles = [e for e in study.ensembles if e.test_acc is not None or e.val_acc is not None]
    if not ensembles:
        return None
    figure = Figure(figsize=(11, 3.6 * len(ensembles)), dpi=DPI, layout="constrained")
    for axes, ensemble in zip(np.atleast_1d(figure.subplots(len(ensembles), 1)), ensembles):
        _ensemble_bars(axes, ensemble, study, colours)
    return Plot(
        "ensemble_vs_members",
        "Ensembles against their members",
        "Accuracy of each ensemble (dark bar) and of each member run (in its configuration's colour).",
        _png(figure),
    )


def _stage_note(study: Study) -> str:
    """What a caption adds in a study with stages: which stage the figure shows."""
    return f" Stage {study.final_stage} only (the final stage)." if study.staged else ""


def _band(
    axes: Axes, tables: Sequence[dict[str, np.ndarray]], column: str, scale: float, colour: str, label: str
) -> None:
    """Mean line and min–max band of one metric column over runs, aligned on the epoch number."""
    series = [(t["epoch"], t[column] * scale) for t in tables if column in t]
    if not series:
        return
    epochs = np.unique(np.concatenate([epoch for epoch, _ in series]))
    grid = np.full((len(series), len(epochs)), np.nan)
    for row, (epoch, values) in enumerate(series):
        grid[row, np.searchsorted(epochs, epoch)] = values
    present = ~np.all(np.isnan(grid), axis=0)
    epochs, grid = epochs[present], grid[:, present]
    if epochs.size == 0:
        return
    mean = np.nanmean(grid, axis=0)
    axes.plot(epochs, mean, color=colour, linewidth=1.8, marker="o", markersize=3, label=label)
    if len(series) > 1:
        axes.fill_between(
            epochs, np.nanmin(grid, axis=0), np.nanmax(grid, axis=0), color=colour, alpha=0.18, linewidth=0
        )


def _best_predictions(runs: Sequence[RunRecord]) -> tuple[str, list[Predictions]]:
    """Test predictions of every run when all have them, else validation predictions."""
    for split in ("test", "val"):
        found = [run.predictions(split) for run in runs]
        if found and all(p is not None for p in found):
            return split, [p for p in found if p is not None]
    return "test", []


def _class_names(run: RunRecord, predictions: Sequence[Predictions]) -> list[str]:
    count = max(p.probs.shape[1] for p in predictions)
    names = run.class_names
    return names if len(names) == count else [str(index) for index in range(count)]


def _confusion_counts(predictions: Sequence[Predictions], classes: int) -> np.ndarray:
    """Summed (true, predicted) counts over runs."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    for p in predictions:
        predicted = p.probs.argmax(axis=1)
        counts += np.bincount(p.labels * classes + predicted, minlength=classes * classes).reshape(
            classes, classes
        )
    return counts


def _confusion_figure(counts: np.ndarray, names: Sequence[str]) -> Figure:
    classes = len(names)
    side = min(max(4.5, 0.4 * classes + 2.5), 16.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    totals = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    image = axes.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, shrink=0.8, label="% of the true class")
    ticks = np.arange(classes)
    fontsize = 9 if classes <= 20 else 6
    axes.set_xticks(
        ticks,
        [str(n) for n in names],
        rotation=45 if classes > 8 else 0,
        ha="right" if classes > 8 else "center",
        fontsize=fontsize,
    )
    axes.set_yticks(ticks, [str(n) for n in names], fontsize=fontsize)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if classes <= 20:
        for (row, col), value in np.ndenumerate(percent):
            if counts[row, col]:
                axes.text(
                    col,
                    row,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > 55 else "black",
                )
    return figure


def _scatter(
    axes: Axes,
    rows: Sequence[ConfigurationRow],
    x_field: str,
    metric: str,
    colours: dict[str, str],
    labels: dict[str, str],
) -> None:
    """One point per configuration with a ±std error bar, named by its ident."""
    for row in rows:
        x, summary = getattr(row, x_field), getattr(row, metric)
        if x is None or summary is None or x <= 0:
            continue
        spread = 100 * summary.std if math.isfinite(summary.std) else 0.0
        axes.errorbar(
            [x],
            [100 * summary.mean],
            yerr=[spread],
            fmt="o",
            color=colours[row.ident],
            markersize=7,
            capsize=3,
            label=labels.get(row.ident),
        )
        axes.annotate(
            row.ident, (x, 100 * summary.mean), textcoords="offset points", xytext=(6, 4), fontsize=8
        )


def _ensemble_bars(axes: Axes, ensemble: EnsembleRecord, study: Study, colours: dict[str, str]) -> None:
    use_test = ensemble.test_acc is not None
    names, values, bar_colours = [], [], []
    for member_id in ensemble.members:
        run = study.run_by_id(member_id)
        value = None if run is None else (run.test_acc if use_test else run.val_acc)
        if run is None or value is None:
            continue
        configuration = study.configuration_of(run)
        names.append("\n".join(textwrap.wrap(f"{configuration.ident} {_run_name(run)}", 18)))
        values.append(100 * value)
        bar_colours.append(colours[configuration.ident])
    method = ensemble.result.get("method", "mean")
    names.append(f"ensemble\n({method})")
    values.append(100 * (ensemble.test_acc if use_test else ensemble.val_acc or 0.0))
    bar_colours.append(ENSEMBLE_COLOUR)
    bars = axes.bar(range(len(values)), values, color=bar_colours)
    axes.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=2, fontsize=9)
    crowded = len(values) > CROWDED_BARS
    axes.set_xticks(
        range(len(values)),
        names,
        fontsize=7 if crowded else 8,
        rotation=45 if crowded else 0,
        ha="right" if crowded else "center",
    )
    lowest = max(0.0, 10 * math.floor((min(values) - 5) / 10))
    axes.set_ylim(lowest, 100 + 0.06 * (100 - lowest))
    split = "test" if use_test else "validation"
    axes.set_ylabel(f"{split} accuracy (%)")
    axes.set_title(
        f"Ensemble {ensemble.name!r}: {len(values) - 1} members"
        + (f" (y axis starts at {lowest:.0f}%)" if lowest > 0 else ""),
        fontsize=10,
    )
    axes.grid(axis="y", alpha=0.3)


def _run_name(run: RunRecord) -> str:
    parts = [f"seed {run.seed}"] if run.seed is not None else []
    parts += [f"fold {run.fold}"] if run.fold is not None else []
    return ", ".join(parts) or run.run_id


def _legend_label(configuration: Configuration) -> str:
    return "\n".join(textwrap.wrap(configuration.title, LEGEND_WIDTH)) or configuration.ident


def _figure_legend(figure: Figure, axes: Axes) -> None:
    """One legend for the whole figure, below the panels, so curves stay uncovered."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        columns = 2 if len(handles) > 4 else 1
        figure.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=9, frameon=False)


def _png(figure: Figure) -> bytes:
    """Encode a figure as PNG (Agg canvas, no GUI backend involved)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(255 * channel):02x}" for channel in rgba[:3])


# ---------------------------------------------------------------- learning rate and per-class accuracy


def lr_schedule(study: Study, colours: dict[str, str]) -> Plot | None:
    """The learning rate of each epoch (metrics.csv `lr`, at the epoch's start) of the final stage."""
    configurations = study.stage_configurations(study.final_stage)
    curves = [
        (c, [r.metrics for r in c.completed_runs if r.metrics and "lr" in r.metrics]) for c in configurations
    ]
    curves = [
        (c, tables) for c, tables in curves if tables and any(np.isfinite(t["lr"]).any() for t in tables)
    ]
    if not curves:
        return None
    shared = _one_schedule([tables for _, tables in curves])
    figure = Figure(figsize=(11, 3.6 + 0.22 * len(curves)), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    if shared and len(curves) > 1:  # drawn once: coinciding lines would hide all but the last colour
        label = f"{', '.join(c.ident for c, _ in curves)} (one schedule)"
        _band(axes, [t for _, tables in curves for t in tables], "lr", 1, ENSEMBLE_COLOUR, label)
    else:
        for configuration, tables in curves:
            _band(axes, tables, "lr", 1, colours[configuration.ident], _legend_label(configuration))
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    _figure_legend(figure, axes)
    return Plot(
        "lr_schedule",
        "Learning-rate schedule",
        "The learning rate each epoch started with (metrics.csv), mean over each configuration's completed "
        "runs; the shaded band spans the lowest to the highest run."
        + (
            " Every configuration follows the same schedule, drawn once."
            if shared and len(curves) > 1
            else ""
        )
        + _stage_note(study),
        _png(figure),
    )


def _one_schedule(groups: Sequence[Sequence[dict[str, np.ndarray]]]) -> bool:
    """Whether every run of every configuration has the same per-epoch learning rates."""
    schedules = [(t["epoch"].tolist(), np.round(t["lr"], 12).tolist()) for tables in groups for t in tables]
    return all(schedule == schedules[0] for schedule in schedules)


def per_class_accuracy(study: Study) -> Plot | None:
    """Heat map of each configuration's mean per-class accuracy (result.json) over its completed runs."""
    table, names, split = per_class_table(study.stage_configurations(study.final_stage))
    if not table:
        return None
    values = np.array([row for _, row in table]) * 100
    figure = Figure(
        figsize=(min(max(5.0, 0.55 * len(names) + 3.5), 16.0), 1.6 + 0.42 * len(table)),
        dpi=DPI,
        layout="constrained",
    )
    axes = figure.subplots()
    lowest = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    floor = max(0.0, 10 * math.floor(lowest / 10))
    image = axes.imshow(values, cmap="RdYlGn", vmin=floor, vmax=100, aspect="auto")
    figure.colorbar(image, ax=axes, label=f"{split} accuracy of the class (%)", shrink=0.9)
    fontsize = 9 if len(names) <= 20 else 6
    axes.set_xticks(range(len(names)), names, fontsize=fontsize, rotation=45 if len(names) > 8 else 0)
    axes.set_yticks(range(len(table)), [c.ident for c, _ in table], fontsize=9)
    axes.set_xlabel("true class")
    if len(names) <= 20:
        for (row, col), value in np.ndenumerate(values):
            if np.isfinite(value):
                axes.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=8)
    return Plot(
        "per_class_accuracy",
        "Per-class accuracy",
        f"Share of each class's {split} images classified correctly (%), mean over each configuration's "
        "completed runs (result.json per_class_accuracy); rows are the configurations of the results table."
        + _stage_note(study),
        _png(figure),
    )


def per_class_table(
    configurations: Sequence[Configuration],
) -> tuple[list[tuple[Configuration, list[float]]], list[str], str]:
    """(configuration, mean accuracy per class) rows, the class names, and the split they were scored on."""
    names: list[str] = []
    scored = []
    for configuration in configurations:
        runs = [
            r for r in configuration.completed_runs if isinstance(r.result.get("per_class_accuracy"), dict)
        ]
        runs = [r for r in runs if r.result["per_class_accuracy"]]
        for run in runs:
            names += [
                name for name in run.class_names or run.result["per_class_accuracy"] if name not in names
            ]
        if runs:
            scored.append((configuration, runs))
    table = []
    for configuration, runs in scored:
        row = []
        for name in names:
            found = [_finite(run.result["per_class_accuracy"].get(name)) for run in runs]
            found = [value for value in found if value is not None]
            row.append(float(np.mean(found)) if found else math.nan)
        table.append((configuration, row))
    tested = all(run.test_acc is not None for _, runs in scored for run in runs)
    return table, names, "test" if tested else "validation"


# ---------------------------------------------------------------- images behind the numbers


def augmented_samples(study: Study) -> Plot | None:
    """Training images as the network saw them: each original and the augmentations its run drew."""
    blocks = _augment_blocks(study.stage_configurations(study.final_stage))
    if not blocks:
        return None
    columns = max(len(_originals(samples)) for _, _, samples in blocks)
    row_label = 0.3  # inches left of the first column for "as stored" / "epoch N"
    step = THUMB_INCHES + 2 * GAP_INCHES
    heights = [_augment_block_height(samples) for _, _, samples in blocks]
    sheet = _Sheet(max(6.0, row_label + columns * step), sum(heights))
    described = []
    top = 0.0
    for height, (configurations, run, samples) in zip(heights, blocks):
        preset = format_value(configurations[0].settings.get("data.augment", "none"))
        shown_from = next(c.ident for c in configurations if run in c.runs)
        where = f"{', '.join(c.ident for c in configurations)}; shown: {shown_from} {_run_name(run)}"
        sheet.text(
            sheet.width / 2, top + GAP_INCHES, f"data.augment={preset} ({where})", ha="center", va="top"
        )
        _augment_grid(sheet, samples, run.class_names, row_label, top + HEADING_INCHES, step)
        shown = ", ".join(_image_name(samples, row, run.class_names) for row in _originals(samples))
        described.append(f"data.augment={preset} ({where}): {shown}")
        top += height
    return Plot(
        "augmented_samples",
        "Augmented training samples",
        "Training images as the network saw them: each column is one image, the top row as stored and the "
        "rows below the augmentation its run's data.augment drew in epochs 0, 1, 2 (none: the images are fed "
        "as they are). Images, left to right — " + "; ".join(described) + "." + _stage_note(study),
        sheet.png(),
        IMAGES,
    )


def _augment_blocks(
    configurations: Sequence[Configuration],
) -> list[tuple[list[Configuration], RunRecord, ImageSamples]]:
    """One (configurations, run, samples) per distinct (data.name, data.augment), from its first run."""
    groups: dict[tuple[str, str], list[Configuration]] = {}
    for configuration in configurations:
        key = (str(configuration.settings.get("data.name")), str(configuration.settings.get("data.augment")))
        groups.setdefault(key, []).append(configuration)
    blocks = []
    for members in list(groups.values())[:AUGMENT_BLOCKS]:
        found = next(
            (
                (run, s)
                for c in members
                for run in c.completed_runs
                if (s := run.images("augmented")) and len(s)
            ),
            None,
        )
        if found is not None:
            blocks.append((members, *found))
    return blocks


def _variants(samples: ImageSamples) -> np.ndarray:
    """Each saved image's variant: 0 as stored, 1 + the epoch of an augmentation."""
    return samples.variants if samples.variants is not None else np.zeros(len(samples), dtype=np.int64)


def _originals(samples: ImageSamples) -> np.ndarray:
    return np.flatnonzero(_variants(samples) == 0)


def _augment_block_height(samples: ImageSamples) -> float:
    rows = int(_variants(samples).max()) + 1
    return HEADING_INCHES + _title_inches(2) + rows * (THUMB_INCHES + GAP_INCHES) + GAP_INCHES


def _augment_grid(
    sheet: _Sheet, samples: ImageSamples, class_names: Sequence[str], left: float, top: float, step: float
) -> None:
    """One column per original image (its title above), one row per variant (labelled at the left)."""
    variants = _variants(samples)
    rows = int(variants.max()) + 1
    first_row = top + _title_inches(2)
    for row in range(rows):
        label = "as stored" if row == 0 else f"epoch {row - 1}"
        middle = first_row + row * (THUMB_INCHES + GAP_INCHES) + THUMB_INCHES / 2
        sheet.text(left - GAP_INCHES, middle, label, rotation=90, ha="right", va="center", fontsize=8)
    for column, original in enumerate(_originals(samples)):
        for variant in range(rows):
            match = np.flatnonzero((variants == variant) & (samples.indices == samples.indices[original]))
            if match.size:
                title = _short_title(samples, original, class_names) if variant == 0 else ""
                position = (
                    left + column * step + GAP_INCHES,
                    first_row + variant * (THUMB_INCHES + GAP_INCHES),
                )
                sheet.thumbnail(*position, samples.images[match[0]], title)


def highest_loss(study: Study, best: str | None) -> Plot | None:
    """The highest-loss images over the best configuration's runs, with true and predicted class."""
    configuration = next((c for c in study.configurations if c.ident == best), None)
    if configuration is None:
        return None
    split = _evaluation_split(configuration)
    shown = []
    for run in configuration.completed_runs:
        samples = run.images("hardest")
        if samples is None or samples.probs is None or samples.split != split:
            continue
        shown += [(_loss(samples, row), run, samples, row) for row in range(len(samples))]
    if not shown:
        return None
    shown = sorted(shown, key=lambda item: -item[0])[:HIGHEST_LOSS_SHOWN]
    columns = min(6, len(shown))
    several = len(configuration.completed_runs) > 1
    title_lines = 4 if several else 3
    cell = (THUMB_INCHES * 1.45, THUMB_INCHES + _title_inches(title_lines) + GAP_INCHES)
    sheet = _Sheet(cell[0] * columns, cell[1] * math.ceil(len(shown) / columns))
    for index, (loss, run, samples, row) in enumerate(shown):
        names = run.class_names
        predicted = int(samples.probs[row].argmax())
        where = f"\n{_run_name(run)}" if several else ""
        title = (
            f"{_clip(samples.ids[row])}{where}\ntrue {_class(names, samples.labels[row])}, "
            f"pred {_class(names, predicted)}\np={samples.probs[row, predicted]:.2f}, loss {loss:.2f}"
        )
        line, column = divmod(index, columns)
        left = column * cell[0] + (cell[0] - THUMB_INCHES) / 2
        sheet.thumbnail(left, line * cell[1] + _title_inches(title_lines), samples.images[row], title)
    described = ", ".join(
        f"{_image_name(samples, row, run.class_names)} loss {loss:.2f} ({_run_name(run)})"
        for loss, run, samples, row in shown
    )
    return Plot(
        "highest_loss",
        "Highest-loss images of the best configuration",
        f"{configuration.title}, {split} split: the {len(shown)} images with the highest cross-entropy loss "
        f"(−log of the probability given to the true class) over its {len(configuration.completed_runs)} "
        "run(s), highest first, each with its true class, the predicted class and that prediction's "
        f"probability. Left to right, top to bottom: {described}.",
        sheet.png(),
        IMAGES,
    )


def confused_pairs(study: Study, best: str | None) -> Plot | None:
    """The best configuration's most frequent (true, predicted) mistakes, each with example images."""
    summed = _best_confusion(study, best)
    if summed is None:
        return None
    configuration, split, predictions, names, counts = summed
    pairs = _top_pairs(counts)
    if not pairs:
        return None
    saved = [(run, run.images("confused")) for run in configuration.completed_runs]
    saved = [(run, s) for run, s in saved if s is not None and s.probs is not None and s.split == split]
    examples = [_pair_examples(saved, pair) for pair in pairs]
    if not any(examples):  # runs that saved no images (older versions): the confusion matrix says it all
        return None
    examples_width = THUMB_INCHES * 1.3
    row_height = THUMB_INCHES + _title_inches(2) + GAP_INCHES
    columns = max(1, max(len(found) for found in examples))
    sheet = _Sheet(PAIR_TEXT_INCHES + examples_width * columns, row_height * len(pairs))
    described = []
    for line, ((true, predicted), found) in enumerate(zip(pairs, examples)):
        share = 100 * counts[true, predicted] / max(1, counts[true].sum())
        top = line * row_height
        sheet.text(
            GAP_INCHES,
            top + _title_inches(2) + THUMB_INCHES / 2,
            f"true {names[true]}\n→ predicted {names[predicted]}\n{counts[true, predicted]} image(s), "
            f"{share:.1f}%\nof {names[true]}",
            ha="left",
            va="center",
            fontsize=8,
        )
        for column, (_, samples, row) in enumerate(found):
            left = PAIR_TEXT_INCHES + column * examples_width + (examples_width - THUMB_INCHES) / 2
            title = f"{_clip(samples.ids[row])}\np={samples.probs[row, predicted]:.2f}"
            sheet.thumbnail(left, top + _title_inches(2), samples.images[row], title)
        pictured = ", ".join(f"{samples.ids[row]} ({_run_name(run)})" for run, samples, row in found)
        pictured = pictured or "no example saved"
        described.append(f"{names[true]} → {names[predicted]} ({counts[true, predicted]}): {pictured}")
    return Plot(
        "confused_pairs",
        "Most-confused class pairs of the best configuration",
        f"{configuration.title}, {split} split, summed over {len(predictions)} run(s): the most frequent "
        "mistakes (true class → predicted class, how many images and what share of the true class), each "
        "with up to six misclassified images the runs saved, most confident first (p: probability of the "
        "wrong class). " + "; ".join(described) + ".",
        sheet.png(),
        IMAGES,
    )


def grad_cam(study: Study, best: str | None) -> Plot | None:
    """Grad-CAM maps of the predicted class on a few images, from one run of the best configuration."""
    configuration = next((c for c in study.configurations if c.ident == best), None)
    found = None
    for run in configuration.completed_runs if configuration is not None else ():
        samples = run.images("gradcam")
        if samples is not None and samples.maps is not None and samples.probs is not None and len(samples):
            found = (run, samples)
            break
    if found is None:
        return None
    run, samples = found
    columns = len(samples)
    step = THUMB_INCHES * 1.2
    first_row = _title_inches(3)
    sheet = _Sheet(max(6.0, step * columns), first_row + 2 * THUMB_INCHES + 2 * GAP_INCHES)
    margin = (sheet.width - step * columns) / 2
    for column in range(columns):
        predicted = int(samples.probs[column].argmax())
        title = (
            f"{_clip(samples.ids[column])}\ntrue {_class(run.class_names, samples.labels[column])}\n"
            f"pred {_class(run.class_names, predicted)} {samples.probs[column, predicted]:.2f}"
        )
        left = margin + column * step + (step - THUMB_INCHES) / 2
        sheet.thumbnail(left, first_row, samples.images[column], title)
        below = first_row + THUMB_INCHES + GAP_INCHES
        sheet.thumbnail(left, below, samples.images[column], heat=samples.maps[column])
    described = ", ".join(_image_name(samples, row, run.class_names) for row in range(columns))
    return Plot(
        "gradcam",
        "Where the best configuration looks (Grad-CAM)",
        f"{configuration.title} ({_run_name(run)}), {samples.split} split: one image per class (top) and its "
        "Grad-CAM map of the predicted class over it (bottom; red: the regions of the last convolutional "
        "feature map that raised that class's score most). Left to right: " + described + ".",
        sheet.png(),
        IMAGES,
    )


def _evaluation_split(configuration: Configuration) -> str:
    """The split the runs' images come from: test when every run was tested, else validation."""
    runs = configuration.completed_runs
    return "test" if runs and all(run.test_acc is not None for run in runs) else "val"


def _top_pairs(counts: np.ndarray) -> list[tuple[int, int]]:
    """The most frequent off-diagonal (true, predicted) cells, most frequent first."""
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = sorted(((int(-off[i, j]), i, j) for i, j in zip(*np.nonzero(off))))[:CONFUSED_PAIRS_SHOWN]
    return [(i, j) for _, i, j in order]


def _pair_examples(
    saved: Sequence[tuple[RunRecord, ImageSamples]], pair: tuple[int, int]
) -> list[tuple[RunRecord, ImageSamples, int]]:
    """The runs' saved misclassified images of one (true, predicted) pair, most confident first."""
    true, predicted = pair
    found = []
    for run, samples in saved:
        assert samples.probs is not None
        match = (samples.labels == true) & (samples.probs.argmax(axis=1) == predicted)
        found += [
            (float(samples.probs[row, predicted]), run, samples, int(row)) for row in np.flatnonzero(match)
        ]
    found.sort(key=lambda item: -item[0])
    return [(run, samples, row) for _, run, samples, row in found[:PAIR_EXAMPLES]]


class _PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which ticks of a log axis to label, each written as a plain number (0.2, 0.06,
    300k, 2M) rather than as a power in mathtext (2 × 10⁻¹): easier to read, and no mathtext to parse and lay
    out at each layout pass."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return _plain_number(x) if super().__call__(x, pos) else ""


def _plain_number(value: float) -> str:
    """0.06, 0.2, 1, 300, 5000, 20k, 3M, 1.5G: `g` formatting, with k from ten thousand and M / G up."""
    for threshold, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if value >= threshold:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _log_scale(axes: Axes, which: str) -> None:
    """A logarithmic x or y axis, labelled with plain numbers."""
    getattr(axes, f"set_{which}scale")("log")
    axis = getattr(axes, f"{which}axis")
    axis.set_major_formatter(_PlainLogFormatter())
    axis.set_minor_formatter(_PlainLogFormatter())


class _Sheet:
    """A figure of thumbnails pasted pixel for pixel into one image, with their titles as text: matplotlib
    draws one image and some text, where an Axes per thumbnail, laid out by constrained layout, was most of
    a report's drawing time. Positions are in inches from the top-left corner; every thumbnail fills a
    THUMB_INCHES square, keeping its aspect ratio (nearest-neighbour, so pixels stay sharp)."""

    def __init__(self, width: float, height: float) -> None:
        self.pixels = np.full((round(height * DPI), round(width * DPI), 3), 255, dtype=np.uint8)
        self.height, self.width = (side / DPI for side in self.pixels.shape[:2])
        self.figure = Figure(figsize=(self.width, self.height), dpi=DPI)

    def thumbnail(
        self, left: float, top: float, image: np.ndarray, title: str = "", heat: np.ndarray | None = None
    ) -> None:
        """A uint8 (C, H, W) image, grey or RGB, its title centred above it; `heat`, a map in [0, 1], is laid
        over it in the jet colours (Grad-CAM)."""
        tile = _fitted(image, THUMB_PIXELS)
        if heat is not None:
            tile = _heat_overlay(tile, heat)
        height, width = tile.shape[:2]
        y = round(top * DPI) + (THUMB_PIXELS - height) // 2
        x = round(left * DPI) + (THUMB_PIXELS - width) // 2
        self.pixels[y : y + height, x : x + width] = tile
        if title:
            self.text(
                left + THUMB_INCHES / 2, top - GAP_INCHES / 2, title, ha="center", va="bottom", fontsize=7
            )

    def text(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        self.figure.text(x / self.width, 1 - y / self.height, text, **{"fontsize": 10, **kwargs})

    def png(self) -> bytes:
        self.figure.figimage(self.pixels)
        return _png(self.figure)


def _title_inches(lines: int) -> float:
    """The height a title of `lines` lines of 7-point text takes above its thumbnail, with its gap."""
    return lines * 7 * 1.2 / 72 + GAP_INCHES


def _fitted(image: np.ndarray, side: int) -> np.ndarray:
    """A uint8 (C, H, W) image as (h, w, 3) RGB scaled to fit a `side`-pixel square (nearest neighbour)."""
    rgb = np.repeat(image[:1], 3, axis=0) if image.shape[0] == 1 else image[:3]
    scale = side / max(rgb.shape[1:])
    rows, columns = (_nearest(length, max(1, round(length * scale))) for length in rgb.shape[1:])
    return rgb.transpose(1, 2, 0)[rows][:, columns]


def _nearest(length: int, size: int) -> np.ndarray:
    """The source index of each of `size` output pixels resampling `length` pixels (pixel centres aligned)."""
    return np.minimum(((np.arange(size) + 0.5) * length / size).astype(np.int64), length - 1)


def _heat_overlay(tile: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The jet colours of a [0, 1] map, smoothly (bilinearly) resized to the tile, blended over it."""
    height, width = tile.shape[:2]
    smooth = Image.fromarray(np.clip(heat, 0, 1).astype(np.float32))  # a float32 array: mode "F"
    smooth = np.asarray(smooth.resize((width, height), Image.Resampling.BILINEAR))
    colours = colormaps["jet"](np.clip(smooth, 0, 1))[..., :3] * 255
    return np.round(tile * (1 - OVERLAY_ALPHA) + colours * OVERLAY_ALPHA).astype(np.uint8)


def _loss(samples: ImageSamples, row: int) -> float:
    assert samples.probs is not None
    return float(-np.log(np.clip(samples.probs[row, samples.labels[row]], 1e-12, 1.0)))


def _class(names: Sequence[str], index: int) -> str:
    index = int(index)
    return names[index] if 0 <= index < len(names) else str(index)


def _image_name(samples: ImageSamples, row: int, class_names: Sequence[str]) -> str:
    """`cat.123 (cat)` or `#57 (3)`: the image's file stem or split index and its true class."""
    return f"{samples.ids[row]} ({_class(class_names, samples.labels[row])})"


def _short_title(samples: ImageSamples, row: int, class_names: Sequence[str]) -> str:
    return f"{_clip(samples.ids[row])}\n{_class(class_names, samples.labels[row])}"


def _clip(text: str, width: int = 16) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
