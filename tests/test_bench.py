"""The benchmark: the versioned protocol, zoo files, user models, the leaderboard, resuming.

The protocol's numbers are checked on the linear VAE against its closed forms (THEORY.md section 7): Theorem 1
radius, true margin (no certificate may exceed it), maximum damage sigma_max(A) eps, and the
reconstruction error computed directly.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import textwrap
from pathlib import Path

import pytest
import torch
from scipy import stats

from robvae.bench import (
    PROTOCOL_V1, BenchResult, ZooError, aggregate, evaluate_protocol, load_zoo, markdown_table, parse_zoo, run_bench,
)
from robvae.bench import run as bench_run
from robvae.cli import main
from robvae.data import ImageDataset
from robvae.models import LinearVAE
from robvae.sweep import Trial

REPO = Path(__file__).resolve().parents[1]


# --- the protocol ---------------------------------------------------------------------------

def test_protocol_v1_is_frozen_versioned_and_printed():
    assert PROTOCOL_V1.label == "v1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROTOCOL_V1.n_samples = 10  # type: ignore[misc]
    assert set(PROTOCOL_V1.names) == {"digits", "mnist-10k", "fashion-mnist"}
    text = PROTOCOL_V1.describe("digits")
    assert text.startswith("protocol: v1\n") and "r=1" in text and "S=1000" in text and "mnist" not in text
    custom = PROTOCOL_V1.with_overrides("digits", n=10).with_overrides(alpha=0.01)
    assert custom.label == "v1+custom" and PROTOCOL_V1.label == "v1"
    assert custom.changes() == {"alpha": 0.01, "subset digits": {"n": 10}}
    assert custom.describe().startswith("protocol: v1+custom\n  changed from v1:")


def test_subset_indices_are_fixed_by_the_seed():
    s = PROTOCOL_V1.subset("digits")
    a, b = s.indices(360), s.indices(360)
    assert torch.equal(a, b) and a.numel() == s.n == 200
    assert bool((a[1:] > a[:-1]).all()) and int(a.max()) < 360  # sorted, unique, in range
    other = dataclasses.replace(s, seed=1).indices(360)
    assert not torch.equal(a, other)
    assert s.indices(50).numel() == 50  # a smaller split: all of it


def _linear_case(n_data: int = 60):
    model = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, singular_values=[2.0, 1.5, 1.0, 0.5], seed=0,
                             dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.1 * (torch.rand(n_data, 1, 4, 4, generator=g) - 0.5)  # inside the box, far from its faces
    data = ImageDataset(x, torch.zeros(n_data, dtype=torch.long), "toy", "test")
    protocol = PROTOCOL_V1.with_overrides("digits", n=40, r=0.3, cert_eps=0.01, attack_eps=(0.1, 0.2))
    return model, data, protocol


def test_evaluate_protocol_matches_the_linear_vae_closed_forms():
    model, data, protocol = _linear_case()
    res = evaluate_protocol(model, data, protocol, "digits", name="linear")
    assert isinstance(res, BenchResult) and res.protocol == "v1+custom" and res.n == 40 and res.r == 0.3
    assert res.elbo is None and res.degradation is None  # no log_likelihood
    xs = data.images[protocol.subset("digits").indices(len(data))]
    rec = (xs.flatten(1) @ model.A.T @ model.W.T - xs.flatten(1)).norm(dim=1).mean()
    assert res.reconstruction_error == pytest.approx(float(rec), rel=1e-5)
    exact_bound, exact_margin = model.exact_bound(0.3), model.exact_margin(0.3)
    assert res.median_radius == pytest.approx(exact_bound, rel=0.1)
    # no certificate may exceed the true margin
    assert res.median_radius_sound <= exact_margin and res.rigorous_radius is not None
    assert res.rigorous_radius <= exact_margin
    smax = float(torch.linalg.matrix_norm(model.A, ord=2))
    mean_only = 0.1 * stats.norm.ppf(float(model.exact_p(0.3))) / smax  # the rigorous radius with p exact
    assert 0.8 * mean_only <= res.rigorous_radius <= mean_only * 1.01
    assert res.certified_fraction == 1.0  # every sound radius is above eps = 0.01
    assert res.median_margin == pytest.approx(exact_margin, rel=0.15) and res.margin_unknown_fraction == 0.0
    # the maximum damage of g(mu(x + delta)) = W A (x + delta) at budget eps is sigma_max(A) eps
    assert res.damage["0.1"] == pytest.approx(smax * 0.1, rel=1e-3)
    assert res.damage["0.2"] == pytest.approx(smax * 0.2, rel=1e-3)
    assert res.wall_s > 0


def test_an_linf_protocol_counts_certificates_of_its_own_norm_and_says_so():
    """Found by an audit: with attack_norm="linf" the description still called the budgets L2, and
    the certified fraction compared the L2 radius with an L-inf eps. Now an input counts when its L2
    radius covers the L-inf ball, radius >= eps * sqrt(D): the fraction equals the L2 protocol's
    at eps * sqrt(D) (D = 16 here), and differs from the L2 protocol's at eps."""
    model, data, protocol = _linear_case()
    eps = 0.02
    linf = protocol.with_overrides("digits", cert_eps=eps).with_overrides(attack_norm="linf")
    text = linf.describe("digits")
    assert "attack budgets 0.1, 0.2 (L-inf)" in text and "radii L2" in text
    assert "(L2)" in protocol.describe("digits") and "radii L2" not in protocol.describe("digits")
    got = evaluate_protocol(model, data, linf, "digits", name="linear")
    same = evaluate_protocol(model, data, protocol.with_overrides("digits", cert_eps=4 * eps), "digits", name="linear")
    naive = evaluate_protocol(model, data, protocol.with_overrides("digits", cert_eps=eps), "digits", name="linear")
    assert got.certified_fraction == same.certified_fraction < naive.certified_fraction == 1.0
    assert got.median_radius_sound == same.median_radius_sound


