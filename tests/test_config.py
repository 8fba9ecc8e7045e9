import os
from pathlib import Path

import pytest

from cnnlab import config
from cnnlab.errors import ConfigError


def test_defaults_round_trip_through_dict():
    cfg = config.RunConfig()
    assert config.from_dict(config.to_dict(cfg)) == cfg


def test_dotted_and_nested_keys_are_equivalent():
    nested = config.from_dict({"optim": {"lr": 0.1}, "train": {"epochs": 3}})
    dotted = config.from_dict({"optim.lr": 0.1, "train.epochs": "3"})
    assert nested == dotted
    assert dotted.train.epochs == 3 and dotted.optim.lr == 0.1


def test_unknown_key_names_key_and_close_match():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean optim\.lr"):
        config.from_dict({"optim": {"lrr": 0.1}})


def test_bad_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer, got 'three'"):
        config.from_dict({"train.epochs": "three"})


def test_bad_choice_lists_allowed_values():
    with pytest.raises(
        ConfigError, match=r"optim\.optimizer='adm'.*did you mean adam.*allowed: sgd, adam, adamw"
    ):
        config.from_dict({"optim.optimizer": "adm"})


def test_out_of_range_value_is_rejected():
    with pytest.raises(ConfigError, match=r"optim\.lr=-1\.0 is out of range"):
        config.from_dict({"optim.lr": -1})


def test_hash_is_stable_and_changes_with_config():
    a = config.RunConfig()
    assert config.config_hash(a) == config.config_hash(config.from_dict({}))
    assert config.config_hash(a) != config.config_hash(config.replace(a, **{"train.seed": 1}))


def test_parse_assignment_types_values():
    assert config.parse_assignment("optim.lr=0.1") == ("optim.lr", 0.1)
    assert config.parse_assignment("data.classes=[cat, dog]") == ("data.classes", ["cat", "dog"])
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_assignment("nonsense")


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load_yaml(tmp_path / "nope.yaml")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    for special in (Path("/dev/zero"), fifo):
        with pytest.raises(ConfigError, match="config file is a device, pipe or socket, not a YAML file"):
            config.load_yaml(special)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load_yaml(bad)


