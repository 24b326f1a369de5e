"""robvae.evaluation: per-input numbers, the summary statistics, files and resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from robvae.evaluation import COLUMNS, EvalConfig, evaluate, load_result, summarize


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    cfg = TrainConfig(dataset="digits", n_train=300, model=ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(32,)),
                      epochs=2, batch_size=64)
    return train(cfg, tmp_path_factory.mktemp("run"), progress=False)


FAST = dict(n=8, n_samples=200, margin_tol=0.25, seed=3)


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate(tiny_run, EvalConfig(**FAST), out_dir=out, progress=False), out


def test_columns_and_relations(evaluated, tiny_run):
    res, _ = evaluated
    assert len(res.rows) == 8 and list(res.rows[0]) == list(COLUMNS)
    rmin, xn = res.column("r_min"), res.column("x_norm")
    # r = 1.5 x median r_min; attack budget = 0.1 x median ||x||
    assert np.allclose(res.column("r"), 1.5 * np.median(rmin), rtol=1e-6)
    assert np.allclose(res.column("attack_eps"), 0.1 * np.median(xn), rtol=1e-6)
    from robvae.data import load_dataset

    imgs = load_dataset("digits", "test").images[:8]
    assert np.allclose(xn, imgs.flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    # Theorem 1 per input: sigma_min * probit(p) / ||J||_F where p > 1/2
    p, smin, jf, rad = res.column("p"), res.column("sigma_min"), res.column("jac_frobenius"), res.column("radius")
    expect = np.where(p > 0.5, smin * stats.norm.ppf(p) / jf, 0.0)
    assert np.allclose(rad, expect, rtol=1e-4)
    # spectral <= Frobenius, so the spectral radius is never smaller
    assert (res.column("jac_spectral") <= jf * (1 + 1e-5)).all()
    assert (res.column("radius_spectral") >= rad * (1 - 1e-5)).all()
    # damage is a norm of a change of reconstruction: >= 0 and finite; margins non-negative
    assert (res.column("damage") >= 0).all() and np.isfinite(res.column("damage")).all()
    assert (res.column("margin") >= 0).all()
    with torch.inference_mode():
        sig = tiny_run.model.encode(imgs)[1]
    assert np.allclose(res.column("sigma_mean"), sig.mean(1).numpy(), rtol=1e-5)
    rec = (tiny_run.model.reconstruct(imgs) - imgs).flatten(1).norm(dim=1).detach().numpy()
    assert np.allclose(res.column("reconstruction_error"), rec, rtol=1e-5)


def test_files_written_and_resumed(evaluated, tiny_run, monkeypatch):
    res, out = evaluated
    for f in ("per_input.csv", "summary.json", "eval_config.json"):
        assert (out / f).is_file()
    json.loads((out / "summary.json").read_text())  # strict JSON (no NaN literals)
    # same config: loaded, nothing recomputed (the estimators are not even called)
    import robvae.evaluation as rb

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(rb, "certify", boom)
    again = evaluate(tiny_run, EvalConfig(**FAST), out_dir=out, progress=False)
    assert again.loaded
    assert np.allclose(again.column("radius"), res.column("radius"))
    assert load_result(out).summary["n"] == 8
    # a different config recomputes
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate(tiny_run, EvalConfig(**{**FAST, "n": 7}), out_dir=out, progress=False)


def test_a_damaged_per_input_table_is_computed_again_not_reused(evaluated, tiny_run, monkeypatch, tmp_path):
    """Found by an audit: a per_input.csv that had lost rows was reused (a study's statistics
    changed silently), and one cut mid-row crashed with a TypeError. load_result names the file;
    evaluate computes the table again."""
    import shutil

    import robvae.evaluation as rb
    from robvae.errors import CheckpointError

    _, out = evaluated
    text = (out / "per_input.csv").read_text()
    lines = text.splitlines(keepends=True)
    for damaged in ("".join(lines[:6]), text[: len(text) - len(lines[-1]) // 2]):
        copy = tmp_path / f"eval{len(damaged)}"
        shutil.copytree(out, copy)
        (copy / "per_input.csv").write_text(damaged)
        with pytest.raises(CheckpointError, match="per_input.csv is damaged"):
            load_result(copy)

        def boom(*a, **k):
            raise AssertionError("recomputed")

        monkeypatch.setattr(rb, "certify", boom)
        with pytest.raises(AssertionError, match="recomputed"):
            evaluate(tiny_run, EvalConfig(**FAST), out_dir=copy, progress=False)
        monkeypatch.undo()


def test_summary_is_typed_and_reloads_identically(evaluated):
    """EvalSummary: typed fields from one summarize(); summary.json is its to_dict(); the summary of
    a loaded folder (statistics recomputed from the CSV rows) equals the one computed in memory."""
    from robvae.evaluation import EvalSummary, jsonable
    from robvae.stats import BoundStats, bound_stats

    res, out = evaluated
    s = res.summary
    assert isinstance(s, EvalSummary) and isinstance(s.bounds["theorem1"], BoundStats)
    assert s.n == 8 and s.median("radius") == pytest.approx(np.median(res.column("radius")))
    assert s.n_abstain == int(sum(r["abstain"] for r in res.rows))
    # the Theorem 1 bound's statistics are exactly bound_stats over the same columns (an independent call)
    unknown = (res.column("margin_robust_clean") > 0) & (res.column("margin") == 0) & (res.column("margin_capped") == 0)
    want = bound_stats(res.column("radius"), np.where(unknown, np.nan, res.column("margin")),
                       capped=res.column("margin_capped") > 0,
                       abstain=res.column("abstain") > 0,
                       p_clean=np.where(res.column("margin_robust_clean") > 0, res.column("p_clean"), 0.0),
                       refuted_at=res.column("margin_refuted_at"))
    assert s.bounds["theorem1"] == want
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(jsonable(s.to_dict())))
    loaded = load_result(out).summary
    assert loaded.bounds == s.bounds and loaded.columns.keys() == s.columns.keys()
    assert loaded.r == pytest.approx(s.r) and loaded.test_elbo == pytest.approx(s.test_elbo)
    assert s["n"] == 8 and s.get("rigorous_vs_margin") == s.rigorous_vs_margin  # the former dict interface


def test_absolute_r_and_eps_and_no_margin(tiny_run):
    res = evaluate(tiny_run, EvalConfig(**{**FAST, "r": 0.7, "attack_eps": 0.25, "margin": False, "n": 4}),
                   progress=False)
    assert np.all(res.column("r") == 0.7) and np.all(res.column("attack_eps") == 0.25)
    assert np.isnan(res.column("margin")).all()
    assert res.summary["r_from"] == "absolute"


def _rows(margin, bound, capped=None, p=None):
    n = len(margin)
    capped = capped or [False] * n
    p = p or [0.9] * n
    return [{"margin": m, "radius": b, "radius_sound": b / 2, "radius_spectral": b, "radius_whitened": b,
             "margin_capped": c, "abstain": pp <= 0.5, "abstain_sound": pp <= 0.5, "p": pp}
            for m, b, c, pp in zip(margin, bound, capped, p)]


def test_summarize_known_answers():
    margin = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0]
    bound = [0.5, 1.0, 1.5, 2.0, 6.0, 0.0]  # last: abstains (excluded), fifth: above the margin
    s = summarize(_rows(margin, bound, p=[0.9] * 5 + [0.4]))
    b = s["bounds"]["theorem1"]
    assert b["n_used"] == 5 and b["n_violations"] == 1
    assert b["pearson"] == pytest.approx(np.corrcoef(margin[:5], bound[:5])[0, 1])
    assert b["spearman"] == pytest.approx(1.0)
    assert s["n_abstain"] == 1 and s["n_not_robust_clean"] == 1
    assert s["margin"]["median"] == pytest.approx(3.5)
    assert s["bounds"]["sound"]["n_violations"] == 0
    # capped margins and infinite bounds are left out of the correlations
    s2 = summarize(_rows([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, math.inf, 0.1], capped=[False, False, False, True]))
    assert s2["bounds"]["theorem1"]["n_used"] == 2 and s2["n_infinite_radius"] == 1 and s2["n_margin_capped"] == 1
    assert s2["bounds"]["theorem1"]["n_infinite"] == 1 and s2["bounds"]["theorem1"]["n_capped"] == 1
    assert s2["bounds"]["theorem1"]["pearson"] == pytest.approx(1.0)


def test_config_validation():
    with pytest.raises(ValueError, match="margin_mode"):
        EvalConfig(margin_mode="both")
    with pytest.raises(ValueError, match="r must be"):
        EvalConfig(r=-1.0)
    with pytest.raises(ValueError, match="unknown evaluation fields"):
        EvalConfig.from_dict({"nn": 3})
    assert EvalConfig.from_dict(EvalConfig(n=5).to_dict()) == EvalConfig(n=5)


# --- the attack ensemble and the rigorous radii (wired in by WIRE) ------------------------------

def _compared(res, column):
    """Inputs where a bound is compared with the margin, recomputed here without bound_stats: the
    bound is > 0 and finite, the search's clean estimate says robust, the margin is finite and not capped."""
    b, m = res.column(column), res.column("margin")
    return ((b > 0) & np.isfinite(b) & (res.column("p_clean") > 0.5) & (res.column("margin_robust_clean") == 1)
            & np.isfinite(m) & (m > 0) & (res.column("margin_capped") == 0))  # m = 0: no budget settled robust


