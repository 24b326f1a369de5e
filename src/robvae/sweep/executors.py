"""One executor abstraction: :func:`map_tasks` runs a function over many argument tuples in this
process ("serial"), in local worker processes ("local") or as Ray tasks ("ray"), yielding each
result as it finishes. Sharded certification (:mod:`robvae.sweep.shard`) and every path of the
sweeps run on it; ``run_trials``'s local path adds, pool by pool (``map_tasks`` reports a pool
broken by a dying worker and the workers' exit codes), the crash recovery a long training trial
needs (below).

Running trials: ``run_trials`` with a local process pool, Ray tasks, or in-process.

Executors
- "local":  a ``concurrent.futures.ProcessPoolExecutor`` (spawn context) of ``workers``
            processes on this machine; each trial runs in a worker process, so a crashing trial
            cannot kill the sweep.
- "ray":    one Ray remote task per trial (``num_cpus=cpus_per_trial``, ``max_retries``); on a
            local Ray instance (``ray.init(num_cpus=workers)``) or on a cluster (``address``).
- "serial": in this process, one trial after another (debugging; a crash ends the sweep).

Retries. A trial that raises is recorded as failed at once (the error is deterministic; rerun the
sweep to retry it). A trial whose worker process dies (killed, out of memory) is retried up to
``max_retries`` times: by Ray itself, or by the local executor, which restarts its pool (a
``ProcessPoolExecutor`` is unusable once a worker dies) and resubmits the unfinished trials;
a trial that was only a bystander (its worker terminated by the pool, not by its own death)
does not use up a retry. A trial that keeps dying is marked failed ("worker died ..."), never
lost. An interrupted sweep (Ctrl-C) marks its unfinished trials "interrupted"; a rerun of the
same sweep skips the trials that are done and whose outputs exist and reruns every other one
(training resumes from its checkpoint).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.std import tqdm as tqdm_base

from ..errors import InputError, RobvaeError
from ..fileio import read_json_dict, write_json
from .results import collect
from .spec import Trial
from .worker import STATUS_FILE, TRIAL_FILE, limit_threads, outputs_complete, read_status, run_trial, update_status

EXECUTORS = ("local", "ray", "serial")
SWEEP_FILE = "sweep.json"
_POLL_S = 0.5


@dataclass
class TrialResult:
    """The outcome of one trial: status "done" or "failed" ("interrupted" only after Ctrl-C)."""

    id: str
    name: str
    status: str
    error: str | None
    dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # done in an earlier run; nothing was recomputed


def check_options(executor: str, choices: Sequence[str], **minimum: tuple[Any, int]) -> None:
    """ValueError unless ``executor`` is one of ``choices`` and each ``NAME=(value, least)`` has
    ``int(value) >= least`` (checked in the order given); for "ray", InputError unless Ray imports
    (before any work or progress bar starts)."""
    if executor not in choices:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(choices)}")
    if executor == "ray":
        _import_ray()
    for name, (value, least) in minimum.items():
        if int(value) < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")


@contextmanager
def using_torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None or 0: unchanged), then restore the number.
    Only torch's own setting: the BLAS pools and the environment are left alone."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trial_dir(out_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(out_dir) / "trials" / trial_id


def is_done(out_dir: str | os.PathLike, trial: Trial) -> bool:
    """Whether a sweep run would skip ``trial``: status done and its outputs whole."""
    tdir = trial_dir(out_dir, trial.id)
    return read_status(tdir).get("status") == "done" and outputs_complete(tdir, trial.evaluation is not None)


def _result(trial: Trial, tdir: Path, skipped: bool = False) -> TrialResult:
    st = read_status(tdir)
    return TrialResult(id=trial.id, name=trial.name, status=st.get("status", "failed"), error=st.get("error"),
                       dir=tdir, summary=dict(st.get("summary") or {}), skipped=skipped)


class _Progress:
    """A tqdm bar of finished trials with done / running / failed / queued counts."""

    def __init__(self, total: int, done: int, enabled: bool, executor: str):
        self.done, self.failed = done, 0
        self.bar = tqdm(total=total, initial=done, desc=f"sweep ({executor})", unit="trial", disable=not enabled)
        self.enabled = enabled

    def finished(self, status: str) -> None:
        if status == "done":
            self.done += 1
        else:
            self.failed += 1
        self.bar.update(1)

    def refresh(self, in_flight: Sequence[Path]) -> None:
        if not self.enabled:
            return
        running = sum(1 for d in in_flight if read_status(d).get("status") == "running")
        counts = (self.done, running, self.failed, len(in_flight) - running)
        if counts != getattr(self, "_last", None):  # redraw only when a count changes
            self._last = counts
            self.bar.set_postfix(done=counts[0], running=counts[1], failed=counts[2], queued=counts[3])

    def close(self) -> None:
        if self.enabled:
            self.bar.set_postfix(done=self.done, running=0, failed=self.failed, queued=0)
        self.bar.close()


def run_trials(
    trials: Sequence[Trial],
    out_dir: str | os.PathLike,
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    max_retries: int = 1,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    torch_threads: int | None = None,
) -> list[TrialResult]:
    """Run trials (train, then evaluate) into ``<out_dir>/trials/<id>/``; returns results in order.

    executor: "local" (``workers`` processes), "ray" (one task per trial; ``address`` "auto" or
    HOST:PORT joins a running cluster, else a local instance with ``workers`` CPUs is started, or
    the already initialised one is used), or "serial" (in this process). max_retries: reruns of a
    trial whose worker process died. cpus_per_trial / gpus_per_trial: Ray resources per task.
    torch_threads: torch threads in each worker (default: cpus_per_trial rounded, at least 1) or,
    with "serial", in this process (default: its current number, e.g. ``--threads``).
    Trials already done (status done, outputs present) are skipped. A failing trial is recorded
    (status.json: error and traceback) and does not stop the others. Writes ``sweep.json`` (the
    trial ids in order) and ``results.csv`` / ``results.json`` (see :func:`collect`).
    """
    check_options(executor, EXECUTORS, workers=(workers, 1), max_retries=(max_retries, 0))
    trials = [t if isinstance(t, Trial) else Trial.from_dict(t) for t in trials]
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch_threads if torch_threads is not None else max(1, int(round(cpus_per_trial)))

    unique: dict[str, Trial] = {}
    for t in trials:
        unique.setdefault(t.id, t)
    todo: list[Trial] = []
    skipped: set[str] = set()
    for tid, t in unique.items():
        tdir = trial_dir(out, tid)
        recorded = read_json_dict(tdir / TRIAL_FILE)
        # missing or damaged (the table reads it), or the same trial under a new name (grid keys reordered)
        if recorded.get("id") != tid or recorded.get("name") != t.name:
            write_json(tdir / TRIAL_FILE, t.to_dict())
        if is_done(out, t):
            skipped.add(tid)
            if read_status(tdir).get("name") != t.name:
                update_status(tdir, name=t.name)
        else:
            update_status(tdir, id=tid, name=t.name, status="queued", error=None)
            todo.append(t)
    write_json(out / SWEEP_FILE, {"trials": [t.id for t in trials], "names": [t.name for t in trials],
                                  "executor": executor, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})

    bar = _Progress(len(unique), len(skipped), progress, executor)
    try:
        if todo:
            if executor == "serial":
                # this process's threads (robvae's default or --threads) unless torch_threads says;
                # cpus_per_trial sizes Ray tasks and workers, not this process
                with using_torch_threads(torch_threads):  # torch only: BLAS pools and environment left alone
                    _run_once(todo, out, bar, "serial", None)
            elif executor == "local":
                _run_local(todo, out, bar, int(workers), int(max_retries), threads)
            else:
                _run_once(todo, out, bar, "ray", threads, workers=int(workers), address=address,
                          ray_options={"num_cpus": cpus_per_trial, "num_gpus": gpus_per_trial,
                                       "max_retries": int(max_retries), "retry_exceptions": False})
    except BaseException:
        for t in todo:  # whatever did not finish is marked, and rerun next time
            if read_status(trial_dir(out, t.id)).get("status") in ("queued", "running"):
                update_status(trial_dir(out, t.id), status="interrupted", error="the sweep was interrupted")
        raise
    finally:
        bar.close()
        collect(out)
    return [_result(t, trial_dir(out, t.id), skipped=t.id in skipped) for t in trials]


def _mark_dead(tdir: Path, detail: str) -> None:
    n = int(read_status(tdir).get("attempts", 0))
    when = "before the trial started (no attempt recorded)" if n == 0 else f"(attempts: {n})"
    update_status(tdir, status="failed", error=f"worker died {detail} {when}", traceback=None)


def _map_trials(batch: list[Trial], out: Path, bar: _Progress, executor: str, threads: int | None,
                **options: Any) -> Iterator[tuple[int, Any, BaseException | None]]:
    """:func:`map_tasks` of :func:`run_trial` over the trials, refreshing the bar while it waits."""
    tasks = [(t.to_dict(), str(trial_dir(out, t.id))) for t in batch]
    poll = lambda idx: bar.refresh([trial_dir(out, batch[i].id) for i in idx])  # noqa: E731
    return map_tasks(run_trial, tasks, executor=executor, kwargs={"torch_threads": threads, "cwd": os.getcwd()},
                     poll=poll, **options)


# ---------------------------------------------------------------------------------------------
# serial and Ray


def _run_once(todo: list[Trial], out: Path, bar: _Progress, executor: str, threads: int | None,
              **options: Any) -> None:
    """The executor "serial" (an error outside a trial, which run_trial records, ends the sweep) or
    "ray" (Ray reruns a dead worker's trial up to max_retries times, then it is marked failed)."""
    for i, st, err in _map_trials(todo, out, bar, executor, threads, **options):
        tdir = trial_dir(out, todo[i].id)
        if err is not None and executor == "serial":
            raise err
        if err is not None:  # the worker died more than max_retries times, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            _mark_dead(tdir, f"({type(err).__name__}: {first})")
            bar.finished("failed")
            continue
        if st.get("status") != read_status(tdir).get("status"):
            # Ray: outputs on storage the driver does not see: keep the worker's record
            write_json(tdir / STATUS_FILE, st)
        bar.finished(st["status"])


# ---------------------------------------------------------------------------------------------
# local process pool


def _run_local(todo: list[Trial], out: Path, bar: _Progress, workers: int, max_retries: int,
               threads: int | None) -> None:
    """:func:`map_tasks` "local", one pool at a time: a pool that breaks (a worker died) fails its
    unfinished tasks with BrokenProcessPool; they go to a fresh pool, within ``max_retries``."""
    starts = {t.id: int(read_status(trial_dir(out, t.id)).get("attempts", 0)) for t in todo}
    pending = list(todo)
    stalled = 0  # consecutive pools that broke before any trial started (workers cannot start)
    while pending:
        batch, pending = pending, []
        broken: list[Trial] = []
        progressed = False
        exitcodes: dict[int, int | None] = {}  # filled when the pool has shut down
        with closing(_map_trials(batch, out, bar, "local", threads, workers=workers, initializer=limit_threads,
                                 initargs=(threads,), exitcodes=exitcodes)) as results:
            for i, st, err in results:
                t = batch[i]
                if err is None:
                    bar.finished(st["status"])
                    progressed = True
                elif isinstance(err, BrokenProcessPool):
                    broken.append(t)
                else:  # the task could not even start (e.g. pickling)
                    update_status(trial_dir(out, t.id), status="failed", error=f"{type(err).__name__}: {err}")
                    bar.finished("failed")
        # which worker died by itself, and which were terminated by the broken pool (SIGTERM)?
        culprit_known = any(c not in (None, 0, -signal.SIGTERM) for c in exitcodes.values())
        started = [t for t in broken if read_status(trial_dir(out, t.id)).get("status") in ("running", "done")]
        stalled = 0 if (progressed or started) else stalled + 1
        if stalled >= 2:  # the pool's processes die before running anything: give up, do not spin
            codes = sorted({c for c in exitcodes.values() if c not in (None, 0)})
            for t in broken:
                update_status(trial_dir(out, t.id), status="failed", traceback=None,
                              error=f"worker processes died before starting the trial (exit codes {codes}); "
                                    "see the messages above (e.g. spawn needs an importable __main__)")
                bar.finished("failed")
            return
        for t in broken:
            tdir = trial_dir(out, t.id)
            st = read_status(tdir)
            if st.get("status") == "done":  # finished just before its worker went down
                bar.finished("done")
                continue
            if st.get("status") != "running":  # never started: resubmit
                pending.append(t)
                continue
            code = exitcodes.get(st.get("pid"))
            if culprit_known and code == -signal.SIGTERM:  # a bystander, terminated by the pool
                starts[t.id] += 1  # this start does not use up a retry
            tries = int(st.get("attempts", 0)) - starts[t.id]
            if tries > max_retries:
                how = f"(exit code {code})" if code is not None else "(the process pool broke)"
                _mark_dead(tdir, how)
                bar.finished("failed")
            else:
                update_status(tdir, status="queued")  # resubmitted to the next pool
                pending.append(t)


# ---------------------------------------------------------------------------------------------
# the executor abstraction


def map_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    executor: str = "serial",
    workers: int = 1,
    address: str | None = None,
    kwargs: dict[str, Any] | None = None,
    ray_options: dict[str, Any] | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    poll: Callable[[list[int]], Any] | None = None,
    exitcodes: dict[int, int | None] | None = None,
) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Run ``fn(*task, **kwargs)`` for every task; yield ``(index, result, error)`` as each finishes.

    executor "serial": in this process, in order. "local": ``workers`` spawned processes
    (``initializer(*initargs)`` in each). "ray": one Ray task per item (``ray_options`` such as
    num_cpus / max_retries; ``address`` "auto" or HOST:PORT joins a cluster, else a local
    instance with ``workers`` CPUs, or the one already running). ``error`` is the exception a
    task raised (a Ray task's RayError), with ``result`` None: the caller decides whether it is
    fatal. ``poll(pending indices)`` runs while waiting (e.g. to refresh a progress bar). Leaving
    the loop early (an exception, Ctrl-C) cancels the unfinished tasks. ``exitcodes`` ("local"):
    filled, once the pool has shut down, with each worker process's exit code by pid (a task of a
    pool whose worker died fails with BrokenProcessPool; the codes tell the worker that died from
    those the broken pool terminated, -SIGTERM). ``fn`` and the tasks
    must be picklable for "local" and "ray". The results do not depend on the executor as long
    as ``fn`` seeds itself from its arguments.
    """
    check_options(executor, EXECUTORS)
    kwargs = kwargs or {}
    poll = poll or (lambda pending: None)
    if not tasks:
        return
    if executor == "serial":
        if initializer is not None:
            initializer(*initargs)
        for i, t in enumerate(tasks):
            poll(list(range(i, len(tasks))))
            yield i, *_outcome(lambda: fn(*t, **kwargs))
    elif executor == "local":
        pool = ProcessPoolExecutor(max_workers=min(int(workers), len(tasks)), mp_context=mp.get_context("spawn"),
                                   initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))
        futs = {pool.submit(fn, *t, **kwargs): i for i, t in enumerate(tasks)}
        remaining = set(futs)
        try:
            while remaining:
                poll(sorted(futs[f] for f in remaining))
                done, remaining = wait(remaining, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futs[f], *_outcome(f.result)
        finally:
            procs = list((getattr(pool, "_processes", None) or {}).values())
            if remaining:
                for proc in procs:
                    proc.terminate()
            pool.shutdown(wait=not remaining, cancel_futures=True)
            if exitcodes is not None:
                exitcodes.update({proc.pid: proc.exitcode for proc in procs})
    else:
        ray = _import_ray()
        started = ensure_ray(address, int(workers), float((ray_options or {}).get("num_cpus") or 1))
        refs: dict[Any, int] = {}
        try:
            task = ray.remote(fn).options(**(ray_options or {}))
            refs = {task.remote(*t, **kwargs): i for i, t in enumerate(tasks)}
            while refs:
                poll(sorted(refs.values()))
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_POLL_S)
                for ref in ready:
                    result, err = _outcome(lambda: ray.get(ref), ray.exceptions.RayError)
                    yield refs.pop(ref), result, None if err is None else ray_error(err)
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


#: how often a local worker checks that the process that started it is still alive (seconds)
PARENT_CHECK_S = 1.0


def _start_worker(parent: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    """Each local worker's first step: a daemon thread that ends the worker once its parent is
    gone (killed with SIGKILL, which runs no clean-up: a ProcessPoolExecutor's workers would finish
    their task and then wait for the next one forever, beside the workers of a rerun); SIGINT
    ignored (the parent handles Ctrl-C and terminates the pool); then the caller's ``initializer``. Whatever the worker had not saved atomically is redone by the rerun."""
    threading.Thread(target=_exit_with_parent, args=(parent,), name="robvae-parent-watch", daemon=True).start()
    # Ctrl-C reaches the whole process group: the parent handles it (marks what is unfinished and
    # terminates the pool); a worker would only print a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore, which a worker terminated on Ctrl-C never
    # releases ("resource_tracker: There appear to be N leaked semaphore objects" after the
    # command's own message); workers draw no bars of their own, so a thread lock is enough
    tqdm_base.set_lock(threading.RLock())
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _outcome(get: Callable[[], Any], errors: type[BaseException] = Exception) -> tuple[Any, BaseException | None]:
    """``(get(), None)``, or ``(None, error)`` when it raises one of ``errors`` (a task's error is
    handed to the caller of :func:`map_tasks`, which decides whether it is fatal)."""
    try:
        return get(), None
    except errors as e:  # noqa: BLE001
        return None, e


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("the ray executor needs Ray: pip install 'robvae[ray]' (or pip install 'ray[default]')") from None
    return ray


