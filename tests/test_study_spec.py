"""Study specs: parsing, errors that name the key, expansion into runs, stages, select, shipped specs."""

from pathlib import Path

import pytest
import yaml

from cnnlab import config as cfg
from cnnlab.errors import ConfigError
from cnnlab.study.checks import check_plan
from cnnlab.study.plan import expand
from cnnlab.study.spec import (
    apply_overrides,
    load_study_spec,
    load_tune_spec,
    parse_study_spec,
    parse_tune_spec,
)

STUDIES = Path(__file__).resolve().parents[1] / "studies"
BASE = {"model.name": "lenet5", "data.name": "digits", "train.epochs": 1}


def plan_of(raw, tmp_path):
    return expand(parse_study_spec(raw), tmp_path / "study")


def test_grid_seeds_folds_expand_to_cartesian_product(tmp_path):
    raw = {
        "base": BASE,
        "grid": {"optim.lr": [0.05, 0.1], "data.batch_size": [32, 64]},
        "seeds": [0, 1],
        "cv": {"folds": 3},
    }
    plan = plan_of(raw, tmp_path)
    assert len(plan.runs) == 2 * 2 * 2 * 3
    assert len({run.run_id for run in plan.runs}) == len(plan.runs)
    first = plan.runs[0].config
    assert (first.optim.lr, first.data.batch_size, first.train.seed, first.data.folds, first.data.fold) == (
        0.05,
        32,
        0,
        3,
        0,
    )
    assert {(r.config.train.seed, r.config.data.fold) for r in plan.runs} == {
        (s, f) for s in (0, 1) for f in range(3)
    }
    assert [r.index for r in plan.runs] == list(range(24))
    # one splits file shared by every run: all runs of a study validate on the same folds
    assert len(plan.splits) == 1 and {r.config.data.splits_file for r in plan.runs} == {
        str(plan.splits[0].path)
    }
    assert plan.runs[0].configuration == "optim.lr=0.05 data.batch_size=32"
    assert plan.runs[0].tags("s") == {
        "study": "s",
        "configuration": "optim.lr=0.05 data.batch_size=32",
        "point": {"optim.lr": "0.05", "data.batch_size": "32"},
        "seed": 0,
        "fold": 0,
        "stage": "main",
        "role": "member",
    }


def test_run_ids_are_stable_and_equal_config_hash(tmp_path):
    raw = {"base": BASE, "grid": {"optim.lr": [0.05, 0.1]}, "seeds": [0, 1]}
    first, second = plan_of(raw, tmp_path), plan_of(raw, tmp_path)
    assert [r.run_id for r in first.runs] == [r.run_id for r in second.runs]
    assert all(r.run_id == cfg.config_hash(r.config) for r in first.runs)
    assert first.plan_hash == second.plan_hash
    changed = plan_of({**raw, "seeds": [0, 2]}, tmp_path)
    assert changed.plan_hash != first.plan_hash
    assert changed.runs[0].run_id == first.runs[0].run_id  # unchanged runs keep their ids (and results)


def test_holdout_fraction_is_applied(tmp_path):
    plan = plan_of({"base": BASE, "holdout": {"val_fraction": 0.25}}, tmp_path)
    assert len(plan.runs) == 1 and plan.runs[0].config.data.val_fraction == 0.25
    assert plan.runs[0].config.data.folds is None and plan.runs[0].configuration == "base"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"base": BASE, "grid": {"optim.lrr": [0.1]}},
            r"grid\.optim\.lrr.*unknown config key 'optim\.lrr'.*optim\.lr",
        ),
        ({"base": BASE, "grid": {"optim.lr": 0.1}}, r"'grid\.optim\.lr' must be a non-empty list"),
        ({"base": BASE, "grid": {"optim.lr": ["fast"]}}, r"grid\.optim\.lr.*'fast'.*number or auto"),
        ({"base": BASE, "grid": {"train.seed": [1, 2]}}, r"grid\.train\.seed.*use 'seeds:'"),
        ({"base": {"train.epochz": 1}}, r"base: unknown config key 'train\.epochz'"),
        ({"base": BASE, "gird": {}}, r"unknown study spec key 'gird' \(did you mean grid\?\)"),
        ({"base": BASE, "cv": {"folds": 1}}, r"'cv\.folds'=1 is out of range"),
        ({"base": BASE, "cv": {"folds": 3}, "holdout": {"val_fraction": 0.2}}, r"cv and holdout exclude"),
        ({"base": BASE, "seeds": [0, 0]}, r"'seeds' lists a seed twice"),
        ({"base": BASE, "select": {"metric": "test.acc"}}, r"select\.metric='test\.acc' is not allowed"),
        (
            {"base": BASE, "ensembles": [{"name": "e", "members": ["x"], "method": "max"}]},
            r"ensembles\[0\]\.method='max' is not allowed; allowed: mean, vote",
        ),
        (
            {"base": BASE, "grid": {"recipe": [1, 2]}},
            r"'grid\.recipe': a grid key without a dot is a named axis",
        ),
        (
            {"base": BASE, "stages": [{"name": "b", "base": {"train.init": "stage:a"}}]},
            r"train\.init='stage:a' must name an earlier stage",
        ),
        (  # the run would be labelled optim.lr=0.01 while it trained with 0.02
            {"base": BASE, "grid": {"optim.lr": [0.01], "a": {"x": {"optim.lr": 0.02}}}},
            r"optim\.lr is set by two axes \(optim\.lr and a\)",
        ),
    ],
)
def test_invalid_specs_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_study_spec(raw)