@pytest.mark.parametrize("mode", ["full", "mean"])
def test_rigorous_radius_never_above_the_margin(evaluated, tiny_run, mode):
    """The rigorous radius of the margin's setting (full: sigma moves; mean: sigma held) holds for
    every perturbation, so it can never exceed the empirical margin; fails if the radius is wired
    to the wrong column or constants, or the margin search overstates nothing but the bound does."""
    res = evaluated[0] if mode == "full" else evaluate(tiny_run, EvalConfig(**{**FAST, "margin_mode": mode, "n": 6,
                                                                               "attack": False}), progress=False)
    col = f"radius_rigorous_{mode}"
    rig, margin = res.column(col), res.column("margin")
    assert np.isfinite(rig).all() and (rig >= 0).all()
    used = _compared(res, col)
    assert used.sum() >= 3  # enough inputs compared for the check to mean something
    assert (rig[used] <= margin[used]).all()
    # the summary counts the same thing through robvae.stats.bound_stats
    rv = res.summary["rigorous_vs_margin"]
    assert rv == {"column": col, "n_above_margin": 0, "n_refuted": 0, "n_compared": int(used.sum())}
    # the full radius also covers sigma moving, so it is never above the mean-only one
    assert (res.column("radius_rigorous_full") <= res.column("radius_rigorous_mean") * (1 + 1e-9)).all()
    assert res.summary["radius_rigorous_mean"]["median"] == pytest.approx(np.median(res.column("radius_rigorous_mean")))


