"""Sweeps without Ray: trial ids, the YAML grid and its errors, the local and serial executors
(skip on rerun, a raising trial, a killed worker), collect, and sharded certify (serial vs local).

The failure hook Trial._fault is test-only: "raise" raises after the first epoch, "kill-once"
SIGKILLs the worker after the first epoch on the first attempt, "kill" SIGKILLs it every attempt.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robvae.cli import main
from robvae.sweep import SweepSpecError, Trial, certify_sharded, collect, parse_sweep, run_trials
from robvae.sweep.worker import read_status
from robvae.training import TrainConfig

BASE = {"dataset": "digits", "epochs": 2, "n_train": 150, "batch_size": 64,
        "model": {"latent_dim": 2, "hidden": [16]}}


def tiny(seed: int = 0, name: str = "", fault: str | None = None, **over) -> Trial:
    return Trial({**BASE, "seed": seed, **over}, None, name or f"seed={seed}", _fault=fault)


# ---- identity -------------------------------------------------------------------------------


def test_trial_id_is_a_stable_hash_of_the_config_without_device_or_name():
    a = tiny(0, "a")
    assert len(a.id) == 16 and int(a.id, 16) >= 0
    assert tiny(0, "b").id == a.id                       # the name is a label
    assert tiny(0, device="cuda").id == a.id            # the device is placement
    assert tiny(1).id != a.id
    assert tiny(0, objective={"name": "beta-vae", "beta": 2.0}).id != a.id
    assert tiny(0, fault="raise").id != a.id
    # a TrainConfig and its dict give the same trial; model.input_shape is resolved from the data set
    assert Trial(TrainConfig.from_dict({**BASE, "seed": 0})).id == a.id
    assert Trial({**BASE, "seed": 0, "model": {**BASE["model"], "input_shape": [1, 8, 8]}}).id == a.id
    assert Trial.from_dict(json.loads(json.dumps(a.to_dict()))).id == a.id


# ---- sweep files ----------------------------------------------------------------------------


def test_grid_expands_to_the_product_in_order():
    spec = parse_sweep({"base": BASE, "grid": {"objective.beta": [1, 4], "seed": [0, 1, 2]}, "out": "x",
                        "evaluation": None})
    assert len(spec.trials) == 6 and spec.out == "x"
    assert [t.train.objective.beta for t in spec.trials] == [1, 1, 1, 4, 4, 4]
    assert [t.train.seed for t in spec.trials] == [0, 1, 2, 0, 1, 2]
    assert spec.trials[4].name == "objective.beta=4,seed=1"
    assert len({t.id for t in spec.trials}) == 6


@pytest.mark.parametrize("doc, message", [
    ({"base": BASE, "grid": {"objective.betta": [1]}}, "grid.objective.betta: unknown field 'betta'"),
    ({"base": BASE, "grid": {"seed": 3}}, "grid.seed: expected a list"),
    ({"base": BASE, "grid": {"seed": []}}, "grid.seed: empty list"),
    ({"base": BASE, "grid": {"model": [1]}}, "grid.model: is a group of fields"),
    ({"base": {**BASE, "epochs_": 3}}, "base.epochs_: unknown field"),
    ({"base": {**BASE, "model": {"latnet_dim": 3}}}, "base.model.latnet_dim: unknown field"),
    ({"base": BASE, "grids": {}}, "grids: unknown key"),
    ({"base": BASE, "grid": {"objective.beta": [1, -1]}}, "grid point objective.beta=-1: beta must be >= 0"),
    ({"base": BASE, "grid": {"seed": [1, 1]}}, "give the same trial"),
    ({"base": BASE, "grid": {"evaluation.n": [1, 2]}}, "grid.evaluation.n: varies an evaluation field"),
    ([1, 2], "expected a mapping"),
])
def test_sweep_file_errors_name_the_bad_key(doc, message):
    with pytest.raises(SweepSpecError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_sweep(doc)


def test_grid_values_equal_as_numbers_are_one_trial():
    """Found by audit h60: objective.beta: [1, 1.0] made two trials of one config (the ids hash
    the JSON, where 1 and 1.0 differ; they are kept so that sweep folders resume)."""
    with pytest.raises(SweepSpecError, match=r"^grid points objective\.beta=1 and objective\.beta=1\.0 give the same "
                                             r"trial \(a duplicate value\?\)$"):
        parse_sweep({"base": BASE, "grid": {"objective.beta": [1, 1.0]}})
    with pytest.raises(SweepSpecError, match=r"grid points seed=0,evaluation\.alpha=0\.05 and "
                                             r"seed=0,evaluation\.alpha=0\.0500"):
        parse_sweep({"base": BASE, "evaluation": {"n": 2}, "grid": {"seed": [0], "evaluation.alpha": [0.05, "0.0500"]}})
    # ids as before: 1 and 1.0 alone are still the trials they were
    assert parse_sweep({"base": BASE, "grid": {"objective.beta": [1, 2.0]}}).trials[0].id == \
        Trial({**BASE, "objective": {"beta": 1}}).id


def test_float_fields_accept_numeric_strings_as_yaml_reads_1e_3():
    """Found by audit h60: PyYAML reads lr: 1e-3 (no dot) as the string '1e-3'; float fields of
    sweep and zoo files (both build Trials) take it as the number, with the id of 0.001."""
    spec = parse_sweep({"base": {**BASE, "lr": "1e-3", "objective": {"name": "beta-vae", "beta": "4"}},
                        "evaluation": {"r": "2.5E-1"}})
    t = spec.trials[0]
    assert t.train.lr == 0.001 and t.train.objective.beta == 4.0 and t.evaluation.r == 0.25
    assert t.id == Trial({**BASE, "lr": 0.001, "objective": {"name": "beta-vae", "beta": 4.0}}, {"r": 0.25}).id
    with pytest.raises(SweepSpecError, match="grid points lr=0.001 and lr=1e-3 give the same trial"):
        parse_sweep({"base": BASE, "grid": {"lr": [0.001, "1e-3"]}})
    for bad in ("fast", "nan", "1e"):  # not a decimal number: the config's own message
        with pytest.raises(SweepSpecError, match=f"base: config field lr: expected a number, got '{bad}'"):
            parse_sweep({"base": {**BASE, "lr": bad}})
    with pytest.raises(SweepSpecError, match="config field epochs: expected an integer"):
        parse_sweep({"base": {**BASE, "epochs": "2"}})  # integers are not converted


@pytest.mark.parametrize("doc, message", [
    ({"base": BASE, "evaluation": {"n": -3}}, "evaluation.n must be an integer >= 1, got -3"),
    ({"base": BASE, "evaluation": {"alpha": 2}}, "evaluation.alpha must be a level in (0, 0.5) (confidence 1 - alpha above one half), got 2"),
    ({"base": BASE, "evaluation": {"n": "many"}}, "evaluation field n: expected an integer, got 'many'"),
    ({"base": BASE, "evaluation": {"n": 5}, "grid": {"evaluation.n": [1, -2]}},
     "grid point evaluation.n=-2: evaluation.n must be an integer >= 1, got -2"),
    ({"base": BASE, "evaluation": {"device": "tpu"}},
     "evaluation.device: 'tpu' is not a torch device robvae runs on"),
    ({"base": {**BASE, "device": "tpu"}}, "base: device: 'tpu' is not a torch device robvae runs on"),
    ({"base": {**BASE, "model": {"hidden": [-5]}}}, "base: hidden widths must be >= 1, got [-5]"),
    ({"base": BASE, "grid": {"model.conv_hidden": [0]}},
     "grid point model.conv_hidden=0: conv_hidden must be >= 1, got 0"),
])
def test_evaluation_devices_and_widths_are_checked_up_front_and_named(doc, message):
    """Found by audit h60: evaluation errors were prefixed "base:", and a device torch does not
    know or a negative width passed --dry-run to fail inside every trial with a traceback."""
    with pytest.raises(SweepSpecError, match="^" + message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        parse_sweep(doc)


def test_cli_dry_run_refuses_a_bad_device_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nbase: {dataset: digits, epochs: 1, device: tpu}\n")
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "robvae: error: base: device: 'tpu' is not a torch device robvae runs on (cpu, cuda, cuda:1, mps)"


def test_cli_reports_a_bad_sweep_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {dataset: digits}\ngrid: {objective.beta: 2}\nout: x\n")
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "grid.objective.beta: expected a list" in err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2


def test_cli_sweep_checks_the_data_before_any_trial_runs(tmp_path, capsys, monkeypatch):
    """A relative data_dir is read from the current folder: from the wrong folder, --dry-run and the
    run itself say so in one line before any worker starts (nothing is written)."""
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(b"")  # found by name; their contents are checked on load
    spec = tmp_path / "s.yaml"
    spec.write_text(f"out: {tmp_path / 'out'}\nbase: {{dataset: mnist, data_dir: data/mnist, epochs: 1}}\n"
                    "grid: {seed: [0, 1]}\nevaluation: null\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["sweep", str(spec), "--dry-run"]) == 1
    o = capsys.readouterr()
    assert "2 trials" in o.out
    err = o.err.strip()
    assert err.count("\n") == 0 and "folder data/mnist does not exist" in err and "and 1 more" in err
    assert "current folder" in err and str(elsewhere) in err
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 2
    assert "folder data/mnist does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.chdir(tmp_path)  # the folder the path is relative to: found
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "robvae: error" not in capsys.readouterr().err


def test_cli_sweep_runs_the_grid_and_writes_the_table(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "out: {out}\nbase: {{dataset: digits, epochs: 1, n_train: 100, model: {{latent_dim: 2, hidden: [8]}},"
        " objective: {{name: beta-vae}}}}\ngrid: {{objective.beta: [1.0, 2.0]}}\nevaluation: null\n"
        .format(out=tmp_path / "out"))
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "2 trials" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 0
    assert "2 trials: 2 done (0 already done before), 0 failed" in capsys.readouterr().out
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["objective.beta"] for r in rows] == [1.0, 2.0] and all(r["status"] == "done" for r in rows)
    assert "objective.beta" in (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 0
    assert "2 already done before" in capsys.readouterr().out
    # the table feeds `robvae report`, like a study folder
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    assert study["study"] == "sweep" and study["tables"][0] == "results-brief.csv" and study["figures"] == ["sweep.png"]
    assert main(["report", str(tmp_path / "out")]) == 0
    assert "results-brief.csv" in (tmp_path / "out" / "report.html").read_text()


# ---- executors ------------------------------------------------------------------------------


def _mtimes(result) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (result.dir / "status.json", result.dir / "run" / "model.safetensors")}


def test_local_executor_runs_records_failures_and_skips_finished_trials_on_rerun(tmp_path):
    trials = [tiny(0), tiny(1), tiny(2, "boom", fault="raise")]
    res = run_trials(trials, tmp_path, executor="local", workers=2, progress=False)
    assert [r.id for r in res] == [t.id for t in trials]
    assert [r.status for r in res] == ["done", "done", "failed"]
    assert "injected failure" in res[2].error
    st = read_status(res[2].dir)
    assert "Traceback" in st["traceback"] and st["attempts"] == 1
    assert all((r.dir / "trial.json").is_file() and (r.dir / "status.json").is_file() for r in res)
    assert res[0].summary["test_elbo"] < 0
    rows = collect(tmp_path)
    assert [r["id"] for r in rows] == [t.id for t in trials] and rows[1]["seed"] == 1
    assert (tmp_path / "results.csv").is_file()

    before = [_mtimes(r) for r in res[:2]]
    again = run_trials(trials, tmp_path, executor="local", workers=2, progress=False)
    assert [r.skipped for r in again] == [True, True, False]   # the failed one is rerun ...
    assert [_mtimes(r) for r in again[:2]] == before            # ... the finished ones are untouched
    assert [read_status(r.dir)["attempts"] for r in again] == [1, 1, 2]
    assert again[2].status == "failed"
    # the in-process executor trains the same model as a worker process
    serial = run_trials(trials[:1], tmp_path / "serial", executor="serial", progress=False)[0]
    assert serial.summary["test_elbo"] == res[0].summary["test_elbo"]


def test_local_executor_retries_a_killed_worker_and_marks_one_that_keeps_dying(tmp_path):
    trials = [tiny(0, "kill-once", fault="kill-once"), tiny(1, "kill", fault="kill")]
    res = run_trials(trials, tmp_path, executor="local", workers=1, progress=False, max_retries=1)
    once, always = res
    assert once.status == "done" and read_status(once.dir)["attempts"] == 2
    assert (once.dir / ".fault-killed").is_file()
    assert always.status == "failed" and "worker died" in always.error
    assert read_status(always.dir)["attempts"] == 2


def test_interrupted_trial_is_rerun(tmp_path):
    t = tiny(0)
    res = run_trials([t], tmp_path, executor="serial", progress=False)[0]
    (res.dir / "run" / "model.safetensors").unlink()  # as if killed before the end
    again = run_trials([t], tmp_path, executor="serial", progress=False)[0]
    assert not again.skipped and again.status == "done" and (again.dir / "run" / "model.safetensors").is_file()


def test_a_damaged_trial_file_is_rewritten_from_the_spec(tmp_path):
    """Found by an audit: a truncated trial.json left that trial's config columns empty in
    results.csv after a successful rerun. The trial files are rewritten from the spec when missing
    or damaged, and the table is whole again."""
    trials = [tiny(0), tiny(1)]
    res = run_trials(trials, tmp_path, executor="serial", progress=False)
    want = collect(tmp_path)
    (res[1].dir / "trial.json").write_text('{"id": "')
    again = run_trials(trials, tmp_path, executor="serial", progress=False)
    assert [r.skipped for r in again] == [True, True]
    got = collect(tmp_path)
    assert got[1]["seed"] == 1 and [r["id"] for r in got] == [r["id"] for r in want]
    assert {k: v for k, v in got[1].items() if "seconds" not in k} == {k: v for k, v in want[1].items() if "seconds" not in k}


def test_evaluation_runs_after_training_and_feeds_the_table(tmp_path):
    from robvae.evaluation import EvalConfig

    ev = EvalConfig(n=6, n_samples=50, margin=False, batch_size=6)
    t = Trial({**BASE, "seed": 0}, ev, "with-eval")
    assert Trial({**BASE, "seed": 0}, ev.to_dict()).id == t.id
    assert Trial({**BASE, "seed": 0}, {**ev.to_dict(), "device": "cuda"}).id == t.id
    res = run_trials([t], tmp_path, executor="serial", progress=False)[0]
    assert res.status == "done", res.error
    assert (res.dir / "eval" / "summary.json").is_file() and (res.dir / "eval" / "per_input.csv").is_file()
    assert res.summary["n"] == 6
    row = collect(tmp_path)[0]
    assert row["n"] == 6 and row["seed"] == 0 and "eval.seed" in row  # clashing names get eval.
    assert run_trials([t], tmp_path, executor="serial", progress=False)[0].skipped


# ---- sharded certification ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certify_case(tmp_path_factory):
    from robvae.data import load_dataset
    from robvae.robustness import r_min
    from robvae.training import train

    run_dir = tmp_path_factory.mktemp("certify") / "run"
    run = train(TrainConfig.from_dict({**BASE, "epochs": 1}), run_dir, progress=False)
    x = load_dataset("digits", "test").images[:9]
    r = float(r_min(run.model, x, 200, generator=torch.Generator().manual_seed(0)).median())
    return run_dir, x, r


def _assert_same(a, b) -> None:
    from robvae.robustness import Certificate

    assert isinstance(a, Certificate) and isinstance(b, Certificate)  # one typed result on every executor
    a, b = a.as_numpy(), b.as_numpy()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sharded_certify_local_equals_serial(certify_case):
    run_dir, x, r = certify_case
    kw = dict(seed=7, n_samples=200, alpha=0.01, block_size=1)  # one input per block: real multi-shard runs
    serial = certify_sharded(run_dir, x, r, executor="serial", **kw)
    assert serial.p.numpy().shape == (9,) and 0 < serial.p.numpy().min() < 1  # r is near r_min: p varies
    _assert_same(serial, certify_sharded(run_dir, x, r, executor="serial", shard_size=4, **kw))
    _assert_same(serial, certify_sharded(run_dir, x, r, executor="local", workers=2, shard_size=2, **kw))
    # every precision, in worker processes (one thread each: where "auto" takes bfloat16 on CPUs
    # with native bfloat16), gives the same certificates
    for precision in ("float32", "bfloat16"):
        _assert_same(serial, certify_sharded(run_dir, x, r, executor="local", workers=2, shard_size=5,
                                             precision=precision, **kw))
    other = certify_sharded(run_dir, x, r, executor="serial", **{**kw, "seed": 8})
    assert not np.array_equal(serial.p.numpy(), other.p.numpy())
    # a per-input radius, and blocks of several inputs
    rr = torch.full((9,), r)
    _assert_same(serial, certify_sharded(run_dir, x, rr, executor="serial", **kw))
    kw3 = {**kw, "block_size": 3}
    blocks = certify_sharded(run_dir, x, r, executor="serial", shard_size=3, **kw3)
    _assert_same(blocks, certify_sharded(run_dir, x, r, executor="serial", shard_size=6, **kw3))
    _assert_same(blocks, certify_sharded(run_dir, x, r, executor="local", workers=2, shard_size=3, **kw3))
    assert not np.array_equal(blocks.p.numpy(), serial.p.numpy())  # the block size is part of the draw
    with pytest.raises(ValueError, match="generator"):
        certify_sharded(run_dir, x, r, executor="serial", generator=torch.Generator())


def test_ctrl_c_marks_unfinished_trials_and_a_rerun_resumes_them(tmp_path):
    """A real SIGINT to a running `robvae sweep`: finished trials stay done, the rest resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"out: {out}\nbase: {{dataset: digits, epochs: 40, n_train: 300, batch_size: 32,"
        " model: {latent_dim: 2, hidden: [16]}}\ngrid: {seed: [0, 1, 2, 3]}\nevaluation: null\n")
    cmd = [sys.executable, "-m", "robvae.cli", "sweep", str(spec), "--executor", "local", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    done: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        statuses = [json.loads(p.read_text()) for p in out.glob("trials/*/status.json")] if out.exists() else []
        done = [s for s in statuses if s.get("status") == "done"]
        if done:
            break
        time.sleep(0.2)
    assert proc.poll() is None and done, "the sweep finished or stalled before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, as in a terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "leaked semaphore" not in err, err  # the terminated worker's tqdm lock (a semaphore) was left
    statuses = {p.parent.name: json.loads(p.read_text()) for p in out.glob("trials/*/status.json")}
    finished = {k for k, s in statuses.items() if s["status"] == "done"}
    assert 1 <= len(finished) < 4
    assert all(s["status"] in ("done", "interrupted") for s in statuses.values())
    # the rerun: finished trials are skipped (one attempt each), the others complete
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    failed_now = {p.parent.name: json.loads(p.read_text()) for p in out.glob("trials/*/status.json")}
    assert rerun.returncode == 0, (rerun.stderr, rerun.stdout[-2000:],
                                   {k: (v.get("status"), v.get("error")) for k, v in failed_now.items()})
    assert f"{len(finished)} already done before" in rerun.stdout
    final = {p.parent.name: json.loads(p.read_text()) for p in out.glob("trials/*/status.json")}
    assert len(final) == 4 and all(s["status"] == "done" for s in final.values())
    assert all(final[k]["attempts"] == 1 for k in finished)


class _Stop(Exception):
    pass


def test_sharded_certify_refuses_a_run_whose_weights_change_under_it(certify_case, tmp_path, monkeypatch, capsys):
    """Found by an audit: a robvae train extending the run while certify ran gave r from the old
    weights and certificates from the new ones (356 of 360 rows off), exit 0. Every shard now
    checks the run's digest; and certify refuses a run a live process holds."""
    import shutil
    import socket
    import subprocess
    import sys

    from robvae.errors import RobvaeError
    from robvae.fileio import load_tensors, save_tensors
    from robvae.sweep import shard as shard_mod

    src, x, r = certify_case
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    real = shard_mod.certify_blocks
    calls: list[int] = []

    def then_retrain(model, xs, rs, **k):  # the first shard finishes, then the weights are rewritten
        out = real(model, xs, rs, **k)
        calls.append(1)
        if len(calls) == 1:
            w, meta = load_tensors(run_dir / "model.safetensors")
            save_tensors(run_dir / "model.safetensors", {n: t * 1.01 for n, t in w.items()}, metadata=meta)
        return out

    monkeypatch.setattr(shard_mod, "certify_blocks", then_retrain)
    with pytest.raises(RobvaeError, match="changed while certify ran"):
        certify_sharded(run_dir, x, r, executor="serial", shard_size=2, block_size=2, seed=0, n_samples=50)
    assert len(calls) == 1
    with pytest.raises(RobvaeError, match="changed while certify ran"):  # changed since r was calibrated
        certify_sharded(run_dir, x, r, executor="serial", seed=0, n_samples=50, weights_digest="0" * 64)
    monkeypatch.undo()
    # the weights rewritten while the command loads the run and its data (before r is calibrated)
    from robvae.cli import robust as robust_cli

    real_inputs = robust_cli._inputs

    def inputs_then_retrain(*a, **k):
        out = real_inputs(*a, **k)
        w, meta = load_tensors(run_dir / "model.safetensors")
        save_tensors(run_dir / "model.safetensors", {n: t * 1.01 for n, t in w.items()}, metadata=meta)
        return out

    monkeypatch.setattr(robust_cli, "_inputs", inputs_then_retrain)
    assert main(["certify", str(run_dir), "--n", "4", "--samples", "50", "--quiet"]) == 2
    assert "changed while certify ran" in capsys.readouterr().err
    monkeypatch.undo()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".robvae.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                          "command": "robvae train"}))
        rc = main(["certify", str(run_dir), "--n", "4", "--samples", "50", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and f"is in use by robvae train (pid {holder.pid} on {socket.gethostname()})" in err, err
        assert "if that process is gone, delete" in err
        assert not list(run_dir.glob("certify-*"))
    finally:
        holder.kill()
        holder.wait()
    assert main(["certify", str(run_dir), "--n", "4", "--samples", "50", "--quiet"]) == 0  # its holder is gone


def test_sharded_certify_resumes_from_finished_shards(certify_case, tmp_path, monkeypatch):
    """An interrupted certification keeps its finished shards (partial=); the rerun certifies the
    rest only and gives the uninterrupted certificate, bit for bit. A changed setting, weights or
    input is not mixed in."""
    from robvae.sweep import shard as shard_mod

    run_dir, x, r = certify_case
    kw = dict(seed=3, n_samples=150, alpha=0.01, block_size=2, executor="serial")
    whole = certify_sharded(run_dir, x, r, **kw)
    folder = tmp_path / "out.csv.partial"
    real = shard_mod.certify_shard
    calls: list[int] = []

    def stop_at_third(run, xs, rs, start, **k):
        calls.append(start)
        if len(calls) == 3:
            raise _Stop
        return real(run, xs, rs, start, **k)

    monkeypatch.setattr(shard_mod, "certify_shard", stop_at_third)
    with pytest.raises(_Stop):
        certify_sharded(run_dir, x, r, shard_size=2, partial=folder, **kw)
    assert sorted(p.name for p in folder.glob("shard-*")) == ["shard-0-2.safetensors", "shard-2-4.safetensors"]
    calls.clear()
    monkeypatch.setattr(shard_mod, "certify_shard", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    resumed = certify_sharded(run_dir, x, r, shard_size=4, partial=folder, **kw)  # another shard size: same blocks
    _assert_same(whole, resumed)
    assert calls == [4, 8]  # only the unfinished inputs, in whole blocks
    # a damaged shard is recomputed; a rerun with everything stored certifies nothing
    (folder / "shard-2-4.safetensors").write_bytes(b"garbage")
    calls.clear()
    _assert_same(whole, certify_sharded(run_dir, x, r, partial=folder, **kw))
    assert calls == [2]
    calls.clear()
    _assert_same(whole, certify_sharded(run_dir, x, r, partial=folder, **kw))
    assert calls == []
    # more inputs: the stored blocks are reused where the inputs are unchanged; the old last,
    # short block (8-9) is not (a longer block draws other noise)
    x2 = torch.cat([x, x[:3]])
    ref2 = certify_sharded(run_dir, x2, r, **kw)
    calls.clear()
    _assert_same(ref2, certify_sharded(run_dir, x2, r, partial=folder, **kw))
    assert calls == [8, 10]  # default shards of 2 inputs here
    # another setting empties the folder; a changed input is recomputed
    calls.clear()
    other = certify_sharded(run_dir, x, r, partial=folder, **{**kw, "seed": 4})
    assert calls == [0, 2, 4, 6, 8] and not np.array_equal(other.p.numpy(), whole.p.numpy())
    x3 = x.clone()
    x3[5] = 1 - x3[5]
    ref3 = certify_sharded(run_dir, x3, r, **{**kw, "seed": 4})
    calls.clear()
    _assert_same(ref3, certify_sharded(run_dir, x3, r, partial=folder, shard_size=2, **{**kw, "seed": 4}))
    assert calls == [4]


def test_certify_blocks_resume_in_process(certify_case, tmp_path, monkeypatch):
    """The in-process path (robvae certify --model) keeps every finished block the same way; the
    model's weights are part of the key."""
    from robvae.sweep import shard as shard_mod
    from robvae.training import load

    run_dir, x, r = certify_case
    model = load(run_dir).model
    kw = dict(seed=1, n_samples=120, block_size=4)
    whole = shard_mod.certify_blocks(model, x, r, **kw)
    folder = tmp_path / "p"
    real = shard_mod.certify
    calls: list[int] = []

    def stop_at_second(m, xs, *a, **k):
        calls.append(len(xs))
        if len(calls) == 2:
            raise _Stop
        return real(m, xs, *a, **k)

    monkeypatch.setattr(shard_mod, "certify", stop_at_second)
    with pytest.raises(_Stop):
        shard_mod.certify_blocks(model, x, r, partial=folder, **kw)
    calls.clear()
    monkeypatch.setattr(shard_mod, "certify", lambda m, xs, *a, **k: (calls.append(len(xs)), real(m, xs, *a, **k))[1])
    _assert_same(whole, shard_mod.certify_blocks(model, x, r, partial=folder, **kw))
    assert calls == [4, 1]
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # other weights: nothing stored is reused
    calls.clear()
    shard_mod.certify_blocks(model, x, r, partial=folder, **kw)
    assert calls == [4, 4, 1]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc (Linux)")
def test_local_workers_exit_when_their_parent_is_killed(tmp_path):
    """SIGKILL of the process that runs a local pool (no clean-up runs) must not leave its workers
    behind: they finish nothing more and exit within a few seconds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "pool.py"
    script.write_text("import time\nfrom robvae.sweep.executors import map_tasks\n"
                      "if __name__ == '__main__':\n"
                      "    for _ in map_tasks(time.sleep, [(300,), (300,)], executor='local', workers=2):\n"
                      "        pass\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)

    def children() -> list[int]:
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == proc.pid:
                kids.append(int(stat.parent.name))
        return kids

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        cmdlines = {p: _cmdline(p) for p in children()}  # the pool's workers, not its resource tracker
        workers = [p for p, c in cmdlines.items() if b"spawn_main" in c and b"resource_tracker" not in c]
        time.sleep(0.2)
    try:
        assert len(workers) == 2, "the pool's workers did not start"
        time.sleep(1.0)  # the workers run their tasks (time.sleep) now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(alive(p) for p in workers), "orphaned workers kept running"
    finally:
        for p in workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_two_questions_in_one_partial_folder_never_mix(certify_case, tmp_path, monkeypatch, capsys):
    """Found by an audit: two certify commands into one --out (seed 0 and seed 1) saved into each
    other's partial folder, and the rerun of one took the other's shards (126 rows wrong). Every
    shard now carries its question's key, and robvae certify holds a lock on the folder."""
    from concurrent.futures.process import BrokenProcessPool

    from robvae.cli import main
    from robvae.errors import RobvaeError
    from robvae.fileio import folder_lock
    from robvae.sweep import ShardStore
    from robvae.sweep import shard as shard_mod

    run_dir, x, r = certify_case
    xn, rn = x.numpy(), np.full(len(x), r, dtype=np.float32)
    folder = tmp_path / "c.csv.partial"
    a = ShardStore(folder, {"seed": 0})
    a.save(0, {"p": np.ones(2)}, xn[:2], rn[:2])
    b = ShardStore(folder, {"seed": 1})  # empties the folder, writes its own key
    a.save(2, {"p": np.ones(2)}, xn[2:4], rn[2:4])  # the first command, still running, saves on
    assert [p.cols is None for p in b.plan(xn, rn, 2)] == [True]  # nothing of A's is taken
    # the CLI: a second command into the same --out is refused while the first holds the folder
    with folder_lock(folder, "robvae certify"):
        rc = main(["certify", str(run_dir), "--n", "4", "--r", "1", "--samples", "50", "--executor", "serial",
                   "--out", str(tmp_path / "c.csv"), "--quiet"])
    err = capsys.readouterr().err  # the refusal names the user's output, not the hidden work folder
    assert rc == 2 and f"output {tmp_path / 'c.csv'} is in use by robvae certify" in err, err
    # a worker that dies is one line that says the finished shards are kept
    monkeypatch.setattr(shard_mod, "map_tasks", lambda *a, **k: iter([(0, None, BrokenProcessPool("killed"))]))
    with pytest.raises(RobvaeError, match="a certify worker process died .*rerun to resume"):
        certify_sharded(run_dir, x, r, executor="local", partial=tmp_path / "p2", n_samples=50)


def test_model_digest_sees_buffers_settings_and_code(tmp_path, monkeypatch):
    """Found by an audit: a --model run resumed with blocks of a model whose non-persistent
    buffer or plain attribute had changed (the digest hashed the state dict only)."""
    from robvae.sweep.shard import model_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dig_models.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(2, 2)\n"
        "        self.register_buffer('scale', torch.ones(1), persistent=False)\n"
        "        self.temperature = torch.nn.Parameter(torch.tensor(1.0))  # 0-dim: hashed too\n"
        "        self.shift = 0.0\n")
    import dig_models

    torch.manual_seed(0)
    m = dig_models.M()
    base = model_digest(m)
    assert model_digest(m) == base
    m.scale.fill_(1.5)
    assert model_digest(m) != base
    m.scale.fill_(1.0)
    m.shift = 0.25
    assert model_digest(m) != base
    m.shift = 0.0
    assert model_digest(m) == base
    with torch.no_grad():
        m.temperature.fill_(2.0)
    assert model_digest(m) != base


def test_model_digest_sees_data_held_in_plain_attributes(tmp_path, monkeypatch):
    """Found by an audit (session 13): a plain tensor attribute (decode = sigmoid(gain * h)), a list,
    a numpy array or a dict of settings changed between an interrupted certify --model and its
    rerun left the digest as it was: the rerun kept the old model's blocks (p = 1 for half the
    inputs, 0 for the rest), and bench reused the old model's result."""
    import numpy as np

    from robvae.sweep.shard import model_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dig_attrs.py").write_text(
        "import numpy as np, torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(2, 2)\n"
        "        self.gain = torch.tensor(1.0)\n"
        "        self.widths = [1, 2, 3]\n"
        "        self.table = np.zeros(3)\n"
        "        self.opts = {'clip': 1.0, 'names': ('a', 'b'), 'nested': {'w': torch.ones(2)}}\n")
    import dig_attrs

    torch.manual_seed(0)
    m = dig_attrs.M()
    base = model_digest(m)
    torch.manual_seed(0)
    assert model_digest(dig_attrs.M()) == base  # the same model built again: the same digest
    for change, undo in [
        (lambda: m.gain.fill_(3.0), lambda: m.gain.fill_(1.0)),
        (lambda: m.widths.append(4), lambda: m.widths.pop()),
        (lambda: m.table.__setitem__(1, 0.5), lambda: m.table.__setitem__(1, 0.0)),
        (lambda: m.opts.__setitem__("clip", 2.0), lambda: m.opts.__setitem__("clip", 1.0)),
        (lambda: m.opts["nested"]["w"].mul_(2), lambda: m.opts["nested"]["w"].div_(2)),
        (lambda: setattr(m, "table", np.zeros(4)), lambda: setattr(m, "table", np.zeros(3))),
    ]:
        change()
        assert model_digest(m) != base
        undo()
        assert model_digest(m) == base


def test_model_digest_sees_the_code_of_submodules_defined_elsewhere(tmp_path, monkeypatch):
    """Found by an audit: the digest hashed only the file of the top-level class, so an edited
    forward of a pythae decoder behind robvae's adapter (or any submodule of another file) kept
    the old digest, and bench / certify --model reused results of the model before the edit."""
    from robvae.sweep.shard import model_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dig_parts.py").write_text(
        "import torch\n"
        "class Base(torch.nn.Module):\n"
        "    pass\n")
    (tmp_path / "dig_sub.py").write_text(
        "import torch\n"
        "from dig_parts import Base\n"
        "class Dec(Base):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(2, 2)\n"
        "    def forward(self, z):\n"
        "        return torch.sigmoid(1.0 * self.lin(z))\n")
    (tmp_path / "dig_top.py").write_text(
        "import torch\n"
        "from dig_sub import Dec\n"
        "class Wrapper(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.dec = Dec()\n")
    import dig_top

    torch.manual_seed(0)
    m = dig_top.Wrapper()
    base = model_digest(m)
    sub = (tmp_path / "dig_sub.py").read_text()
    (tmp_path / "dig_sub.py").write_text(sub.replace("1.0 *", "8.0 *"))  # the submodule's forward edited
    assert model_digest(m) != base
    (tmp_path / "dig_sub.py").write_text(sub)
    assert model_digest(m) == base
    (tmp_path / "dig_parts.py").write_text("import torch\nclass Base(torch.nn.Module):\n    scale = 2\n")
    assert model_digest(m) != base  # a base class's file too


def test_model_digest_is_the_same_wherever_the_code_lives_and_sees_zip_edits(tmp_path, monkeypatch):
    """Review: the sources were hashed in the order of their absolute paths (byte-identical code
    in two folders: two digests, so bench caches and --model resumes were lost on another
    machine), Python's own abc.py counted, and a module imported from a zip was not read."""
    import subprocess
    import sys
    import zipfile

    from robvae.sweep.shard import model_digest

    base = "import abc\nimport torch\nclass Base(torch.nn.Module, abc.ABC):\n    pass\n"
    enc = ("import torch\nfrom dig_base import Base\nclass Enc(Base):\n    def __init__(self):\n"
           "        super().__init__()\n        self.l = torch.nn.Linear(4, 2)\n"
           "    def forward(self, x):\n        return self.l(x)\n")
    digests = []
    # the two files' paths sort one way in the first layout and the other way in the second
    for base_dir, enc_dir in (("a/base", "b/enc"), ("y/base", "x/enc")):
        (tmp_path / base_dir).mkdir(parents=True)
        (tmp_path / enc_dir).mkdir(parents=True)
        (tmp_path / base_dir / "dig_base.py").write_text(base)
        (tmp_path / enc_dir / "dig_enc.py").write_text(enc)
        prog = (f"import sys, torch; sys.path[:0] = [{str(tmp_path / base_dir)!r}, {str(tmp_path / enc_dir)!r}]; "
                "from dig_enc import Enc; from robvae.sweep.shard import model_digest; torch.manual_seed(0); "
                "print(model_digest(Enc()))")
        digests.append(subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                                      check=True).stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64
    out = []
    for k in (1, 2):  # the same module from a zip, its forward edited
        z = tmp_path / f"m{k}.zip"
        with zipfile.ZipFile(z, "w") as f:
            f.writestr("dig_zipped.py", (base + enc.replace("from dig_base import Base\n", "")).replace(
                "self.l(x)", f"self.l(x) * {k}"))
        monkeypatch.syspath_prepend(str(z))
        sys.modules.pop("dig_zipped", None)
        import dig_zipped

        torch.manual_seed(0)
        out.append(model_digest(dig_zipped.Enc()))
    sys.modules.pop("dig_zipped", None)
    assert out[0] != out[1]


def test_ray_errors_become_the_tasks_own_exception_or_one_line():
    """Found by the Ray audit: a Ray task's failure reached the user as Ray's wrapper (ANSI colours,
    no message) or a 66-line WorkerCrashedError traceback. Checked here without Ray, on stand-ins
    of its two kinds of error (a task's own exception as `.cause`; a dead worker without one)."""
    from robvae.errors import CheckpointError, RobvaeError
    from robvae.sweep.executors import ray_error

    class RayTaskError(Exception):
        def __init__(self, cause):
            super().__init__("\x1b[36mray::certify_shard()\x1b[39m (pid=1, ip=1.2.3.4)")
            self.cause = cause

    class WorkerCrashedError(Exception):
        pass

    own = CheckpointError("config runs/x/config.json is missing")
    assert ray_error(RayTaskError(own)) is own
    dead = ray_error(WorkerCrashedError("\x1b[31mThe worker died unexpectedly\x1b[0m while executing\nmore"))
    assert isinstance(dead, RobvaeError) and "\n" not in str(dead) and "\x1b" not in str(dead)
    assert str(dead).startswith("a Ray task failed (WorkerCrashedError: The worker died unexpectedly while executing)")


def test_an_address_nobody_answers_is_refused_before_ray(tmp_path):
    """Found by the Ray audit: ray.init retried an unreachable --address HOST:PORT forever."""
    import socket

    from robvae.errors import InputError
    from robvae.sweep.executors import _probe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match="no Ray cluster answers"):
        _probe(f"127.0.0.1:{port}")
    with socket.socket() as s:  # something listening: no error
        s.bind(("127.0.0.1", 0))
        s.listen()
        _probe(f"127.0.0.1:{s.getsockname()[1]}")
    _probe("ray://somewhere")  # not HOST:PORT: left to Ray
    _probe(f"ray://127.0.0.1:{port}")  # Ray Client addresses too (their host part is not a host name)


