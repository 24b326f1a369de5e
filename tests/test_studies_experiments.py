"""The bound-vs-margin, beta and tau studies end to end on tiny digits models (serial executor)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robvae.evaluation import EvalConfig, load_result, measured_margins
from robvae.studies import Executor, TrainOptions, beta_study, bound_vs_margin, quartiles, tau_study
from robvae.studies.experiments import _pooled_table

OPTS = TrainOptions(epochs=2, n_train=300, latent_dim=3, hidden=(32,), batch_size=64)
EV = EvalConfig(n=6, n_samples=150, margin_tol=0.3)
SERIAL = Executor(executor="serial", progress=False)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def beta_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("beta")
    return beta_study("digits", out, betas=[1, 8], train=OPTS, evaluation=EV, executor=SERIAL), out


def test_beta_study_tables_and_files(beta_out):
    res, out = beta_out
    for f in ("beta.png", "beta_table.csv", "beta_by_seed.csv", "per_input.csv", "summary.json", "study.json",
              "calibration.json"):
        assert (out / f).is_file(), f
    assert (out / "beta.png").read_bytes()[:8] == PNG
    table = {r["beta"]: r for r in res["table"]}
    assert sorted(table) == [1.0, 8.0]
    for beta, row in table.items():
        sel = [r for r in res["rows"] if r["beta"] == beta]
        assert len(sel) == 6 and row["n_inputs"] == 6
        for m in ("margin", "damage", "sigma_mean", "jac_frobenius", "radius"):
            q1, med, q3 = quartiles(measured_margins(sel) if m == "margin" else [r[m] for r in sel])
            assert (row[f"{m}_q1"], row[f"{m}_median"], row[f"{m}_q3"]) == pytest.approx((q1, med, q3))
    # one r for every model: r_relative x the largest median r_min over the models
    cal = json.loads((out / "calibration.json").read_text())
    assert res["summary"]["r"] == pytest.approx(1.5 * max(cal["median_r_min"].values()))
    assert all(r["r"] == pytest.approx(res["summary"]["r"]) for r in res["rows"])
    # the same attack budget (data-relative) for every model
    assert len({round(r["attack_eps"], 9) for r in res["rows"]}) == 1
    meta = json.loads((out / "study.json").read_text())
    assert meta["command"].startswith("robvae study beta --dataset digits") and "--betas 1,8" in meta["command"]


def test_beta_study_resumes_without_recomputing(beta_out, monkeypatch):
    res, out = beta_out
    import robvae.robustness as rb
    import robvae.training as tr

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(tr, "train", boom)
    monkeypatch.setattr(rb, "certify", boom)
    again = beta_study("digits", out, betas=[1, 8], train=OPTS, evaluation=EV, executor=SERIAL)
    assert [r["margin_median"] for r in again["table"]] == [r["margin_median"] for r in res["table"]]


def test_tau_study_minimum_r_effect(tmp_path):
    # r is calibrated on the tau = 0 model; a floor of 3 makes the noise alone exceed it
    res = tau_study("digits", tmp_path, taus=[0, 3], train=OPTS, evaluation=EV, executor=SERIAL)
    table = {r["tau"]: r for r in res["table"]}
    assert table[0.0]["p_median"] > 0.5
    assert table[3.0]["p_median"] <= 0.5 and table[3.0]["frac_not_robust_clean"] > 0.5
    assert res["summary"]["taus_with_median_p_at_most_half"] == [3.0]
    assert table[3.0]["sigma_min_q1"] >= 3.0  # the floor holds
    assert (tmp_path / "tau.png").read_bytes()[:8] == PNG


def test_bound_vs_margin_study(tmp_path):
    res = bound_vs_margin("digits", tmp_path, train=OPTS, evaluation=EV, executor=SERIAL)
    s = res["summary"]
    rows = res["rows"]
    used = [r for r in rows if np.isfinite(r["radius"]) and r["radius"] > 0 and not r["margin_capped"]
            and not r["p_clean"] <= 0.5]
    assert s["theorem1"]["n_used"] == len(used) and s["theorem1"]["n"] == len(rows)
    assert s["theorem1"]["n_violations"] == sum(r["radius"] > r["margin"] for r in used)
    if len(used) > 2:
        assert s["theorem1"]["pearson"] == pytest.approx(np.corrcoef([r["margin"] for r in used],
                                                                     [r["radius"] for r in used])[0, 1])
    for f in ("bound_vs_margin.png", "bound_variants.png", "likelihood_vs_margin.png"):
        assert (tmp_path / f).read_bytes()[:8] == PNG


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="objective"):
        beta_study("digits", tmp_path, objective="elbo")
    with pytest.raises(ValueError, match="taus"):
        tau_study("digits", tmp_path, taus=[-1])


def test_cli_bound_vs_margin_and_report(tmp_path, capsys):
    from robvae.cli import main

    out = tmp_path / "bvm"
    args = ["study", "bound-vs-margin", "--dataset", "digits", "--out", str(out), "--epochs", "1", "--n-train", "200",
            "--latent-dim", "2", "--hidden", "16", "--n", "4", "--n-samples", "100",
            "--margin-tol", "0.5", "--executor", "serial", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    n_used = json.loads((out / "summary.json").read_text())["theorem1"]["n_used"]
    assert f"{n_used} of 4 inputs compared" in printed
    assert ("too few to correlate" in printed) == (n_used < 3) and ("Pearson rho" in printed) == (n_used >= 3)
    meta = json.loads((out / "study.json").read_text())
    assert meta["command"].startswith("robvae study bound-vs-margin --dataset digits")
    assert meta["config"]["evaluation"]["n"] == 4 and meta["config"]["train"]["epochs"] == 1
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()


class _Res:
    def __init__(self, rows, elbo=-1.0):
        self.rows = rows
        self.summary = type("S", (), {"test_elbo": elbo})()


def _row(margin, robust_clean=True, capped=False, **kw):
    from robvae.studies.experiments import SWEEP_METRICS

    base = {**{m: 1.0 for m in SWEEP_METRICS}, "margin": margin, "margin_robust_clean": robust_clean,
            "margin_capped": capped, "p": 0.9, "abstain": False}
    return {**base, **kw}


def test_pooled_table_leaves_unknown_margins_out_and_marks_medians_at_the_cap():
    """Found by the studies audit: an input settled robust whose search settled no budget robust
    has margin 0 in the rows, an unknown; the tables averaged it as a measured 0 (a tau study's
    median margin 0.1485 against 0.2474 over the measured ones), and a median at the search's cap
    was plotted as a margin."""
    rows_a = [_row(0.0), _row(0.0), _row(0.3), _row(0.5), _row(0.7), _row(0.0, robust_clean=False)]
    rows_b = [_row(8.0, capped=True), _row(8.0, capped=True), _row(0.2)]
    results = {"a": _Res(rows_a), "b": _Res(rows_b)}
    settings = {"a": {"tau": 0.0, "seed": 0}, "b": {"tau": 1.0, "seed": 0}}
    _, table, per_seed = _pooled_table(results, settings, "tau")
    a, b = table
    # unknowns (robust, margin 0, not capped) left out; a 0 of an input not robust unperturbed kept
    assert (a["margin_q1"], a["margin_median"], a["margin_q3"]) == pytest.approx(quartiles([0.3, 0.5, 0.7, 0.0]))
    assert a["n_margin_unknown"] == 2 and not a["margin_median_at_cap"]
    assert per_seed[0]["margin_median"] == pytest.approx(0.4)
    assert b["margin_median"] == 8.0 and b["margin_median_at_cap"] and b["n_margin_unknown"] == 0
    assert measured_margins(rows_a)[:2].tolist() == [pytest.approx(np.nan, nan_ok=True)] * 2


def test_duplicate_seeds_count_once_and_a_damaged_evaluation_is_recomputed(tmp_path):
    """Found by the studies audit: --seeds 0,0 counted every input twice; and a damaged evaluation
    file failed every rerun ("rerun the command to compute it again"), its trial being "done"."""
    res = bound_vs_margin("digits", tmp_path, seeds=(0, 0), train=OPTS, evaluation=EV, executor=SERIAL)
    assert len(res["rows"]) == 6 and res["summary"]["seeds"] == [0]
    table = next((tmp_path / "eval").rglob("per_input.csv"))
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-2]) + "\n")  # two rows lost
    again = bound_vs_margin("digits", tmp_path, seeds=(0,), train=OPTS, evaluation=EV, executor=SERIAL)
    assert len(again["rows"]) == 6 and len(load_result(table.parent).rows) == 6
    assert [r["margin"] for r in again["rows"]] == [r["margin"] for r in res["rows"]]


def test_measured_margins_read_robvae_margins_csv_too():
    """Found by the session's review: `robvae margin`'s CSV names the flags robust_clean / capped,
    and measured_margins kept its unknown zeros."""
    rows = [{"margin": "0.0", "robust_clean": "True", "capped": "False"},
            {"margin": "0.0", "robust_clean": "False", "capped": "False"},
            {"margin": "8.0", "robust_clean": "True", "capped": "True"},
            {"margin": "0.4", "robust_clean": "True", "capped": "False"}]
    got = measured_margins(rows)
    assert np.isnan(got[0]) and got[1:].tolist() == [0.0, 8.0, 0.4]


def test_an_input_undecided_unperturbed_has_an_unknown_margin():
    """Found by the session's review: an input whose clean estimate was undecided (neither settled
    robust nor settled NOT robust) kept margin 0 as a measurement; one settled NOT robust is a
    measured 0."""
    rows = [{"margin": 0.0, "margin_robust_clean": False, "margin_not_robust_clean": False, "margin_capped": False},
            {"margin": 0.0, "margin_robust_clean": False, "margin_not_robust_clean": True, "margin_capped": False},
            {"margin": 0.5, "margin_robust_clean": True, "margin_not_robust_clean": False, "margin_capped": False}]
    got = measured_margins(rows)
    assert np.isnan(got[0]) and got[1:].tolist() == [0.0, 0.5]
    old = [{k: v for k, v in r.items() if k != "margin_not_robust_clean"} for r in rows]  # rows of earlier versions
    assert measured_margins(old).tolist() == [0.0, 0.0, 0.5]
    # pooled, in either order (a resumed study mixes both): each row by its own rule
    assert np.isnan(measured_margins([rows[0], old[1]])[0]) and measured_margins([rows[0], old[1]])[1] == 0.0
    assert measured_margins([old[0], rows[0]])[0] == 0.0 and np.isnan(measured_margins([old[0], rows[0]])[1])


def test_calibrated_r_recomputes_from_the_studys_own_per_input_table(beta_out, tmp_path):
    """Found by audit h60: the beta / tau studies drew r_min for r with one generator over all
    inputs, the evaluation (per_input.csv's r_min) in seeded blocks (calibration_r_min), so r was
    not r_relative x the largest median r_min of the study's own table. A calibration.json of the
    old draws (its key without the version) is computed again, not trusted."""
    res, out = beta_out
    rows = res["rows"]
    meds = {(b, s): float(np.median([r["r_min"] for r in rows if r["beta"] == b and r["seed"] == s]))
            for b, s in {(r["beta"], r["seed"]) for r in rows}}
    assert res["summary"]["r"] == 1.5 * max(meds.values())
    assert all(r["r"] == res["summary"]["r"] for r in rows)
    cal_path = out / "calibration.json"
    cal = json.loads(cal_path.read_text())
    assert sorted(cal["median_r_min"].values()) == sorted(meds.values())
    old = {**cal, "key": {k: v for k, v in cal["key"].items() if k != "version"}, "r": 123.0,
           "median_r_min": {n: 82.0 for n in cal["median_r_min"]}}
    cal_path.write_text(json.dumps(old))
    again = beta_study("digits", out, betas=[1, 8], train=OPTS, evaluation=EV, executor=SERIAL)
    new = json.loads(cal_path.read_text())
    assert new["key"] == cal["key"] and new["r"] == again["summary"]["r"]
    # (to the last bit: r, and with it every evaluation, is recomputed where this process's thread
    # count rounds r_min otherwise than the first run's)
    assert again["summary"]["r"] == 1.5 * max(np.median([r["r_min"] for r in again["rows"] if r["beta"] == b])
                                              for b in (1.0, 8.0))


def test_missing_data_is_one_line_before_any_trial_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Found by audit h60: ``robvae study beta --dataset mnist --data-dir /nonexistent`` started
    its training trials (each failing on the data) and left a study folder behind."""
    from robvae.cli import main
    from robvae.errors import DataError
    import robvae.studies.experiments as ex

    def boom(*a, **k):
        raise AssertionError("a trial started")

    monkeypatch.setattr(ex, "run_trials", boom)
    missing = tmp_path / "nonexistent"
    with pytest.raises(DataError, match="mnist train files not found"):
        tau_study("mnist", tmp_path / "t", data_dir=str(missing), taus=[0], train=OPTS, evaluation=EV, executor=SERIAL)
    assert not (tmp_path / "t").exists()
    for study, extra in (("beta", ["--betas", "1"]), ("tau", ["--taus", "0"]), ("bound-vs-margin", [])):
        out = tmp_path / study
        assert main(["study", study, "--dataset", "mnist", "--data-dir", str(missing), "--out", str(out),
                     "--executor", "serial", "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("robvae: error: mnist train files not found") and "\n" not in err, err
        assert not out.exists()