def test_attack_columns_damage_and_preset(evaluated, tiny_run):
    """Both damages of the ensemble's perturbation, the preset and the objective, per input and in
    the summary; the deterministic damage is recomputed here from the model."""
    res, out = evaluated
    assert {r["attack_preset"] for r in res.rows} == {"cheap"}
    assert all(r["attack_objective"] in ("damage", "expected", "p", "kl", "start") for r in res.rows)
    dmg, exp = res.column("damage"), res.column("expected_damage")
    assert (dmg > 0).all() and (exp > 0).all() and np.isfinite(exp).all()
    assert not np.allclose(dmg, exp)  # two different quantities
    assert res.summary["attack_preset"] == "cheap"
    assert sum(res.summary["attack_objective"].values()) == len(res.rows)
    back = load_result(out)  # the strings survive the CSV
    assert [r["attack_preset"] for r in back.rows] == ["cheap"] * len(res.rows)
    assert np.allclose(back.column("expected_damage"), exp)


def test_rigorous_nan_for_models_without_bounds(tiny_run):
    """A model robvae has no Lipschitz bounds for: NaN radii and a note, no crash."""
    import dataclasses

    class Wrapped(torch.nn.Module):  # a user model: same numbers, unknown architecture
        def __init__(self, m):
            super().__init__()
            self.m = m

        def encode(self, x):
            return self.m.encode(x)

        def decode(self, z):
            return self.m.decode(z)

    run = dataclasses.replace(tiny_run, model=Wrapped(tiny_run.model))
    res = evaluate(run, EvalConfig(**{**FAST, "n": 3, "margin": False, "attack": False}), progress=False)
    assert np.isnan(res.column("radius_rigorous_mean")).all() and np.isnan(res.column("radius_rigorous_full")).all()
    assert "not available" in res.summary["rigorous_note"]
    assert res.summary["rigorous_vs_margin"]["n_compared"] == 0
    assert np.isfinite(res.column("radius")).all()  # the rest is computed as usual


