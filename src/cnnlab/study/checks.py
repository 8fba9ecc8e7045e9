"""Checks a plan can pass before any run starts: model names and switches, dataset names and presets.

`config.from_dict` checks keys, types and ranges; these checks need the zoo and the dataset catalog, so a
typo in a grid value (`model.name: lenet` or `model.norm: group` on a net without it) stops the study at
once with the configuration named, instead of failing its runs one by one.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab import config as cfg
from cnnlab import safeio
from cnnlab.data import check_data_config
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.models import check_switches
from cnnlab.study.plan import StudyPlan
from cnnlab.train.distributed import check_single_process
from cnnlab.train.resolve import model_switches


def check_plan(plan: StudyPlan) -> None:
    """Every planned config names a known model with switches it supports and a known dataset."""
    seen: set[str] = set()
    checked: set[str] = set()
    for run in plan.runs:
        if run.config is None:
            continue
        key = run.run_id
        if key in seen:
            raise ConfigError(
                f"study spec: stage {run.stage!r}, configuration {run.configuration!r} seed "
                f"{run.seed} plans the same run twice; two grid values give the same config"
            )
        seen.add(key)
        try:
            check_config(run.config)
            check_init_file(run.config.train.init, checked)
        except CnnlabError as error:
            raise ConfigError(f"stage {run.stage!r}, configuration {run.configuration!r}: {error}") from None


def check_init_file(init: str, checked: set[str]) -> None:
    """A `file:` init must exist and load as weights before the first run trains (each file read once)."""
    scheme, _, path = init.partition(":")
    if scheme != "file" or path in checked:
        return
    if not Path(path).is_file():
        raise ConfigError(f"train.init: weights file {path!r} not found; give the path of a state_dict file")
    safeio.load_checkpoint(path)
    checked.add(path)


def check_config(config: cfg.RunConfig) -> None:
    """One config's model switches and data keys, checked against the zoo and the dataset catalog."""
    try:
        check_switches(config.model.name, model_switches(config.model))
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith("model.") else f"model.name: {message}") from None
    check_data_config(config.data)
    check_single_process(config)  # a study's run trains in its worker: no DDP (Lightning would re-run it)
