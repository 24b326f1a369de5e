"""``robvae train --certify-margin`` and ``robvae study certified`` end to end (small, on digits)."""

from __future__ import annotations

import json

import pytest

from robvae.cli import main


def _run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_with_certified_margin_verifies_it(tmp_path, capsys):
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "2", "--latent-dim", "4", "--hidden", "32",
                        "--n-train", "200", "--certify-margin", "0.5", "--r", "2", "--verify-n", "5", "--quiet",
                        "--out", str(tmp_path / "run"))
    assert rc == 0, err
    assert "(holds)" in out and "inputs robust under attack" in out and "5/5" in out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert cfg["arch"] == "lipschitz-mlp" and cfg["sigma_cap"] == 0.1 and 0.05 < cfg["lipschitz"] < 10


def test_impossible_margin_is_one_line_and_writes_nothing(tmp_path, capsys):
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--certify-margin", "5", "--r", "0.01", "--sigma-cap", "1",
                        "--out", str(tmp_path / "run"))
    assert rc == 2 and err.startswith("robvae: error: cannot certify") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    rc, _, err = _run(capsys, "train", "--dataset", "digits", "--certify-margin", "0.5", "--out", str(tmp_path / "r2"))
    assert rc == 2 and "--r" in err


def test_certify_margin_options_that_would_be_changed_or_ignored_are_refused(tmp_path, capsys):
    """Found by an audit: --certify-margin silently replaced --arch conv and --tau 0.1, and
    --sigma-cap / --verify-n without it were ignored; odd widths are rounded up with a note."""
    for args, needle in ((["--sigma-cap", "0.2"], "--sigma-cap and --verify-n go with --certify-margin"),
                         (["--verify-n", "3"], "--sigma-cap and --verify-n go with --certify-margin"),
                         (["--certify-margin", "0.5", "--r", "2", "--arch", "conv"],
                          "Lipschitz MLP VAE (arch lipschitz-mlp) itself; drop --arch conv"),
                         (["--certify-margin", "0.5", "--r", "2", "--tau", "0.1"], "drop --tau")):
        rc, _, err = _run(capsys, "train", "--dataset", "digits", *args, "--out", str(tmp_path / "run"))
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
    # --arch mlp (the default, given) is accepted: the Lipschitz VAE is an MLP (the old message
    # advised --arch lipschitz-mlp, which --arch does not accept)
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "4", "--hidden", "31",
                        "--n-train", "100", "--certify-margin", "0.5", "--r", "2", "--verify-n", "2", "--quiet",
                        "--arch", "mlp", "--out", str(tmp_path / "run"))
    assert rc == 0 and "hidden widths rounded up to even numbers for GroupSort: 32" in err


@pytest.mark.parametrize("args, needle", [
    (["--adversarial-steps", "5"], "--adversarial-steps goes with --adversarial-eps > 0"),
    (["--adversarial-norm", "linf"], "--adversarial-norm goes with --adversarial-eps > 0"),
    (["--jacobian-whitened"], "--jacobian-whitened goes with --jacobian > 0"),
    (["--jacobian-projections", "4"], "--jacobian-projections goes with --jacobian > 0"),
    (["--smooth-noise", "0.3"], "--smooth-noise goes with --smooth > 0"),
    (["--smooth-divergence", "symmetric-kl"], "--smooth-divergence goes with --smooth > 0"),
    (["--beta", "4"], "--objective elbo has no weight"),
])
def test_training_options_of_a_method_that_is_off_are_refused(tmp_path, capsys, args, needle):
    """Found by an audit: these were ignored (eight runs, one loss) and stored in config.json, so
    extending the run without them was refused; --beta 4 with the ELBO printed "beta=4"."""
    rc, _, err = _run(capsys, "train", "--dataset", "digits", *args, "--out", str(tmp_path / "run"))
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_training_options_given_at_their_default_or_with_their_method_are_accepted(tmp_path, capsys):
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--n-train", "40", "--hidden", "8",
                        "--latent-dim", "2", "--beta", "1", "--no-jacobian-whitened", "--adversarial-norm", "l2",
                        "--threads", "1", "--quiet", "--out", str(tmp_path / "a"))  # --threads: no KeyError
    assert rc == 0, err
    assert "(elbo, tau=0)" in out  # no beta printed for the ELBO
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--n-train", "40", "--hidden", "8",
                        "--latent-dim", "2", "--objective", "beta-vae", "--beta", "4", "--jacobian", "0.1",
                        "--jacobian-projections", "2", "--quiet", "--out", str(tmp_path / "b"))
    assert rc == 0, err
    assert "(beta-vae, beta=4, tau=0)" in out
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["objective"]["jacobian_projections"] == 2 and cfg["objective"]["beta"] == 4


