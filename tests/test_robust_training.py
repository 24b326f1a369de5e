"""Robust-training methods: the Jacobian and smooth-encoder penalties, adversarial training, their options.

Every number is checked against an independent computation: the exact Jacobian (LinearVAE's A,
or robvae.robustness.encoder_jacobian on a small net), closed-form Gaussian KLs
(torch.distributions), and a spy model that records what the objective saw.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from robvae.models import VAE, LinearVAE, ModelConfig
from robvae.objectives import ObjectiveConfig, compute_objective, jacobian_penalty, smooth_penalty
from robvae.robustness import encoder_jacobian
from robvae.training import TrainConfig, batch_objective, train


def _mean_ci(samples: torch.Tensor, z: float = 4.0) -> tuple[float, float]:
    m = float(samples.mean())
    half = z * float(samples.std()) / math.sqrt(samples.numel())
    return m - half, m + half


# --- the Jacobian penalty -------------------------------------------------------------------

def _repeat_draws(model, x, n_rep: int, **kw) -> torch.Tensor:
    """n_rep independent one-projection estimates per input: [n_rep, B]."""
    g = torch.Generator().manual_seed(1)
    xs = x.repeat(n_rep, *[1] * (x.dim() - 1))
    return jacobian_penalty(model, xs, projections=1, generator=g, **kw).view(n_rep, x.shape[0])


def test_random_projection_estimate_is_unbiased_on_the_linear_vae():
    model = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.3, singular_values=[3.0, 2.0, 1.0, 0.5], seed=0)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(model.A) ** 2)  # ||J||_F^2 = ||A||_F^2 = 9 + 4 + 1 + 0.25
    assert exact == pytest.approx(14.25)
    draws = _repeat_draws(model, x, 20000)[:, 0]
    lo, hi = _mean_ci(draws)
    assert lo <= exact <= hi, (lo, exact, hi)
    assert hi - lo < 0.1 * exact  # the interval is tight enough to catch a missing factor
    # whitened: diag(1/s) A, so ||.||_F^2 = ||A||_F^2 / s^2
    wdraws = _repeat_draws(model, x, 20000, whitened=True)[:, 0]
    lo, hi = _mean_ci(wdraws)
    assert lo <= exact / 0.09 <= hi, (lo, exact / 0.09, hi)


def test_random_projection_estimate_is_unbiased_on_a_network():
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,), activation="tanh")).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    J = encoder_jacobian(model, x)  # exact [B, d, D]
    sigma = model.encode(x)[1].detach()
    for whitened, exact in ((False, J.pow(2).sum((1, 2))), (True, (J / sigma[:, :, None]).pow(2).sum((1, 2)))):
        draws = _repeat_draws(model, x, 8000, whitened=whitened).detach()
        for b in range(3):
            lo, hi = _mean_ci(draws[:, b])
            assert lo <= float(exact[b]) <= hi, (whitened, b, lo, float(exact[b]), hi)


def test_jacobian_penalty_has_gradients_for_the_parameters():
    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,)))
    jacobian_penalty(model, torch.rand(4, 1, 8, 8), projections=2).sum().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


# --- the smooth-encoder penalty -------------------------------------------------------------

class ConstantEncoder(nn.Module):
    """q(z|x) the same for every x: the smoothing penalty must be exactly 0."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor([[0.3, -1.0]]))
        self.log_sigma = nn.Parameter(torch.tensor([[-0.5, 0.2]]))

    def encode(self, x):
        B = x.shape[0]
        return self.mu.expand(B, 2), self.log_sigma.exp().expand(B, 2)

    def decode(self, z):
        return torch.zeros(z.shape[0], 1, 2, 2)


@pytest.mark.parametrize("divergence", ["kl", "symmetric-kl"])
def test_smooth_penalty_is_zero_for_an_encoder_that_ignores_its_input(divergence):
    pen = smooth_penalty(ConstantEncoder(), torch.rand(5, 1, 2, 2), noise=0.5, divergence=divergence)
    assert torch.equal(pen, torch.zeros(5))