def test_unsettled_clean_decision_is_not_a_margin_of_zero():
    """A margin search that could not settle "robust" unperturbed reports margin 0 (unknown): such an
    input is not compared (counted as disagreeing), even when its clean estimate p_clean > 1/2;
    without the flag (old CSVs) the comparison is as before and the bound would count as a violation."""
    from robvae.evaluation import rows_bound_stats

    base = {"radius": 0.01, "margin": 0.0, "margin_upper": 0.0, "p_clean": 0.55, "margin_capped": False,
            "abstain": False}
    settled = {"radius": 0.01, "margin": 0.3, "margin_upper": 0.31, "p_clean": 0.9, "margin_capped": False,
               "abstain": False, "margin_robust_clean": True}
    st = rows_bound_stats([{**base, "margin_robust_clean": False}, settled], "radius")
    assert (st.n_used, st.n_violations, st.n_disagree) == (1, 0, 1)
    st = rows_bound_stats([{**base, "margin_robust_clean": "False"}, settled], "radius")  # read back from CSV
    assert (st.n_used, st.n_violations, st.n_disagree) == (1, 0, 1)
    old = rows_bound_stats([base, {k: v for k, v in settled.items() if k != "margin_robust_clean"}], "radius")
    assert (old.n_used, old.n_violations) == (2, 1)


def test_a_margin_with_no_budget_settled_robust_is_not_compared():
    """Robust unperturbed, but the attacked estimate stayed undecided at every budget tried
    (p_r(x) = 0.59, 1,000 draws): the search reports margin 0, an unknown in [0, margin_upper],
    which once counted a rigorous radius of 0.0047 as "above the margin" on MNIST. It is counted
    without a margin now; a budget settled NOT robust below the bound still refutes it."""
    from robvae.evaluation import rows_bound_stats

    unknown = {"radius": 0.0047, "margin": 0.0, "margin_upper": 0.0047, "p_clean": 0.59, "margin_capped": False,
               "abstain": False, "margin_robust_clean": True, "margin_refuted_at": float("nan")}
    settled = {"radius": 0.01, "margin": 0.3, "margin_upper": 0.31, "p_clean": 0.9, "margin_capped": False,
               "abstain": False, "margin_robust_clean": True, "margin_refuted_at": 0.31}
    st = rows_bound_stats([unknown, settled], "radius")
    assert (st.n_used, st.n_violations, st.n_no_margin, st.n_refuted) == (1, 0, 1, 0)
    st = rows_bound_stats([{**unknown, "margin_refuted_at": 0.003}, settled], "radius")
    assert (st.n_used, st.n_violations, st.n_no_margin, st.n_refuted) == (1, 0, 1, 1)
    capped = {**unknown, "margin_capped": True}  # at the cap: robust at every budget, not an unknown
    assert rows_bound_stats([capped, settled], "radius").n_capped == 1