def test_evaluate_protocol_scores_a_float64_model_on_float32_data():
    """Found by an audit: the bench fed a float64 user model float32 images (a raw torch dtype
    error) where `robvae certify --model` converts them to the model's dtype."""
    model, data, protocol = _linear_case()
    m64 = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, singular_values=[2.0, 1.5, 1.0, 0.5], seed=0,
                           dtype=torch.float64)
    assert data.images.dtype == torch.float32
    res = evaluate_protocol(m64, data, protocol, "digits", name="linear64")
    smax = float(torch.linalg.matrix_norm(m64.A, ord=2))
    assert res.damage["0.1"] == pytest.approx(smax * 0.1, rel=1e-3)
    assert res.rigorous_radius is not None and res.rigorous_radius <= m64.exact_margin(0.3)
    ref = evaluate_protocol(model, data, protocol, "digits", name="linear")
    assert res.median_radius == pytest.approx(ref.median_radius, rel=0.05)


def test_median_margin_leaves_unknown_margins_out_and_medians_are_the_usual_ones():
    """Unknown margins (settled robust with no budget settled robust; clean estimate undecided)
    were counted as measured zeros, and medians were torch's lower median: 0.0 here where the
    measured margins 0, 0.5, 0.7, 8 have median 0.6."""
    from robvae.bench.protocol import _median, known_margins
    from robvae.robustness.margin import MarginResult

    t = lambda *v: torch.tensor(v)  # noqa: E731
    res = MarginResult(
        margin=t(0.0, 0.0, 0.5, 0.7, 8.0, 0.0), upper=t(0.1, 0.0, 0.6, 0.8, 8.0, 8.0), p_clean=t(.9, .2, .9, .9, 1., .5),
        robust_clean=t(True, False, True, True, True, False), capped=t(False, False, False, False, True, False),
        mode="full", r=torch.full((6,), 0.3), eps_max=8.0, n_attacks=1,
        not_robust_clean=t(False, True, False, False, False, False))
    known = known_margins(res)
    assert known.isnan().tolist() == [True, False, False, False, False, True]
    assert _median(known) == pytest.approx(0.6)
    assert _median(res.margin) == pytest.approx(0.25)  # unknowns as zeros (and torch.median gave 0.0)
    assert _median(t(0.0, 0.0, 0.0, 0.5, 0.6, 0.7)) == pytest.approx(0.25)  # torch's lower median: 0.0
    assert math.isnan(_median(t(float("nan"), float("nan"))))


