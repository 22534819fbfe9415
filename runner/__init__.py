"""The runner: what happens around a method's fit, each in one small named place.

    context.py          the run dir and whether this job is part of a sweep (Hydra's view of the job)
    build.py            config -> validated options -> DataModule, LightningModule, callbacks, loggers, Trainer
    results.py          results.json (written atomically), versions, git commit, the metrics table
    encoder_export.py   encoder.pt: the trained backbone (and head) for the next run to start from
    wandb_run.py        one wandb run per job, its id kept in the run dir so a resume continues it
    slurm.py            SLURM auto-requeue and the snapshots it leaves
    rundir.py           a run dir never loses a finished result (check, lock, atomic checkpoints)
    fault_tolerance.py  a checkpoint on an interrupt, and an exact resume
    protocols/          runs made of runs: k folds, pipelines, Optuna studies
    sweep_summary.py    summary.md / summary.csv / summary.png of a multirun

run.py composes the config (Hydra) and strings these together; methods (lightning_modules/) know none of it.
"""
