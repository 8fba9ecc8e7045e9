"""Reports: drawn from result files only, numbers that match a recomputation, self-contained HTML."""

from __future__ import annotations

import base64
import csv
import html as html_module
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from cnnlab import runfolder
from cnnlab.cli import main
from cnnlab.errors import Interrupted
from cnnlab.report import (
    Document,
    Section,
    Summary,
    build_document,
    combine,
    format_results_table,
    load_study,
    paired_comparisons,
    render_html,
    render_markdown,
    summarize,
    write_report,
)
from cnnlab.report.document import Paragraph, Table, markdown_text
from cnnlab.report.render import epoch_lines, incomplete_line, interval
from cnnlab.report.statistics import describe, format_p
from tests.report_fixtures import (
    CONFIGURATIONS,
    EPOCHS,
    GRID_BATCH_SIZES,
    GRID_LRS,
    REASONS,
    make_grid_study,
    make_staged_study,
    make_study,
    read_results,
    write_run,
)

FIGURE_FILES = {
    "learning_curves.png",
    "lr_schedule.png",
    "confusion_matrix.png",
    "per_class_accuracy.png",
    "accuracy_vs_cost.png",
    "ensemble_vs_members.png",
}
IMAGE_FILES = {"augmented_samples.png", "highest_loss.png", "confused_pairs.png", "gradcam.png"}
PLOT_FILES = FIGURE_FILES | IMAGE_FILES


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory):
    """A finished paired study (same seeds and folds for every configuration) and its written report."""
    root = make_study(tmp_path_factory.mktemp("paired"))
    return root, write_report(root)


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study whose dropout configuration ran on other seeds, so nothing pairs."""
    return make_study(tmp_path_factory.mktemp("unpaired"), paired=False, failures=False, ensemble=False)


class _Links(HTMLParser):
    """Collects every src/href and every <img> source of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = {name: value or "" for name, value in attrs}
        self.references += [values[name] for name in ("src", "href") if name in values]
        if tag == "img":
            self.images.append(values.get("src", ""))


def test_report_writes_html_markdown_csv_and_one_png_per_figure(paired) -> None:
    root, paths = paired
    assert (paths.html, paths.markdown, paths.csv) == (
        root / "report.html",
        root / "report.md",
        root / "results.csv",
    )
    assert {path.name for path in paths.plots} == PLOT_FILES
    for path in paths.plots:
        image = Image.open(path)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert image.width >= 500 and image.height >= 300
        assert pixels.std() > 10, f"{path.name} looks blank"
    markdown = paths.markdown.read_text()
    for path in paths.plots:
        assert f"](report_files/{path.name})" in markdown


def test_html_is_self_contained_with_one_embedded_image_per_figure(paired) -> None:
    _, paths = paired
    page = paths.html.read_text()
    parser = _Links()
    parser.feed(page)
    external = [ref for ref in parser.references if not ref.startswith(("data:", "#"))]
    assert external == []
    assert "http://" not in page and "https://" not in page and "file:" not in page
    assert "script" not in parser.tags and "link" not in parser.tags
    assert len(parser.images) == len(paths.plots) == 10
    assert paths.html.stat().st_size < 1_500_000  # the size docs/reports.md states for this study
    embedded = {base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in parser.images}
    assert embedded == {path.read_bytes() for path in paths.plots}


def test_every_table_number_equals_a_recomputation_from_result_files(paired) -> None:
    root, paths = paired
    with open(paths.csv, newline="") as handle:
        table = {row["configuration"]: row for row in csv.DictReader(handle)}
    results = read_results(root)
    assert len(table) == len(CONFIGURATIONS)
    val_means = {}
    for overrides, *_ in CONFIGURATIONS.values():
        runs = [r for r in results if all(_dotted(r["config"], k) == v for k, v in overrides.items())]
        done = [r for r in runs if r["status"] == "completed"]
        row = table[_label(overrides)]
        assert int(row["n"]) == len(done)
        assert int(row["failed"]) == sum(r["status"] == "failed" for r in runs)
        assert int(row["diverged"]) == sum(r["status"] == "diverged" for r in runs)
        for name, values in (
            ("val_acc", [r["best"]["val_acc"] for r in done]),
            ("test_acc", [r["test"]["acc"] for r in done]),
        ):
            mean, std = np.mean(values), np.std(values, ddof=1)
            low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
            for column, expected in (("mean", mean), ("std", std), ("ci_low", low), ("ci_high", high)):
                assert float(row[f"{name}_{column}"]) == pytest.approx(expected, rel=1e-12)
            assert f"{100 * mean:.2f} ± {100 * std:.2f}" in paths.table
        val_means[row["ident"]] = np.mean([r["best"]["val_acc"] for r in done])
        assert int(row["params"]) == done[0]["params"]
        assert float(row["gflops"]) == pytest.approx(done[0]["gflops"])
        assert float(row["train_time_s"]) == pytest.approx(np.mean([r["train_time_s"] for r in done]))
        assert float(row["train_images_per_s"]) == pytest.approx(
            np.mean([r["train_images_per_s"] for r in done])
        )
    best = [row["ident"] for row in table.values() if row["best"] == "1"]
    assert best == [max(val_means, key=val_means.get)]


def test_paired_comparison_matches_scipy_and_is_stated_in_words(paired) -> None:
    root, paths = paired
    comparisons = paired_comparisons(load_study(root))
    assert len(comparisons) == 1  # only lenet5 dropout 0 vs 0.5 differ in one setting
    comparison = comparisons[0]
    assert comparison.key == "model.dropout" and comparison.n == 6 and comparison.metric == "test"
    by_unit = {}
    for result in read_results(root):
        if result["config"]["model"]["name"] == "lenet5":
            unit = (result["config"]["train"]["seed"], result["config"]["data"]["fold"])
            by_unit.setdefault(result["config"]["model"]["dropout"], {})[unit] = result["test"]["acc"]
    units = sorted(by_unit[0.5])
    with_dropout, without = [by_unit[0.5][u] for u in units], [by_unit[0.0][u] for u in units]
    assert comparison.better_value == 0.5  # the fixture's dropout configuration is the better one
    assert comparison.t_p == pytest.approx(stats.ttest_rel(with_dropout, without).pvalue, rel=1e-12)
    assert comparison.wilcoxon_p == pytest.approx(stats.wilcoxon(with_dropout, without).pvalue, rel=1e-12)
    differences = np.subtract(with_dropout, without)
    assert comparison.d_z == pytest.approx(differences.mean() / differences.std(ddof=1))
    sentence = describe(comparison)
    assert f"{100 * differences.mean():.1f} points of test accuracy" in sentence
    assert f"paired t-test {format_p(stats.ttest_rel(with_dropout, without).pvalue)}" in sentence
    assert ("beat" in sentence) == (comparison.t_p < 0.05)  # "beat" only for a significant difference
    assert sentence in paths.markdown.read_text()
    assert "Paired comparisons" in paths.html.read_text()


def test_unpaired_study_has_no_paired_comparison_and_says_why(unpaired: Path) -> None:
    stale = unpaired / "report_files" / "ensemble_vs_members.png"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"figure from an earlier report")
    paths = write_report(unpaired)
    assert paired_comparisons(load_study(unpaired)) == []
    markdown = paths.markdown.read_text()
    assert "Not compared: C1 and C2 differ in one setting but share fewer than 2 completed" in markdown
    assert "seeds: [0, 1, 2]" in markdown and "paired t-test" not in paths.html.read_text()
    assert {path.name for path in paths.plots} == PLOT_FILES - {"ensemble_vs_members.png"}
    assert not stale.exists()  # a figure this study no longer has is not left behind


def test_failed_and_diverged_runs_are_listed_but_not_averaged(paired) -> None:
    root, paths = paired
    markdown = paths.markdown.read_text()
    assert "simulated failure" in markdown and "non-finite loss" in markdown
    study = load_study(root)
    resnet = next(c for c in study.configurations if c.settings["model.name"] == "resnet20_cifar")
    assert len(resnet.runs) == 6 and len(resnet.completed_runs) == 4
    assert "1 failed, 1 diverged" in paths.table