def test_hostile_yaml_is_refused_before_it_fills_the_memory(tmp_path):
    rows = ["    - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("data:\n  classes:\n" + "\n".join(rows) + "\n")  # 9**9 values once expanded
    with pytest.raises(ConfigError, match="aliases expand to more than 100,000 values"):
        config.load_yaml(bomb)
    looped = tmp_path / "looped.yaml"
    looped.write_text("base: &x {model.name: lenet5, sub: *x}\n")
    with pytest.raises(ConfigError, match="alias at line 1 refers to a value that holds it"):
        config.load_yaml(looped)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deep"):
        config.load_yaml(deep)
    shared = tmp_path / "shared.yaml"  # an anchor used a few times is fine
    shared.write_text("a: &lr {optim.lr: 0.1}\nb: *lr\n")
    assert config.load_yaml(shared) == {"a": {"optim.lr": 0.1}, "b": {"optim.lr": 0.1}}


def test_replace_checks_each_value_and_keeps_the_rest():
    base = config.from_dict({"model.name": "lenet5", "optim.lr": 0.05})
    changed = config.replace(base, **{"train.epochs": "3", "data.classes": [1, 2]})
    assert (changed.train.epochs, changed.data.classes) == (3, ("1", "2"))  # typed as the field says
    assert changed.model == base.model and changed.optim == base.optim  # untouched sections are the same
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr' \\(did you mean optim.lr"):
        config.replace(base, **{"optim.lrr": 0.1})
    with pytest.raises(ConfigError, match="train.epochs=0 is out of range"):
        config.replace(base, **{"train.epochs": 0})
    with pytest.raises(ConfigError, match="data.fold=3 is out of range"):  # a range that spans two keys
        config.replace(base, **{"data.folds": 3, "data.fold": 3})


def test_run_id_is_the_config_hash_computed_once():
    run = config.from_dict({"model.name": "lenet5"})
    assert run.run_id == config.config_hash(run)
    assert "run_id" in vars(run)  # cached on the object: read again, not recomputed
    assert config.replace(run, **{"train.seed": 1}).run_id != run.run_id


def test_split_index_is_the_fold_under_cv_and_zero_for_holdout():
    assert config.from_dict({"data.folds": 5, "data.fold": 3}).data.split_index == 3
    assert config.from_dict({"data.fold": 3}).data.split_index == 0


def test_set_without_a_value_is_refused_null_asks_for_the_default():
    # `--set optim.lr=$LR` with LR unset must not train silently at the recipe's rate
    with pytest.raises(ConfigError, match=r"gives no value.*optim\.lr=null for the default"):
        config.parse_assignment("optim.lr=")
    assert config.parse_assignment("optim.lr=null") == ("optim.lr", None)


def test_set_null_gives_the_default_even_for_a_key_without_null():
    # `train --epochs 3 --set train.epochs=null`: the flag and the file are overridden by the default
    tree = {"train": {"epochs": 3, "seed": 5}, "model": {"name": "lenet5"}, "optim.lr": 0.5}
    nulls = ["train.epochs=null", "model.name=null", "optim.lr=null", "data.subset=null"]
    built = config.from_dict(config.apply_assignments(tree, nulls))
    default = config.from_dict({})
    assert (built.train.epochs, built.model.name) == (default.train.epochs, default.model.name)
    assert (built.optim.lr, built.data.subset, built.train.seed) == (None, None, 5)  # keys with null: null
    again = config.apply_assignments({}, ["train.epochs=null", "train.epochs=4"])
    assert config.from_dict(again).train.epochs == 4


def test_later_set_wins_and_earlier_sections_are_kept():
    tree = config.apply_assignments(
        {"optim": {"lr": 0.5}},
        ["optim={lr: 0.1}", "optim={momentum: 0.5}", "train.epochs=2", "train.epochs=3"],
    )
    built = config.from_dict(tree)
    assert (built.optim.lr, built.optim.momentum, built.train.epochs) == (0.1, 0.5, 3)
    assert config.from_dict(config.apply_assignments({}, ["optim.lr=0.1", "optim={lr: 0.2}"])).optim.lr == 0.2


def test_a_section_with_every_key_commented_out_is_empty():
    tree = config.parse_yaml("optim:\n  # lr: 0.1\nmodel: {name: lenet5}\n", "run.yaml")
    assert config.from_dict(tree) == config.from_dict({"model.name": "lenet5"})


def test_null_for_a_key_without_null_names_its_default():
    with pytest.raises(
        ConfigError, match=r"model\.name cannot be null.*leave the key out for 'resnet20_cifar'"
    ):
        config.from_dict({"model": {"name": None}})


def test_yaml_tab_indent_says_to_use_spaces():
    with pytest.raises(ConfigError, match=r"run\.yaml.*line 2.*indent with spaces, not tabs"):
        config.parse_yaml("model:\n\tname: lenet5\n", "run.yaml")


@pytest.mark.parametrize(("key", "value"), [("optim.lr", [1]), ("train.channels_last", 1)])
def test_a_key_that_takes_auto_says_so_when_the_type_is_wrong(key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be .*, or auto; got"):
        config.from_dict({key: value})


def test_train_help_states_precedence_and_each_flags_default(capsys):
    from cnnlab import cli

    assert cli.main(["train", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "precedence: defaults < -c < flags < --set" in shown and "a later one wins" in shown
    for key in ("model.name", "data.name", "train.epochs", "data.batch_size", "train.seed", "train.init"):
        section, _, name = key.partition(".")
        assert f"[{key}, default {getattr(getattr(config.RunConfig(), section), name)}]" in shown


@pytest.mark.parametrize(
    ("text", "value"),
    [("train.epochs=010", 10), ("data.classes=[no, yes, on]", ("no", "yes", "on")), ("train.test=on", True)],
)
def test_yaml_values_read_as_yaml_12(text, value):
    # YAML 1.1 made 010 eight and the class names no/yes/on booleans (a "yes"/"no" folder could not be kept)
    key, raw = config.parse_assignment(text)
    section, _, name = key.partition(".")
    assert getattr(getattr(config.from_dict({key: raw}), section), name) == value


@pytest.mark.parametrize("text", ["train.epochs=1:30", "data.batch_size=0x10"])
def test_sexagesimal_and_hex_are_not_integers(text):
    with pytest.raises(ConfigError, match="must be an integer"):
        config.from_dict(dict([config.parse_assignment(text)]))
