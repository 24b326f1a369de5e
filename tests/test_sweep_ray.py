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
