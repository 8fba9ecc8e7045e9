"""The numbers of a report: per-configuration summaries over seeds/folds and paired comparisons.

Means and standard deviations (ddof=1) are over the completed runs of a configuration; the 95% interval of the
mean uses Student's t with n-1 degrees of freedom. Two configurations of one stage that differ in exactly one
grid axis (for runs without a recorded grid point: one setting) and were run on the same (seed, fold) pairs
are compared with a paired t-test (and Wilcoxon's signed-rank test from six pairs on), on test accuracy
when both were tested, else on best validation accuracy. The best configuration is chosen within the final
stage, the one the study exists for.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import stats

from cnnlab import runfolder
from cnnlab.report.collect import Configuration, Study, format_value

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
MIN_PAIRS = 2  # a paired t-test needs two differences
MIN_WILCOXON_PAIRS = 6  # below six pairs the signed-rank test cannot reach p < 0.05
ROUNDING = 1e-12  # accuracy differences closer than this are equal


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95% t-interval of a metric over n runs (NaN where undefined)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclasses.dataclass(frozen=True)
class ConfigurationRow:
    """One row of the results table."""

    ident: str
    label: str
    stage: str | None  # the study stage (tags.stage) of the configuration
    settings: dict[str, object]  # the study's differing settings for this configuration
    n: int  # completed runs (seeds × folds)
    seeds: int
    folds: int
    failed: int
    diverged: int
    interrupted: int
    val_acc: Summary | None  # best validation accuracy per run
    test_acc: Summary | None
    params: int | None
    gflops: float | None
    train_time_s: float | None  # mean per run
    images_per_s: float | None  # mean training throughput per run
    best: bool


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Two configurations that differ in one setting, compared on the same seeds/folds (better one first)."""

    better: str  # configuration ident
    worse: str
    key: str  # the one setting that differs
    better_value: object
    worse_value: object
    context: str  # the other differing settings both share, e.g. "model.name=lenet5"
    metric: str  # "test" or "val"
    units: tuple[tuple[int | None, int | None], ...]  # (seed, fold) pairs used
    better_values: tuple[float, ...]
    worse_values: tuple[float, ...]
    mean_difference: float  # better - worse, as a fraction
    t_statistic: float
    t_p: float
    wilcoxon_p: float | None
    d_z: float  # mean difference / std of differences (Cohen's d for paired data)

    @property
    def n(self) -> int:
        """Number of paired runs."""
        return len(self.units)


@dataclasses.dataclass(frozen=True)
class TwoFactorGrid:
    """A stage whose grid has exactly two axes, laid out as a grid: one axis as rows, the other as columns."""

    stage: str | None
    row_axis: str
    column_axis: str
    row_values: tuple[str, ...]  # in the order the spec lists them
    column_values: tuple[str, ...]
    cells: dict[tuple[str, str], ConfigurationRow]  # (row value, column value) → that configuration's row


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean, std (ddof=1) and 95% t-interval; None for no values, NaN spread for a single value."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    mean = float(data.mean())
    if data.size < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, data.size - 1)) * std / math.sqrt(data.size)
    return Summary(int(data.size), mean, std, mean - half, mean + half)


def configuration_rows(study: Study) -> list[ConfigurationRow]:
    """One row per configuration, every stage; the best of the final stage (by mean validation accuracy)
    marked. Earlier stages feed the final one and have no best row of their own."""
    rows = [_row(configuration, study.varying_keys) for configuration in study.configurations]
    best = selected_ident(study) or best_ident(stage_rows(rows, study.final_stage))
    return [dataclasses.replace(row, best=row.ident == best) for row in rows]


def selected_ident(study: Study) -> str | None:
    """The final-stage configuration the study's select stage chose (select.json `chosen`, by its own metric),
    None without a selection: the study's choice, not the report's, is the best row."""
    chosen = (study.selection or {}).get("chosen")
    for configuration in study.stage_configurations(study.final_stage):
        tags = configuration.runs[0].result.get("tags") or {}
        if chosen and tags.get("configuration") == chosen and tags.get("role") != runfolder.ROLE_FINAL:
            return configuration.ident
    return None


