"""Sweeps and sharded certification on a real local Ray instance (no mocks).

Skipped only when Ray is not installed (``pip install 'robvae[ray]'``). The failure hook
Trial._fault is test-only (see tests/test_sweep.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'robvae[ray]')")

from robvae.sweep import Trial, certify_sharded, collect, run_trials  # noqa: E402
from robvae.sweep.worker import read_status  # noqa: E402

BASE = {"dataset": "digits", "epochs": 2, "n_train": 150, "batch_size": 64,
        "model": {"latent_dim": 2, "hidden": [16]}}


def tiny(seed: int, name: str = "", fault: str | None = None) -> Trial:
    return Trial({**BASE, "seed": seed}, None, name or f"seed={seed}", _fault=fault)


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_sweep_end_to_end_with_failures_kills_and_rerun(ray_instance, tmp_path):
    trials = [tiny(0), tiny(1), tiny(2, "boom", fault="raise"), tiny(3, "kill-once", fault="kill-once"),
              tiny(4, "kill", fault="kill")]
    res = run_trials(trials, tmp_path, executor="ray", progress=False, max_retries=1)
    assert ray.is_initialized()  # an instance the caller started is left running
    assert [r.id for r in res] == [t.id for t in trials]
    assert [r.status for r in res] == ["done", "done", "failed", "done", "failed"]
    assert "injected failure" in res[2].error and "Traceback" in read_status(res[2].dir)["traceback"]
    # the killed worker was retried by Ray and the retry resumed from the checkpoint
    assert read_status(res[3].dir)["attempts"] == 2 and (res[3].dir / ".fault-killed").is_file()
    # the worker that dies every time is marked, not lost
    assert "worker died" in res[4].error and read_status(res[4].dir)["attempts"] == 2
    # a Ray worker trains the same model as this process
    serial = run_trials(trials[:1], tmp_path / "serial", executor="serial", progress=False)[0]
    assert serial.summary["test_elbo"] == res[0].summary["test_elbo"]
    rows = collect(tmp_path)
    assert [r["status"] for r in rows] == [r.status for r in res]
    assert (tmp_path / "results.csv").read_text().count("\n") == 6

    done = [r for r in res if r.status == "done"]
    stamps = {r.id: (r.dir / "status.json").stat().st_mtime_ns for r in done}
    again = run_trials(trials, tmp_path, executor="ray", progress=False, max_retries=0)
    assert all(r.skipped for r in again if r.id in stamps)
    assert {r.id: (r.dir / "status.json").stat().st_mtime_ns for r in again if r.id in stamps} == stamps
    assert [read_status(r.dir)["attempts"] for r in again] == [1, 1, 2, 2, 3]  # only the failed reran


def test_sharded_certify_on_ray_equals_serial(ray_instance, tmp_path):
    from robvae.data import load_dataset
    from robvae.robustness import r_min
    from robvae.training import TrainConfig, train

    run = train(TrainConfig.from_dict({**BASE, "epochs": 1}), tmp_path / "run", progress=False)
    x = load_dataset("digits", "test").images[:10]
    r = float(r_min(run.model, x, 200, generator=torch.Generator().manual_seed(0)).median())
    kw = dict(seed=11, n_samples=200, alpha=0.01)
    serial = certify_sharded(tmp_path / "run", x, r, executor="serial", **kw).as_numpy()
    sharded = certify_sharded(tmp_path / "run", x, r, executor="ray", shard_size=3, **kw).as_numpy()
    assert 0 < serial["p"].min() < 1
    assert serial.keys() == sharded.keys()
    for k in serial:
        np.testing.assert_array_equal(serial[k], sharded[k], err_msg=k)


# --- found by the Ray audit (session 8); these start their own instances, so they come last ---

def test_a_task_error_reaches_the_caller_as_its_own_exception(ray_instance, tmp_path):
    """A task's error came back as Ray's wrapper, printed as `ray::certify_shard() (pid=...)` with
    ANSI colours and without the real message."""
    from robvae.errors import CheckpointError

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config"):
        certify_sharded(tmp_path / "empty", torch.rand(4, 1, 8, 8), 0.5, executor="ray", workers=1, n_samples=50)


def test_private_instances_ignore_ray_address_and_fit_the_tasks(monkeypatch):
    """Without --address, RAY_ADDRESS (or a `ray start` on the machine) made ray.init join that
    cluster and fail ("num_cpus ... must not be provided"); tasks asking for more CPUs than the
    private instance had waited forever."""
    from robvae.stats import median  # importable by Ray's workers
    from robvae.sweep import map_tasks

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    got = list(map_tasks(median, [([1, 2, 3],), ([4, 5, 9],)], executor="ray", workers=1, ray_options={"num_cpus": 3}))
    assert [e for _, _, e in got] == [None, None], got
    assert sorted((i, r) for i, r, _ in got) == [(0, 2.0), (1, 5.0)] and not ray.is_initialized()


def test_an_address_nobody_answers_is_a_one_line_error():
    """ray.init retried an unreachable HOST:PORT forever (killed by a 300 s timeout in the audit)."""
    import socket

    from robvae.errors import InputError
    from robvae.sweep.executors import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(InputError, match=f"no Ray cluster answers at --address 127.0.0.1:{port}"):
        ensure_ray(f"127.0.0.1:{port}", 1)
    assert not ray.is_initialized()