def test_markdown_appendix_has_the_per_epoch_lines(paired) -> None:
    root, paths = paired
    markdown = paths.markdown.read_text()
    run = load_study(root).configurations[0].runs[0]
    metrics = np.genfromtxt(run.run_dir / "metrics.csv", delimiter=",", names=True)
    first = (
        f"Epoch: 0, Train_acc: {metrics['train_acc'][0]:.4f}, Train_loss: {metrics['train_loss'][0]:.4f}, "
        f"Val_acc: {metrics['val_acc'][0]:.4f}, Val_loss: {metrics['val_loss'][0]:.4f}, "
        f"Lr: {metrics['lr'][0]:.6g}"
    )
    assert epoch_lines(run)[0] == first and len(epoch_lines(run)) == EPOCHS
    assert first in markdown
    assert markdown.count("\nEpoch: ") == 16 * EPOCHS + 2  # 16 completed runs and the diverged run's 2 epochs
    assert "validation metrics of each epoch" in markdown
    assert not any("Test_acc" in line for r in load_study(root).runs for line in epoch_lines(r))


def test_provenance_names_spec_versions_hardware_and_commit(paired) -> None:
    _, paths = paired
    page = paths.html.read_text()
    for expected in (
        "study.yaml",
        "torch version",
        "2.14.1",
        "lab-pc",
        "0123abcd",
        "Resolved configuration C1",
    ):
        assert expected in page