# --- zoo files ----------------------------------------------------------------------------

@pytest.mark.parametrize("doc, msg", [
    ({"methods": ["foo"]}, "methods[0]: unknown method 'foo'"),
    ({"methods": [{"method": "beta-vae", "beta": -1}]}, "beta must be >= 0"),
    ({"methods": [{"method": "jacobian"}]}, "missing parameter 'weight'"),
    ({"methods": [{"method": "smooth", "weight": 1, "nois": 0.1}]}, "unknown parameter 'nois'"),
    ({"methods": [{"method": "adversarial", "eps": 0.5, "norm": "l1"}]}, "adversarial_norm"),
    ({"methods": ["vae"], "models": ["no_such_module_xyz:build"]}, "module 'no_such_module_xyz' does not import"),
    ({"methods": ["vae"], "models": ["robvae.bench:no_such_callable"]}, "has no attribute 'no_such_callable'"),
    ({"methods": ["vae"], "models": ["not-a-spec"]}, "expected MODULE:CALLABLE"),
    ({"methods": ["vae"], "subset": "cifar"}, "unknown test subset 'cifar'"),
    ({"methods": ["vae"], "seeds": [0, 0]}, "duplicate seeds"),
    ({"methods": ["vae"], "frobnicate": 1}, "frobnicate: unknown key"),
    ({"methods": ["vae"], "base": {"epochs": 0}}, "epochs must be an integer >= 1"),
    ({"methods": ["vae"], "base": {"dataset": "mnist"}}, "base.dataset: set by the zoo"),
    ({"methods": ["vae"], "subset_overrides": {"q": 1}}, "subset_overrides.q: unknown field"),
    ({"methods": ["vae", "vae"]}, "appears twice"),
    # numbers by value (audit h60: [1, 1.0] trained one model twice under two ids)
    ({"methods": ["vae", {"method": "vae", "config": {"model.tau": 0}}]}, "train the same model"),
    ({}, "nothing to benchmark"),
])
def test_bad_zoos_are_one_line_errors(doc, msg):
    with pytest.raises(ZooError) as e:
        parse_zoo(doc)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_zoo_expands_settings_and_seeds():
    zoo = parse_zoo({"seeds": [0, 1], "base": {"epochs": 2},
                     "methods": ["vae", {"method": "beta-vae", "beta": [2, 4]},
                                 {"method": "jacobian", "weight": 0.5, "whitened": True},
                                 {"method": "adversarial", "eps": 0.5, "steps": 2},
                                 {"method": "smooth", "weight": 3, "noise": 0.2, "divergence": "symmetric-kl"},
                                 {"method": "tau", "tau": 0.1}, {"method": "beta-tcvae", "beta": 6},
                                 {"method": "lipschitz", "lipschitz": 2.0, "config": {"model.sigma_cap": 0.5}}]})
    names = [e.name for e in zoo.entries]
    assert names == ["vae", "beta-vae(beta=2)", "beta-vae(beta=4)", "jacobian(weight=0.5, whitened=true)",
                     "adversarial(eps=0.5, steps=2)", "smooth(weight=3, noise=0.2, divergence=symmetric-kl)",
                     "tau(tau=0.1)", "beta-tcvae(beta=6)", "lipschitz(lipschitz=2, model.sigma_cap=0.5)"]
    assert all(len(e.trials) == 2 for e in zoo.entries) and len({t.id for t in zoo.trials}) == 18
    by = {e.name: e.trials[1].train for e in zoo.entries}
    assert by["vae"].seed == 1 and by["vae"].dataset == "digits" and by["vae"].epochs == 2
    assert (by["beta-vae(beta=4)"].objective.name, by["beta-vae(beta=4)"].objective.beta) == ("beta-vae", 4)
    j = by["jacobian(weight=0.5, whitened=true)"].objective
    assert (j.jacobian, j.jacobian_whitened) == (0.5, True)
    a = by["adversarial(eps=0.5, steps=2)"]
    assert (a.adversarial_eps, a.adversarial_steps) == (0.5, 2)
    s = by["smooth(weight=3, noise=0.2, divergence=symmetric-kl)"].objective
    assert (s.smooth, s.smooth_noise, s.smooth_divergence) == (3, 0.2, "symmetric-kl")
    assert by["tau(tau=0.1)"].model.tau == 0.1
    lip = by["lipschitz(lipschitz=2, model.sigma_cap=0.5)"].model
    assert (lip.arch, lip.lipschitz, lip.sigma_cap) == ("lipschitz-mlp", 2.0, 0.5)
    # a config override makes another model, with its own name (not "the setting appears twice")
    two = parse_zoo({"methods": [{"method": "lipschitz", "lipschitz": 2.0},
                                 {"method": "lipschitz", "lipschitz": 2.0, "config": {"model.sigma_cap": 0.5}}]})
    assert [e.name for e in two.entries] == ["lipschitz(lipschitz=2)", "lipschitz(lipschitz=2, model.sigma_cap=0.5)"]