def test_smooth_penalty_matches_the_closed_form_gaussian_kl():
    # linear VAE: q(z|x) = N(A x, s^2 I), so KL(q(z|x+n) || q(z|x)) = ||A n||^2 / (2 s^2)
    model = LinearVAE.random(d=3, input_shape=(1, 3, 3), s=0.2, seed=2)
    x = torch.rand(6, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn(6, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = 0.1
    expected = (noise * eps.flatten(1) @ model.A.T).pow(2).sum(-1) / (2 * 0.2**2)
    got = smooth_penalty(model, x, noise=noise, eps=eps)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(smooth_penalty(model, x, noise=noise, eps=eps, divergence="symmetric-kl"), 2 * expected)
    # averaged over the noise: E = noise^2 ||A||_F^2 / (2 s^2)
    g = torch.Generator().manual_seed(3)
    many = smooth_penalty(model, x[:1].expand(20000, 1, 3, 3), noise=noise, generator=g)
    lo, hi = _mean_ci(many)
    exact = noise**2 * float(torch.linalg.matrix_norm(model.A) ** 2) / (2 * 0.2**2)
    assert lo <= exact <= hi


def test_smooth_penalty_matches_torch_distributions_on_a_network():
    torch.manual_seed(1)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x)
    with torch.no_grad():
        mu, s = model.encode(x)
        mu_n, s_n = model.encode(x + 0.2 * eps)
        fwd = kl_divergence(Normal(mu_n, s_n), Normal(mu, s)).sum(-1)
        bwd = kl_divergence(Normal(mu, s), Normal(mu_n, s_n)).sum(-1)
        torch.testing.assert_close(smooth_penalty(model, x, noise=0.2, eps=eps), fwd)
        torch.testing.assert_close(smooth_penalty(model, x, noise=0.2, eps=eps, divergence="symmetric-kl"), fwd + bwd)


def test_penalties_enter_the_loss_with_their_weights():
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,)))
    x = torch.rand(8, 1, 8, 8)
    base = compute_objective(model, x, ObjectiveConfig(), 100, generator=torch.Generator().manual_seed(5))
    pen = compute_objective(model, x, ObjectiveConfig(jacobian=2.0, smooth=3.0), 100,
                            generator=torch.Generator().manual_seed(5))
    assert "jacobian" not in base and "smooth" not in base
    assert float(pen["elbo"].detach()) == pytest.approx(float(base["elbo"].detach()))  # same draw of z
    expect = float(base["loss"]) + 2.0 * float(pen["jacobian"]) + 3.0 * float(pen["smooth"])
    assert float(pen["loss"]) == pytest.approx(expect, rel=1e-5)
    assert float(pen["jacobian"]) > 0 and float(pen["smooth"]) > 0


# --- adversarial training -------------------------------------------------------------------

