"""What runs inside a worker: one trial (train, then evaluate) into its own folder.

A trial folder ``<out>/trials/<id>/`` holds
- ``trial.json``   the trial's config (written by the driver before the trial is submitted);
- ``run/``         the training run folder (robvae.training.train; resumes from its checkpoint);
- ``eval/``        what robvae.evaluation.evaluate writes (per_input.csv, summary.json, ...);
- ``status.json``  status ("queued", "running", "done", "failed"), error (with traceback),
                   attempts (worker starts so far, across reruns), wall time, host, pid, summary.
Every file is written atomically (robvae.io), so a killed worker never leaves a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from ..errors import RobvaeError
from ..evaluation import evaluate, load_result
from ..fileio import dumps_json, read_json_dict, run_digest, write_json
from ..report.figures import save_reconstructions
from ..training import RECON_FILE, train
from .spec import Trial

TRIAL_FILE = "trial.json"
STATUS_FILE = "status.json"
RUN_DIR = "run"
EVAL_DIR = "eval"
EVAL_SUMMARY_FILE = "summary.json"
_FAULT_MARKER = ".fault-killed"


def read_status(trial_dir: str | os.PathLike) -> dict[str, Any]:
    """The trial's status.json, or {} when it is missing or unreadable."""
    return read_json_dict(Path(trial_dir) / STATUS_FILE)


def update_status(trial_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json (atomic rewrite) and return the new status."""
    st = read_status(trial_dir)
    st.update(fields)
    write_json(Path(trial_dir) / STATUS_FILE, st)
    return st


def outputs_complete(trial_dir: str | os.PathLike, with_eval: bool) -> bool:
    """True when the trial's final outputs exist (weights, and an evaluation that reads back whole
    if it has one: a damaged evaluation file makes the trial run again, which recomputes it) and
    its run folder still holds the model the trial finished with (status.json's ``run_digest``;
    a run retrained in place made the sweep keep the old model's row, audit h73)."""
    trial_dir = Path(trial_dir)
    if not (trial_dir / RUN_DIR / "model.safetensors").is_file():
        return False
    done_with = read_status(trial_dir).get("run_digest")
    if done_with is not None and done_with != run_digest(trial_dir / RUN_DIR):
        return False
    if not with_eval:
        return True
    if not (trial_dir / EVAL_DIR / EVAL_SUMMARY_FILE).is_file():
        return False
    try:
        load_result(trial_dir / EVAL_DIR)
    except (RobvaeError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return False  # damaged in any way (a cell cut short, a file of another version, JSON of another shape)
    return True


def _resolve_data_dir(data_dir: str | None, cwd: str | None) -> str | None:
    """``data_dir`` with ~ expanded and, when relative, taken against ``cwd`` (if given)."""
    return None if data_dir is None else os.path.join(cwd or "", os.path.expanduser(data_dir))


def _fault_callback(fault: str | None, trial_dir: Path):
    """The test-only fault hook (see Trial._fault), run after each training epoch."""
    if fault not in ("raise", "kill-once"):
        return None

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        if fault == "raise":
            raise RuntimeError(f"injected failure (test-only _fault='raise') after epoch {epoch}")
        marker = trial_dir / _FAULT_MARKER
        if fault == "kill-once" and not marker.exists():
            marker.write_text(f"killed after epoch {epoch}\n")
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(n: int | None) -> None:
    """Use ``n`` threads in this worker: torch, and the BLAS / OpenMP pools of numpy and scipy."""
    if not n:
        return
    torch.set_num_threads(int(n))
    for var in _THREAD_ENV:  # for libraries loaded later in this process
        os.environ[var] = str(int(n))
    threadpool_limits(int(n))  # the ones already loaded (threadpoolctl comes with scikit-learn)


def run_trial(trial_dict: dict[str, Any], trial_dir: str, *, torch_threads: int | None = 1,
              cwd: str | None = None) -> dict[str, Any]:
    """Run one trial in this process; never raises for a failing trial (the error is recorded).

    ``trial_dict``: Trial.to_dict(). ``torch_threads``: threads for torch and BLAS in this worker
    (None leaves the defaults). ``cwd``: the driver's working folder, against which a relative
    ``data_dir`` is resolved. Returns the final status dict (also in status.json).
    """
    trial_dir_p = Path(trial_dir)
    trial_dir_p.mkdir(parents=True, exist_ok=True)
    limit_threads(torch_threads)
    prev = read_status(trial_dir_p)
    t0 = time.time()
    update_status(trial_dir_p, id=trial_dict.get("id"), name=trial_dict.get("name", ""), status="running",
                  error=None, attempts=int(prev.get("attempts", 0)) + 1, host=socket.gethostname(),
                  pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"), finished=None,
                  summary=None, run_digest=None)  # a rerun's numbers replace the last run's, or none stay
    try:
        trial = Trial.from_dict(trial_dict)
        if trial._fault == "kill":  # test-only: this worker dies on every attempt, before training
            os.kill(os.getpid(), signal.SIGKILL)
        config = trial.train
        root = trial.data_root or cwd  # a relative data_dir: the trial's root (a protocol's: the repository)
        config.data_dir = _resolve_data_dir(config.data_dir, root)
        if trial.evaluation is not None and trial.evaluation.data_dir is not None:  # as the driver checked it
            trial.evaluation = dataclasses.replace(trial.evaluation,
                                                   data_dir=_resolve_data_dir(trial.evaluation.data_dir, root))
        t_train = time.time()
        run = train(config, trial_dir_p / RUN_DIR, progress=False,
                    callback=_fault_callback(trial._fault, trial_dir_p))
        if not (trial_dir_p / RUN_DIR / RECON_FILE).is_file():
            save_reconstructions(run)
        train_s = time.time() - t_train
        summary: dict[str, Any] = {}
        if run.metrics:
            summary["test_elbo"] = float(run.metrics[-1]["test_elbo"])
        eval_s = 0.0
        if trial.evaluation is not None:
            t_eval = time.time()
            result = evaluate(run, trial.evaluation, out_dir=trial_dir_p / EVAL_DIR, progress=False)
            eval_s = time.time() - t_eval
            # as plain JSON (as status.json stores it); evaluate wrote summary.json itself
            summary.update(json.loads(dumps_json(result.summary.to_dict())))
        return update_status(trial_dir_p, status="done", error=None, wall_s=time.time() - t0,
                             train_s=train_s, eval_s=eval_s, summary=summary,
                             run_digest=run_digest(trial_dir_p / RUN_DIR),  # what the summary describes
                             finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    except Exception as e:  # noqa: BLE001 - a failing trial is recorded, never fatal to the sweep
        first = str(e).splitlines()[0] if str(e) else ""
        return update_status(trial_dir_p, status="failed", error=f"{type(e).__name__}: {first}",
                             traceback=traceback.format_exc(), wall_s=time.time() - t0,
                             finished=time.strftime("%Y-%m-%dT%H:%M:%S"))

