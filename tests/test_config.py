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
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load_yaml(bad)