def test_a_model_without_parameters_evaluates_and_the_margin_search_uses_the_configs_alpha(tiny_run, monkeypatch):
    """evaluate() crashed with a bare StopIteration on a model with buffers only (LinearVAE, the
    exact-answer model), and ran the margin search at the library's alpha whatever
    EvalConfig.alpha said (certify got it)."""
    import dataclasses

    import robvae.evaluation as ev
    from robvae.models import LinearVAE

    model = LinearVAE.random(d=3, input_shape=(1, 8, 8), s=0.1, seed=0, dtype=torch.float32)
    assert not list(model.parameters())
    run = dataclasses.replace(tiny_run, model=model)
    seen = []
    real = ev.empirical_margin
    monkeypatch.setattr(ev, "empirical_margin", lambda *a, **k: seen.append(k.get("alpha")) or real(*a, **k))
    res = ev.evaluate(run, EvalConfig(**{**FAST, "n": 3, "alpha": 0.05, "attack": False, "rigorous": False}),
                      progress=False)
    assert seen == [0.05]
    assert np.isfinite(res.column("p")).all()


def test_attack_report_on_data_that_are_not_images_writes_no_picture(tmp_path):
    """1-D data (input_shape (20,)): the attack ran, then drawing attack.png crashed, and the
    command exited with a traceback; the picture is now left out (images only)."""
    from robvae.evaluation import attack_report
    from robvae.models import LinearVAE

    model = LinearVAE.random(d=3, input_shape=(20,), s=0.1, seed=0, dtype=torch.float32)
    x = torch.rand(4, 20, generator=torch.Generator().manual_seed(0))
    rep = attack_report(model, x, 0.3, out_dir=tmp_path, progress=False)
    assert set(rep.paths) == {"csv", "json"} and rep.paths["csv"].is_file() and not (tmp_path / "attack.png").exists()
    # the linear VAE's maximum damage at budget eps is sigma_max(W A) eps (deterministic mode)
    smax = float(torch.linalg.matrix_norm(model.W @ model.A, ord=2))
    assert all(0 < float(r["damage"]) <= smax * 0.3 * (1 + 1e-4) for r in rep.rows)


def test_eval_config_checks_the_margin_settings_up_front():
    """margin_tol and margin_eps_max were checked by empirical_margin only, after the first batch's
    calibration, certificates and attack had run."""
    from robvae.evaluation import EvalConfig

    for kw, msg in [({"margin_tol": 0.0}, "margin_tol must be a finite number > 0, got 0.0"),
                    ({"margin_tol": float("nan")}, "margin_tol must be a finite number > 0, got nan"),
                    ({"margin_eps_max": -1.0}, "margin_eps_max must be a finite number > 0"),
                    ({"margin_eps_max": float("inf")}, "margin_eps_max must be a finite number > 0")]:
        with pytest.raises(ValueError, match=msg):
            EvalConfig(**kw)
    assert EvalConfig(margin_eps_max=2.0).margin_eps_max == 2.0


def test_a_rerun_interrupted_while_writing_leaves_no_finished_marker(tiny_run, monkeypatch, tmp_path):
    """Review h77: a rerun with another config interrupted after per_input.csv left the new table
    beside the old summary and the old eval_config.json (the marker of a finished evaluation, with
    the old identity). The marker is removed before the files are written: the folder reads as
    unfinished, and the next call computes it again."""
    import robvae.evaluation as rb

    out = tmp_path / "eval"
    evaluate(tiny_run, EvalConfig(**FAST), out_dir=out, progress=False)
    real = rb.write_json

    def dies(path, obj):
        if str(path).endswith("summary.json"):
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(rb, "write_json", dies)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_run, EvalConfig(**{**FAST, "n": 5}), out_dir=out, progress=False)
    assert not (out / "eval_config.json").exists()
    monkeypatch.setattr(rb, "write_json", real)
    again = evaluate(tiny_run, EvalConfig(**FAST), out_dir=out, progress=False)
    assert not again.loaded and len(again.rows) == 8