def test_study_certified_small(tmp_path, capsys):
    rc, out, err = _run(capsys, "study", "certified", "--dataset", "digits", "--epochs", "2", "--n-train", "300",
                        "--latent-dim", "4", "--hidden", "32", "--n", "4", "--n-samples", "300", "--lipschitz", "4",
                        "--quiet", "--out", str(tmp_path / "study"))
    assert rc == 0, err
    assert "lipschitz-vae (L=4)" in out and "refuted (above a budget settled not robust; must be 0): 0;" in out
    rows = json.loads((tmp_path / "study" / "certified.json").read_text())["rows"]
    assert len(rows) == 3 and all(r["n_violations"] == 0 for r in rows)
    # a study folder like the others: study.json with the command that reproduces it, and a report
    meta = json.loads((tmp_path / "study" / "study.json").read_text())
    assert meta["study"] == "certified" and meta["tables"] == ["certified.csv", *(f"model{i}/per_input.csv"
                                                                                  for i in range(3))]
    # every median and count of the table from the per-input files (the studies audit: no per-input output)
    import csv

    import numpy as np

    for i, row in enumerate(rows):
        per = list(csv.DictReader(open(tmp_path / "study" / f"model{i}" / "per_input.csv")))
        assert len(per) == 4
        col = lambda k: np.array([float(r[k]) for r in per])  # noqa: E731
        assert row["radius_full"] == pytest.approx(float(np.median(col("radius_rigorous_full"))))
        m = col("margin")
        if np.isnan(m).all():
            assert row["margin"] is None  # NaN, stored as null
        else:
            assert row["margin"] == pytest.approx(float(np.median(m[~np.isnan(m)])))
        assert row["n_violations"] == sum(r["refuted"] == "True" for r in per)
        assert row["n_unresolved"] == sum(r["unresolved"] == "True" for r in per)
    assert meta["command"] == (f"robvae study certified --dataset digits --out {tmp_path / 'study'} --lipschitz 4 "
                               "--sigma-cap 0.5 --beta 4 --epochs 2 --latent-dim 4 --hidden 32 --n-train 300 --n 4 "
                               "--n-samples 300 --r-relative 1.5 --attack-eps 1 --cert-eps 0.05 --seed 0")
    rc, out, err = _run(capsys, "report", str(tmp_path / "study"), "--html", str(tmp_path / "report.html"))
    assert rc == 0, err
    assert "lipschitz-vae (L=4)" in (tmp_path / "report.html").read_text()


def test_a_certified_margin_the_attack_contradicts_is_reported_as_such():
    """The table said "(holds)" whenever the bound reached eps, even with 0/20 inputs robust under
    the attack; a contradiction is now named, and robvae train fails on it."""
    from robvae.studies.certified import MarginVerification

    base = dict(eps=0.5, r=0.02, n=20, barrett_margin=0.5005, constants=(1.0, 1.0, 0.1, 1.0), p_clean_min=0.9,
                p_attack_min=0.8, n_robust_attack=20, radius_mean_median=0.1, radius_full_median=0.05, damage_median=0.1)
    ok = MarginVerification(**base)
    assert not ok.contradicted and "(holds)" in ok.table()
    bad = MarginVerification(**{**base, "p_clean_min": 0.13, "p_attack_min": 0.01, "n_robust_attack": 0})
    assert bad.contradicted and "CONTRADICTED: 20/20" in bad.table()
    below = MarginVerification(**{**base, "barrett_margin": 0.3, "n_robust_attack": 0})
    assert not below.contradicted and "BELOW eps" in below.table()