@pytest.mark.parametrize("name", ["<script>x</script>", "two\nlines", "a|b", "a/b", "   "])
def test_a_spec_name_is_one_line_of_text_safe_in_a_report(name):
    with pytest.raises(ConfigError, match="study spec key 'name' must be a non-empty line of text"):
        parse_study_spec({"name": name, "base": BASE})
    with pytest.raises(ConfigError, match="tune spec key 'name'"):
        parse_tune_spec({"name": name, "base": BASE, "space": {"optim.lr": [0.1]}, "cv": {"folds": 2}})


def test_a_grid_of_millions_of_runs_is_refused_before_anything_is_planned():
    """7 axes of 10 values × 10 seeds: 10^8 runs, whose expansion filled 9 GB in two minutes; now one line."""
    grid = {key: [round(0.01 * i, 2) for i in range(1, 11)] for key in ("optim.lr", "optim.momentum")}
    grid |= {"data.batch_size": [8 * i for i in range(1, 11)], "train.epochs": list(range(1, 11))}
    grid |= {"optim.weight_decay": [i / 1e5 for i in range(10)], "model.dropout": [i / 20 for i in range(10)]}
    grid |= {"optim.warmup_epochs": list(range(10))}
    with pytest.raises(ConfigError, match=r"plans 100,000,000 runs \(10 × 10 × 10 × 10 × 10 × 10 × 10 grid "
                       r"point\(s\) × 10 seed\(s\)\); a study plans at most 10,000: narrow"):  # fmt: skip
        parse_study_spec({"base": BASE, "grid": grid, "seeds": list(range(10))})
    stages = [
        {"name": "pre", "grid": {"optim.lr": [0.1, 0.2]}, "seeds": [0]},
        {"name": "cv", "grid": {"optim.lr": list(range(1, 1001))}, "seeds": [0, 1], "cv": {"folds": 5}},
    ]
    with pytest.raises(ConfigError, match=r"plans 10,002 runs \(stage 'pre': 2 grid point\(s\) × 1 seed"
                       r"\(s\); stage 'cv': 1000 grid point\(s\) × 2 seed\(s\) × 5 folds\)"):  # fmt: skip
        parse_study_spec({"base": BASE, "stages": stages})
    stages[1]["seeds"] = [0]  # 5,002 runs: planned
    assert len(parse_study_spec({"base": BASE, "stages": stages}).stages[1].grid[0].choices) == 1000


def test_an_empty_spec_file_is_refused_not_run_with_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    for load in (load_study_spec, load_tune_spec):
        with pytest.raises(ConfigError, match="'.*empty.yaml' is empty; write at least base:"):
            load(empty)


def test_ensemble_member_that_matches_nothing_names_the_configurations(tmp_path):
    raw = {
        "base": BASE,
        "grid": {"optim.lr": [0.05, 0.1]},
        "ensembles": [{"name": "e", "members": ["0.05", "0.3"]}],
    }
    with pytest.raises(
        ConfigError, match=r"members\[1\]='0\.3' matches no run; configurations: optim\.lr=0\.05"
    ):
        plan_of(raw, tmp_path)
    raw["ensembles"] = [{"name": "e", "members": ["0.05", {"optim.lr": 0.1}]}]
    plan = plan_of(raw, tmp_path)
    assert plan.ensemble_members["e"] == (0, 1)