def test_example_zoos_are_valid():
    zoo = load_zoo(REPO / "examples" / "zoo-digits.yaml")
    assert zoo.protocol.label == "v1" and zoo.subset == "digits" and len(zoo.seeds) == 2
    assert {e.method for e in zoo.entries} >= {"vae", "beta-vae", "adversarial", "jacobian", "smooth", "lipschitz"}
    mnist = load_zoo(REPO / "examples" / "zoo-mnist.yaml")
    assert mnist.protocol.label == "v1" and mnist.subset == "mnist-10k"
    one = load_zoo(REPO / "examples" / "zoo-mnist.yaml", seeds=[0])  # --seeds 0: the same seed-0 models
    assert one.seeds == [0] and {t.id for t in one.trials} == {e.trials[0].id for e in mnist.entries}
    fashion = load_zoo(REPO / "examples" / "zoo-fashion.yaml")  # the published Fashion-MNIST leaderboard
    assert fashion.subset == "fashion-mnist" and fashion.seeds == [0] and len(fashion.trials) == 5


# --- the leaderboard ----------------------------------------------------------------------

def _result(name, cf, elbo, rad, seed_shift=0.0):
    return BenchResult(name=name, protocol="v1", subset="digits", n=10, r=1.0, cert_eps=0.2, elbo=elbo,
                       reconstruction_error=1.0 + seed_shift, median_radius=rad, median_radius_sound=rad,
                       certified_fraction=cf, rigorous_radius=None, median_margin=0.5, margin_capped_fraction=0.0,
                       damage={"0.4": 0.3}, degradation=None, wall_s=1.0)


def test_aggregate_means_over_seeds_and_sorts_by_certified_fraction():
    rows = aggregate([("a", "vae", _result("a s0", 0.25, -30.0, 0.1)), ("a", "vae", _result("a s1", 0.75, -32.0, 0.1, 1.0)),
                      ("b", "jacobian", _result("b s0", 0.875, -40.0, 0.5)),
                      ("c", "user", _result("c", 0.5, None, 0.7))])
    assert [r["name"] for r in rows] == ["b", "c", "a"]  # a ties c at 0.5: the larger sound radius first
    a = rows[2]
    assert a["models"] == 2 and a["certified_fraction"] == 0.5 and a["elbo"] == pytest.approx(-31.0)
    assert a["reconstruction_error"] == pytest.approx(1.5) and a["certified_fraction_spread"] == pytest.approx(0.5)
    assert rows[1]["elbo"] is None and rows[1]["rigorous_radius"] is None
    table = markdown_table(rows)
    assert table.splitlines()[2].startswith("| 1 | b | 1 | 87.5% | -40.00 |")
    assert "| 2 | c | 1 | 50.0% | — |" in table