def test_configurations_are_labelled_by_what_differs_and_fine_tunes_group_across_seeds(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    base = {"model.name": "lenet5", "train.epochs": 2}
    for seed in (0, 1):
        source = write_run(
            runs, {**base, "train.seed": seed, "data.classes": ["0", "1"]}, tags={"stage": "pretrain"}
        )
        for init in (f"run:{source}", "scratch"):
            write_run(runs, {**base, "train.seed": seed, "train.init": init}, tags={"stage": "finetune"})
    study = load_study(tmp_path)
    labels = [c.label for c in study.configurations]
    assert len(labels) == 3 and all(len(c.runs) == 2 for c in study.configurations)
    assert labels[0].startswith("data.classes=[0, 1]") and "stage=pretrain" in labels[0]
    assert "train.init=run:C1" in labels[1] + labels[2] and "train.init=scratch" in labels[1] + labels[2]
    assert [c.key for c in paired_comparisons(study)] == ["train.init"]


def test_configurations_follow_the_study_plan_order(tmp_path: Path) -> None:
    root = make_study(tmp_path, failures=False, ensemble=False)
    plan = json.loads((root / "study.json").read_text())
    (root / "study.json").write_text(json.dumps({"runs": plan["runs"][::-1]}))
    names = [c.settings["model.name"] for c in load_study(root).configurations]
    assert names == ["resnet20_cifar", "lenet5", "lenet5"]


def test_displayed_interval_never_leaves_0_to_100_percent() -> None:
    assert interval(Summary(2, 0.99, 0.01, 0.9, 1.08)) == "[90.00, 100.00]"
    assert interval(Summary(1, 0.99, math.nan, math.nan, math.nan)) == "—"


def test_summary_interval_is_the_t_interval() -> None:
    values = [0.91, 0.93, 0.9, 0.95]
    summary = summarize(values)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (summary.ci_low, summary.ci_high) == (pytest.approx(low), pytest.approx(high))
    single = summarize([0.9])
    assert single.n == 1 and math.isnan(single.std) and math.isnan(single.ci_low)
    assert summarize([]) is None


def test_cli_report_prints_the_table_then_the_report_path(unpaired: Path, capsys) -> None:
    assert main(["report", str(unpaired)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] == f"report: {unpaired.resolve() / 'report.html'}"
    assert out.startswith(format_results_table(unpaired))
    assert lines[0].split()[:3] == ["#", "Configuration", "n"]
    assert sum(line.lstrip("* ").startswith("C") for line in lines) == len(CONFIGURATIONS)


@pytest.mark.parametrize("case", ["missing", "empty", "malformed", "malformed predictions"])
def test_cli_report_on_a_folder_without_results_exits_2_with_one_line(
    tmp_path: Path, case: str, capsys
) -> None:
    target = tmp_path / "study"
    if case != "missing":
        target.mkdir()
    if case == "malformed":
        (target / "runs" / "abc").mkdir(parents=True)
        (target / "runs" / "abc" / "result.json").write_text("{not json")
    if case == "malformed predictions":
        run_dir = write_run(target / "runs", {"model.name": "lenet5"})
        (run_dir / "predictions" / "test.npz").write_bytes(b"not an npz file")
    assert main(["report", str(target)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("cnnlab: error: ") and "Traceback" not in error
    assert str(target) in error
    assert not (target / "report.html").exists()


def test_report_neither_builds_a_model_nor_imports_training_or_torch(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_run(tmp_path / "runs", {"model.name": "lenet5", "train.seed": seed})
    training = (
        "cnnlab.models",
        "cnnlab.train",
        "cnnlab.data",
        "lightning",
        "pytorch_lightning",
        "torchvision",
        "torch",
    )
    code = (
        "import sys\nfrom cnnlab.cli import main\n"
        f"assert main(['report', {str(tmp_path)!r}]) == 0\n"
        f"print('loaded:', sorted(m for m in sys.modules if m.startswith({training!r})))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"
    assert (tmp_path / "report.html").is_file()


def _dotted(tree: dict, key: str) -> object:
    section, name = key.split(".")
    return tree[section][name]


def _label(overrides: dict) -> str:
    name = overrides["model.name"]
    dropout = overrides.get("model.dropout")
    return f"model.name={name}, model.dropout={'null' if dropout is None else format(dropout, 'g')}"


def test_a_named_grid_axis_pairs_its_options_even_when_they_change_several_settings(tmp_path: Path) -> None:
    """transfer.yaml's `recipe: {scratch: ..., full: ...}` sets init, lr and normalization at once: the
    report still compares scratch with full fine-tuning per seed, named by the axis and its option labels."""
    runs = tmp_path / "runs"
    recipes = {
        "scratch": {"train.init": "scratch", "optim.lr": 0.002},
        "full": {"train.init": "file:pretrained.safetensors", "optim.lr": 0.001, "data.normalize": "none"},
    }
    for recipe, accuracy in (("scratch", 0.80), ("full", 0.85)):
        for seed in (0, 1, 2):
            point = {"model.name": "lenet5", "recipe": recipe}
            write_run(
                runs,
                {"model.name": "lenet5", "train.seed": seed, **recipes[recipe]},
                accuracy=accuracy,
                rng=np.random.default_rng(seed),
                tags={
                    "stage": "transfer",
                    "configuration": f"model.name=lenet5 recipe={recipe}",
                    "point": point,
                },
            )
    (comparison,) = paired_comparisons(load_study(tmp_path))
    assert (comparison.key, comparison.better_value, comparison.worse_value) == ("recipe", "full", "scratch")
    assert comparison.context == "model.name=lenet5" and comparison.n == 3
    assert "recipe=full" in describe(comparison) and "recipe=scratch" in describe(comparison)


def test_pairs_differing_by_the_same_amount_get_no_test_instead_of_p_zero(tmp_path: Path) -> None:
    """Accuracies are k/N: 345/360 - 355/360 and 348/360 - 358/360 differ only in float rounding, which a
    t-test would read as zero variance and call significant (p = 0) from two pairs."""
    runs = tmp_path / "runs"
    accuracies = {"lenet5": (345 / 360, 348 / 360), "resnet20_cifar": (355 / 360, 358 / 360)}
    for model, per_seed in accuracies.items():
        for seed, accuracy in enumerate(per_seed):
            run_dir = write_run(runs, {"model.name": model, "train.seed": seed})
            result = json.loads((run_dir / "result.json").read_text())
            result["test"]["acc"] = accuracy
            (run_dir / "result.json").write_text(json.dumps(result))
    (comparison,) = paired_comparisons(load_study(tmp_path))
    assert math.isnan(comparison.t_p) and math.isinf(comparison.d_z)
    sentence = describe(comparison)
    assert "p not defined" in sentence and "no test applies" in sentence and " beat " not in sentence


@pytest.mark.parametrize("plan", [True, False], ids=["stages-from-study.json", "stages-from-init-chain"])
def test_a_staged_study_reports_its_final_stage_and_each_earlier_stage_apart(
    tmp_path: Path, plan: bool
) -> None:
    """transfer.yaml-like: pretraining (8 classes) scores higher than fine-tuning (4 classes), yet the
    headline table, its ★ and the confusion matrix belong to the fine-tuning stage the study exists for."""
    root = make_staged_study(tmp_path, plan=plan)
    paths = write_report(root)
    study = load_study(root)
    assert study.stages == ("pretrain", "finetune") and study.final_stage == "finetune"
    idents = {stage: [c.ident for c in study.stage_configurations(stage)] for stage in study.stages}
    val_means = _val_means_by_label(read_results(root))
    best_label = max((label for label in val_means if "finetune" in label), key=val_means.get)
    assert max(val_means.values()) > val_means[best_label]  # pretraining scores higher, on its own task
    markdown = paths.markdown.read_text()
    sections = _md_sections(markdown)
    headline = _md_table_rows(sections["Results: stage finetune"])
    assert [row[1] for row in headline] == idents["finetune"]
    (best,) = [(row[1], row[2]) for row in headline if row[0] == "★"]
    assert best[1] == best_label
    earlier = _md_table_rows(sections["Stage pretrain (feeds finetune)"])
    assert [row[1] for row in earlier] == idents["pretrain"] and all(row[0] == "" for row in earlier)
    assert markdown.count("| ★ |") == 1
    assert f"\n{best[0]}: {best_label}, test split." in sections["Figures"]  # the confusion matrix caption
    assert "Stage finetune only" in sections["Figures"]  # the learning curves
    page = paths.html.read_text()
    assert "<h2>Results: stage finetune</h2>" in page and "<h2>Stage pretrain (feeds finetune)</h2>" in page
    table = format_results_table(root)
    assert table == paths.table
    assert [line.lstrip("* ").split()[0] for line in table.splitlines()[2:-1]] == idents["finetune"]
    with open(paths.csv, newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(row["ident"], row["stage"]) for row in csv_rows] == [
        (ident, stage) for stage in study.stages for ident in idents[stage]
    ]
    assert [row["configuration"] for row in csv_rows if row["best"] == "1"] == [best_label]


def test_an_interrupted_run_is_listed_as_incomplete_with_its_reason_and_not_averaged(tmp_path: Path) -> None:
    for model, accuracy in (("lenet5", 0.86), ("resnet20_cifar", 0.95)):
        for seed in (0, 1, 2):
            status = "interrupted" if (model, seed) == ("resnet20_cifar", 2) else "completed"
            config = {"model.name": model, "train.seed": seed}
            rng = np.random.default_rng(seed)
            write_run(
                tmp_path / "runs", config, status=status, accuracy=accuracy, rng=rng, tags={"stage": "main"}
            )
    paths = write_report(tmp_path)
    resnet = [r for r in read_results(tmp_path) if r["config"]["model"]["name"] == "resnet20_cifar"]
    done = [r for r in resnet if r["status"] == "completed"]
    assert len(resnet) == 3 and len(done) == 2
    with open(paths.csv, newline="") as handle:
        row = next(row for row in csv.DictReader(handle) if row["model.name"] == "resnet20_cifar")
    assert (row["n"], row["interrupted"], row["failed"]) == ("2", "1", "0")
    assert float(row["val_acc_mean"]) == pytest.approx(np.mean([r["best"]["val_acc"] for r in done]))
    markdown = paths.markdown.read_text()
    sections = _md_sections(markdown)
    assert "Results" in sections and not any(title.startswith("Stage ") for title in sections)
    (listed,) = [
        line
        for line in sections["Runs that did not complete (excluded from the means)"].splitlines()
        if line.startswith("- ")
    ]
    assert "resnet20_cifar" in listed and "interrupted" in listed and listed.endswith(REASONS["interrupted"])
    assert "6 run(s): 5 completed, 0 failed, 0 diverged, 1 interrupted." in markdown
    assert "1 interrupted" in paths.table
    assert REASONS["interrupted"] in paths.html.read_text()


def test_a_partly_run_study_says_how_many_planned_runs_are_pending(paired, tmp_path: Path, capsys) -> None:
    """study.json plans every run: one never started (no folder), one stopped before it wrote its result, and
    the select stage's final run (no id until chosen) count as pending, in the printed line and both files."""
    assert "Study incomplete" not in paired[1].table + paired[1].markdown.read_text()  # a finished study
    root = make_study(tmp_path, failures=False, ensemble=False)
    plan = json.loads((root / "study.json").read_text())
    shutil.rmtree(root / "runs" / plan["runs"][-1]["run_id"])
    (root / "runs" / plan["runs"][-2]["run_id"] / "result.json").unlink()
    final = {"run_id": None, "stage": "main", "configuration": "selected", "seed": 0, "fold": None}
    plan["runs"].append({**final, "role": runfolder.ROLE_FINAL})
    (root / "study.json").write_text(json.dumps(plan))
    assert main(["report", str(root)]) == 0
    line = "Study incomplete: 3 of 19 planned runs pending (no result yet); run `cnnlab study run` again"
    assert line in capsys.readouterr().out
    markdown = (root / "report.md").read_text()
    assert line in markdown.split("\n## ")[0]  # under the title, with the summary
    assert (
        line.replace("`cnnlab study run`", "<code>cnnlab study run</code>")
        in (root / "report.html").read_text()
    )
    listed = _md_sections(markdown)["Runs that did not complete (excluded from the means)"]
    pending = [item for item in listed.splitlines() if item.endswith("(pending: no result yet)")]
    assert (
        len(pending) == 3
        and pending[-1] == "- selected (retrained on all training data) — seed 0 (pending: no result yet)"
    )
    retrained = write_run(
        root / "runs", {"model.name": "lenet5", "data.val_fraction": 0.0}, tags={"role": "final"}
    )
    (root / "select.json").write_text(json.dumps({"chosen": "x", "final_runs": {"0": retrained.name}}))
    assert len(load_study(root).pending) == 2  # select.json names the final run once it is chosen


def _md_sections(markdown: str) -> dict[str, str]:
    """`## Title` → the text up to the next `## ` heading."""
    sections = {}
    for chunk in markdown.split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title] = body
    return sections


def _md_table_rows(section: str) -> list[list[str]]:
    """The cells of the first Markdown table's body rows in a section."""
    rows = []
    for line in section.strip().splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows[2:]


def _val_means_by_label(results: list[dict]) -> dict[str, float]:
    """The report's configuration label (`<tags.configuration> (stage=<stage>)`) → mean best val accuracy."""
    values: dict[str, list[float]] = {}
    for result in results:
        tags = result["tags"]
        values.setdefault(f"{tags['configuration']} (stage={tags['stage']})", []).append(
            result["best"]["val_acc"]
        )
    return {label: float(np.mean(found)) for label, found in values.items()}


# ---------------------------------------------------------------- the images behind the numbers


def _caption(markdown: str, title: str) -> str:
    """The caption paragraph under a figure's `### title` in report.md."""
    body = markdown.split(f"\n### {title}\n", 1)[1]
    paragraphs = [part.strip() for part in body.split("\n\n") if part.strip()]
    assert paragraphs[0].startswith(f"![{title}]")
    return paragraphs[1]


def _best_runs(root: Path, paths) -> list[Path]:
    """Folders of the completed runs of the configuration results.csv marks best."""
    with open(paths.csv, newline="") as handle:
        (best,) = [row["ident"] for row in csv.DictReader(handle) if row["best"] == "1"]
    configuration = next(c for c in load_study(root).configurations if c.ident == best)
    return [run.run_dir for run in configuration.completed_runs]


def _run_name(run_dir: Path) -> str:
    result = json.loads((run_dir / "result.json").read_text())
    return f"seed {result['config']['train']['seed']}, fold {result['config']['data']['fold']}"


def test_the_highest_loss_images_shown_really_have_the_highest_loss(paired) -> None:
    """Recomputed from every best-configuration run's predictions/test.npz: the caption lists exactly the 12
    (run, image) pairs with the highest cross-entropy, highest first."""
    root, paths = paired
    pooled = []
    for run_dir in _best_runs(root, paths):
        saved = np.load(run_dir / "predictions" / "test.npz")
        losses = -np.log(saved["probs"][np.arange(len(saved["labels"])), saved["labels"]].astype(np.float64))
        pooled += [(loss, f"#{index}", _run_name(run_dir)) for loss, index in zip(losses, saved["indices"])]
    expected = sorted(pooled, key=lambda item: -item[0])[:12]
    caption = _caption(paths.markdown.read_text(), "Highest-loss images of the best configuration")
    shown = re.findall(r"(#\d+) \(\w+\) loss ([\d.]+) \((seed \d+, fold \d+)\)", caption)
    assert [(name, run) for name, _, run in shown] == [(name, run) for _, name, run in expected]
    assert [float(loss) for _, loss, _ in shown] == [round(loss, 2) for loss, _, _ in expected]


def _shows(picture: np.ndarray, image: np.ndarray) -> bool:
    """Whether an RGB picture shows a grey (1, H, W) image scaled up pixel for pixel into a thumbnail: some
    square of the picture, sampled at the centre of each image pixel's block, gives back the image exactly."""
    from cnnlab.report.plots import THUMB_PIXELS

    grey = image[0]
    offsets = ((np.arange(grey.shape[0]) + 0.5) * THUMB_PIXELS / grey.shape[0]).astype(int)
    level = picture[..., 0].astype(int)
    coloured = (picture.max(axis=-1) - picture.min(axis=-1)) > 0
    for y, x in zip(*np.nonzero((level == grey[0, 0]) & ~coloured)):
        rows, columns = y + offsets[:, None] - offsets[0], x + offsets[None, :] - offsets[0]
        inside = rows.max() < level.shape[0] and columns.max() < level.shape[1]
        if inside and (level[rows, columns] == grey).all() and not coloured[rows, columns].any():
            return True
    return False


def test_the_image_figures_show_each_image_pixel_for_pixel(paired) -> None:
    """Each highest-loss thumbnail is its image, grey and sharp; Grad-CAM shows each image once as it is and
    once under the colours of its map."""
    from cnnlab import runfolder

    root, paths = paired
    figures = root / "report_files"
    picture = np.asarray(Image.open(figures / "highest_loss.png").convert("RGB"))
    caption = _caption(paths.markdown.read_text(), "Highest-loss images of the best configuration")
    shown = re.findall(r"#(\d+) \(\w+\) loss [\d.]+ \((seed \d+, fold \d+)\)", caption)
    runs = {_run_name(run_dir): run_dir for run_dir in _best_runs(root, paths)}
    for index, run in shown[:3]:
        samples = runfolder.read_image_samples(runs[run], "hardest")
        assert _shows(picture, samples.images[list(samples.ids).index(f"#{index}")]), (index, run)
    picture = np.asarray(Image.open(figures / "gradcam.png").convert("RGB"))
    gradcam = runfolder.read_image_samples(_best_runs(root, paths)[0], "gradcam")
    assert all(_shows(picture, image) for image in gradcam.images)
    bottom = picture[picture.shape[0] // 2 :]  # the row under the colours of the maps
    assert ((bottom[..., 2].astype(int) - bottom[..., 0]) > 40).mean() > 0.5  # the jet blue of a cold map
    top = picture[: picture.shape[0] // 2]
    assert ((top[..., 2].astype(int) - top[..., 0]) > 40).mean() == 0  # the images as they are: grey


def test_confused_pairs_are_the_most_frequent_mistakes_with_images_of_that_mistake(paired) -> None:
    root, paths = paired
    counts = np.zeros((10, 10), dtype=int)
    predictions = {}
    for run_dir in _best_runs(root, paths):
        saved = np.load(run_dir / "predictions" / "test.npz")
        predicted = saved["probs"].argmax(axis=1)
        np.add.at(counts, (saved["labels"], predicted), 1)
        predictions[_run_name(run_dir)] = dict(zip(saved["indices"], zip(saved["labels"], predicted)))
    np.fill_diagonal(counts, 0)
    expected = sorted((-counts[t, p], t, p) for t, p in zip(*np.nonzero(counts)))[:5]
    caption = _caption(paths.markdown.read_text(), "Most-confused class pairs of the best configuration")
    pairs = re.findall(r"(\d) → (\d) \((\d+)\): ([^;]+?)(?:;|\.$)", caption)
    assert [(int(t), int(p), int(n)) for t, p, n, _ in pairs] == [(t, p, -n) for n, t, p in expected]
    examples = 0
    for true, predicted, _, listed in pairs:
        for index, run in re.findall(r"#(\d+) \((seed \d+, fold \d+)\)", listed):
            assert predictions[run][int(index)] == (int(true), int(predicted))
            examples += 1
    assert examples >= 5


def test_per_class_accuracy_is_each_configurations_mean_over_its_runs(paired) -> None:
    from cnnlab.report.plots import per_class_table

    root, _ = paired
    study = load_study(root)
    table, names, split = per_class_table(study.configurations)
    assert names == [str(digit) for digit in range(10)] and split == "test" and len(table) == 3
    for configuration, row in table:
        runs = [json.loads((run.run_dir / "result.json").read_text()) for run in configuration.completed_runs]
        for name, value in zip(names, row):
            assert value == pytest.approx(np.mean([r["per_class_accuracy"][name] for r in runs]))


def test_gradcam_and_augmentation_captions_name_the_images_they_show(paired) -> None:
    from cnnlab import runfolder

    root, paths = paired
    markdown = paths.markdown.read_text()
    first = _best_runs(root, paths)[0]
    gradcam = runfolder.read_image_samples(first, "gradcam")
    caption = _caption(markdown, "Where the best configuration looks (Grad-CAM)")
    assert f"({_run_name(first)}), test split" in caption
    assert re.findall(r"#\d+ \(\d\)", caption) == [
        f"{i} ({label})" for i, label in zip(gradcam.ids, gradcam.labels)
    ]
    caption = _caption(markdown, "Augmented training samples")
    assert (
        caption.count("data.augment=none (C1, C2, C3; shown: C1 seed 0, fold 0)") == 1
        and len(re.findall(r"#\d+ \(\d\)", caption)) == 8
    )
    assert (
        "## Images behind the numbers" in markdown
        and "<h2>Images behind the numbers</h2>" in paths.html.read_text()
    )


def test_runs_without_saved_images_get_the_figures_but_no_image_section(tmp_path: Path) -> None:
    root = make_study(tmp_path, failures=False, ensemble=False, images=False)
    stale = root / "report_files" / "highest_loss.png"
    stale.parent.mkdir()
    stale.write_bytes(b"figure from an earlier report")
    paths = write_report(root)
    assert {path.name for path in paths.plots} == FIGURE_FILES - {"ensemble_vs_members.png"}
    assert "Images behind the numbers" not in paths.markdown.read_text()
    assert not stale.exists()


def test_the_lr_panel_draws_one_line_per_schedule(paired, tmp_path: Path) -> None:
    _, paths = paired
    assert "Every configuration follows the same schedule" in _caption(
        paths.markdown.read_text(), "Learning-rate schedule"
    )
    for lr in (0.05, 0.1):
        run_dir = write_run(tmp_path / "runs", {"model.name": "lenet5", "optim.lr": lr})
        metrics = (run_dir / "metrics.csv").read_text().splitlines()
        column = metrics[0].split(",").index("lr")
        rows = [line.split(",") for line in metrics[1:]]
        for row in rows:
            row[column] = str(float(row[column]) * lr / 0.05)
        (run_dir / "metrics.csv").write_text("\n".join([metrics[0], *(",".join(row) for row in rows)]) + "\n")
    caption = _caption(write_report(tmp_path).markdown.read_text(), "Learning-rate schedule")
    assert "same schedule" not in caption


# ---------------------------------------------------------------- one document, two renderings


def _flagged_study(root: Path) -> tuple[Path, Path]:
    """Two configurations × two seeds; lenet5's seed-1 run completed but was flagged by the health check."""
    flagged = None
    for model, accuracy in (("lenet5", 0.86), ("resnet20_cifar", 0.95)):
        for seed in (0, 1):
            flags = [FLAG] if (model, seed) == ("lenet5", 1) else []
            run_dir = write_run(
                root / "runs",
                {"model.name": model, "train.seed": seed},
                accuracy=accuracy,
                rng=np.random.default_rng(seed),
                flags=flags,
            )
            flagged = run_dir if flags else flagged
    assert flagged is not None
    return root, flagged


FLAG = (
    "did not learn: best validation accuracy 0.112 is not clearly above always predicting the majority "
    "class (0.100)"
)


def test_runs_that_did_not_learn_is_one_section_in_both_html_and_markdown(tmp_path: Path) -> None:
    """The section is defined once in the document; both renderings carry it, its run and its flag, and the
    tables mark the flagged configuration with † and a legend."""
    root, flagged = _flagged_study(tmp_path)
    paths = write_report(root)
    document = build_document(root)
    section = document.section("Runs that did not learn")
    assert section is not None
    markdown, page = paths.markdown.read_text(), paths.html.read_text()
    (listed,) = [
        line for line in _md_sections(markdown)["Runs that did not learn"].splitlines() if "- " in line
    ]
    assert listed.startswith("- C1: model.name=lenet5 — seed 1 (completed, runs/") and listed.endswith(FLAG)
    assert str(flagged.relative_to(root)) in listed
    assert "<h2>Runs that did not learn</h2>" in page
    assert html_module.escape(listed[2:], quote=True) in page
    headline = _md_table_rows(_md_sections(markdown)["Results"])
    assert [row[2].endswith(" †") for row in headline] == [True, False]
    assert "<td>model.name=lenet5 †</td>" in page
    runs = _md_table_rows(_md_sections(markdown)["Runs"].split("\n\n", 1)[1])
    assert sorted(row[4] for row in runs) == ["completed", "completed", "completed", "completed †"]
    for text in (markdown, page, paths.table):
        assert "† a completed run of this configuration was flagged as not learning" in text
    with open(paths.csv, newline="") as handle:  # results.csv keeps the plain label
        assert [row["configuration"] for row in csv.DictReader(handle)] == [
            "model.name=lenet5",
            "model.name=resnet20_cifar",
        ]


def test_a_study_without_flags_has_no_flag_section_or_mark(paired) -> None:
    _, paths = paired
    for text in (paths.markdown.read_text(), paths.html.read_text(), paths.table):
        assert "†" not in text and "Runs that did not learn" not in text


def test_html_escapes_every_text_and_keeps_code_spans(tmp_path: Path) -> None:
    document = Document(
        "A <b>study</b>",
        (Paragraph("`data.augment` <script>alert(1)</script> & more"),),
        (Section("x < y", (Table(("<th>",), (("<td>",),)),)),),
    )
    page = render_html(document)
    assert "<script>" not in page and "<b>study</b>" not in page
    assert "<code>data.augment</code> &lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<h2>x &lt; y</h2>" in page and "<th>&lt;th&gt;</th>" in page and "<td>&lt;td&gt;</td>" in page
    markdown = render_markdown(document)
    assert markdown.startswith("# A &lt;b&gt;study&lt;/b&gt;\n\n`data.augment` &lt;script&gt;")


def test_a_combined_document_nests_each_study_and_keeps_its_figures(paired, tmp_path: Path) -> None:
    """Two studies' documents as the sections of one: headings one level down, every figure written once
    per study under its own name, and the HTML page embeds each of them."""
    root, _ = paired
    staged = make_staged_study(tmp_path / "staged")
    parts = [("paired", build_document(root)), ("staged", build_document(staged))]
    combined = combine("Suite report", parts)
    paths = write_report(tmp_path / "suite", combined)
    assert paths.csv is None and paths.table == ""
    names = {path.name for path in paths.plots}
    assert {f"paired-{name}" for name in PLOT_FILES} <= names and "staged-learning_curves.png" in names
    markdown = paths.markdown.read_text()
    assert "\n## paired\n" in markdown and "\n### Results\n" in markdown
    assert "\n### Results: stage finetune\n" in markdown and "\n#### Learning curves\n" in markdown
    for path in paths.plots:
        assert f"](report_files/{path.name})" in markdown
    parser = _Links()
    parser.feed(paths.html.read_text())
    assert len(parser.images) == len(paths.plots)
    assert "<h3>Results: stage finetune</h3>" in paths.html.read_text()


# ---------------------------------------------------------------- curves: log loss, per-epoch test


def test_loss_panels_use_a_log_axis_that_keeps_normal_epochs_readable_through_a_spike(tmp_path: Path) -> None:
    """A spike of 10,000 in one epoch: on the log axis the ordinary losses still span a visible part of the
    panel (on a linear one they would be a flat line at the bottom), labelled with plain numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cnnlab.report.plots import configuration_colours, curve_figure

    for seed in (0, 1):
        run_dir = write_run(tmp_path / "runs", {"model.name": "lenet5", "train.seed": seed})
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        column = lines[0].split(",").index("train_loss")
        cells = lines[2].split(",")
        cells[column] = "10000.0"
        lines[2] = ",".join(cells)
        (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    study = load_study(tmp_path)
    (configuration,) = study.configurations
    tables = [run.metrics for run in configuration.runs]
    layout = [("train_loss", "Training loss (log scale)", 1), ("train_acc", "Training accuracy (%)", 100)]
    figure = curve_figure([(configuration, tables)], layout, configuration_colours(study), 4.0)
    loss_axes, accuracy_axes = figure.axes[:2]
    assert loss_axes.get_yscale() == "log" and accuracy_axes.get_yscale() == "linear"
    ordinary = np.concatenate([np.delete(t["train_loss"], 1) for t in tables])
    low, high = loss_axes.get_ylim()
    share = np.log(ordinary.max() / ordinary.min()) / np.log(high / low)
    assert share > 0.1  # linear: (max - min) / 10,000 < 0.01
    FigureCanvasAgg(figure).draw()  # the labels are chosen when the figure is drawn
    labels = [tick.get_text() for tick in loss_axes.get_yticklabels() + loss_axes.get_yticklabels(minor=True)]
    labels = [label for label in labels if label]
    assert "10k" in labels and all(re.fullmatch(r"[0-9.]+k?", label) for label in labels), labels  # not 10^4
    caption = _caption(write_report(tmp_path).markdown.read_text(), "Learning curves")
    assert "logarithmic y-axis" in caption and "loss spike" in caption


def test_per_epoch_test_columns_are_a_separate_curve_and_labelled_test(tmp_path: Path) -> None:
    """metrics.csv with test_acc/test_loss (train.test_every_epoch): the appendix lines label validation
    Val_ and test Test_, and the test curve is its own figure with the caption that it chooses nothing."""
    for seed in (0, 1):
        write_run(
            tmp_path / "runs",
            {"model.name": "lenet5", "train.seed": seed},
            rng=np.random.default_rng(seed),
            test_every_epoch=True,
        )
    paths = write_report(tmp_path)
    assert "test_curves.png" in {path.name for path in paths.plots}
    caption = _caption(paths.markdown.read_text(), "Test curves per epoch")
    assert "test, per epoch: for the curve only, never used to choose anything" in caption.lower()
    run = load_study(tmp_path).runs[0]
    metrics = np.genfromtxt(run.run_dir / "metrics.csv", delimiter=",", names=True)
    line = epoch_lines(run)[0]
    assert f"Val_acc: {metrics['val_acc'][0]:.4f}, Val_loss: {metrics['val_loss'][0]:.4f}" in line
    assert f"Test_acc: {metrics['test_acc'][0]:.4f}, Test_loss: {metrics['test_loss'][0]:.4f}" in line
    assert line in paths.markdown.read_text()
    assert "test, per epoch: for the curve only" in paths.html.read_text()


# ---------------------------------------------------------------- a two-factor grid as a grid


def test_a_two_axis_grid_is_shown_as_rows_by_columns_of_mean_validation_accuracy(tmp_path: Path) -> None:
    """cv-hparams-like batch size × learning rate: one row per batch size, one column per learning rate,
    each cell the configuration's mean ± std of best validation accuracy recomputed from result.json; the
    retrained run (no grid point) is not a cell; a heat map goes with the table."""
    root = make_grid_study(tmp_path)
    paths = write_report(root)
    markdown = paths.markdown.read_text()
    section = markdown.split("\n### Grid: data.batch_size × optim.lr\n", 1)[1]
    table = section.strip().split("\n\n")[1]  # after the note
    header, _, *body = [
        [cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()
    ]
    assert header == ["data.batch_size \\\\ optim.lr", *(format(lr, "g") for lr in GRID_LRS)]
    values: dict[tuple[str, str], list[float]] = {}
    for result in read_results(root):
        point = result["tags"]["point"]
        if point:
            values.setdefault((point["data.batch_size"], point["optim.lr"]), []).append(
                result["best"]["val_acc"]
            )
    assert [row[0] for row in body] == [str(b) for b in GRID_BATCH_SIZES]
    for row in body:
        for lr, cell in zip(header[1:], row[1:]):
            found = values[(row[0], lr)]
            assert cell.startswith(f"{100 * np.mean(found):.2f} ± {100 * np.std(found, ddof=1):.2f} (C")
    assert sum("★" in cell for row in body for cell in row) == 1
    assert "grid_heatmap.png" in {path.name for path in paths.plots}
    assert "<h3>Grid: data.batch_size × optim.lr</h3>" in paths.html.read_text()


def test_a_one_axis_grid_gets_no_grid_table(paired) -> None:
    _, paths = paired
    assert "Grid:" not in paths.markdown.read_text()
    assert "grid_heatmap.png" not in {path.name for path in paths.plots}


def test_a_report_again_reuses_its_figures_until_an_input_changes(tmp_path: Path, monkeypatch) -> None:
    import cnnlab.report.render as render

    for seed in (0, 1):
        write_run(tmp_path / "runs", {"model.name": "lenet5", "train.seed": seed})
    drawn = []
    draw = render.make_plots
    monkeypatch.setattr(render, "make_plots", lambda study, rows: drawn.append(1) or draw(study, rows))
    first = write_report(tmp_path)
    figures = {path.name: path.read_bytes() for path in first.plots}
    html = first.html.read_text()
    assert write_report(tmp_path).plots == first.plots and len(drawn) == 1, "nothing changed: not drawn"
    assert {path.name: path.read_bytes() for path in first.plots} == figures
    embedded = re.compile(r"<img [^>]*>")
    assert embedded.findall(html) == embedded.findall(first.html.read_text()), "the same embedded figures"
    metrics = sorted((tmp_path / "runs").glob(f"*/{runfolder.METRICS_FILE}"))[0]
    with open(metrics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["val_acc"] = str(float(rows[0]["val_acc"]) / 2)
    with open(metrics, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_report(tmp_path)
    assert len(drawn) == 2, "an input changed: every figure drawn again"
    (tmp_path / "report_files" / ".figures.json").write_text('{"format": 1, "key": "x", "figures": 3')
    write_report(tmp_path)
    assert len(drawn) == 3, "a damaged cache is ignored"
    write_report(tmp_path)
    assert len(drawn) == 3


def test_copies_of_one_run_are_counted_once_and_named(tmp_path: Path) -> None:
    good = make_study(tmp_path / "parent" / "good", failures=False, ensemble=False, images=False)
    shutil.copytree(good, tmp_path / "parent" / "good-backup")
    study = load_study(tmp_path / "parent")
    assert len(study.runs) == len(load_study(good).runs) and study.copies
    line = build_document(study).blocks[1].text
    assert re.fullmatch(
        r"run \S+ found in 2 folders \(good/runs/\S+, good-backup/runs/\S+\); counted once", line
    )


def _other_study(folder: Path) -> Path:
    """A one-run study of a spec other than make_study's."""
    write_run(folder / "runs", {"model.name": "resnet20_cifar"}, images=False)
    (folder / "study.yaml").write_text("name: other\nbase: {model.name: resnet20_cifar}\n")
    return folder


def _report_error(capsys, folder: Path) -> str:
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and not (folder / "report.html").exists()
    return err[0]


def test_a_folder_holding_studies_of_different_specs_is_refused_not_merged(tmp_path: Path, capsys) -> None:
    parent = tmp_path / "parent"
    good = make_study(parent / "good", failures=False, ensemble=False, images=False)
    other = _other_study(parent / "other")
    write_run(parent / "loose", {"model.name": "lenet5", "train.seed": 7}, images=False)
    error = _report_error(capsys, parent)
    assert "holds 2 studies of different specs (good, other): report each one (`cnnlab report " in error
    shutil.rmtree(other)  # one study and a plain run beside it: one report
    assert main(["report", str(parent)]) == 0
    assert len(load_study(parent).runs) == len(load_study(good).runs) + 1


def test_a_folder_above_a_suite_points_to_the_suites_report(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "parent" / "suite"
    make_study(suite / "good", failures=False, ensemble=False, images=False)
    _other_study(suite / "other")
    (suite / runfolder.SUITE_FILE).write_text(json.dumps({"name": "s", "studies": [{"name": "good"}]}))
    error = _report_error(capsys, tmp_path / "parent")
    assert error.endswith(
        f"(suite/good, suite/other): report the suite (`cnnlab report {suite.resolve()}`: a "
        "section per study)"
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.update(config="oops"),
        lambda r: r.update(tags="oops"),
        lambda r: r["config"]["train"].update(seed="zz"),
        lambda r: r.update(train_time_s=-500),
        lambda r: r.update(params=float("inf")),
    ],
)
def test_a_malformed_result_is_one_line_exit_2(tmp_path: Path, edit, capsys) -> None:
    run_dir = write_run(tmp_path / "runs", {"model.name": "lenet5"}, images=False)
    result = json.loads((run_dir / "result.json").read_text())
    edit(result)
    (run_dir / "result.json").write_text(json.dumps(result))
    assert main(["report", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_malformed_select_file_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "runs", {"model.name": "lenet5"}, images=False)
    (tmp_path / "select.json").write_text(json.dumps({"chosen": "x", "final_runs": ["x"]}))
    assert main(["report", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_user_strings_are_escaped_in_markdown_and_the_terminal_table(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)> | `x`\n# y"
    write_run(tmp_path / "runs", {"model.name": "lenet5"}, tags={"configuration": evil}, images=False)
    markdown = write_report(tmp_path).markdown.read_text()
    assert "<img" not in markdown and "\n# y" not in markdown
    assert "&lt;img src=x onerror=alert(1)&gt; \\| \\`x\\`\\\\n# y" in markdown
    table = format_results_table(tmp_path)
    assert len(table.splitlines()) == 4 and "`x`\\n# y" in table


def test_the_best_mark_follows_the_select_stage(tmp_path: Path) -> None:
    for name, accuracy in (("a", 0.9), ("b", 0.8)):
        tags = {"configuration": name, "role": "member", "stage": "main"}
        write_run(
            tmp_path / "runs", {"model.name": "lenet5", "optim.lr": accuracy}, accuracy=accuracy, tags=tags
        )
    (tmp_path / "select.json").write_text(json.dumps({"metric": "last.val_acc", "chosen": "b"}))
    table = format_results_table(tmp_path)
    assert [line.split()[2] for line in table.splitlines() if line.startswith("*  ")] == ["b"]
    assert "select stage chose by last.val_acc" in table


def test_a_running_study_reports_running_runs_and_no_results_yet(tmp_path: Path) -> None:
    plan = {"runs": [{"run_id": "aaa", "seed": 0}, {"run_id": "bbb", "seed": 1}]}
    (tmp_path / "study.json").write_text(json.dumps(plan))
    with runfolder.hold(tmp_path / "runs" / "aaa", "aaa"):
        held = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from cnnlab import runfolder; print(runfolder.is_held({str(tmp_path / 'runs' / 'aaa')!r}))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert held == "True"
        line = incomplete_line(load_study(tmp_path))
        assert line.startswith("Study incomplete: 1 of 2 planned runs pending (no result yet), 1 running")
    study = load_study(tmp_path)  # a plan with no results yet is a report, not an error
    assert len(study.pending) == 2


# ---------------------------------------------------------------- writing the report: all or nothing


def _two_run_study(root: Path) -> Path:
    for seed in (0, 1):
        write_run(root / "runs", {"model.name": "lenet5", "train.seed": seed}, images=False)
    return root


def _snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every file, folder and link under `root` (the figure cache aside: keyed by its inputs, it may be new)
    → its bytes (None for a folder, the target for a link)."""
    return {
        str(path.relative_to(root)): _content(path)
        for path in sorted(root.rglob("*"))
        if path.name != ".figures.json"
    }


def _content(path: Path) -> bytes | str | None:
    if path.is_symlink():
        return os.readlink(path)
    return None if path.is_dir() else path.read_bytes()


def _fail_writing(monkeypatch, name: str, error: BaseException) -> None:
    """Writing the temporary file of the report file `name` raises `error` (after others were written)."""
    write_bytes = Path.write_bytes

    def failing(path: Path, data: bytes) -> int:
        if path.name.startswith(f".{name}."):
            raise error
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", failing)


@pytest.mark.parametrize(
    "failure, code",
    [
        (OSError(28, "No space left on device"), 2),
        (Interrupted(15), 143),
    ],
    ids=["disk-full", "sigterm"],
)
def test_a_report_that_fails_mid_write_leaves_the_previous_report_whole(
    tmp_path: Path, monkeypatch, capsys, failure, code
) -> None:
    root = _two_run_study(tmp_path)
    write_report(root)
    before = _snapshot(root)
    write_run(root / "runs", {"model.name": "lenet5", "train.seed": 2}, images=False)  # a new report differs
    before = {**before, **{k: v for k, v in _snapshot(root).items() if k.startswith("runs")}}
    _fail_writing(monkeypatch, "report.md", failure)  # figures and report.html are written by then
    assert main(["report", str(root)]) == code
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("cnnlab: ") and "Traceback" not in error
    assert _snapshot(root) == before, "the old report byte for byte, no temporary file left"
    monkeypatch.undo()
    assert main(["report", str(root)]) == 0
    assert "3 run(s)" in (root / "report.md").read_text()


def test_a_figure_that_fails_changes_no_report_file(tmp_path: Path, monkeypatch, capsys) -> None:
    import cnnlab.report.render as render

    root = _two_run_study(tmp_path)
    write_report(root)
    (root / "runs" / sorted(os.listdir(root / "runs"))[0] / "result.json").touch()
    before = _snapshot(root)
    (root / "report_files" / ".figures.json").unlink()  # draw again

    def broken(study, rows):
        raise OSError(28, "No space left on device", "/tmp/matplotlib-cache")

    monkeypatch.setattr(render, "make_plots", broken)
    assert main(["report", str(root)]) == 2
    assert "no space left" in capsys.readouterr().err
    assert _snapshot(root) == before


def test_a_read_only_report_file_is_replaced_and_an_unwritable_folder_changes_nothing(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import cnnlab.safeio as safeio

    root = _two_run_study(tmp_path)
    first = write_report(root)
    first.html.chmod(0o444)
    assert main(["report", str(root)]) == 0, "a rename replaces a read-only file, as any atomic write does"
    assert first.html.stat().st_mode & 0o222, "the new file has the mode of a new file"
    capsys.readouterr()
    write_run(root / "runs", {"model.name": "lenet5", "train.seed": 2}, images=False)  # a new report differs
    before = _snapshot(root)
    new_temp_file = safeio._new_temp_file

    def unwritable(path: Path) -> Path:
        if path.name == "report.md":  # after the figures and results.csv
            raise PermissionError(13, "Permission denied", str(path.parent))
        return new_temp_file(path)

    monkeypatch.setattr(safeio, "_new_temp_file", unwritable)
    assert main(["report", str(root)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(f"cnnlab: error: cannot write the report into {root}: Permission denied; ")
    assert _snapshot(root) == before


def test_leftovers_of_a_killed_report_are_removed_by_the_next_one(tmp_path: Path) -> None:
    root = _two_run_study(tmp_path)
    write_report(root)
    leftovers = [
        root / ".report.html.0badcafe.tmp",
        root / ".results.csv.12345678.tmp",
        root / "report_files" / ".learning_curves.png.deadbeef.tmp",
        root / "report_files" / "..figures.json.abcdef01.tmp",
    ]
    mine = [root / "report_files" / "my_drawing.png", root / ".notes.txt.0badcafe.tmp"]
    for path in leftovers + mine:
        path.write_bytes(b"half")
    write_report(root)
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"half" for path in mine), "files the report did not write stay"


@pytest.mark.parametrize(
    "case", ["html-is-a-folder", "png-is-a-folder", "figures-folder-is-a-file", "dangling"]
)
def test_a_report_path_of_the_wrong_kind_is_one_line_and_changes_nothing(
    tmp_path: Path, case: str, capsys
) -> None:
    root = _two_run_study(tmp_path)
    write_report(root)
    if case == "html-is-a-folder":
        (root / "report.html").unlink()
        (root / "report.html").mkdir()
    elif case == "png-is-a-folder":
        (root / "report_files" / "learning_curves.png").unlink()
        (root / "report_files" / "learning_curves.png").mkdir()
    else:
        shutil.rmtree(root / "report_files")
        if case == "dangling":
            (root / "report_files").symlink_to(tmp_path / "gone")
        else:
            (root / "report_files").write_text("not a folder")
    before = _snapshot(root)
    assert main(["report", str(root)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cnnlab: error: cannot write the report: ") and error.count("\n") == 1
    assert "report again" in error
    assert _snapshot(root) == before


def test_a_figures_folder_linked_elsewhere_gets_the_figures(tmp_path: Path) -> None:
    root = _two_run_study(tmp_path / "study")
    elsewhere = tmp_path / "big-disk" / "figures"
    elsewhere.mkdir(parents=True)
    (root / "report_files").symlink_to(elsewhere)
    paths = write_report(root)
    assert (root / "report_files").is_symlink()
    assert {path.name for path in paths.plots} <= set(os.listdir(elsewhere))
    assert not [name for name in os.listdir(elsewhere) if name.endswith(".tmp")]


def test_two_reports_of_one_folder_take_turns(tmp_path: Path) -> None:
    import fcntl
    import threading

    root = _two_run_study(tmp_path)
    write_report(root)
    write_run(root / "runs", {"model.name": "lenet5", "train.seed": 2}, images=False)  # a new report differs
    before = _snapshot(root)
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # another report is writing
    writer = threading.Thread(target=write_report, args=(root,))
    try:
        writer.start()
        writer.join(timeout=1.5)
        assert writer.is_alive() and _snapshot(root) == before, "it waits, having written nothing"
    finally:
        os.close(descriptor)
    writer.join(timeout=60)
    assert not writer.is_alive() and _snapshot(root) != before


def test_a_suite_report_says_which_studies_are_incomplete_as_a_study_report_does(tmp_path: Path) -> None:
    from cnnlab.report.suite import write_suite_report

    suite = tmp_path / "suite"
    studies = [{"name": "done"}, {"name": "half"}, {"name": "later"}]
    suite.mkdir()
    (suite / runfolder.SUITE_FILE).write_text(json.dumps({"name": "s", "studies": studies}))
    for name in ("done", "half"):
        run = write_run(suite / name / "runs", {"model.name": "lenet5"}, images=False)
        plan = [{"run_id": run.name, "seed": 0}] + ([{"run_id": "f00d", "seed": 1}] if name == "half" else [])
        (suite / name / "study.json").write_text(json.dumps({"runs": plan}))
    paths = write_suite_report(suite)
    half = write_report(suite / "half").table.splitlines()[-1]
    assert half.startswith("Study incomplete: 1 of 2 planned runs pending")
    lines = [f"half: {half}", "Not started yet: later; run `cnnlab study run` again (same spec, same --out) "]
    assert paths.table.splitlines()[0] == lines[0] and paths.table.splitlines()[1].startswith(lines[1])
    top = paths.markdown.read_text().split("\n## ")[0]
    assert all(markdown_text(line, code_spans=True) in top for line in lines), "under the suite's summary"
    assert "Study incomplete" not in _md_sections(paths.markdown.read_text())["done"]


def test_figures_drawn_while_a_run_writes_its_files_are_not_kept_for_the_new_files(
    tmp_path: Path, monkeypatch
) -> None:
    """A live run finishing between the report's reading and its cache key must not leave the figures of the
    old files filed under the new files' key (every later report would show them)."""
    import cnnlab.report.render as render

    root = _two_run_study(tmp_path)
    drawn = []
    draw, load = render.make_plots, render.load_study
    monkeypatch.setattr(render, "make_plots", lambda study, rows: drawn.append(1) or draw(study, rows))

    def load_then_a_run_finishes(source):
        study = load(source)
        write_run(root / "runs", {"model.name": "lenet5", "train.seed": 2}, images=False)
        return study

    monkeypatch.setattr(render, "load_study", load_then_a_run_finishes)
    write_report(root)
    monkeypatch.setattr(render, "load_study", load)
    write_report(root)
    assert len(drawn) == 2, "the third run's figures are drawn, not the two-run figures reused"


def test_huge_numbers_stay_short_and_a_table_without_a_best_row_has_no_best_legend(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "runs", {"model.name": "lenet5"}, images=False)
    result = json.loads((run_dir / "result.json").read_text())
    result.update(train_time_s=1e300, train_images_per_s=1e300, params=10**30)
    (run_dir / "result.json").write_text(json.dumps(result))
    table = write_report(tmp_path).table
    assert max(len(line) for line in table.splitlines()) < 200 and "1e+300" in table
    failed = tmp_path / "failed"
    write_run(failed / "runs", {"model.name": "lenet5"}, status="failed", images=False)
    assert "* best" not in write_report(failed).table, "no completed run: no row is best"


def test_hostile_class_and_folder_names_stay_text(tmp_path: Path) -> None:
    classes = ["<script>alert(1)</script>", "a|b", "`c`", "d\n# e", *map(str, range(6))]
    root = tmp_path / "<script>s"
    write_run(root / "runs", {"model.name": "lenet5"}, classes=classes)
    paths = write_report(root)
    markdown = paths.markdown.read_text()
    assert "<script" not in paths.html.read_text() + markdown and "\n# e" not in markdown
    assert markdown.startswith("# Study report: &lt;script&gt;s\n")


def test_class_names_with_undecodable_bytes_are_drawn_escaped_not_a_crash(tmp_path: Path) -> None:
    """A class folder named with a byte that is not UTF-8 (os.listdir's surrogate escape "\\udcff") crashed
    matplotlib's text layout; a result.json with a lone "\\ud800" too."""
    classes = ["\udcffcat", "dog\ud800", *map(str, range(8))]
    root = tmp_path / "study"
    write_run(root / "runs", {"model.name": "lenet5"}, classes=classes)
    paths = write_report(root)
    markdown = paths.markdown.read_text(encoding="utf-8")  # Markdown doubles a backslash
    assert r"#0 (\\xffcat), #1 (dog\\ud800)" in markdown
    assert r"#0 (\xffcat), #1 (dog\ud800)" in html_module.unescape(paths.html.read_text(encoding="utf-8"))
    assert len(paths.plots) >= 5, "every figure drawn, the class names in them escaped"


def test_cli_report_of_a_suite_prints_what_is_left_as_for_a_study(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    studies = [{"name": "half"}, {"name": "later"}]
    (suite / runfolder.SUITE_FILE).write_text(json.dumps({"name": "s", "studies": studies}))
    run = write_run(suite / "half" / "runs", {"model.name": "lenet5"}, images=False)
    plan = [{"run_id": run.name, "seed": 0}, {"run_id": "f00d", "seed": 1}]
    (suite / "half" / "study.json").write_text(json.dumps({"runs": plan}))
    assert main(["report", str(suite)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("half: Study incomplete: 1 of 2 planned runs pending (no result yet)")
    assert out[1].startswith("Not started yet: later; run `cnnlab study run` again")
    assert out[-1] == f"report: {suite.resolve() / 'report.html'}"


def test_report_out_writes_the_report_elsewhere_and_only_reads_the_study(tmp_path: Path, capsys) -> None:
    root = _two_run_study(tmp_path / "study")
    before = {**_snapshot(root), "mtime": root.stat().st_mtime_ns}
    out = tmp_path / "elsewhere"
    assert main(["report", str(root), "--out", str(out)]) == 0
    assert {**_snapshot(root), "mtime": root.stat().st_mtime_ns} == before, "the study folder is only read"
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {out.resolve() / 'report.html'}"
    written = {path.name for path in out.iterdir()}
    assert written == {"report.html", "report.md", "results.csv", "report_files"}
    assert (out / "report_files" / ".figures.json").is_file(), "the figure cache goes with the report"
    assert sorted((out / "report_files").glob("*.png")), "the figures too"
    assert main(["report", str(root), "--out", str(out)]) == 0, "a report written there before is replaced"


def test_report_out_refuses_a_file_and_another_study_folder(tmp_path: Path, capsys) -> None:
    root = _two_run_study(tmp_path / "study")
    other = _two_run_study(tmp_path / "other")
    (other / "study.json").write_text(json.dumps({"runs": []}))
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(other)
    for out, message in [
        (other, "is the folder of another study or run (it holds study.json)"),
        (next((other / "runs").iterdir()), "is the folder of another study or run (it holds result.json)"),
        (tmp_path / "notes.txt", "is a file, not a folder"),
    ]:
        capsys.readouterr()
        assert main(["report", str(root), "--out", str(out)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and message in err[0], err
    assert _snapshot(other) == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_study_on_a_read_only_disk_is_told_to_report_elsewhere(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    root = _two_run_study(tmp_path / "study")
    _fail_writing(monkeypatch, "report.html", OSError(errno.EROFS, "Read-only file system"))
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"cnnlab: error: cannot write the report into {root}: Read-only file system; write it elsewhere with "
        "--out FOLDER (DIR is then only read)"
    ]


def test_a_suite_report_with_out_puts_each_study_in_its_own_subfolder(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    studies = [{"name": "a"}, {"name": "b"}]
    (suite / runfolder.SUITE_FILE).write_text(json.dumps({"name": "s", "studies": studies}))
    for name in ("a", "b"):
        run = write_run(suite / name / "runs", {"model.name": "lenet5"}, images=False)
        (suite / name / "study.json").write_text(json.dumps({"runs": [{"run_id": run.name, "seed": 0}]}))
    before = _snapshot(suite)
    out = tmp_path / "out"
    assert main(["report", str(suite), "--out", str(out)]) == 0
    assert _snapshot(suite) == before
    for folder in (out, out / "a", out / "b"):
        assert (folder / "report.html").is_file() and (folder / "report.md").is_file()
    assert "## a" in (out / "report.md").read_text() and (out / "a" / "results.csv").is_file()


@pytest.mark.parametrize("name", ["../other", "..", "/tmp/elsewhere", ""])
def test_a_suite_file_naming_a_study_outside_the_suite_is_refused(tmp_path: Path, capsys, name) -> None:
    other = tmp_path / "other"
    write_run(other / "runs", {"model.name": "lenet5"}, images=False)
    (other / "study.json").write_text(json.dumps({"runs": []}))
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / runfolder.SUITE_FILE).write_text(json.dumps({"name": "s", "studies": [{"name": name}]}))
    capsys.readouterr()
    assert main(["report", str(suite)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "is not a folder name" in err[0], err
    assert not (other / "report.html").exists() and not (suite / "report.html").exists()


def test_a_report_writer_stopped_while_writing_delays_the_next_one_but_never_hangs_it(
    tmp_path: Path, monkeypatch
) -> None:
    import fcntl

    from cnnlab.report import files

    root = _two_run_study(tmp_path)
    write_report(root)
    write_run(root / "runs", {"model.name": "lenet5", "train.seed": 2}, images=False)
    before = _snapshot(root)
    monkeypatch.setattr(files, "TURN_WAIT_S", 0.3)
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # a writer stopped with SIGSTOP holds it
    try:
        write_report(root)
    finally:
        os.close(descriptor)
    assert _snapshot(root) != before


def test_the_report_is_titled_with_the_studys_name_and_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "cvd"
    run = write_run(root / "runs", {"model.name": "lenet5"}, images=False)
    (root / "study.json").write_text(json.dumps({"name": "cats-vs-dogs", "runs": [{"run_id": run.name}]}))
    assert write_report(root).markdown.read_text().startswith("# Study report: cats-vs-dogs (cvd)\n")
    (root / "study.json").write_text(json.dumps({"name": "cvd", "runs": [{"run_id": run.name}]}))
    assert write_report(root).markdown.read_text().startswith("# Study report: cvd\n")


def test_a_result_removed_by_another_process_while_the_report_reads_is_a_pending_run(
    tmp_path: Path, monkeypatch
) -> None:
    """A worker starting a run over (a fresh start clears its result.json) between the report's listing of the
    folder and its reading of that file: the run is pending, not a malformed result (exit 2)."""
    from cnnlab.report import collect

    root = make_study(tmp_path, failures=False, ensemble=False, images=False)
    plan = json.loads((root / "study.json").read_text())
    restarted = root / "runs" / plan["runs"][0]["run_id"]
    listed = collect._run_result_files

    def listed_then_cleared(folder: Path) -> list[Path]:
        found = listed(folder)
        runfolder.clear_run_files(restarted)
        return found

    monkeypatch.setattr(collect, "_run_result_files", listed_then_cleared)
    study = load_study(root)
    assert len(study.pending) == 1 and len(study.runs) == len(plan["runs"]) - 1
    planned = len(plan["runs"])
    assert incomplete_line(study).startswith(f"Study incomplete: 1 of {planned} planned runs pending")