class SpyVAE(VAE):
    """Records every input the encoder sees and every x the likelihood scores."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.encoded: list[torch.Tensor] = []
        self.scored: list[torch.Tensor] = []

    def encode(self, x):
        self.encoded.append(x.detach().clone())
        return super().encode(x)

    def log_likelihood(self, x, z):
        self.scored.append(x.detach().clone())
        return super().log_likelihood(x, z)


def test_adversarial_training_encodes_perturbed_inputs_and_scores_clean_targets():
    torch.manual_seed(0)
    model = SpyVAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,)))
    x = torch.rand(6, 1, 8, 8) * 0.8 + 0.1
    cfg = TrainConfig(model=model.config, adversarial_eps=0.7, adversarial_steps=3)
    out = batch_objective(model, x, cfg, 100, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert len(model.scored) == 1 and torch.equal(model.scored[0], x)  # clean targets
    x_adv = model.encoded[-1]  # the objective's encoder call comes after the attack's
    assert not torch.equal(x_adv, x)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert bool((norms > 0.5).all()) and bool((norms <= 0.7 + 1e-5).all())  # the attack uses its budget
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    # without a budget, the objective sees exactly the clean batch, once
    model.encoded.clear(), model.scored.clear()
    batch_objective(model, x, TrainConfig(model=model.config), 100, generator=torch.Generator().manual_seed(0))
    assert len(model.encoded) == 1 and torch.equal(model.encoded[0], x) and torch.equal(model.scored[0], x)


# --- options ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, msg", [
    (dict(jacobian=-1.0), "jacobian must be"), (dict(smooth=float("nan")), "smooth must be"),
    (dict(smooth_noise=0.0), "smooth_noise"), (dict(smooth_divergence="js"), "smooth_divergence"),
    (dict(jacobian_projections=0), "jacobian_projections"), (dict(jacobian_whitened="yes"), "jacobian_whitened"),
])
def test_objective_options_are_validated(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ObjectiveConfig(**kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(adversarial_eps=-0.1), "adversarial_eps"), (dict(adversarial_steps=0), "adversarial_steps"),
    (dict(adversarial_norm="l1"), "adversarial_norm"),
])
def test_adversarial_options_are_validated(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_train_command_sets_the_new_options(tmp_path):
    from robvae.cli import main
    from robvae.fileio import read_json

    rc = main(["train", "--epochs", "1", "--n-train", "64", "--latent-dim", "2", "--hidden", "8", "--jacobian", "0.5",
               "--jacobian-whitened", "--smooth", "2", "--smooth-noise", "0.3", "--smooth-divergence", "symmetric-kl",
               "--adversarial-eps", "0.4", "--adversarial-steps", "2", "--adversarial-norm", "linf",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    cfg = read_json(tmp_path / "run" / "config.json")
    assert (cfg["objective"]["jacobian"], cfg["objective"]["jacobian_whitened"], cfg["objective"]["smooth"],
            cfg["objective"]["smooth_noise"], cfg["objective"]["smooth_divergence"]) == (0.5, True, 2.0, 0.3, "symmetric-kl")
    assert (cfg["adversarial_eps"], cfg["adversarial_steps"], cfg["adversarial_norm"]) == (0.4, 2, "linf")


def test_sweep_files_vary_the_new_options_and_reject_bad_values():
    from robvae.sweep import SweepSpecError, parse_sweep

    spec = parse_sweep({"base": {"epochs": 1}, "grid": {"objective.jacobian": [0, 0.1], "adversarial_eps": [0, 0.5]}})
    assert [(t.train.objective.jacobian, t.train.adversarial_eps) for t in spec.trials] == [
        (0, 0), (0, 0.5), (0.1, 0), (0.1, 0.5)]
    with pytest.raises(SweepSpecError, match="adversarial_norm"):
        parse_sweep({"grid": {"adversarial_norm": ["l3"]}})
    with pytest.raises(SweepSpecError, match="objective.smoothness: unknown field"):
        parse_sweep({"grid": {"objective.smoothness": [1]}})


# --- each penalty reduces its quantity (digits, same seed, same everything else) ---------------

def _train(tmp_path, name, digits_small, **kw):
    obj = kw.pop("objective", {})
    cfg = TrainConfig(dataset="digits", model=ModelConfig(latent_dim=4, hidden=(64,)), epochs=6, batch_size=32,
                      seed=0, objective=ObjectiveConfig(**obj), **kw)
    return train(cfg, tmp_path / name, progress=False, data=digits_small).model


def _jac_sq(model, x, whitened=False):
    J = encoder_jacobian(model, x)
    if whitened:
        J = J / model.encode(x)[1].detach()[:, :, None]
    return float(J.pow(2).sum((1, 2)).mean())


def test_each_penalty_reduces_its_quantity(tmp_path, digits_small):
    from robvae.attacks import max_damage_attack
    from robvae.metrics import reconstruction_damage

    x = digits_small[1].images[:50]
    plain = _train(tmp_path, "plain", digits_small)
    jac = _train(tmp_path, "jac", digits_small, objective=dict(jacobian=1.0))
    wjac = _train(tmp_path, "wjac", digits_small, objective=dict(jacobian=2.0, jacobian_whitened=True))
    smooth = _train(tmp_path, "smooth", digits_small, objective=dict(smooth=100.0, smooth_noise=0.2))
    adv = _train(tmp_path, "adv", digits_small, adversarial_eps=2.0, adversarial_steps=3)

    assert _jac_sq(jac, x) < 0.7 * _jac_sq(plain, x)
    assert _jac_sq(wjac, x, whitened=True) < 0.7 * _jac_sq(plain, x, whitened=True)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s_plain = float(smooth_penalty(plain, x, noise=0.2, eps=eps).mean())
        s_smooth = float(smooth_penalty(smooth, x, noise=0.2, eps=eps).mean())
    assert s_smooth < 0.7 * s_plain

    def damage(model):
        delta = max_damage_attack(model, x, 1.0, steps=20, eta_samples=0, generator=torch.Generator().manual_seed(0))
        return float(reconstruction_damage(model, x, delta).mean())

    assert damage(adv) < 0.9 * damage(plain)