@pytest.mark.parametrize("config_text", ["[1, 2]", '{"no_evaluation": 1}', '{"evaluation": {"bogus_field": 1}}'])
def test_a_trial_whose_evaluation_does_not_read_back_runs_again(tmp_path, config_text):
    """Found by the session's review: outputs_complete caught only RobvaeError / OSError, so an
    evaluation file of another shape (a JSON list, a missing key, a field of another version)
    crashed the rerun instead of making the trial run again."""
    from robvae.sweep.worker import EVAL_DIR, EVAL_SUMMARY_FILE, RUN_DIR, outputs_complete

    (tmp_path / RUN_DIR).mkdir()
    (tmp_path / RUN_DIR / "model.safetensors").write_bytes(b"")
    (tmp_path / EVAL_DIR).mkdir()
    (tmp_path / EVAL_DIR / EVAL_SUMMARY_FILE).write_text('{"n": 0}')
    (tmp_path / EVAL_DIR / "per_input.csv").write_text("index\n")
    (tmp_path / EVAL_DIR / "eval_config.json").write_text(config_text)
    assert outputs_complete(tmp_path, with_eval=True) is False
    assert outputs_complete(tmp_path, with_eval=False) is True


def test_a_worker_dead_before_its_trial_started_is_reported_as_such(tmp_path):
    """Ray audit: a worker killed before run_trial recorded a start used to read 'attempts: 0'."""
    from robvae.sweep.executors import _mark_dead
    from robvae.sweep.worker import update_status

    early, late = tmp_path / "early", tmp_path / "late"
    for d, n in ((early, 0), (late, 2)):
        d.mkdir()
        update_status(d, status="queued" if n == 0 else "running", attempts=n)
        _mark_dead(d, "(exit code -9)")
    assert read_status(early)["error"] == "worker died (exit code -9) before the trial started (no attempt recorded)"
    assert read_status(late)["error"] == "worker died (exit code -9) (attempts: 2)"
    assert read_status(early)["status"] == read_status(late)["status"] == "failed"