def test_unknown_model_or_unsupported_switch_is_caught_before_running(tmp_path):
    with pytest.raises(ConfigError, match=r"configuration 'model\.name=lenet'.*unknown model 'lenet'"):
        plan_of({"base": BASE, "grid": {"model.name": ["lenet5", "lenet"]}}, tmp_path)
    plan = plan_of({"base": BASE, "grid": {"model.name": ["densenet121"], "model.norm": ["group"]}}, tmp_path)
    with pytest.raises(ConfigError, match=r"model\.norm: model 'densenet121' does not support norm='group'"):
        check_plan(plan)


def test_select_keeps_members_off_the_test_split_and_plans_one_final_run(tmp_path):
    raw = {
        "base": BASE,
        "grid": {"optim.lr": [0.05, 0.1]},
        "seeds": [0, 1],
        "cv": {"folds": 2},
        "select": True,
    }
    plan = plan_of(raw, tmp_path)
    members = [r for r in plan.runs if r.role == "member"]
    finals = [r for r in plan.runs if r.role == "final"]
    assert len(members) == 8 and all(r.config.train.test is False for r in members)
    assert len(finals) == 1 and finals[0].config is None and finals[0].seed == 0
    assert set(finals[0].depends_on) == {r.index for r in members}


def test_stages_chain_pretraining_runs_into_the_next_stage_by_seed_and_model(tmp_path):
    raw = {
        "base": {"data.name": "digits", "train.epochs": 1},
        "seeds": [0, 1],
        "stages": [
            {
                "name": "pretrain",
                "base": {"data.classes": [0, 1, 2, 3, 4]},
                "grid": {"model.name": ["lenet5", "resnet20_cifar"]},
            },
            {
                "name": "transfer",
                "base": {"data.classes": [5, 6, 7, 8, 9], "data.per_class": 20},
                "grid": {
                    "model.name": ["lenet5", "resnet20_cifar"],
                    "recipe": {
                        "scratch": {"train.init": "scratch"},
                        "linear": {"train.init": "stage:pretrain", "train.finetune": "linear"},
                    },
                },
            },
        ],
    }
    plan = plan_of(raw, tmp_path)
    pretrain = {(r.config.model.name, r.seed): r for r in plan.runs if r.stage == "pretrain"}
    transfer = [r for r in plan.runs if r.stage == "transfer"]
    assert len(pretrain) == 4 and len(transfer) == 8
    assert len(plan.splits) == 2  # different classes → different training images → own splits
    for run in transfer:
        source = pretrain[(run.config.model.name, run.seed)]
        if run.point["recipe"] == "linear":
            assert run.config.train.init == f"run:{plan.study_dir / 'runs' / source.run_id}"
            assert run.depends_on == (source.index,)
        else:
            assert run.config.train.init == "scratch" and run.depends_on == ()


def test_a_single_seed_source_stage_feeds_every_seed(tmp_path):
    raw = {
        "base": BASE,
        "stages": [
            {"name": "pretrain", "seeds": [7]},
            {"name": "transfer", "seeds": [0, 1, 2], "base": {"train.init": "stage:pretrain"}},
        ],
    }
    plan = plan_of(raw, tmp_path)
    source = plan.runs[0]
    assert [r.depends_on for r in plan.runs[1:]] == [(source.index,)] * 3
    assert {r.config.train.init for r in plan.runs[1:]} == {f"run:{plan.study_dir / 'runs' / source.run_id}"}


def test_stage_without_matching_source_run_is_an_error(tmp_path):
    raw = {
        "base": BASE,
        "stages": [
            {"name": "pretrain", "seeds": [0, 2]},
            {"name": "transfer", "seeds": [0, 1], "base": {"train.init": "stage:pretrain"}},
        ],
    }
    with pytest.raises(
        ConfigError, match=r"stage 'transfer': train\.init=stage:pretrain has no run with seed 1"
    ):
        plan_of(raw, tmp_path)