def test_a_near_constant_model_is_flagged_and_the_ranking_is_a_total_order():
    """Audit h60: a model decoding 0.9 x the mean image + 0.1 x a VAE (error 97% of the mean
    image's) ranked first with 100% certified and no flag; NaN radii made the order follow the
    input order; a flag with different numbers per seed was told once per seed."""
    def res(name, cf, rad, err, mean_err=2.0):
        return dataclasses.replace(_result(name, cf, -30.0, rad), reconstruction_error=err, mean_image_error=mean_err)

    assert res("x", 1.0, 0.5, 1.94).flags and "97% of the mean image's 2" in res("x", 1.0, 0.5, 1.94).flags[0]
    assert res("x", 1.0, 0.5, 1.80).flags and not res("x", 1.0, 0.5, 1.78).flags  # 90%: the line
    assert not res("x", 1.0, 0.5, 1.2).flags  # a trained VAE's 60%
    rows = aggregate([("shrunk", "user", res("shrunk", 1.0, 2.0, 1.94)), ("honest", "user", res("honest", 0.5, 0.3, 1.2))])
    assert [r["name"] for r in rows] == ["honest", "shrunk"] and "barely better than the mean image" in rows[1]["flags"]
    # NaN and None radii rank below every number, whatever the input order; the name breaks ties
    for order in ([0.1, math.nan, 0.9], [math.nan, 0.9, 0.1], [0.9, 0.1, math.nan]):
        names = {0.1: "low", 0.9: "high"}
        items = [(names.get(v, "nan"), "user", res(names.get(v, "nan"), 0.0, v, 1.0)) for v in order]
        assert [r["name"] for r in aggregate(items)] == ["high", "low", "nan"]
    tied = aggregate([("b", "user", res("b", 0.5, 0.3, 1.0)), ("a", "user", res("a", 0.5, 0.3, 1.0))])
    assert [r["name"] for r in tied] == ["a", "b"]
    # one kind of flag, two seeds with different numbers: told once, with how many seeds have it
    two = aggregate([("s", "vae", res("s0", 1.0, 0.5, 1.9)), ("s", "vae", res("s1", 1.0, 0.5, 1.95))])
    assert two[0]["flags"].count("barely better") == 1 and two[0]["flags"].endswith("[2 of 2 seeds]")


USER_MODULE = textwrap.dedent("""
    import torch
    from robvae.models import LinearVAE

    def build():
        return LinearVAE.random(d=3, input_shape=(1, 8, 8), s=0.2, seed=1, dtype=torch.float32), "my-linear"
""")