def test_cli_sweep_evaluation_data_dir_is_read_as_checked_and_done_trials_need_no_data(tmp_path, capsys,
                                                                                       monkeypatch):
    """Review of the data check: a '~' (or relative) evaluation.data_dir is resolved by the worker as
    the driver checked it (it used to fail after training), and a rerun of a finished sweep does
    not need the data (every trial is skipped)."""
    from test_data_idx import make_split

    home = tmp_path / "home"
    for split in ("train", "test"):
        make_split(tmp_path / "train-data", split, 40, gz=False)
        make_split(home / "eval-data", split, 40, gz=False, seed=1)
    monkeypatch.setenv("HOME", str(home))
    spec = tmp_path / "s.yaml"
    spec.write_text(f"out: {tmp_path / 'out'}\nbase: {{dataset: mnist, data_dir: {tmp_path / 'train-data'}, "
                    "epochs: 1, batch_size: 20, model: {latent_dim: 2, hidden: [8]}}\ngrid: {seed: [0]}\n"
                    "evaluation: {n: 3, n_samples: 20, attack: false, margin: false, rigorous: false, "
                    "data_dir: ~/eval-data}\n")
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 0, capsys.readouterr().err
    assert "1 trials: 1 done" in capsys.readouterr().out
    (tmp_path / "train-data").rename(tmp_path / "moved")
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 0, capsys.readouterr().err
    assert "1 done (1 already done before)" in capsys.readouterr().out
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    spec.write_text(spec.read_text().replace("seed: [0]", "seed: [0, 1]"))  # a new trial needs the data again
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 2
    assert "train-data does not exist" in capsys.readouterr().err


