"""Sweeps: grids of train-then-evaluate trials on local processes or Ray, and sharded certify.

- :class:`Trial` — one trial (TrainConfig + EvalConfig); ``trial.id`` hashes its config.
- :func:`run_trials` — run trials into ``<out>/trials/<id>/`` (executor "local", "ray" or
  "serial"); resumable, fault-tolerant; returns :class:`TrialResult` in order.
- :func:`collect` — one table of a sweep's trials: ``results.csv`` / ``results.json``.
- :func:`load_sweep` / :func:`parse_sweep` — the YAML grid (base, grid, evaluation, out).
- :func:`certify_sharded` — Theorem 1 certificates for many inputs across workers, with the same
  numbers for every executor; with ``partial=`` an interrupted call resumes (:class:`ShardStore`).
"""

from .executors import EXECUTORS, TrialResult, ensure_ray, is_done, map_tasks, run_trials, trial_dir
from .results import collect
from .shard import (
    BLOCK_SIZE, SHARD_EXECUTORS, ShardStore, block_seed, certify_shard, certify_sharded, partial_folder, run_digest,
)
from .spec import SweepSpec, SweepSpecError, Trial, load_sweep, parse_sweep

__all__ = [
    "Trial", "TrialResult", "run_trials", "collect", "certify_sharded", "certify_shard", "block_seed",
    "SweepSpec", "SweepSpecError", "load_sweep", "parse_sweep", "EXECUTORS", "ensure_ray", "trial_dir",
    "map_tasks", "BLOCK_SIZE", "SHARD_EXECUTORS", "ShardStore", "partial_folder", "is_done",
    "run_digest",
]