def stage_rows(rows: Sequence[ConfigurationRow], stage: str | None) -> list[ConfigurationRow]:
    """The rows of one stage, in table order."""
    return [row for row in rows if row.stage == stage]


def best_ident(rows: Sequence[ConfigurationRow]) -> str | None:
    """The configuration with the highest mean validation accuracy (test accuracy when none was validated).

    Selection never looks at the test split when validation results exist: that is what keeps it honest.
    """
    for metric in ("val_acc", "test_acc"):
        scored = [(getattr(row, metric).mean, row.ident) for row in rows if getattr(row, metric) is not None]
        if scored:
            return max(scored, key=lambda item: item[0])[1]
    return None


def two_factor_grid(
    study: Study, rows: Sequence[ConfigurationRow], stage: str | None
) -> TwoFactorGrid | None:
    """The stage's configurations as a two-factor grid, when the study recorded a grid point of exactly two
    axes for each (the select stage's retrained run, which has none, is left out) and each axis has at least
    two values; None otherwise."""
    by_ident = {row.ident: row for row in rows}
    points = [(c.point, by_ident.get(c.ident)) for c in study.stage_configurations(stage) if c.point]
    axes = {tuple(point) for point, _ in points}
    if len(axes) != 1 or len(next(iter(axes))) != 2:
        return None
    row_axis, column_axis = next(iter(axes))
    cells = {(point[row_axis], point[column_axis]): row for point, row in points if row is not None}
    row_values = tuple(dict.fromkeys(point[row_axis] for point, _ in points))
    column_values = tuple(dict.fromkeys(point[column_axis] for point, _ in points))
    if len(cells) != len(points) or min(len(row_values), len(column_values)) < 2:
        return None
    return TwoFactorGrid(stage, row_axis, column_axis, row_values, column_values, cells)


def paired_comparisons(study: Study) -> list[PairedComparison]:
    """Every pair of configurations that differ in exactly one grid axis (or, for runs a study did not
    record a grid point for, in one setting) and share at least two seeds/folds."""
    compared = (_compare(first, second, apart) for first, second, apart in _one_setting_apart(study))
    return [comparison for comparison in compared if comparison is not None]


def uncompared_pairs(study: Study, comparisons: Sequence[PairedComparison]) -> list[tuple[str, str]]:
    """Pairs of configurations (idents) one setting apart that `comparisons` (`paired_comparisons`) left out:
    they share too few seeds/folds to compare."""
    compared = {frozenset((c.better, c.worse)) for c in comparisons}
    return [
        (first.ident, second.ident)
        for first, second, _ in _one_setting_apart(study)
        if frozenset((first.ident, second.ident)) not in compared
    ]


def _one_setting_apart(study: Study) -> Iterator[tuple[Configuration, Configuration, _Difference]]:
    configurations = study.configurations
    for index, first in enumerate(configurations):
        for second in configurations[index + 1 :]:
            difference = _single_difference(first, second, study.varying_keys)
            if difference is not None:
                yield first, second, difference


@dataclasses.dataclass(frozen=True)
class _Difference:
    """What two configurations differ in: one key, each side's value, and what they share."""

    key: str
    values: dict[str, object]  # configuration ident -> its value of `key`
    context: str


def describe(comparison: PairedComparison) -> str:
    """One plain-English sentence (and a verdict) a student can put in a report."""
    metric = "test accuracy" if comparison.metric == "test" else "validation accuracy"
    better = f"{comparison.key}={format_value(comparison.better_value)} ({comparison.better})"
    worse = f"{comparison.key}={format_value(comparison.worse_value)} ({comparison.worse})"
    context = f"Holding {comparison.context} fixed, " if comparison.context else ""
    points = 100 * comparison.mean_difference
    tests = f"paired t-test {format_p(comparison.t_p)}"
    if comparison.wilcoxon_p is not None:
        tests += f"; Wilcoxon signed-rank {format_p(comparison.wilcoxon_p)}"
    tests += f"; d_z = {format_effect(comparison.d_z)}"
    units = _units_phrase(comparison.units)
    significant = math.isfinite(comparison.t_p) and comparison.t_p < SIGNIFICANCE
    if points == 0:
        lead = f"{context}{better} and {worse} tied on {metric} over {units} ({tests})."
    else:
        verb = "beat" if significant else "scored higher than"
        by = f"by {points:.1f} points of {metric} on average over {units}"
        lead = f"{context}{better} {verb} {worse} {by} ({tests})."
    return f"{lead} {_verdict(comparison)}"


