"""Property-based fuzzing of what a user types: `--set` values, config files, study specs and a few
commands. For any input the outcome is success or a cnnlab error (one line, exit 2) — never another
exception. Bounded (a few hundred examples per property) so the suite stays well under a minute."""

from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab import cli
from cnnlab import config as cfg
from cnnlab.errors import CnnlabError
from cnnlab.study.plan import expand
from cnnlab.study.spec import STUDY_KEYS, apply_overrides, parse_study_spec
from cnnlab.train.options import check_trainer_options
from cnnlab.train.resolve import resolve_config

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = cfg.all_keys()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "auto",
            "lenet5",
            "digits",
            "folder:",
            "folder:/nonexistent",
            "folder:~nouser/x",
            "run:",
            "file:x\x00",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.one_of(
    st.sampled_from(KEYS), st.text(alphabet=string.ascii_lowercase + "._", min_size=1, max_size=20)
)
value_text = st.one_of(
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
    st.text(max_size=40),
)


def assert_user_error(error: CnnlabError) -> None:
    """A cnnlab error with a message (the CLI prints it on one line, escaping any newline in a value)."""
    assert error.exit_code == 2 and str(error).strip()


def train_preflight(assignments: list[str]) -> None:
    """What `cnnlab train --set ...` does before it writes anything."""
    tree = cfg.apply_assignments({}, assignments)
    config = resolve_config(cfg.from_dict(tree))
    check_trainer_options(config)


@FUZZ
@given(st.lists(st.tuples(keys, value_text), min_size=1, max_size=4))
def test_set_values_succeed_or_fail_as_user_errors(pairs):
    try:
        train_preflight([f"{key}={text}" for key, text in pairs])
    except CnnlabError as error:
        assert_user_error(error)


@FUZZ
@given(st.dictionaries(keys, values, max_size=5))
def test_config_mappings_succeed_or_fail_as_user_errors(tree):
    try:
        resolve_config(cfg.from_dict(tree))
    except CnnlabError as error:
        assert_user_error(error)


@FUZZ
@given(st.text(max_size=200))
def test_config_file_text_succeeds_or_fails_as_user_error(text):
    try:
        data = cfg.parse_yaml(text, "fuzz.yaml")
        if isinstance(data, dict):
            cfg.from_dict(data)
    except CnnlabError as error:
        assert_user_error(error)


spec_keys = st.one_of(st.sampled_from(STUDY_KEYS), st.text(max_size=10))
base_trees = st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3)
grids = st.dictionaries(
    st.one_of(
        st.sampled_from(["optim.lr", "model.name", "train.epochs", "data.batch_size"]), st.text(max_size=8)
    ),
    st.one_of(
        st.lists(scalars, max_size=3), scalars, st.dictionaries(st.text(max_size=6), values, max_size=2)
    ),
    max_size=2,
)
specs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=12), scalars),
        "base": st.one_of(base_trees, scalars),
        "grid": st.one_of(grids, scalars),
        "seeds": st.one_of(st.lists(st.integers(-3, 5), max_size=3), scalars),
        "cv": st.one_of(st.fixed_dictionaries({"folds": st.integers(-1, 12)}), scalars),
        "holdout": st.one_of(st.fixed_dictionaries({"val_fraction": st.floats(-1, 2)}), scalars),
        "select": st.one_of(st.fixed_dictionaries({"metric": st.text(max_size=12)}), scalars),
        "ensembles": st.one_of(
            st.lists(
                st.fixed_dictionaries({"name": st.text(max_size=6), "members": st.lists(scalars)}), max_size=2
            ),
            scalars,
        ),
    },
)


@FUZZ
@given(specs, st.dictionaries(spec_keys, values, max_size=2))
def test_study_specs_succeed_or_fail_as_user_errors(tmp_path_factory, spec, extra):
    try:
        parsed = parse_study_spec({**spec, **extra})
        expand(parsed, tmp_path_factory.mktemp("fuzz"))
    except CnnlabError as error:
        assert_user_error(error)


@FUZZ
@given(specs, st.lists(st.tuples(st.text(max_size=25), value_text), max_size=3))
def test_spec_overrides_succeed_or_fail_as_user_errors(spec, pairs):
    try:
        parse_study_spec(apply_overrides(spec, [f"{key}={text}" for key, text in pairs]))
    except CnnlabError as error:
        assert_user_error(error)


@pytest.fixture
def no_download(monkeypatch):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40), st.text(max_size=20))
def test_cheap_commands_exit_0_or_2_with_one_line(capsys, no_download, name, size):
    for argv in (["data", name], ["models", "lenet5", "--input-size", size]):
        capsys.readouterr()
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, err)
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("cnnlab: error: "), err
