"""The report's figures, drawn with matplotlib's object API (no pyplot state, Agg canvas) into PNG bytes.

Each configuration keeps one colour in every figure. Curves show the mean over a configuration's completed
runs with a band from the lowest to the highest run, so a reader sees both the trend and the spread. In a
study with stages, the learning curves, the confusion matrix and accuracy against cost show the final stage.
"""

from __future__ import annotations

import dataclasses
import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnlab.report.collect import Configuration, EnsembleRecord, RunRecord, Study
from cnnlab.report.statistics import ConfigurationRow, stage_rows
from cnnlab.runfolder import Predictions

DPI = 110
LEGEND_WIDTH = 70  # characters per legend line before wrapping
ENSEMBLE_COLOUR = "#333333"
CROWDED_BARS = 10  # more bars than this: smaller, slanted member names


@dataclasses.dataclass(frozen=True)
class Plot:
    """One figure: `name` is its file stem in report_files/, `png` its encoded image."""

    name: str
    title: str
    caption: str
    png: bytes


def make_plots(study: Study, rows: Sequence[ConfigurationRow]) -> list[Plot]:
    """Every figure the study's files support, in report order (absent data → the figure is skipped)."""
    colours = configuration_colours(study)
    final_rows = stage_rows(rows, study.final_stage)
    best = next((row.ident for row in final_rows if row.best), None)
    candidates = [
        learning_curves(study, colours),
        confusion_matrix(study, best),
        accuracy_vs_cost(study, final_rows, colours),
        ensembles_vs_members(study, colours),
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
    configurations = study.stage_configurations(study.final_stage)
    curves = [(c, [r.metrics for r in c.completed_runs if r.metrics]) for c in configurations]
    curves = [(c, tables) for c, tables in curves if tables]
    if not curves:
        return None
    figure = Figure(figsize=(11, 7.5 + 0.22 * len(curves)), dpi=DPI, layout="constrained")
    panels = figure.subplots(2, 2, sharex=True)
    layout = [
        ("train_loss", "Training loss", 1),
        ("val_loss", "Validation loss", 1),
        ("train_acc", "Training accuracy (%)", 100),
        ("val_acc", "Validation accuracy (%)", 100),
    ]
    for axes, (column, title, scale) in zip(panels.flat, layout):
        for configuration, tables in curves:
            _band(axes, tables, column, scale, colours[configuration.ident], _legend_label(configuration))
        axes.set_title(title)
        axes.grid(alpha=0.3)
    for axes in panels[1]:
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    _figure_legend(figure, panels[0, 0])
    return Plot(
        "learning_curves",
        "Learning curves",
        "Mean over each configuration's completed runs; the shaded band spans the lowest to the highest run."
        + _stage_note(study),
        _png(figure),
    )


def confusion_matrix(study: Study, best: str | None) -> Plot | None:
    """Confusion matrix of the best configuration, summed over its runs, rows normalised to the true class."""
    configuration = next((c for c in study.configurations if c.ident == best), None)
    if configuration is None or not configuration.completed_runs:
        return None
    split, predictions = _best_predictions(configuration.completed_runs)
    if not predictions:
        return None
    names = _class_names(configuration.completed_runs[0], predictions)
    counts = _confusion_counts(predictions, len(names))
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
    by_params.set_xscale("log")
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