def test_serial_trials_run_with_this_processs_threads(tmp_path, monkeypatch):
    """robvae study --executor serial --threads 2 trained and evaluated every trial at one thread
    (cpus_per_trial, which sizes workers and Ray tasks); serial trials now keep this process's
    threads, and torch_threads= still chooses."""
    from robvae.sweep import worker

    seen = []

    def fake_train(config, out, **kw):
        seen.append(torch.get_num_threads())
        raise RuntimeError("stop after recording the threads")

    monkeypatch.setattr(worker, "train", fake_train)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_trials([tiny(0)], tmp_path / "a", executor="serial", progress=False)
        run_trials([tiny(1)], tmp_path / "b", executor="serial", progress=False, torch_threads=1)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1]


def test_a_serial_sharded_certify_keys_its_shards_by_the_threads_it_ran_with(certify_case, tmp_path):
    """key.json said "torch_threads": null on the serial path whatever --threads was, so a rerun at
    another thread count reused shards whose radii differ in their last bits."""
    run_dir, x, r = certify_case
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        certify_sharded(run_dir, x, r, executor="serial", torch_threads=None, n_samples=30, partial=tmp_path / "p")
        key = json.loads((tmp_path / "p" / "key.json").read_text())
    finally:
        torch.set_num_threads(before)
    assert key["torch_threads"] == 2