def test_the_margin_check_also_attacks_barretts_probability_itself():
    """Found by an audit: the check of --certify-margin attacked only the damage to g(mu(x)); it now
    also runs a PGD on Barrett's probability itself and keeps the worse p per input. On a model
    whose mean ignores its input while its std follows it (the damage to g(mu(x)) is always 0), the
    PGD on the probability drives p from 1 to below 1/2 within the budget."""
    import torch

    from robvae.attacks.pgd import pgd
    from robvae.studies.certified import _barrett_objective, barrett_probability

    class SigmaOnly(torch.nn.Module):
        input_shape = (1, 4, 4)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((16,), 3.0))
            self.dec = torch.nn.Linear(2, 16)

        def encode(self, x):
            s = 0.01 + torch.nn.functional.softplus(x.flatten(1) @ self.w - 20.0)
            return torch.zeros(x.shape[0], 2) + 0 * s[:, None], s[:, None].expand(-1, 2)

        def decode(self, z):
            return self.dec(z).view(-1, 1, 4, 4)

    torch.manual_seed(0)
    m = SigmaOnly().eval()
    x = torch.full((3, 1, 4, 4), 0.2)
    g = torch.Generator().manual_seed(0)
    assert float(barrett_probability(m, x, torch.zeros_like(x), 0.5, 2000, g).min()) == 1.0
    direct = pgd(_barrett_objective(m, x, 0.5, generator=g), x, 2.0, norm="l2", steps=40, generator=g).delta
    assert float(barrett_probability(m, x, direct, 0.5, 2000, g).max()) < 0.5


def test_study_certified_refuses_odd_widths_before_training(tmp_path, capsys):
    """Found by the studies audit: an odd --hidden failed only when the Lipschitz VAEs trained,
    after the two other models (13 s)."""
    rc, out, err = _run(capsys, "study", "certified", "--dataset", "digits", "--hidden", "33", "--out",
                        str(tmp_path / "s"))
    assert rc == 2 and "even widths" in err and not (tmp_path / "s" / "vae").exists()


def test_a_run_trained_with_a_since_refused_setting_can_still_be_extended(tmp_path, capsys):
    """Review: a run trained before the refusals with, e.g., --adversarial-steps 5 under no
    adversarial training could be extended neither with it (refused) nor without (another config)."""
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    out = tmp_path / "old"
    cfg = TrainConfig(model=ModelConfig(latent_dim=2, hidden=(8,)), epochs=1, n_train=40, adversarial_steps=5)
    train(cfg, out, progress=False)
    rc, stdout, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "2", "--n-train", "40", "--hidden", "8",
                           "--latent-dim", "2", "--adversarial-steps", "5", "--quiet", "--out", str(out))
    assert rc == 0, err
    assert "for 2 epochs" in stdout



def test_train_fails_when_the_trained_weights_certify_less_than_requested(tmp_path, capsys, monkeypatch):
    """The printed verdict said "BELOW eps" and the command exited 0 (h74): a run that does not
    certify what --certify-margin announced is now an error (exit 1) naming both margins."""
    import dataclasses

    from robvae.cli import train as train_mod

    real = train_mod.verify_margin

    def short(*a, **kw):  # the saved weights' constants giving 90% of the request
        ver = real(*a, **kw)
        return dataclasses.replace(ver, barrett_margin=0.9 * ver.eps)

    monkeypatch.setattr(train_mod, "verify_margin", short)
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "4", "--hidden", "32",
                        "--n-train", "100", "--certify-margin", "0.5", "--r", "2", "--verify-n", "2", "--quiet",
                        "--out", str(tmp_path / "run"))
    assert rc == 1 and "BELOW eps" in out
    assert "certify a Barrett margin of 0.45 only, below the requested 0.5" in err


def test_a_tiny_requested_margin_is_certified_by_the_trained_weights(tmp_path, capsys):
    """The h74 case: --certify-margin 1e-5 --r 2 measured 9.7e-6 (BELOW eps, exit 0); it holds now."""
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "2", "--latent-dim", "4", "--hidden", "64",
                        "--certify-margin", "1e-5", "--r", "2", "--verify-n", "3", "--quiet",
                        "--out", str(tmp_path / "run"))
    assert rc == 0, err
    assert "(holds)" in out and "BELOW" not in out


