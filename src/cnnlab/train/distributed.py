"""Which process of a DDP run this is, known before anything is written (docs/training.md, "DDP").

Lightning runs a DDP run as one process per device. With `train.strategy=ddp` it starts the other ranks of
a machine itself, by running the same command line again (its `_SubprocessScriptLauncher`: the children get
LOCAL_RANK, NODE_RANK and WORLD_SIZE); under torchrun or SLURM (`srun`) every rank is started from outside
(RANK / SLURM_PROCID). Whichever launched them, global rank zero owns the run folder: it alone checks and
locks the folder, writes config.yaml, metrics.csv, checkpoints, TensorBoard files and result.json, and
prints. Every other rank trains its shard of each batch in step with rank zero and writes nothing, so it
never takes the folder's lock (which rank zero holds) and never refuses the folder as busy.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings

import lightning.pytorch as pl
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from cnnlab import config as cfg
from cnnlab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in its run: global rank, number of processes, who starts the other ranks."""

    global_rank: int
    world_size: int
    starts_ranks: bool  # Lightning will start the other ranks of this machine by re-running this command

    @property
    def primary(self) -> bool:
        """Rank zero: the one process that owns the run folder and prints."""
        return self.global_rank == 0


def run_ranks(config: cfg.RunConfig) -> Ranks:
    """Lightning's own answer for this process and the run's device options (a Trainer is built and
    dropped: nothing starts and nothing is written). Strategies that start their processes from inside
    Python (ddp_spawn, ddp_fork, ddp_notebook) are refused: a run is recorded by the process that runs
    `fit`, which they would leave without the epochs trained in the processes they start."""
    from cnnlab.train.run import _accelerator, _devices  # here: run imports this module

    train = config.train
    return _ranks(_accelerator(config), _devices(train.devices), train.num_nodes, train.strategy)


@functools.lru_cache(maxsize=32)
def _ranks(accelerator: str, devices: int | str, num_nodes: int, strategy: str) -> Ranks:
    levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric")}
    try:
        for name in levels:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                accelerator=accelerator,
                devices=devices,
                num_nodes=num_nodes,
                strategy=strategy,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
    except (ValueError, TypeError, RuntimeError) as error:  # Lightning's own refusal of these options
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"train.devices={devices}, train.num_nodes={num_nodes}, train.strategy={strategy}: {message}"
        ) from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    launcher = trainer.strategy.launcher
    if launcher is not None and not isinstance(launcher, _SubprocessScriptLauncher):
        raise ConfigError(
            f"train.strategy={strategy} starts its processes from inside Python, which cnnlab does not "
            "support (the run is recorded by the process that started it); use train.strategy=ddp, or "
            "start one process per device with torchrun or srun (docs/training.md)"
        )
    environment = getattr(trainer.strategy, "cluster_environment", None)
    starts = (
        launcher is not None
        and trainer.world_size > 1
        and environment is not None
        and not environment.creates_processes_externally
    )
    return Ranks(int(trainer.global_rank), int(trainer.world_size), bool(starts))


def check_single_process(config: cfg.RunConfig) -> None:
    """A study's or a tune's run trains in its worker process, as one process: a DDP config there would
    have Lightning start its other ranks by running the study command again. Raises ConfigError."""
    ranks = run_ranks(config)
    if ranks.world_size > 1:
        train = config.train
        raise ConfigError(
            f"train.devices={train.devices} train.num_nodes={train.num_nodes} "
            f"train.strategy={train.strategy} trains each run as {ranks.world_size} processes, which a "
            "study or tune cannot do; set train.devices=1 and scale the study out with --workers or more "
            "machines, or train this config alone with cnnlab train (docs/training.md)"
        )