def test_a_finished_trial_renamed_by_the_sweep_file_shows_its_new_name(tmp_path):
    """Reordering a sweep's grid keys keeps the trial ids (the same configs) but changes the names;
    results.csv and status.json kept the old names while sweep.json had the new ones."""
    from robvae.sweep.worker import read_status

    run_trials([tiny(0, name="objective.beta=1,seed=0")], tmp_path, executor="serial", progress=False)
    res = run_trials([tiny(0, name="seed=0,objective.beta=1")], tmp_path, executor="serial", progress=False)
    assert res[0].skipped
    rows = collect(tmp_path, write=False)
    assert [r["name"] for r in rows] == ["seed=0,objective.beta=1"]
    assert read_status(tmp_path / "trials" / res[0].id)["name"] == "seed=0,objective.beta=1"


def test_a_trials_data_root_is_where_its_relative_data_dir_is_read(tmp_path, monkeypatch):
    """A benchmark protocol's folder is relative to the repository root: its trials carry that root
    (Trial.data_root, not in the id), and the worker reads the folder there, not in its own
    working folder (a review: from another folder the zoo's ids changed, or training failed)."""
    from robvae.sweep import worker

    seen = []

    def fake_train(config, *a, **k):
        seen.append(config.data_dir)
        raise RuntimeError("stop here")

    monkeypatch.setattr(worker, "train", fake_train)
    t = Trial(train=TrainConfig(dataset="mnist", data_dir="rel/mnist"), data_root=str(tmp_path / "repo"))
    assert t.id == Trial(train=TrainConfig(dataset="mnist", data_dir="rel/mnist")).id
    worker.run_trial(Trial.from_dict(t.to_dict()).to_dict(), str(tmp_path / "t1"), cwd=str(tmp_path / "elsewhere"))
    worker.run_trial(Trial(train=t.train).to_dict(), str(tmp_path / "t2"), cwd=str(tmp_path / "elsewhere"))
    assert seen == [str(tmp_path / "repo" / "rel/mnist"), str(tmp_path / "elsewhere" / "rel/mnist")]


