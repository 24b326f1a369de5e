"""Objectives against exact values and a brute-force TC decomposition."""

from __future__ import annotations

import math

import pytest
import torch

from robvae.models import VAE, ModelConfig
from robvae.objectives import (
    ObjectiveConfig, beta_tcvae, beta_vae, compute_objective, elbo, gaussian_kl, tc_decomposition,
)


def test_gaussian_kl_matches_torch():
    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 4, dtype=torch.float64), torch.rand(5, 4, dtype=torch.float64) + 0.1
    q = torch.distributions.Normal(mu, sigma)
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(gaussian_kl(mu, sigma), torch.distributions.kl_divergence(q, p).sum(-1))
    # a value by hand: mu = 1, sigma = 1 on 2 axes -> KL = 1/2 * 2 = 1
    assert float(gaussian_kl(torch.ones(1, 2), torch.ones(1, 2))) == pytest.approx(1.0)


def test_beta_vae_with_beta_one_is_the_elbo_and_scales_kl():
    torch.manual_seed(0)
    log_px, mu, sigma = torch.randn(6), torch.randn(6, 3), torch.rand(6, 3) + 0.2
    assert torch.allclose(beta_vae(log_px, mu, sigma, 1.0), elbo(log_px, mu, sigma))
    assert torch.allclose(beta_vae(log_px, mu, sigma, 4.0), log_px - 4 * gaussian_kl(mu, sigma))


def _brute_force_tc(z, mu, sigma, N):
    """Explicit loops over the batch, in float64 math (no logsumexp, no broadcasting)."""
    B, d = z.shape
    out = {"mi": [], "tc": [], "dwkl": []}
    def logn(v, m, s):
        return -0.5 * ((v - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    for b in range(B):
        qz = sum(math.exp(sum(logn(z[b, k], mu[c, k], sigma[c, k]) for k in range(d))) for c in range(B)) / (N * B)
        prod = 1.0
        for k in range(d):
            prod *= sum(math.exp(logn(z[b, k], mu[c, k], sigma[c, k])) for c in range(B)) / (N * B)
        log_qzx = sum(logn(z[b, k], mu[b, k], sigma[b, k]) for k in range(d))
        log_pz = sum(logn(z[b, k], 0.0, 1.0) for k in range(d))
        out["mi"].append(log_qzx - math.log(qz))
        out["tc"].append(math.log(qz) - math.log(prod))
        out["dwkl"].append(math.log(prod) - log_pz)
    return out


def test_tc_decomposition_against_brute_force():
    torch.manual_seed(1)
    B, d, N = 5, 3, 50
    mu = torch.randn(B, d, dtype=torch.float64)
    sigma = torch.rand(B, d, dtype=torch.float64) + 0.3
    z = mu + sigma * torch.randn(B, d, dtype=torch.float64)
    got = tc_decomposition(z, mu, sigma, N)
    ref = _brute_force_tc(z.numpy(), mu.numpy(), sigma.numpy(), N)
    for key in ("mi", "tc", "dwkl"):
        assert torch.allclose(got[key], torch.tensor(ref[key], dtype=torch.float64), atol=1e-10), key
    # the three terms add up to the one-sample KL estimate log q(z|x) - log p(z)
    total = got["mi"] + got["tc"] + got["dwkl"]
    lq = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
    lp = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(total, lq - lp, atol=1e-10)


def test_beta_tcvae_beta_one_is_sampled_elbo_and_beta_weights_tc():
    torch.manual_seed(2)
    B, d = 6, 2
    mu, sigma = torch.randn(B, d, dtype=torch.float64), torch.rand(B, d, dtype=torch.float64) + 0.2
    z = mu + sigma * torch.randn(B, d, dtype=torch.float64)
    log_px = torch.randn(B, dtype=torch.float64)
    lq = torch.distributions.Normal(mu, sigma).log_prob(z).sum(-1)
    lp = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(beta_tcvae(log_px, z, mu, sigma, 1.0, 100), log_px - (lq - lp))
    tc = tc_decomposition(z, mu, sigma, 100)["tc"]
    assert torch.allclose(
        beta_tcvae(log_px, z, mu, sigma, 5.0, 100) - beta_tcvae(log_px, z, mu, sigma, 1.0, 100), -4.0 * tc
    )


def test_compute_objective_exact_value_with_fixed_noise():
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=3)).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    out = compute_objective(m, x, ObjectiveConfig("beta-vae", beta=3.0), 100, generator=g)
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    mu, sigma = m.encode(x)
    log_px = m.log_likelihood(x, mu + sigma * eps)
    kl = gaussian_kl(mu, sigma)
    assert float(out["loss"]) == pytest.approx(float(-(log_px - 3.0 * kl).mean()), rel=1e-12)
    assert float(out["elbo"]) == pytest.approx(float((log_px - kl).mean()), rel=1e-12)


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match="unknown objective"):
        ObjectiveConfig("vqvae")
    with pytest.raises(ValueError, match="beta"):
        ObjectiveConfig("beta-vae", beta=-1)


def test_a_batch_of_one_makes_mi_and_tc_constants_and_beta_tcvae_refuses_it():
    """With B = 1 the minibatch estimator's MI is log N and its TC (d - 1) log N whatever z, mu,
    sigma (so beta weighs nothing): the closed forms, and TrainConfig refuses batch_size 1."""
    import math as _math

    from robvae.training import TrainConfig

    g = torch.Generator().manual_seed(3)
    for d in (1, 3):
        mu, sigma = torch.randn(1, d, generator=g), torch.rand(1, d, generator=g) + 0.1
        z = mu + sigma * torch.randn(1, d, generator=g)
        t = tc_decomposition(z, mu, sigma, 50)
        torch.testing.assert_close(t["mi"], torch.tensor([_math.log(50)]))
        torch.testing.assert_close(t["tc"], torch.tensor([(d - 1) * _math.log(50)]))
    from robvae.training import check_new_run

    with pytest.raises(ValueError, match="batch_size 1"):
        check_new_run(TrainConfig(objective=ObjectiveConfig("beta-tcvae", 4.0), batch_size=1), 100)
    with pytest.raises(ValueError, match="1 training images"):  # n_train 1: a batch of one too
        check_new_run(TrainConfig(objective=ObjectiveConfig("beta-tcvae", 4.0), batch_size=8), 1)
    with pytest.warns(UserWarning, match="last batch of one input"):
        check_new_run(TrainConfig(objective=ObjectiveConfig("beta-tcvae", 4.0), batch_size=8), 17)
    check_new_run(TrainConfig(objective=ObjectiveConfig("beta-vae", 4.0), batch_size=1), 100)  # other objectives
    check_new_run(TrainConfig(objective=ObjectiveConfig("beta-tcvae", 4.0), batch_size=2), 100)
    # a config of a run trained before the check still loads (TrainConfig itself does not refuse it)
    TrainConfig(objective=ObjectiveConfig("beta-tcvae", 4.0), batch_size=1)