def test_a_jacobian_penalty_that_is_constant_on_a_lipschitz_mlp_is_refused(tmp_path, capsys):
    """On a lipschitz-mlp whose widths never grow (64 -> 64 -> 4), J J^T = L^2 I: ||J||_F^2 = d L^2
    for every input and weight (measured here by autograd), so --jacobian changed nothing and was
    accepted (h74). Refused in one line before anything is written; a widening net or the whitened
    penalty still trains."""
    import torch

    import robvae
    from robvae.models import ModelConfig

    torch.manual_seed(0)
    for hidden, constant in (((64,), True), ((32,), True), ((256, 128), False)):
        m = robvae.VAE(ModelConfig(input_shape=(1, 8, 8), arch="lipschitz-mlp", latent_dim=4, hidden=hidden,
                                   lipschitz=3.0, sigma_cap=0.1))
        x = torch.rand(4, 1, 8, 8)
        J = torch.func.vmap(torch.func.jacrev(lambda xx: m.encode(xx[None])[0][0]))(x).flatten(2)
        frob = (J ** 2).sum((1, 2))
        assert bool(torch.allclose(frob, torch.full_like(frob, 36.0), rtol=1e-4)) == constant, (hidden, frob)
    rc, _, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "4", "--hidden", "64",
                      "--certify-margin", "0.5", "--r", "2", "--jacobian", "1", "--out", str(tmp_path / "run"))
    assert rc == 2 and "Jacobian penalty is a constant" in err and "64 -> 64 -> 4" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    rc, _, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "4", "--hidden", "64",
                      "--n-train", "100", "--certify-margin", "0.5", "--r", "2", "--jacobian", "1",
                      "--jacobian-whitened", "--verify-n", "2", "--quiet", "--out", str(tmp_path / "white"))
    assert rc == 0, err


@pytest.mark.parametrize("args, needle", [
    (["--certify-margin", "0.5", "--r", "1e300"], "--r 1e+300 is at least the largest distance between two digits"),
    (["--certify-margin", "100", "--r", "1"], "--certify-margin 100 exceeds the largest distance"),
    (["--adversarial-eps", "5", "--adversarial-norm", "linf"], "diameter in linf (1)"),
    (["--adversarial-eps", "1e9"], "diameter in l2 (8)"),
])
def test_budgets_and_radii_beyond_the_pixel_box_are_refused_before_training(tmp_path, capsys, args, needle):
    """h74: --certify-margin 0.5 --r 1e300 overflowed into "training diverged ... lower the learning
    rate" with the folder written; --certify-margin 100 --r 1 trained a collapsed model; adversarial
    budgets past the box's diameter trained. Now one line, exit 2, nothing written."""
    rc, _, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", *args, "--out", str(tmp_path / "run"))
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_runs_trained_before_the_session_14_refusals_can_still_be_extended(tmp_path, monkeypatch):
    """Review h76: the new refusals (a constant Jacobian penalty on a lipschitz-mlp, an adversarial
    budget past the box, beta-TCVAE on batches of one) ran before the stored config was compared,
    so runs trained with them before could no longer be extended. They apply to new runs only."""
    from robvae import training
    from robvae.models import ModelConfig
    from robvae.objectives import ObjectiveConfig
    from robvae.training import TrainConfig, train

    configs = {
        "lip": TrainConfig(model=ModelConfig(arch="lipschitz-mlp", latent_dim=2, hidden=(8,), lipschitz=2.0,
                                             sigma_cap=0.1), objective=ObjectiveConfig("elbo", jacobian=0.1),
                           epochs=1, n_train=40),
        "adv": TrainConfig(model=ModelConfig(latent_dim=2, hidden=(8,)), epochs=1, n_train=40, adversarial_eps=1.0,
                           adversarial_norm="linf"),
        "tc": TrainConfig(model=ModelConfig(latent_dim=2, hidden=(8,)), objective=ObjectiveConfig("beta-tcvae", 2.0),
                          epochs=1, n_train=40, batch_size=1),
    }
    real = training.check_new_run
    for name, cfg in configs.items():
        with pytest.raises(ValueError):
            real(dataclasses_replace_shape(cfg), 40)  # refused for a new run
        monkeypatch.setattr(training, "check_new_run", lambda *a: None)  # as trained before the checks
        train(cfg, tmp_path / name, progress=False)
        monkeypatch.setattr(training, "check_new_run", real)
        run = train(dataclasses_replace_epochs(cfg, 2), tmp_path / name, progress=False)  # extended
        assert len(run.metrics) == 2


def dataclasses_replace_shape(cfg):
    import dataclasses

    from robvae.models import ModelConfig

    return dataclasses.replace(cfg, model=ModelConfig.from_dict({**cfg.model.to_dict(), "input_shape": (1, 8, 8)}))


def dataclasses_replace_epochs(cfg, epochs):
    import dataclasses

    return dataclasses.replace(cfg, epochs=epochs)