def test_the_brief_table_counts_capped_margins_and_infinite_radii_beside_the_medians(tmp_path):
    """A capped margin is a lower bound kept as a number and an infinite radius is p = 1, so the
    medians of results-brief.csv need the counts beside them (before, the brief had the medians
    only: a median margin at the search's cap looked like a measurement)."""
    from robvae.fileio import read_csv, write_json
    from robvae.sweep.results import RESULTS_BRIEF_CSV, collect

    summaries = [{"n": 4, "n_abstain": 0, "n_infinite_radius": 3, "n_margin_capped": 3, "n_margin_unknown": 0,
                  "n_not_robust_clean": 0, "margin": {"median": 9.5}, "radius": {"median": math.inf},
                  "p": {"median": 1.0}, "seconds": 1.0},
                 {"n": 4, "n_abstain": 1, "n_infinite_radius": 0, "n_margin_capped": 0, "n_margin_unknown": 1,
                  "n_not_robust_clean": 1, "margin": {"median": 0.4}, "radius": {"median": 0.2},
                  "p": {"median": 0.7}, "seconds": 1.0}]
    for i, summary in enumerate(summaries):
        trial = tmp_path / "trials" / f"t{i}"
        trial.mkdir(parents=True)
        write_json(trial / "trial.json", {"name": f"t{i}", "train": {"seed": i}, "evaluation": {"n": 4}})
        write_json(trial / "status.json", {"status": "done", "summary": summary})
    collect(tmp_path)
    brief = read_csv(tmp_path / RESULTS_BRIEF_CSV)
    assert [r["n_margin_capped"] for r in brief] == ["3", "0"]
    assert [r["n_infinite_radius"] for r in brief] == ["3", "0"]
    assert [r["n_margin_unknown"] for r in brief] == ["0", "1"] and [r["n"] for r in brief] == ["4", "4"]
    assert [r["margin.median"] for r in brief] == ["9.5", "0.4"] and "seconds" not in brief[0]


