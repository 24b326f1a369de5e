"""CLI certify / attack / margin on a tiny trained digits run: files, numbers, error paths."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def test_certify_interrupted_resumes_to_the_same_csv(run_dir, capsys, tmp_path, monkeypatch):
    """Ctrl-C during certify keeps the finished shards in CSV.partial (exit 130, the usual line);
    the same command then certifies the rest and writes the uninterrupted CSV, byte for byte, and
    removes the folder."""
    from robvae.sweep import shard as shard_mod

    args = ["certify", run_dir, "--n", 140, "--r", 1.0, "--samples", 200, "--seed", 4, "--executor", "serial",
            "--quiet"]
    rc, _, err = _run(capsys, *args, "--out", tmp_path / "ref.csv")
    assert rc == 0, err
    real = shard_mod.certify_shard
    calls: list[int] = []

    def interrupt_second(*a, **k):
        calls.append(a[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(shard_mod, "certify_shard", interrupt_second)
    rc, _, err = _run(capsys, *args, "--out", tmp_path / "c.csv")
    assert rc == 130 and "rerun the same command to resume" in err
    assert not (tmp_path / "c.csv").exists()
    assert [p.name for p in (tmp_path / "c.csv.partial").glob("shard-*")] == ["shard-0-64.safetensors"]
    calls.clear()
    monkeypatch.setattr(shard_mod, "certify_shard", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    rc, _, err = _run(capsys, *args, "--out", tmp_path / "c.csv")
    assert rc == 0, err
    assert calls == [64, 128]  # the finished shard is not certified again
    assert (tmp_path / "c.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert not (tmp_path / "c.csv.partial").exists()


def test_certify_precision_changes_nothing_but_the_arithmetic(run_dir, capsys, tmp_path):
    """--precision bfloat16 / float32 / auto: the same CSV, cell for cell (bf16 counts are float32's);
    the JSON records the setting."""
    rows = {}
    for p in ("bfloat16", "float32", "auto"):
        rc, _, err = _run(capsys, "certify", run_dir, "--n", 10, "--r", 1.0, "--samples", 300, "--seed", 2,
                          "--precision", p, "--out", tmp_path / f"{p}.csv", "--quiet")
        assert rc == 0, err
        rows[p] = read_csv(tmp_path / f"{p}.csv")
        assert json.loads((tmp_path / f"{p}.json").read_text())["precision"] == p
    assert rows["bfloat16"] == rows["float32"] == rows["auto"]
    assert 0 < np.mean([float(r["p"]) for r in rows["float32"]]) < 1
    rc, _, err = _run(capsys, "certify", run_dir, "--r", 1.0, "--precision", "half")
    assert rc != 0 and "'--precision'" in err and "half" in err


def test_cli_early_abstain_column_summary_and_switch(run_dir, capsys, tmp_path):
    """robvae certify: n_drawn per input in the CSV, n_stopped_early in the summary and the JSON;
    --no-early-abstain draws all S for every input; inputs that did not stop are identical."""
    rows, meta = {}, {}
    for flag in ("--early-abstain", "--no-early-abstain"):
        rc, out, err = _run(capsys, "certify", run_dir, "--n", 20, "--r", 0.40, "--samples", 2000, "--seed", 1, flag,
                            "--out", tmp_path / f"{flag}.csv", "--quiet")
        assert rc == 0 and "n_stopped_early" in out, err
        rows[flag] = read_csv(tmp_path / f"{flag}.csv")
        meta[flag] = json.loads((tmp_path / f"{flag}.json").read_text())
    early, full = rows["--early-abstain"], rows["--no-early-abstain"]
    assert meta["--early-abstain"]["early_abstain"] is True and meta["--no-early-abstain"]["early_abstain"] is False
    assert all(int(r["n_drawn"]) == 2000 for r in full)
    stopped = [i for i, r in enumerate(early) if int(r["n_drawn"]) < 2000]
    assert stopped and len(stopped) < 20  # r = 0.40 puts some digits below p = 1/2 and some above
    assert meta["--early-abstain"]["summary"]["n_stopped_early"] == len(stopped)
    for i, (e, f) in enumerate(zip(early, full)):
        if i in stopped:
            assert float(e["radius_sound"]) == 0 and float(e["p"]) < 0.5
        else:
            assert e == f


def test_certify_r_relative_scales_the_median_r_min(run_dir, capsys, tmp_path):
    from robvae import load, load_dataset, r_min

    rc, _, err = _run(capsys, "certify", run_dir, "--n", 10, "--r-relative", 2.0, "--samples", 200,
                      "--out", tmp_path / "c.csv", "--quiet")
    assert rc == 0, err
    r = json.loads((tmp_path / "c.json").read_text())["r"]
    x = load_dataset("digits", "test").images[:10]
    # drawn as the evaluation draws: one batch (10 <= 100 inputs) from the generator seeded
    # seed * 1,000,003 + 1 = 1, and numpy's median (the mean of the two middle values of 10)
    rmin = r_min(load(run_dir).model, x, 200, generator=torch.Generator().manual_seed(1)).double().numpy()
    expect = 2.0 * float(np.median(rmin))
    assert r == pytest.approx(expect, rel=1e-6)
    assert expect != pytest.approx(2.0 * float(np.sort(rmin)[4]), rel=1e-6)  # not torch's lower median


def test_certify_r_relative_calibrates_on_at_most_1000_draws(run_dir, capsys, tmp_path):
    """--samples 1500: the calibration draws min(1500, CALIBRATION_SAMPLES) = 1000 per input, so r
    equals the 1000-draw median and (r_min's draws being the first of the same generator) not the
    1500-draw one."""
    from robvae import load, load_dataset, r_min
    from robvae.cli.robust import CALIBRATION_SAMPLES

    assert CALIBRATION_SAMPLES == 1000
    rc, _, err = _run(capsys, "certify", run_dir, "--n", 3, "--r-relative", 1.0, "--samples", 1500,
                      "--out", tmp_path / "c.csv", "--quiet", "--no-rigorous")
    assert rc == 0, err
    r = json.loads((tmp_path / "c.json").read_text())["r"]
    model, x = load(run_dir).model, load_dataset("digits", "test").images[:3]
    med = lambda s: float(r_min(model, x, s, generator=torch.Generator().manual_seed(1)).median())  # noqa: E731
    assert r == pytest.approx(med(1000), rel=1e-6) and r != pytest.approx(med(1500), rel=1e-6)


def test_attack_respects_the_budget_and_saves_images(run_dir, capsys, tmp_path):
    rc, out, err = _run(capsys, "attack", run_dir, "--n", 6, "--eps", 0.5, "--out", tmp_path / "att")
    assert rc == 0, err
    rows = read_csv(tmp_path / "att" / "attack.csv")
    assert len(rows) == 6
    assert all(float(r["delta_norm"]) <= 0.5 * (1 + 1e-5) for r in rows)
    assert all(float(r["damage"]) > 0 for r in rows)
    png = (tmp_path / "att" / "attack.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_margin_reports_bound_and_margin(run_dir, capsys, tmp_path):
    rc, out, err = _run(capsys, "margin", run_dir, "--n", 5, "--r-relative", 1.5, "--samples", 200,
                        "--preset", "cheap", "--tol", 0.1, "--out", tmp_path / "m.csv", "--quiet")
    assert rc == 0, err
    rows = read_csv(tmp_path / "m.csv")
    meta = json.loads((tmp_path / "m.json").read_text())
    # one calibration: certify on the same inputs, seed and draws finds the same r (drawn as the evaluation draws)
    rc, _, err = _run(capsys, "certify", run_dir, "--n", 5, "--n-samples", 200, "--no-rigorous", "--executor",
                      "serial", "--out", tmp_path / "c.csv", "--quiet")
    assert rc == 0, err
    r_certify = json.loads((tmp_path / "c.json").read_text())["r"]
    assert r_certify == meta["summary"]["r"]
    # old flag names still work (hidden aliases); a violation needs both estimates above 1/2 and an uncapped margin
    real = [r for r in rows if r["abstain"] == "False" and float(r["p_clean"]) > 0.5 and r["capped"] == "False"
            and r["robust_clean"] == "True" and np.isfinite(float(r["bound"]))]
    assert meta["summary"]["n_used"] == len(real) == sum(r["used"] == "True" for r in rows)
    assert meta["summary"]["n_violations"] == sum(float(r["bound"]) > float(r["margin"]) for r in real)
    assert {"p_clean", "capped", "abstain_sound"} <= set(rows[0])
    assert all(float(r["margin"]) >= 0 for r in rows)
    assert meta["evaluation"]["attack_preset"] == "cheap" and meta["evaluation"]["margin_tol"] == 0.1
    assert meta["evaluation"]["r_relative"] == 1.5 and meta["evaluation"]["r"] is None
    # the bracket's upper end beside the margin (how coarse the margins are), over the compared inputs
    uppers = sorted(float(r["margin_upper"]) for r in rows if r["used"] == "True")
    assert meta["summary"]["median_margin_upper"] == pytest.approx(float(np.median(uppers)))
    assert meta["summary"]["median_margin_upper"] >= meta["summary"]["median_margin"] > 0
    # the rigorous radius of the margin's setting (full) beside the Theorem 1 violations: never above the margin
    rig = [r for r in rows if r["rigorous_used"] == "True"]
    assert len(rig) >= 1 and all(float(r["radius_rigorous_full"]) <= float(r["margin"]) for r in rig)
    assert meta["summary"]["rigorous_above_margin"] == 0 and meta["summary"]["rigorous_compared"] == len(rig)
    assert "rigorous_above_margin" in out


def test_margin_json_records_an_absolute_r_without_the_unused_relative_default(run_dir, capsys, tmp_path):
    rc, _, err = _run(capsys, "margin", run_dir, "--n", 2, "--r", 2.5, "--samples", 100, "--preset", "cheap",
                      "--tol", 0.2, "--no-rigorous", "--out", tmp_path / "m.csv", "--quiet")
    assert rc == 0, err
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["evaluation"]["r"] == 2.5 and meta["evaluation"]["r_relative"] is None
    assert meta["summary"]["r"] == 2.5


@pytest.mark.parametrize(
    "args,needle",
    [
        (["certify", "RUN", "--r", "1", "--r-relative", "2"], "give one of --r and --r-relative"),
        (["margin", "RUN", "--r", "1", "--r-relative", "1.5"], "give one of --r and --r-relative"),
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


def test_certify_defaults_to_r_relative_as_margin_does(run_dir, capsys, tmp_path):
    """One default for the radius: without --r, certify (as margin) uses --r-relative 1.5; --r replaces it."""
    from robvae.config import R_RELATIVE
    from robvae.evaluation import EvalConfig

    assert R_RELATIVE == 1.5 and EvalConfig().r_relative == R_RELATIVE
    got = {}
    for name, extra in [("default", []), ("k1", ["--r-relative", "1"]), ("r", ["--r", "0.7"])]:
        out = tmp_path / f"{name}.csv"
        rc, _, err = _run(capsys, "certify", str(run_dir), "--n", "3", "--n-samples", "200", "--no-rigorous",
                          "--executor", "serial", "--quiet", "--out", str(out), *extra)
        assert rc == 0, err
        got[name] = json.loads(out.with_suffix(".json").read_text())
    assert got["default"]["r_relative"] == 1.5 and got["r"]["r_relative"] is None
    assert got["default"]["summary"]["r_from"] == "1.5 x median r_min" and got["r"]["summary"]["r_from"] == "absolute"
    assert got["default"]["r"] == pytest.approx(1.5 * got["k1"]["r"], rel=1e-6)
    assert got["r"]["r"] == pytest.approx(0.7)


@pytest.mark.parametrize("study", ["bound-vs-margin", "beta", "tau", "certified"])
def test_studies_refuse_both_radius_options_before_any_work(capsys, tmp_path, study):
    rc, out, err = _run(capsys, "study", study, "--dataset", "digits", "--out", tmp_path / "s", "--r", "1",
                        "--r-relative", "2")
    assert rc == 2 and "give one of --r and --r-relative" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_the_ray_executor_without_ray_is_a_one_line_error(run_dir, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray then raises ImportError
    rc, out, err = _run(capsys, "certify", str(run_dir), "--r", "1", "--n", "2", "--executor", "ray")
    assert rc == 2 and "needs Ray" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_corrupt_run_is_reported_by_file(run_dir, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 20)
    rc, _, err = _run(capsys, "certify", bad, "--r", "1")
    assert rc == 2 and "model.safetensors" in err and "corrupt" in err


def test_certify_rigorous_columns(run_dir, capsys, tmp_path):
    """--rigorous (default) adds both rigorous radii and their medians, equal to robvae.certify's;
    --no-rigorous leaves them out."""
    from robvae import certify, load, load_dataset

    rc, out, err = _run(capsys, "certify", run_dir, "--n", 8, "--r", 1.0, "--samples", 300, "--seed", 5,
                        "--out", tmp_path / "c.csv", "--quiet")
    assert rc == 0, err
    rows = read_csv(tmp_path / "c.csv")
    assert "median_radius_rigorous_mean" in out and "median_radius_rigorous_full" in out
    got_mean = np.array([float(r["radius_rigorous_mean"]) for r in rows])
    got_full = np.array([float(r["radius_rigorous_full"]) for r in rows])
    # recomputed from the same p_lower and sigma_min by the library
    model = load(run_dir).model
    x = load_dataset("digits", "test").images[:8]
    cert = certify(model, x, 1.0, n_samples=300, rigorous=True)
    from robvae.robustness.rigorous import rigorous_columns

    ref = rigorous_columns(model, x, torch.tensor([float(r["p_lower"]) for r in rows], dtype=torch.float64),
                           torch.tensor([float(r["sigma_min"]) for r in rows], dtype=torch.float64))
    np.testing.assert_allclose(got_mean, ref["radius_rigorous_mean"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got_full, ref["radius_rigorous_full"].numpy(), rtol=1e-6)
    assert (got_full <= got_mean * (1 + 1e-9)).all() and (got_mean > 0).any()
    assert "radius_rigorous_mean" in cert.extras
    rc, out, err = _run(capsys, "certify", run_dir, "--n", 4, "--r", 1.0, "--samples", 100, "--no-rigorous",
                        "--out", tmp_path / "n.csv", "--quiet")
    assert rc == 0, err
    assert "radius_rigorous_mean" not in read_csv(tmp_path / "n.csv")[0] and "rigorous" in out


@pytest.mark.parametrize("preset", ["cheap", "legacy"])
def test_attack_csv_has_both_damages_and_the_preset(run_dir, capsys, tmp_path, preset):
    """Both damage columns side by side, the preset and objective per input and in the summary;
    the deterministic damage is recomputed from the saved perturbation's model independently."""
    rc, out, err = _run(capsys, "attack", run_dir, "--n", 5, "--eps", 0.5, "--preset", preset, "--out",
                        tmp_path / "a", "--quiet")
    assert rc == 0, err
    rows = read_csv(tmp_path / "a" / "attack.csv")
    assert {"damage", "expected_damage", "preset", "objective"} <= set(rows[0])
    assert {r["preset"] for r in rows} == {preset}
    assert all(float(r["damage"]) > 0 and float(r["expected_damage"]) > 0 for r in rows)
    meta = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert meta["preset"] == preset and meta["summary"]["preset"] == preset
    assert "expected damage median" in out and "damage median" in out and preset in out
    assert ("steps" in meta) == (preset == "legacy")


def test_attack_legacy_reproduces_max_damage_attack(run_dir, capsys, tmp_path):
    """--preset legacy is today's single PGD run: the same seed gives max_damage_attack's damages
    (two batches, so the generator must be shared across batches exactly as the library is called)."""
    from robvae import load, load_dataset
    from robvae.attacks import max_damage_attack
    from robvae.metrics import reconstruction_damage

    rc, _, err = _run(capsys, "attack", run_dir, "--n", 6, "--eps", 0.7, "--preset", "legacy", "--steps", 7,
                      "--restarts", 2, "--eta-samples", 2, "--batch-size", 3, "--seed", 11, "--out", tmp_path / "l",
                      "--quiet")
    assert rc == 0, err
    got = [float(r["damage"]) for r in read_csv(tmp_path / "l" / "attack.csv")]
    model = load(run_dir).model
    x = load_dataset("digits", "test").images[:6]
    g = torch.Generator().manual_seed(11)
    delta = torch.cat([max_damage_attack(model, x[i:i + 3], 0.7, steps=7, restarts=2, eta_samples=2, generator=g)
                       for i in (0, 3)])
    np.testing.assert_allclose(got, reconstruction_damage(model, x, delta).numpy(), rtol=1e-5)
    # a different seed moves the numbers (the comparison can fail)
    g = torch.Generator().manual_seed(12)
    other = torch.cat([max_damage_attack(model, x[i:i + 3], 0.7, steps=7, restarts=2, eta_samples=2, generator=g)
                       for i in (0, 3)])
    assert not np.allclose(got, reconstruction_damage(model, x, other).numpy(), rtol=1e-5)


def test_attack_pgd_settings_need_legacy(run_dir, capsys):
    rc, _, err = _run(capsys, "attack", run_dir, "--n", 2, "--eps", 0.5, "--steps", 3)
    assert rc == 2 and "--preset legacy" in err


def test_attack_cli_is_one_library_call(run_dir, capsys, tmp_path):
    """robvae attack writes what robvae.evaluation.attack_report returns (rows, summary), and the
    library refuses PGD settings for the ensemble presets as the CLI does."""
    from robvae import load, load_dataset
    from robvae.errors import InputError
    from robvae.evaluation import ATTACK_COLUMNS, attack_report

    rc, out, err = _run(capsys, "attack", run_dir, "--n", 4, "--eps", 0.4, "--seed", 3, "--out", tmp_path / "a",
                        "--quiet")
    assert rc == 0, err
    rows = read_csv(tmp_path / "a" / "attack.csv")
    x = load_dataset("digits", "test").images[:4]
    rep = attack_report(load(run_dir).model, x, 0.4, seed=3, progress=False)
    assert rep.out_dir is None and rep.paths == {} and tuple(rows[0]) == ATTACK_COLUMNS
    assert [r["objective"] for r in rows] == [r["objective"] for r in rep.rows]
    for k in ("delta_norm", "damage", "expected_damage", "ssim"):
        np.testing.assert_allclose([float(r[k]) for r in rows], [r[k] for r in rep.rows], rtol=1e-6)
    meta = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert meta["summary"]["damage median"] == pytest.approx(rep.summary["damage median"], rel=1e-6)
    assert rep.delta.shape == x.shape
    # another seed moves the numbers (the comparison can fail)
    other = attack_report(load(run_dir).model, x, 0.4, seed=4, progress=False)
    assert not np.allclose([r["expected_damage"] for r in other.rows], [r["expected_damage"] for r in rep.rows])
    with pytest.raises(InputError, match="legacy"):
        attack_report(load(run_dir).model, x, 0.4, steps=3)


def test_out_paths_that_would_replace_a_runs_files_are_refused(run_dir, capsys, tmp_path):
    """Found by an audit: --out RUN/config.csv wrote the summary over the run's config.json (the
    run could no longer be loaded), and --out RUN/model.safetensors wrote a CSV over the weights."""
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for cmd, extra in (("certify", ["--r", 1.0, "--samples", 50]), ("margin", ["--r", 1.0])):
        for out, needle in ((run_dir / "config.csv", "would replace .*config.json, which is not an earlier"),
                            (run_dir / "model.safetensors", "must end in .csv")):
            rc, _, err = _run(capsys, cmd, run_dir, "--n", 2, *extra, "--out", out, "--quiet")
            assert rc == 2 and re.search(needle, err), err
            assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert not list(run_dir.glob("*.partial"))
    # an earlier result of the same command is replaced as before
    for _ in range(2):
        rc, _, err = _run(capsys, "certify", run_dir, "--n", 2, "--r", 1.0, "--samples", 50, "--out",
                          tmp_path / "c.csv", "--quiet")
        assert rc == 0, err


def test_a_given_r_relative_wins_over_an_r_from_a_default_map(run_dir, capsys, tmp_path):
    """Only radius options the user gave conflict: an r from a default map (a config file) yields to a
    --r-relative typed on the command line; an r typed there wins over the map's default."""
    from robvae.cli import app

    def run(*args):
        app.main([str(a) for a in args], standalone_mode=False, default_map={"certify": {"r": 0.7}})
        return json.loads((tmp_path / "c.json").read_text())

    common = ("certify", run_dir, "--n", 3, "--n-samples", 100, "--no-rigorous", "--executor", "serial", "--quiet",
              "--out", tmp_path / "c.csv")
    assert run(*common)["r"] == pytest.approx(0.7)  # the map's r replaces --r-relative's default
    got = run(*common, "--r-relative", 1.0)
    assert got["r_relative"] == 1.0 and got["r"] != pytest.approx(0.7)
    assert run(*common, "--r", 0.9)["r"] == pytest.approx(0.9)


def test_a_zero_median_r_min_names_the_cause_and_the_way_out():
    from robvae.evaluation import relative_radius

    with pytest.raises(ValueError, match=r"median r_min is 0: .*decoder that ignores z.*give an absolute r \(--r, EvalConfig.r\)"):
        relative_radius(1.5, torch.zeros(4))
    assert relative_radius(1.5, torch.tensor([1.0, 2.0, 3.0, 10.0])) == pytest.approx(3.75)  # numpy's median 2.5
    with pytest.raises(ValueError, match="median r_min is NaN"):
        relative_radius(1.5, torch.full((3,), float("nan")))


def test_certify_and_margin_find_the_same_r_whatever_the_batch_size(run_dir, capsys, tmp_path):
    """The calibration draws in fixed blocks (CALIBRATION_BLOCK), not per --batch-size (review)."""
    from robvae.evaluation import CALIBRATION_BLOCK

    assert CALIBRATION_BLOCK == 100
    rc, _, err = _run(capsys, "margin", run_dir, "--n", 4, "--n-samples", 100, "--batch-size", 1, "--margin-tol", 0.5,
                      "--no-rigorous", "--out", tmp_path / "m.csv", "--quiet")
    assert rc == 0, err
    rc, _, err = _run(capsys, "certify", run_dir, "--n", 4, "--n-samples", 100, "--no-rigorous",
                      "--executor", "serial", "--out", tmp_path / "c.csv", "--quiet")
    assert rc == 0, err
    cert = json.loads((tmp_path / "c.json").read_text())
    assert cert["r"] == json.loads((tmp_path / "m.json").read_text())["summary"]["r"]
    assert cert["calibration_samples"] == 100


def test_an_output_that_cannot_be_written_is_one_line_and_status_2(run_dir, tmp_path, monkeypatch, capsys):
    """A read-only or full disk (OSError EROFS / ENOSPC) gave a traceback and status 1; the
    guide promises one line and status 2, as for every other environment problem."""
    import errno

    from robvae import fileio

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "atomic_write_bytes", full)  # every file robvae writes goes through it
    rc = main(["certify", str(run_dir), "--n", "3", "--r", "1", "--samples", "50", "--executor", "serial",
               "--no-rigorous", "--out", str(tmp_path / "c.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("robvae: error: ") and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1


def test_json_n_is_the_number_of_inputs_certified_not_the_number_asked(run_dir, tmp_path, capsys):
    """--n 5000 on digits' test split (fewer images) certified them all but wrote "n": 5000."""
    rc = main(["certify", str(run_dir), "--n", "5000", "--r", "1", "--samples", "20", "--executor", "serial",
               "--no-rigorous", "--out", str(tmp_path / "c.csv"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rows = read_csv(tmp_path / "c.csv")
    meta = json.loads((tmp_path / "c.json").read_text())
    assert 0 < len(rows) < 5000 and meta["n"] == len(rows)


def test_a_run_folder_certifies_attacks_and_measures_images_from_an_inputs_file(run_dir, capsys, tmp_path):
    """`robvae certify|attack|margin RUN --inputs FILE`: the run's model on the file's images (before,
    --inputs went with --model only). The numbers are those of the same images taken from the split
    (here the file holds the first 12 test images), serial and in worker processes; the outputs are
    named after the file and the JSON names it."""
    from robvae import load_dataset

    x = load_dataset("digits", "test").images[:12]
    np.save(tmp_path / "imgs.npy", x.numpy())
    common = ("--r", 1.0, "--samples", 300, "--seed", 5, "--quiet")
    rc, _, err = _run(capsys, "certify", run_dir, "--n", 12, *common, "--out", tmp_path / "split.csv")
    assert rc == 0, err
    for executor in ("serial", "local"):
        out = tmp_path / f"file-{executor}.csv"
        rc, _, err = _run(capsys, "certify", run_dir, "--inputs", tmp_path / "imgs.npy", *common, "--executor",
                          executor, "--workers", 1 if executor == "serial" else 2, "--out", out)
        assert rc == 0, err
        want, got = read_csv(tmp_path / "split.csv"), read_csv(out)
        for col in ("p", "p_lower", "n_drawn", "radius", "radius_sound", "radius_rigorous_mean"):
            np.testing.assert_allclose([float(r[col]) for r in got], [float(r[col]) for r in want], rtol=1e-6,
                                       err_msg=f"{executor} {col}")
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["split"] is None and meta["inputs"] == str(tmp_path / "imgs.npy") and "model" not in meta
        assert meta["n"] == 12 and meta["executor"] == executor
    # default outputs inside the run folder, named after the file; --n takes the first n images
    rc, _, err = _run(capsys, "certify", run_dir, "--inputs", tmp_path / "imgs.npy", "--n", 5, *common)
    assert rc == 0, err
    assert len(read_csv(run_dir / "certify-imgs.csv")) == 5
    rc, _, err = _run(capsys, "margin", run_dir, "--inputs", tmp_path / "imgs.npy", "--n", 3, "--r", 1.0,
                      "--samples", 100, "--quiet")
    assert rc == 0, err
    margin = read_csv(run_dir / "margin-imgs.csv")
    assert len(margin) == 3 and all(float(r["margin"]) >= 0 for r in margin)
    mj = json.loads((run_dir / "margin-imgs.json").read_text())
    assert mj["inputs"] == str(tmp_path / "imgs.npy") and mj["split"] is None and mj["n"] == 3
    assert mj["evaluation"]["split"] is None and mj["evaluation"]["n"] == 3  # not the unused --split / --n default
    rc, _, err = _run(capsys, "attack", run_dir, "--inputs", tmp_path / "imgs.npy", "--n", 4, "--eps", 0.5,
                      "--preset", "legacy", "--steps", 2, "--restarts", 1, "--quiet")
    assert rc == 0, err
    assert len(read_csv(run_dir / "attack-imgs" / "attack.csv")) == 4


def test_a_run_folder_with_inputs_of_another_shape_or_a_dataset_is_refused(run_dir, capsys, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((3, 1, 28, 28), np.float32))
    rc, _, err = _run(capsys, "certify", run_dir, "--inputs", tmp_path / "big.npy", "--r", 1.0, "--quiet")
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "(3, 1, 28, 28)" in lines[0] and "[B, 1, 8, 8]" in lines[0], err
    rc, _, err = _run(capsys, "certify", run_dir, "--dataset", "mnist", "--r", 1.0, "--quiet")
    assert rc == 2 and "--dataset goes with --model" in err
    np.save(tmp_path / "few.npy", np.zeros((3, 1, 8, 8), np.float32))
    rc, _, err = _run(capsys, "certify", run_dir, "--inputs", tmp_path / "few.npy", "--n", 5, "--r", 1.0,
                      "--samples", 20, "--data-dir", tmp_path, "--out", tmp_path / "few.csv", "--quiet")
    assert rc == 0, err
    assert "--n 5" in err and "--data-dir" in err and "not used" in err
    assert len(read_csv(tmp_path / "few.csv")) == 3


def _train_copy(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest)
    for pattern in ("certify-*", "margin-*", "attack-*"):  # results other tests wrote into the shared run
        for f in dest.glob(pattern):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    return dest


def test_a_result_interrupted_between_its_csv_and_json_is_never_a_finished_looking_pair(run_dir, capsys, tmp_path,
                                                                                        monkeypatch):
    """Audit h73: certify / margin / attack wrote their CSV, then their JSON; an interrupt between
    the two left the new CSV beside the previous run's JSON (a CSV of 1,000 draws under a JSON of
    500), and attack / margin said "nothing was written". Now the old JSON goes first and the new
    one comes last, carrying the CSV's digest; robvae report names what is not a result."""
    from robvae import fileio

    run = _train_copy(run_dir, tmp_path / "run")
    rc, _, err = _run(capsys, "certify", run, "--n", 6, "--r", 1.0, "--samples", 100, "--quiet")
    assert rc == 0, err
    first = json.loads((run / "certify-test.json").read_text())
    assert first["csv_sha256"] == fileio.file_sha256(run / "certify-test.csv") and first["run_digest"]
    real = fileio.write_json

    def dies_on_results(path, obj):
        if Path(path).name in ("certify-test.json", "margin-test.json", "attack.json"):
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(fileio, "write_json", dies_on_results)
    rc, _, err = _run(capsys, "certify", run, "--n", 6, "--r", 1.0, "--samples", 200, "--quiet")
    assert rc == 130
    assert (run / "certify-test.csv").is_file() and not (run / "certify-test.json").exists()
    for args in (["attack", run, "--n", 3, "--eps", 0.5, "--preset", "legacy", "--steps", 2, "--restarts", 1],
                 ["margin", run, "--n", 3, "--r", 1.0, "--samples", 50]):
        rc, _, err = _run(capsys, *args, "--quiet")
        assert rc == 130 and "no complete result was written" in err
    monkeypatch.setattr(fileio, "write_json", real)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for name in ("certify-test.json", "margin-test.json", "attack-test/attack.json"):
        assert f"Not shown as this run's: {name}" in page and "has no summary beside it" in page
    # a pair whose CSV was replaced afterwards (by another, interrupted, run) is named too
    rc, _, err = _run(capsys, "certify", run, "--n", 6, "--r", 1.0, "--samples", 100, "--quiet")
    assert rc == 0, err
    csv_path = run / "certify-test.csv"
    csv_path.write_bytes(csv_path.read_bytes().replace(b"\r\n", b"\n"))  # line endings (git, a tool): the same
    assert main(["report", str(run)]) == 0
    assert "Not shown as this run's: certify-test.json" not in (run / "report.html").read_text()
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0], "9" + lines[1][1:], *lines[2:]]) + "\n")  # another content
    assert main(["report", str(run)]) == 0
    assert "is not the CSV this summary describes" in (run / "report.html").read_text()


def test_results_of_an_earlier_state_of_the_run_are_flagged_and_a_run_changed_underneath_writes_nothing(
        run_dir, capsys, tmp_path, monkeypatch):
    """Audit h73: after robvae train extended a run, its old certify / margin / attack results were
    rendered by robvae report as the run's (median radius 0.48 where the new model gives 0.19);
    and a train extending the run while attack / margin ran made them save the old model's
    results into it. Results record the run's digest; a run changed underneath is refused."""
    from robvae.cli import robust
    from robvae.fileio import load_tensors, save_tensors

    run = _train_copy(run_dir, tmp_path / "run")
    rc, _, err = _run(capsys, "certify", run, "--n", 6, "--r", 1.0, "--samples", 100, "--quiet")
    assert rc == 0, err
    # the same train rerun on the finished run, on "another" device (review h77: it rewrote config.json
    # and the weights file, and every result read as stale): the same model, no alarm
    import dataclasses

    from robvae.training import TrainConfig, train

    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    train(dataclasses.replace(cfg, device="cpu:0"), run, progress=False)
    assert json.loads((run / "config.json").read_text())["device"] == "cpu:0"
    assert main(["report", str(run)]) == 0
    assert "Not shown as this run" not in (run / "report.html").read_text()

    def retrain():  # the weights change as an extension would change them
        tensors, meta = load_tensors(run / "model.safetensors")
        save_tensors(run / "model.safetensors", {k: v * 1.01 for k, v in tensors.items()}, meta)

    for command, target in (("attack", "attack_report"), ("margin", "margin_report")):
        real = getattr(robust, target)

        def changing(*a, _real=real, **k):
            retrain()
            return _real(*a, **k)

        monkeypatch.setattr(robust, target, changing)
        args = (["--eps", 0.5, "--preset", "legacy", "--steps", 2, "--restarts", 1] if command == "attack"
                else ["--r", 1.0, "--samples", 50])
        rc, _, err = _run(capsys, command, run, "--n", 3, *args, "--quiet")
        assert rc == 2 and f"changed while robvae {command} ran" in err, err
        assert not (run / f"{command}-test.csv").exists() and not (run / f"{command}-test").exists()
        monkeypatch.setattr(robust, target, real)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "certify-test.json: computed for another model than this run folder holds now" in page
    assert "median Theorem 1 radius" not in page  # its numbers are not shown as the run's


def test_temporaries_a_killed_write_left_are_removed_by_the_next_run(run_dir, capsys, tmp_path):
    """Audit h73: a SIGKILL between writing a temporary and renaming it left .NAME.XXXX.tmp for good
    beside certify / margin / attack results; the next run of the command removes them."""
    run = _train_copy(run_dir, tmp_path / "run")
    (run / "attack-test").mkdir()
    left = [run / ".certify-test.csv.abc12345.tmp", run / ".certify-test.json.x1y2z3w4.tmp",
            run / ".margin-test.json.q1w2e3r4.tmp", run / "attack-test" / ".attack.png.z9y8x7w6.tmp",
            run / "attack-test" / ".attack.csv.a1b2c3d4.tmp"]
    for f in left:
        f.write_text("half")
    keep = run / ".notes.txt.a1b2c3d4.tmp"  # not a temporary of these results: left alone
    keep.write_text("mine")
    for args in (["certify", run, "--n", 3, "--r", 1.0, "--samples", 50],
                 ["margin", run, "--n", 2, "--r", 1.0, "--samples", 50],
                 ["attack", run, "--n", 2, "--eps", 0.5, "--preset", "legacy", "--steps", 2, "--restarts", 1]):
        rc, _, err = _run(capsys, *args, "--quiet")
        assert rc == 0, err
    assert not [f for f in left if f.exists()] and keep.exists()


def test_margin_counts_the_brackets_left_wider_than_tol(run_dir, capsys, tmp_path):
    """Left alone in session 13: brackets wider than --tol (undecided budgets) were visible only in
    margin_upper. The summary counts them, recomputed here from the CSV."""
    rc, out, err = _run(capsys, "margin", run_dir, "--n", 12, "--r", 1.0, "--samples", 60, "--tol", 0.02,
                        "--out", tmp_path / "m.csv", "--quiet")
    assert rc == 0, err
    summary = json.loads((tmp_path / "m.json").read_text())["summary"]
    rows = [r for r in read_csv(tmp_path / "m.csv") if r["used"] == "True"]
    want = sum(float(r["margin_upper"]) - float(r["margin"]) > 0.02 * float(r["margin_upper"]) for r in rows)
    assert summary["n_wider_than_tol"] == want and f"n_wider_than_tol" in out
    assert 0 < want <= len(rows)  # at 60 draws some decisions stay unsettled


def test_out_never_replaces_a_csv_that_is_not_an_earlier_result(run_dir, capsys, tmp_path):
    """Audit h80: `robvae certify RUN --out RUN/metrics.csv` replaced the run's training metrics
    (the run could no longer be extended). An existing CSV without its summary is replaced only
    when its header is that command's (an interrupted earlier result)."""
    run = _train_copy(run_dir, tmp_path / "run")
    metrics = (run / "metrics.csv").read_bytes()
    for cmd, extra in (("certify", ["--samples", 20]), ("margin", ["--samples", 20])):
        rc, _, err = _run(capsys, cmd, run, "--n", 2, "--r", 1.0, *extra, "--out", run / "metrics.csv", "--quiet")
        assert rc == 2 and "is not an earlier robvae" in err and len(err.strip().splitlines()) == 1
        assert (run / "metrics.csv").read_bytes() == metrics and not (run / "metrics.json").exists()
    # an interrupted earlier certify (its CSV, no JSON) is replaced
    out = tmp_path / "c.csv"
    rc, _, err = _run(capsys, "certify", run, "--n", 2, "--r", 1.0, "--samples", 20, "--out", out, "--quiet")
    assert rc == 0, err
    out.with_suffix(".json").unlink()
    rc, _, err = _run(capsys, "certify", run, "--n", 3, "--r", 1.0, "--samples", 20, "--out", out, "--quiet")
    assert rc == 0, err
    assert len(read_csv(out)) == 3


def test_an_interrupt_while_the_figure_is_drawn_keeps_the_previous_result_whole(run_dir, capsys, tmp_path,
                                                                                monkeypatch):
    """Audit h80: an attack rerun interrupted while it drew its figure (about a second) had
    already removed the previous, complete result's JSON. The figure now comes first."""
    from robvae import fileio

    run = _train_copy(run_dir, tmp_path / "run")
    args = ["attack", run, "--n", 3, "--eps", 0.5, "--preset", "legacy", "--steps", 2, "--restarts", 1, "--quiet"]
    rc, _, err = _run(capsys, *args)
    assert rc == 0, err
    before = {f: (run / "attack-test" / f).read_bytes() for f in ("attack.csv", "attack.json")}
    real = fileio.write_results

    def interrupted_figure(csv_path, rows, json_path, doc, *, fieldnames=None, then=()):
        def dies():
            raise KeyboardInterrupt
        return real(csv_path, rows, json_path, doc, fieldnames=fieldnames, then=[dies])

    import robvae.evaluation as evaluation
    monkeypatch.setattr(evaluation, "write_results", interrupted_figure)
    rc, _, err = _run(capsys, *args[:-1], "--seed", 1, "--quiet")
    assert rc == 130
    assert {f: (run / "attack-test" / f).read_bytes() for f in before} == before


def test_a_write_that_fails_names_the_file(tmp_path, monkeypatch):
    """Audit h80: a full disk gave a bare "[Errno 28] No space left on device"."""
    import errno
    import os

    from robvae import fileio

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device: writing .*x.json") as e:
        fileio.write_json(tmp_path / "x.json", {"a": 1})
    assert e.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())