TINY_ZOO = textwrap.dedent("""
    subset: digits
    seeds: [0, 1]
    subset_overrides: {n: 12}
    protocol_overrides: {n_samples: 200, margin_max_iter: 3}
    base: {epochs: 1, batch_size: 64, n_train: 200, model: {latent_dim: 3, hidden: [16]}}
    methods:
      - vae
      - {method: jacobian, weight: 1.0}
""")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_command_runs_a_tiny_zoo_with_a_user_model_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_models_for_bench.py").write_text(USER_MODULE)
    (tmp_path / "zoo.yaml").write_text(TINY_ZOO)
    rc = main(["bench", "zoo.yaml", "--out", "out", "--executor", "serial", "--model", "my_models_for_bench:build",
               "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.startswith("protocol: v1+custom") and "my-linear" in printed
    out = tmp_path / "out"
    md = (out / "leaderboard.md").read_text()
    assert "protocol: v1+custom" in md and "| ELBO |" in md
    rows = _rows(out / "leaderboard.csv")
    assert [r["name"] for r in rows].count("vae") == 1 and len(rows) == 3
    cf = [float(r["certified_fraction"]) for r in rows]
    assert cf == sorted(cf, reverse=True)
    assert {r["name"]: r["models"] for r in rows} == {"vae": "2", "jacobian(weight=1)": "2", "my-linear": "1"}
    assert next(r for r in rows if r["name"] == "my-linear")["elbo"] == ""  # no likelihood: no ELBO
    assert float(next(r for r in rows if r["name"] == "vae")["elbo"]) < 0
    assert len(_rows(out / "leaderboard-models.csv")) == 5
    for f in ("tradeoff.png", "report.html", "study.json", "protocol.json"):
        assert (out / f).is_file(), f
    assert "data:image/png;base64" in (out / "report.html").read_text()

    # rerun: nothing is trained or evaluated again
    before = {p: p.stat().st_mtime_ns for p in out.rglob("bench-*.json")}
    assert len(before) == 5

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(bench_run, "evaluate_protocol", boom)
    monkeypatch.setattr("robvae.sweep.executors.run_trial", boom)
    assert main(["bench", "zoo.yaml", "--out", "out", "--executor", "serial", "--model", "my_models_for_bench:build",
                 "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("bench-*.json")} == before
    assert _rows(out / "leaderboard.csv") == rows


def test_an_interrupted_bench_resumes_without_recomputing(tmp_path, monkeypatch):
    zoo = parse_zoo({"subset": "digits", "seeds": [0, 1], "subset_overrides": {"n": 8},
                     "protocol_overrides": {"n_samples": 100, "margin_max_iter": 2},
                     "base": {"epochs": 1, "n_train": 100, "model": {"latent_dim": 2, "hidden": [8]}},
                     "methods": ["vae", {"method": "beta-vae", "beta": 2}]})
    real = bench_run.evaluate_protocol
    calls: list[str] = []

    def interrupt_third(*a, **k):
        calls.append(k["name"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bench_run, "evaluate_protocol", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_bench(zoo, tmp_path / "out", executor="serial", progress=False)
    assert len(list((tmp_path / "out").rglob("bench-*.json"))) == 2

    calls.clear()
    monkeypatch.setattr(bench_run, "evaluate_protocol", lambda *a, **k: (calls.append(k["name"]), real(*a, **k))[1])
    board = run_bench(zoo, tmp_path / "out", executor="serial", progress=False)
    assert len(calls) == 2  # only the two models whose evaluation never finished
    assert len(board.models) == 4 and not board.failed
    assert all(math.isfinite(r["certified_fraction"]) for r in board.rows)


def test_bad_zoo_file_fails_before_anything_runs(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("methods: [vae, {method: adversarial, eps: -1}]\n")
    assert main(["bench", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robvae: error: methods[1] (adversarial(eps=-1)): adversarial_eps") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert main(["bench", "--model", "nowhere_at_all:build", "--out", str(tmp_path / "out")]) == 2
    assert "module 'nowhere_at_all' does not import" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_markdown_cells_of_missing_and_infinite_numbers():
    """NaN reads "nan" (it used to read "-inf"), infinities keep their sign, None is a dash."""
    from robvae.bench.run import _cell

    assert [_cell(v, "{:.3f}") for v in (math.nan, math.inf, -math.inf, None, 0.5)] == ["nan", "inf", "-inf", "—", "0.500"]


class _Quantised(torch.nn.Module):
    """Gradient masking: the encoder reads round(16 x) / 16, so autograd sees J = 0 (a Theorem 1
    radius of inf) while mu still moves under perturbations that cross a rounding step."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.input_shape = inner, inner.input_shape

    def encode(self, x):
        return self.inner.encode(torch.round(16 * x) / 16)

    def decode(self, z):
        return self.inner.decode(z)


class _MeanImage(torch.nn.Module):
    """A degenerate model: every reconstruction is one fixed image (certified everywhere)."""

    def __init__(self, image):
        super().__init__()
        self.input_shape = tuple(image.shape)
        self.register_buffer("image", image.clone())

    def encode(self, x):
        return torch.zeros(x.shape[0], 2, dtype=x.dtype), torch.full((x.shape[0], 2), 0.1, dtype=x.dtype)

    def decode(self, z):
        return (self.image + 0.3).clamp(0, 1).expand(z.shape[0], *self.image.shape)


def test_gradient_masked_and_degenerate_models_are_flagged_and_ranked_last(tmp_path):
    """Found by an audit: a quantising encoder ranked #1 (100% certified, radius inf) and a
    model with a constant reconstruction was certified everywhere. Both are evaluated as before,
    but flagged and ranked after every honest model, with the reason under the table."""
    from robvae.data import load_dataset
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    model = train(TrainConfig(model=ModelConfig(latent_dim=8, hidden=(64,)), epochs=40), tmp_path / "run",
                  progress=False).model
    data = load_dataset("digits", "test")
    protocol = PROTOCOL_V1.with_overrides("digits", n=20).with_overrides(n_samples=200, margin_max_iter=3)
    honest = evaluate_protocol(model, data, protocol, "digits", name="linear")
    masked = evaluate_protocol(_Quantised(model), data, protocol, "digits", name="masked")
    constant = evaluate_protocol(_MeanImage(data.images[0]), data, protocol, "digits", name="constant")
    assert honest.flags == [] and honest.first_order_inconsistent == 0.0
    assert masked.first_order_inconsistent > 0.5 and "gradient masking" in masked.flags[0]
    # its inputs' certificates (radius inf: what made it rank first) are not counted
    assert masked.certified_fraction == 0.0 < honest.certified_fraction and masked.first_order_ratio == math.inf
    assert constant.reconstruction_error >= constant.mean_image_error and "mean image" in constant.flags[0]
    rows = aggregate([("masked", "user", masked), ("constant", "user", constant), ("linear", "user", honest)])
    assert [r["name"] for r in rows][0] == "linear" and all(r["flags"] for r in rows[1:])
    md = markdown_table(rows)
    assert "masked (flagged)" in md and "- masked: gradients do not describe the encoder" in md


def test_user_models_with_clashing_names_or_slugs_and_edited_models(tmp_path, monkeypatch):
    """Found by an audit: a user model named like another entry was averaged into its row, specs
    `um:a_b` and `um_a:b` shared one result folder, and an edited model (or other data) was served
    its old result."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "um.py").write_text(textwrap.dedent("""
        import torch
        from robvae.models import LinearVAE
        SEED = 1
        def a_b():
            return LinearVAE.random(d=2, input_shape=(1, 8, 8), s=0.2, seed=SEED, dtype=torch.float32), "same"
    """))
    (tmp_path / "um_a.py").write_text(textwrap.dedent("""
        import torch
        from robvae.models import LinearVAE
        def b():
            return LinearVAE.random(d=2, input_shape=(1, 8, 8), s=0.2, seed=7, dtype=torch.float32), "same"
    """))
    doc = {"subset": "digits", "subset_overrides": {"n": 6}, "protocol_overrides": {"n_samples": 100,
                                                                                   "margin_max_iter": 2},
           "models": ["um:a_b", "um_a:b"]}
    calls: list[str] = []
    real = bench_run.evaluate_protocol
    monkeypatch.setattr(bench_run, "evaluate_protocol", lambda *a, **k: (calls.append(k["name"]), real(*a, **k))[1])
    board = run_bench(parse_zoo(doc), tmp_path / "out", executor="serial", progress=False)
    assert len(calls) == 2 and sorted(r["name"] for r in board.rows) == ["same", "same [um_a:b]"]
    assert len(list((tmp_path / "out" / "models").iterdir())) == 2
    calls.clear()
    run_bench(parse_zoo(doc), tmp_path / "out", executor="serial", progress=False)
    assert calls == []  # unchanged: cached
    import um
    monkeypatch.setattr(um, "SEED", 2)  # the user edits a model: evaluated again
    board2 = run_bench(parse_zoo(doc), tmp_path / "out", executor="serial", progress=False)
    assert calls == ["same"]
    assert board2.rows != board.rows


@pytest.mark.parametrize("ov, msg", [
    ({"protocol_overrides": {"n_samples": "lots"}}, "protocol_overrides.n_samples: must be an integer >= 1"),
    ({"protocol_overrides": {"alpha": 2}}, "protocol_overrides.alpha: must be a level in (0, 0.5)"),
    ({"protocol_overrides": {"attack": "strongest"}}, "protocol_overrides.attack: must be one of"),
    ({"subset_overrides": {"n": -5}}, "subset_overrides.n: must be an integer >= 1"),
    ({"subset_overrides": {"r": "1"}}, "subset_overrides.r: must be a finite number > 0"),
    ({"subset_overrides": {"attack_eps": [0.4, -1]}}, "subset_overrides.attack_eps: must be a finite number > 0"),
])
def test_override_values_are_checked_before_anything_runs(ov, msg):
    with pytest.raises(ZooError) as e:
        parse_zoo({"methods": ["vae"], **ov})
    assert msg in str(e.value)


def test_bench_exits_1_when_a_model_failed(tmp_path, monkeypatch, capsys):
    """As robvae sweep: the leaderboard of what worked is written, and the exit status says that
    not everything did (it was 0 even when every model failed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_models.py").write_text(USER_MODULE + "\ndef broken():\n    raise RuntimeError('no weights')\n")
    rc = main(["bench", "--model", "broken_models:build", "--model", "broken_models:broken", "--subset", "digits",
               "--out", "out", "--executor", "serial", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1 and "failed: broken_models:broken: RuntimeError: no weights" in out
    assert "my-linear" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_a_bare_model_joins_the_bench_named_after_its_callable(tmp_path, monkeypatch):
    """`robvae certify --model` takes a callable returning the model alone; bench takes it too."""
    from robvae.bench.loader import build_model

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "bare_models.py").write_text(USER_MODULE + "\ndef bare():\n    return build()[0]\n"
                                             "\ndef three():\n    return build() + (1,)\n")
    model, name = build_model("bare_models:bare")
    assert name == "bare" and callable(model.encode)
    from robvae.errors import RobvaeError

    with pytest.raises(RobvaeError, match="a model or \\(model, name\\), got a tuple of 3"):
        build_model("bare_models:three")


def test_the_mnist_subset_is_found_from_any_working_folder(tmp_path, monkeypatch):
    """The protocol's data folder is relative to the repository root; it was resolved against the
    current folder, where users run their own models from."""
    from robvae.bench.protocol import load_subset_data

    if not (REPO / PROTOCOL_V1.subset("mnist-10k").data_dir).is_dir():
        pytest.skip("mnist-10k is not beside this checkout")
    monkeypatch.chdir(REPO)
    ids_here = {t.id for t in load_zoo(REPO / "examples" / "zoo-mnist.yaml").trials}
    monkeypatch.chdir(tmp_path)
    assert len(load_subset_data(PROTOCOL_V1, "mnist-10k")) == 2000
    # a zoo (and its user models' evaluation: zoo.data_dir) too, from any folder (audit h60: the zoo
    # passed the protocol's relative folder on, and the loader looked for it here); from the
    # repository root the trials keep their ids (the folder as the protocol writes it)
    zoo = load_zoo(REPO / "examples" / "zoo-mnist.yaml")
    assert Path(zoo.data_dir).is_absolute() and Path(zoo.data_dir).is_dir()
    assert len(load_subset_data(zoo.protocol, zoo.subset, zoo.data_dir)) == 2000
    # the trials keep the protocol's folder, taken against the repository root: the same ids from
    # any working folder (a review: an absolute path made them depend on it), and the worker finds it
    assert {t.id for t in zoo.trials} == ids_here and all(t.data_root == str(REPO.resolve()) for t in zoo.trials)
    t = zoo.trials[0]
    assert Trial.from_dict(t.to_dict()).data_root == t.data_root and Trial.from_dict(t.to_dict()).id == t.id
    assert (Path(t.data_root) / t.train.data_dir).resolve() == Path(zoo.data_dir).resolve()
    monkeypatch.chdir(REPO)
    zoo_root = load_zoo(REPO / "examples" / "zoo-mnist.yaml")
    assert zoo_root.data_dir == PROTOCOL_V1.subset("mnist-10k").data_dir and {t.id for t in zoo_root.trials} == ids_here
    assert all(t.data_root is None for t in zoo_root.trials)