def test_model_digest_sees_the_fields_of_a_settings_object_held_by_the_model(tmp_path, monkeypatch):
    """The digest hashed an attribute of another class (a config object) by its class name only, so
    a setting changed in it between an interrupted certify --model and its rerun kept the digest
    (left alone in session 13); its fields are hashed now, nested objects and dataclasses too."""
    from robvae.sweep.shard import model_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dig_cfg.py").write_text(
        "import dataclasses, torch\n"
        "@dataclasses.dataclass\n"
        "class Inner:\n"
        "    clip: float = 1.0\n"
        "class Cfg:\n"
        "    def __init__(self):\n"
        "        self.scale = 2.0\n"
        "        self.inner = Inner()\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(2, 2)\n"
        "        self.cfg = Cfg()\n"
        "        self.log = __import__('logging').getLogger('dig_cfg')\n"  # a library's object: its class only
        "        self.act = torch.relu\n")  # a function: its class, as before
    import dig_cfg

    torch.manual_seed(0)
    m = dig_cfg.M()
    base = model_digest(m)
    m.log.isEnabledFor(10)  # fills the logger's cache: the same model, the same digest (review h76)
    assert model_digest(m) == base
    for change, undo in [(lambda: setattr(m.cfg, "scale", 3.0), lambda: setattr(m.cfg, "scale", 2.0)),
                         (lambda: setattr(m.cfg.inner, "clip", 0.5), lambda: setattr(m.cfg.inner, "clip", 1.0))]:
        change()
        assert model_digest(m) != base
        undo()
        assert model_digest(m) == base