def format_p(p: float) -> str:
    """`p = 0.004`, `p < 0.001`, or `p not defined` (all differences equal)."""
    if not math.isfinite(p):
        return "p not defined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def format_effect(d_z: float) -> str:
    """d_z with one decimal; infinite when every pair differed by the same amount."""
    return f"{d_z:.1f}" if math.isfinite(d_z) else "∞ (identical differences)"


def _row(configuration: Configuration, varying: Sequence[str]) -> ConfigurationRow:
    done = configuration.completed_runs
    first = done[0].result if done else configuration.runs[0].result
    return ConfigurationRow(
        ident=configuration.ident,
        label=configuration.label,
        stage=configuration.stage,
        settings={key: configuration.settings.get(key) for key in varying},
        n=len(done),
        seeds=len({run.seed for run in done}),
        folds=len({run.fold for run in done}),
        failed=_count(configuration, runfolder.FAILED),
        diverged=_count(configuration, runfolder.DIVERGED),
        interrupted=_count(configuration, runfolder.INTERRUPTED),
        val_acc=summarize([run.val_acc for run in done if run.val_acc is not None]),
        test_acc=summarize([run.test_acc for run in done if run.test_acc is not None]),
        params=_integer(first.get("params")),
        gflops=_mean([first.get("gflops")]),
        train_time_s=_mean([run.result.get("train_time_s", run.result.get("wall_time_s")) for run in done]),
        images_per_s=_mean([run.result.get("train_images_per_s") for run in done]),
        best=False,
    )


def _count(configuration: Configuration, status: str) -> int:
    return sum(run.status == status for run in configuration.runs)


def _single_difference(
    first: Configuration, second: Configuration, varying: Sequence[str]
) -> _Difference | None:
    """The one grid axis (else setting) two configurations differ in; None when zero, several, or the
    stage/role differs. A named axis (e.g. `recipe: {scratch: ..., full: ...}`) counts once, however many
    settings its values change."""
    if _tag(first, "stage") != _tag(second, "stage") or _tag(first, "role") != _tag(second, "role"):
        return None
    first_point, second_point = first.point, second.point
    if first_point is not None and second_point is not None and first_point.keys() == second_point.keys():
        return _axis_difference({first.ident: first_point, second.ident: second_point})
    differing = [key for key in varying if first.settings.get(key) != second.settings.get(key)]
    if len(differing) != 1 or differing[0].startswith("tags."):
        return None
    key = differing[0]
    held = [k for k in varying if k != key and not k.startswith("tags.")]
    held = [k for k in held if first.settings.get(k) is not None]  # null: the model's default
    context = ", ".join(f"{k}={format_value(first.settings.get(k))}" for k in held)
    values = {first.ident: first.settings.get(key), second.ident: second.settings.get(key)}
    return _Difference(key, values, context)


def _axis_difference(points: dict[str, dict[str, str]]) -> _Difference | None:
    """Compare two configurations (ident → grid point) by the study's grid: exactly one axis differs; the
    other axes are the context."""
    first, second = points.values()
    differing = [axis for axis in first if first[axis] != second[axis]]
    if len(differing) != 1:
        return None
    key = differing[0]
    context = ", ".join(f"{axis}={value}" for axis, value in first.items() if axis != key)
    return _Difference(key, {ident: point[key] for ident, point in points.items()}, context)


def _tag(configuration: Configuration, name: str) -> object:
    return configuration.settings.get(f"tags.{name}")