def test_set_overrides_reach_base_grid_stages_and_protocol():
    raw = {
        "base": {"data": {"name": "digits"}},
        "grid": {"optim.lr": [0.1]},
        "stages": [{"name": "p", "base": {"data.per_class": 10}}],
    }
    tree = apply_overrides(
        raw,
        [
            "base.data.name=cifar10",
            "grid.optim.lr=[0.2, 0.3]",
            "cv.folds=4",
            "stages.p.base.data.per_class=5",
        ],
    )
    assert tree["base"]["data"]["name"] == "cifar10" and tree["grid"]["optim.lr"] == [0.2, 0.3]
    assert tree["cv"] == {"folds": 4} and tree["stages"][0]["base"]["data"]["per_class"] == 5
    assert raw["base"]["data"]["name"] == "digits"  # the loaded spec is not mutated
    with pytest.raises(ConfigError, match="no stage named 'q'"):
        apply_overrides(raw, ["stages.q.seeds=[1]"])


def test_tune_spec_validates_its_space():
    spec = parse_tune_spec(
        {
            "base": BASE,
            "cv": {"folds": 3},
            "space": {
                "optim.lr": {"low": 0.001, "high": 0.3, "log": True},
                "data.batch_size": [32, 64],
                "train.epochs": {"low": 1, "high": 3},
            },
        }
    )
    kinds = {p.key: (p.log, p.integer, p.choices) for p in spec.space}
    assert kinds == {
        "optim.lr": (True, False, None),
        "data.batch_size": (False, False, (32, 64)),
        "train.epochs": (False, True, None),
    }
    with pytest.raises(ConfigError, match=r"space\.optim\.lrr.*unknown config key"):
        parse_tune_spec({"base": BASE, "cv": {"folds": 3}, "space": {"optim.lrr": [0.1]}})
    with pytest.raises(ConfigError, match=r"'cv' is required"):
        parse_tune_spec({"base": BASE, "space": {"optim.lr": [0.1]}})
    with pytest.raises(ConfigError, match=r"low=0\.3 must be below high=0\.1"):
        parse_tune_spec({"base": BASE, "cv": {"folds": 3}, "space": {"optim.lr": {"low": 0.3, "high": 0.1}}})


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"data.batch_size": {"low": 8.5, "high": 64, "type": "int"}}, r"low=8\.5 must be a whole number"),
        ({"train.epochs": {"low": 1, "high": float("inf"), "type": "int"}}, r"high=inf must be a whole"),
        ({"train.seed": [0, 1]}, r"tune spec key 'space\.train\.seed'.*set by the tune; use 'seed:'"),
    ],
)
def test_tune_spec_refuses_fractional_int_bounds_and_a_searched_seed(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_tune_spec({"base": BASE, "cv": {"folds": 3}, "space": space})


SHIPPED = sorted(STUDIES.glob("*.yaml"))


def test_every_study_named_in_the_issue_is_shipped():
    names = {path.stem for path in SHIPPED}
    assert {
        "quickstart",
        "transfer",
        "regularization",
        "cv-hparams",
        "depth",
        "ensemble",
        "architectures",
        "cats-vs-dogs",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_expands_and_validates(path, tmp_path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = " ".join(header).lower()
    assert "reproduces" in text and "runtime" in text and "--set" in text, (
        "header: what, runtime, the override"
    )
    raw = yaml.safe_load(path.read_text())
    if "space" in raw:  # a tune spec
        spec = load_tune_spec(path)
        assert spec.folds >= 2 and spec.space
        return
    if "studies" in raw:  # a suite: every sub-study plans and passes the checks
        from cnnlab.study.suite import check_suite, load_suite

        suite = load_suite(path, tmp_path / "suite")
        check_suite(suite, tmp_path / "suite")
        assert [study.name for study in suite.studies]
        return
    if path.stem == "cats-vs-dogs":  # a photo folder: point it at a small generated tree of cats and dogs
        folder = _tiny_cats_and_dogs(tmp_path / "photos")
        spec = load_study_spec(path, [f"base.data.name=folder:{folder}"])
    else:
        spec = load_study_spec(path)
    plan = expand(spec, tmp_path / "study")
    check_plan(plan)
    assert plan.runs and all(r.config is not None or r.role == "final" for r in plan.runs)


def _tiny_cats_and_dogs(root: Path) -> Path:
    from PIL import Image

    for name, shade in (("cat", 40), ("dog", 200)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (shade, i * 10, 0)).save(root / name / f"{name}.{i}.png")
    return root
