"""Studies: spec → runs, the shared work queue, selection, ensembles, status and tuning.

`runner.run_study(spec, out_dir)` plans a study (grid × seeds × folds, stages, select), saves its splits
once, fills a work queue in Optuna's RDB storage and trains each run exactly once across every worker
process; `status.study_status(dir)` counts runs by state (`cnnlab.runfolder.STATES`); `tune.run_tune(spec,
out_dir)` searches hyperparameters with TPE and fold-wise pruning. This package never draws: reports are
`cnnlab.report`'s job.

Nothing is re-exported here; import from the modules (`from cnnlab.study.runner import run_study`). The
runner, plan, selection, status and tune modules load the training stack (Lightning), while queue,
spec, suite and ensemble do not, and `cnnlab report` and worker scripts import those alone: an eager
re-export here would put Lightning under every one of them (docs/architecture.md, "Imports").
"""
