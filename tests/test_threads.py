"""Thread and worker defaults (robvae.threads, issue 11). No timings here (benchmarks/ has them):
these check the decisions and that the OpenMP setting reaches torch before it loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from robvae import threads


def test_resolve_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads(None) == 3  # the user's setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(threads, "_PASSIVE", True)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.resolve_threads(None) == 4  # passive waiting in effect: one thread per core
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.resolve_threads(None) == threads.DEFAULT_THREADS == 1  # spinning threads: one
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(threads, "_PASSIVE", False)  # set only after torch loaded: one
    assert threads.resolve_threads(None) == 1
    assert threads.resolve_threads(3) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            threads.resolve_threads(bad)


def test_auto_executor(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    big, small = threads.AUTO_WORKERS_MIN_ROWS, threads.AUTO_WORKERS_MIN_ROWS - 1
    assert threads.auto_executor(big) == ("local", 4)
    assert threads.auto_executor(small) == ("serial", 1)
    assert threads.auto_executor(big, "auto", 3) == ("local", 3)
    assert threads.auto_executor(small, "serial") == ("serial", 4)  # explicit executors are kept
    assert threads.auto_executor(small, "local", 2) == ("local", 2)
    # no more workers than pieces of work, and none for one piece (a 64-input certify at a large
    # S started one worker at one thread: 25-45% slower than this process)
    assert threads.auto_executor(big, units=1) == ("serial", 1)
    assert threads.auto_executor(big, units=3) == ("local", 3)
    assert threads.auto_executor(big, units=9) == ("local", 4)
    assert threads.auto_executor(big, "auto", 2, units=1) == ("local", 2)  # asked for: kept
    monkeypatch.setattr(threads, "cores", lambda: 1)
    assert threads.auto_executor(big) == ("serial", 1)  # one core: no workers


def _probe(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env, timeout=120)
    return out.stdout.strip()


def test_cli_sets_passive_wait_before_torch_loads():
    """The console script imports robvae first, which sets the policy before torch loads."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import sys, os; import robvae.cli; print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'), "
            "robvae.threads._PASSIVE)")
    assert _probe(code, env) == "True PASSIVE True"  # set before torch loaded (True), which robvae.cli then loads
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice wins
    assert _probe(code, env).split()[1] == "ACTIVE"


def test_cli_threads_option_sets_torch_threads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    run = ("rc = main(['certify', '--threads', '3', '--help']); a = torch.get_num_threads(); "
           "main(['certify', '--help']); print(a, torch.get_num_threads())")
    # torch loaded before robvae: passive waiting came too late, so the default is one thread
    assert _probe("import torch; from robvae.cli import main; " + run, env).splitlines()[-1] == "3 1"
    # robvae first (as the console script): one thread per core, waiting passively
    out = _probe("import robvae; import torch; from robvae.cli import main; " + run, env).splitlines()[-1]
    assert out == f"3 {threads.cores()}"