def _compare(first: Configuration, second: Configuration, difference: _Difference) -> PairedComparison | None:
    metric = "test" if _all_tested(first) and _all_tested(second) else "val"
    first_by_unit, second_by_unit = _by_unit(first, metric), _by_unit(second, metric)
    units = tuple(
        sorted(set(first_by_unit) & set(second_by_unit), key=lambda unit: tuple(v or -1 for v in unit))
    )
    if len(units) < MIN_PAIRS:
        return None
    a = np.array([first_by_unit[unit] for unit in units])
    b = np.array([second_by_unit[unit] for unit in units])
    if a.mean() < b.mean():
        first, second, a, b = second, first, b, a
    t_statistic, t_p = _ttest(a, b)
    return PairedComparison(
        better=first.ident,
        worse=second.ident,
        key=difference.key,
        better_value=difference.values[first.ident],
        worse_value=difference.values[second.ident],
        context=difference.context,
        metric=metric,
        units=units,
        better_values=tuple(a.tolist()),
        worse_values=tuple(b.tolist()),
        mean_difference=float((a - b).mean()),
        t_statistic=t_statistic,
        t_p=t_p,
        wilcoxon_p=_wilcoxon(a, b) if len(units) >= MIN_WILCOXON_PAIRS else None,
        d_z=_cohens_dz(a - b),
    )


def _all_tested(configuration: Configuration) -> bool:
    done = configuration.completed_runs
    return bool(done) and all(run.test_acc is not None for run in done)


def _by_unit(configuration: Configuration, metric: str) -> dict[tuple[int | None, int | None], float]:
    """(seed, fold) → the run's accuracy, completed runs only."""
    values = {}
    for run in configuration.completed_runs:
        value = run.test_acc if metric == "test" else run.val_acc
        if value is not None:
            values[(run.seed, run.fold)] = value
    return values


def _ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Paired t statistic and p-value; NaN when every pair differs by the same amount (no spread to test)."""
    if _constant(a - b):
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def _constant(differences: np.ndarray) -> bool:
    """All differences equal up to float rounding (accuracies are k/N, so 0.9889-0.9583 and 0.9972-0.9667
    may differ in the last bit and would otherwise give a zero-variance t-test p = 0)."""
    return bool(np.ptp(differences) <= ROUNDING)


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value; None when every difference is zero."""
    if np.all(a == b):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (RuntimeWarning, UserWarning))
        return float(stats.wilcoxon(a, b).pvalue)


def _cohens_dz(differences: np.ndarray) -> float:
    """Mean difference over its standard deviation (ddof=1); ±inf when all differences are equal."""
    mean = float(differences.mean())
    if _constant(differences):
        return 0.0 if abs(mean) <= ROUNDING else math.copysign(math.inf, mean)
    return mean / float(differences.std(ddof=1))


def _units_phrase(units: Sequence[tuple[int | None, int | None]]) -> str:
    """`3 seeds`, `5 folds`, or `6 paired runs (3 seeds × 2 folds)`."""
    seeds, folds = len({seed for seed, _ in units}), len({fold for _, fold in units})
    if folds <= 1:
        return f"{len(units)} seeds"
    if seeds <= 1:
        return f"{len(units)} folds"
    return f"{len(units)} paired runs ({seeds} seeds × {folds} folds)"


def _verdict(comparison: PairedComparison) -> str:
    """Whether the difference is statistically significant, and how large the effect is, in words."""
    if not math.isfinite(comparison.t_p):
        return "Every pair differed by exactly the same amount, so no test applies; report the difference."
    size = _effect_size_word(comparison.d_z)
    if comparison.t_p < SIGNIFICANCE:
        return (
            f"The difference is statistically significant at the 5% level (effect size {size}): "
            "run-to-run noise (seeds, folds) alone would rarely produce it."
        )
    return (
        f"The difference is not statistically significant at the 5% level (effect size {size}): with "
        f"{comparison.n} pairs it could be run-to-run noise (seeds, folds), so do not claim one is better."
    )


def _effect_size_word(d_z: float) -> str:
    size = abs(d_z)
    if size >= 0.8:
        return "large, |d_z| ≥ 0.8"
    if size >= 0.5:
        return "medium, |d_z| ≥ 0.5"
    if size >= 0.2:
        return "small, |d_z| ≥ 0.2"
    return "negligible, |d_z| < 0.2"


def _mean(values: Sequence[object]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numbers = [v for v in numbers if math.isfinite(v)]
    return float(np.mean(numbers)) if numbers else None


def _integer(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