def test_a_rerun_does_not_skip_a_trial_whose_run_was_retrained_in_place(tmp_path, capsys):
    """Audit h73: a trial's run folder extended in place (robvae train --epochs 40 --out .../run)
    was skipped by the rerun ("1 already done before"), so results.csv kept the 5-epoch row beside
    a 40-epoch model. A finished trial records its run's digest; a changed run is not "done"."""
    from robvae.training import TrainConfig, train

    spec = tmp_path / "s.yaml"
    spec.write_text("out: {out}\nbase: {{dataset: digits, epochs: 1, n_train: 60, model: {{latent_dim: 2, hidden: [8]}}}}"
                    "\ngrid: {{seed: [0]}}\nevaluation: null\n".format(out=tmp_path / "out"))
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 0
    capsys.readouterr()
    trial = next((tmp_path / "out" / "trials").iterdir())
    status = json.loads((trial / "status.json").read_text())
    assert len(status["run_digest"]) == 64
    cfg = TrainConfig.from_dict(json.loads((trial / "run" / "config.json").read_text()))
    train(dataclasses.replace(cfg, epochs=2), trial / "run", progress=False)  # retrained in place
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 1  # not skipped: said
    out = capsys.readouterr().out
    assert "0 already done before), 1 failed" in out and "holds a different config" in out
    row = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    assert row["status"] == "failed" and row["test_elbo"] is None  # not the old model's number


def test_the_sweep_writes_its_study_description_under_its_lock(tmp_path, capsys, monkeypatch):
    """Audit h73: study.json and sweep.png were written after the sweep released its folder lock, so
    for a moment a second sweep into the folder was not refused. They are written under it now."""
    from robvae.cli import sweep as sweep_cli
    from robvae.fileio import live_holder

    seen = []
    real = sweep_cli.write_study

    def watching(out_dir, **kw):
        seen.append(live_holder(out_dir))
        return real(out_dir, **kw)

    monkeypatch.setattr(sweep_cli, "write_study", watching)
    spec = tmp_path / "s.yaml"
    spec.write_text("out: {out}\nbase: {{dataset: digits, epochs: 1, n_train: 40, model: {{latent_dim: 2, hidden: [8]}}}}"
                    "\ngrid: {{seed: [0]}}\nevaluation: null\n".format(out=tmp_path / "out"))
    assert main(["sweep", str(spec), "--executor", "serial", "--quiet"]) == 0
    assert seen and seen[0] is not None and seen[0].get("command") == "robvae sweep"
