"""CLI certify / attack / margin on a tiny trained digits run: files, numbers, error paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robvae.cli import main
from robvae.fileio import read_csv


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    out = tmp_path_factory.mktemp("cli") / "run"
    train(TrainConfig(model=ModelConfig(latent_dim=4, hidden=(64,)), epochs=8, batch_size=64, n_train=600),
          out, progress=False)
    return out


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def test_certify_writes_the_library_numbers(run_dir, capsys, tmp_path):
    from robvae import load_dataset
    from robvae.sweep import certify_sharded

    rc, out, err = _run(capsys, "certify", run_dir, "--n", 12, "--r", 1.0, "--samples", 300, "--seed", 5,
                        "--out", tmp_path / "c.csv", "--quiet")
    assert rc == 0, err
    assert "median_radius" in out and "n_abstain" in out
    rows = read_csv(tmp_path / "c.csv")
    assert len(rows) == 12
    meta = json.loads((tmp_path / "c.json").read_text())
    assert meta["r"] == 1.0 and meta["n_samples"] == 300 and meta["seed"] == 5
    x = load_dataset("digits", "test").images[:12]
    cols = certify_sharded(run_dir, x, 1.0, executor="serial", seed=5, n_samples=300, torch_threads=None).as_numpy()
    np.testing.assert_array_equal([float(r["radius"]) for r in rows], cols["radius"])
    np.testing.assert_array_equal([float(r["p"]) for r in rows], cols["p"])
    assert 0 < np.median(cols["p"]) <= 1 and np.all(cols["radius"][cols["p"] <= 0.5] == 0)


def test_certify_r_relative_scales_the_median_r_min(run_dir, capsys, tmp_path):
    from robvae import load, load_dataset, r_min

    rc, _, err = _run(capsys, "certify", run_dir, "--n", 10, "--r-relative", 2.0, "--samples", 200,
                      "--out", tmp_path / "c.csv", "--quiet")
    assert rc == 0, err
    r = json.loads((tmp_path / "c.json").read_text())["r"]
    x = load_dataset("digits", "test").images[:10]
    expect = 2.0 * float(r_min(load(run_dir).model, x, 200, generator=torch.Generator().manual_seed(0)).median())
    assert r == pytest.approx(expect, rel=1e-6)


def test_attack_respects_the_budget_and_saves_images(run_dir, capsys, tmp_path):
    rc, out, err = _run(capsys, "attack", run_dir, "--n", 6, "--eps", 0.5, "--steps", 10, "--restarts", 1,
                        "--out", tmp_path / "att")
    assert rc == 0, err
    rows = read_csv(tmp_path / "att" / "attack.csv")
    assert len(rows) == 6
    assert all(float(r["delta_norm"]) <= 0.5 * (1 + 1e-5) for r in rows)
    assert all(float(r["damage"]) > 0 for r in rows)
    png = (tmp_path / "att" / "attack.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_margin_reports_bound_and_margin(run_dir, capsys, tmp_path):
    rc, out, err = _run(capsys, "margin", run_dir, "--n", 5, "--r-relative", 1.5, "--samples", 200,
                        "--steps", 8, "--restarts", 1, "--tol", 0.1, "--out", tmp_path / "m.csv", "--quiet")
    assert rc == 0, err
    rows = read_csv(tmp_path / "m.csv")
    meta = json.loads((tmp_path / "m.json").read_text())
    # old flag names still work (hidden aliases); a violation needs both estimates above 1/2 and an uncapped margin
    real = [r for r in rows if r["abstain"] == "False" and float(r["p_clean"]) > 0.5 and r["capped"] == "False"
            and np.isfinite(float(r["bound"]))]
    assert meta["summary"]["n_used"] == len(real) == sum(r["used"] == "True" for r in rows)
    assert meta["summary"]["n_violations"] == sum(float(r["bound"]) > float(r["margin"]) for r in real)
    assert {"p_clean", "capped", "abstain_sound"} <= set(rows[0])
    assert all(float(r["margin"]) >= 0 for r in rows)
    assert meta["evaluation"]["attack_steps"] == 8 and meta["evaluation"]["margin_tol"] == 0.1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["certify", "RUN", "--r", "1", "--r-relative", "2"], "exactly one of --r and --r-relative"),
        (["certify", "RUN"], "exactly one of --r and --r-relative"),
        (["certify", "RUN", "--r", "-1"], "'--r'"),
        (["certify", "RUN", "--r", "1", "--alpha", "2"], "'--alpha'"),
        (["attack", "RUN"], "'--eps'"),
        (["margin", "RUN", "--mode", "median"], "'--mode'"),
        (["certify", "NOWHERE", "--r", "1"], "does not exist"),
    ],
)
def test_error_paths_are_one_line(run_dir, capsys, args, needle):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    rc, out, err = _run(capsys, *args)
    assert rc == 2, (out, err)
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_corrupt_run_is_reported_by_file(run_dir, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 20)
    rc, _, err = _run(capsys, "certify", bad, "--r", "1")
    assert rc == 2 and "model.safetensors" in err and "corrupt" in err