#: seconds to wait for a TCP answer from ``--address HOST:PORT`` before calling it unreachable
#: (ray.init itself retries an unreachable address forever)
RAY_CONNECT_TIMEOUT_S = 10.0


def ensure_ray(address: str | None, workers: int, task_cpus: float = 1.0) -> bool:
    """Connect to Ray unless already connected; returns True when this call connected (or started) it.

    address "auto" or HOST:PORT joins a running cluster (a HOST:PORT that does not answer is an
    InputError, not an endless retry); None starts a private local instance with ``workers``
    CPUs (at least ``task_cpus``, the CPUs one task asks for), even where ``RAY_ADDRESS`` or a
    ``ray start`` on this machine names a cluster. InputError when the cluster has fewer CPUs than
    one task asks for (its tasks would wait forever).
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address:
        if address != "auto":
            _probe(address)
        ray.init(address=address, log_to_driver=False)
        have = float(ray.cluster_resources().get("CPU", 0))
        if have < task_cpus:  # an autoscaling cluster (head with --num-cpus=0) may still grow: warn only
            warnings.warn(f"each task asks for {task_cpus:g} CPUs and the Ray cluster at {address} has {have:g} now: "
                          "its tasks wait until it has more (lower --cpus-per-trial / --threads, or add nodes)",
                          RuntimeWarning, stacklevel=2)
    else:  # sized for one task at least: a private instance cannot grow
        ray.init(address="local", num_cpus=max(int(workers), math.ceil(task_cpus)), include_dashboard=False,
                 log_to_driver=False)
    return True


def _probe(address: str) -> None:
    """InputError unless something answers at HOST:PORT (one TCP connection)."""
    if "://" in address:
        return  # ray://HOST:PORT (Ray Client) or another scheme: left to ray.init
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: left to ray.init
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(f"no Ray cluster answers at --address {address} ({e.strerror or e}): start one there "
                         "with `ray start --head --port PORT`, or check the address") from None


def ray_error(err: BaseException) -> BaseException:
    """The error a Ray task's failure stands for: the task's own exception (a RayTaskError wraps
    it, with ANSI colours in its message), or a one-line RobvaeError for Ray's own failures (a
    worker or node that died after Ray's retries, out of memory, a cancelled task, a runtime
    environment that could not be set up)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, (KeyboardInterrupt, SystemExit)):
        return cause
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return RobvaeError(f"a Ray task failed ({type(err).__name__}: {first[0] if first else 'no detail'}); "
                       "rerun to resume")
