"""Thread and worker defaults that hold up on a busy machine (issue 11, docs/PERFORMANCE.md).

torch's default (one OpenMP thread per core, spinning while it waits) collapses as soon as
another process competes for the cores: robvae's decoder calls are many short parallel regions,
and every region waits for its slowest thread, which the OS has just handed to someone else
(measured 10-17x slower than one thread). What robvae does instead:

- **passive OpenMP waiting** (``OMP_WAIT_POLICY=PASSIVE``): idle threads sleep instead of
  spinning on a core another process needs. OpenMP reads the variable once, when torch loads:
  :func:`prefer_passive_wait` sets it (unless the user did) and must run before ``import torch``;
  ``import robvae`` does this first thing (so the ``robvae`` command always has it). Worker
  processes inherit it.
- **one torch thread per core with passive waiting, else one thread** (:func:`resolve_threads`;
  ``--threads`` overrides): with passive waiting, torch's threads keep their share of a busy
  machine (the scheduler shares the cores per thread) without stalling; where torch was loaded
  before passive waiting could be set (or the user asked for active waiting), one thread, which
  cannot spin.
- **one process per core** (inputs sharded, one thread each) for Monte Carlo work large enough to
  pay for starting the workers (:func:`auto_workers`; ``--workers`` overrides). The results do
  not depend on it (``robvae.sweep.certify_sharded`` seeds each block of inputs itself).

This module imports torch only inside :func:`set_threads` (on purpose: importing it must not load
torch, or the OpenMP setting would come too late).
"""

from __future__ import annotations

import os
import sys

#: torch threads per process when passive waiting is not in effect (``--threads`` overrides).
DEFAULT_THREADS = 1
#: The most torch threads (``--threads``) and worker processes (``--workers``) robvae takes: far
#: beyond any machine's cores, and below where OpenMP fails to start its threads (100,000 ended
#: in an ImportError, "failed to map segment"; audit h80).
MAX_THREADS = 1024

#: Decoder rows (inputs x draws) of Monte Carlo work from which ``auto`` shards the inputs over
#: one worker process per core. Starting a worker (a fresh Python, torch, the run's weights) costs
#: seconds, and tens of seconds on a heavily loaded machine (measured: 64 x 5,000 = 0.3 M rows took
#: 39 s with two workers against 10-13 s in one process at load average 13). At 5 M rows (500
#: inputs x S = 10,000, load 3-4) two workers took 19.8 s against 31.7 s for one thread (issue 11).
#: On a quieter 2-core machine (AMD EPYC, 2026-11-30, docs/PERFORMANCE.md section 1) the crossover
#: against this process with two passive threads lies between 2.6 M rows (256 x 10,000: workers
#: 12.0 s, this process 10.9 s quiet; 17.3 against 16.3 s with a busy competitor) and 20 M rows
#: (2,000 x 10,000: workers 65.1 s, this process 78.8 s); 5 M rows is inside that bracket.
AUTO_WORKERS_MIN_ROWS = 5_000_000

#: Whether :func:`prefer_passive_wait` took effect (torch was not loaded yet).
_PASSIVE: bool | None = None


def cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it.

    Returns True when the setting can still take effect (torch not imported yet), False when
    torch is already loaded (then only child processes see it)."""
    global _PASSIVE
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _PASSIVE = bool(_PASSIVE) or "torch" not in sys.modules  # an earlier call before torch loaded counts
    return _PASSIVE


def passive_in_effect() -> bool:
    """Whether torch's OpenMP threads wait passively: the policy is PASSIVE and was set (by the
    user, or by :func:`prefer_passive_wait`) before torch loaded."""
    return bool(_PASSIVE) and os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def resolve_threads(threads: int | None) -> int:
    """The torch threads to use: ``threads`` if given (>= 1); else ``OMP_NUM_THREADS`` if the user
    set it; else one per core when passive waiting is in effect (:func:`passive_in_effect`), else
    :data:`DEFAULT_THREADS` (one)."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            return int(env)
        return cores() if passive_in_effect() else DEFAULT_THREADS
    if isinstance(threads, bool) or int(threads) != threads or not 1 <= int(threads) <= MAX_THREADS:
        raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
    return int(threads)


def set_threads(threads: int | None = None) -> int:
    """``torch.set_num_threads(resolve_threads(threads))``; returns the number set."""
    import torch  # here, not at the top: see the module docstring

    n = resolve_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def auto_workers(rows: int, workers: int | None = None) -> int:
    """Worker processes for Monte Carlo work of ``rows`` decoder rows (inputs x draws).

    ``workers`` given: that many. Otherwise one per core when the work reaches
    :data:`AUTO_WORKERS_MIN_ROWS`, else 1 (this process: starting workers would cost more than
    they save)."""
    if workers is not None:
        if not 1 <= int(workers) <= MAX_THREADS:
            raise ValueError(f"workers must be from 1 to {MAX_THREADS}, got {workers!r}")
        return int(workers)
    return cores() if rows >= AUTO_WORKERS_MIN_ROWS else 1


def auto_executor(rows: int, executor: str = "auto", workers: int | None = None,
                  device: str | None = None, units: int | None = None) -> tuple[str, int]:
    """(executor, workers) for ``executor="auto"``: "local" with one process per core for large
    work (:func:`auto_workers`), "serial" otherwise and on a GPU (``device`` other than the CPU:
    one process drives it; processes per core would each open a context on it); any other
    executor is kept as given (with ``workers`` or one per core). ``units``: how many pieces the
    work is split into (certify's blocks of inputs): "auto" starts no more workers than pieces,
    and none for one piece (a single worker at one thread was 25-45% slower than this process)."""
    if executor != "auto":
        return executor, auto_workers(AUTO_WORKERS_MIN_ROWS if workers is None else 0, workers)
    if device is not None and not str(device).startswith("cpu"):
        return "serial", 1
    w = auto_workers(rows, workers)
    if workers is None and units is not None:
        w = min(w, max(int(units), 1))
    return ("local", w) if w > 1 else ("serial", 1)


__all__ = ["AUTO_WORKERS_MIN_ROWS", "DEFAULT_THREADS", "auto_executor", "auto_workers", "cores",
           "passive_in_effect", "prefer_passive_wait", "resolve_threads", "set_threads"]
