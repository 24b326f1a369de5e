"""Models: the protocol, shapes, the tau floor, likelihoods, the exact linear VAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from robvae.models import VAE, LinearVAE, ModelConfig, VAEProtocol


@pytest.mark.parametrize(
    "arch,shape", [("mlp", (1, 8, 8)), ("mlp", (3, 32, 32)), ("conv", (1, 28, 28)), ("conv", (3, 32, 32))]
)
def test_shapes_follow_protocol(arch, shape):
    torch.manual_seed(0)
    m = VAE(ModelConfig(input_shape=shape, arch=arch, latent_dim=6))
    assert isinstance(m, VAEProtocol)
    x = torch.rand(3, *shape)
    mu, sigma = m.encode(x)
    assert mu.shape == sigma.shape == (3, 6)
    assert (sigma > 0).all()
    out = m.decode(mu)
    assert out.shape == (3, *shape)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_tau_is_a_true_floor(tau):
    """sigma = softplus(s) + tau: never below tau, and exactly tau when softplus(s) underflows."""
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=4, tau=tau))
    x = torch.rand(16, 1, 8, 8)
    _, sigma = m.encode(x)
    assert float(sigma.min()) >= tau
    last = m.encoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-200.0)  # softplus(-200) = 0 in float32
    _, sigma = m.encode(x)
    assert torch.equal(sigma, torch.full_like(sigma, tau))


def test_tau_zero_gives_plain_softplus():
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=4, tau=0.0))
    x = torch.rand(5, 1, 8, 8)
    s = m.encoder(x).chunk(2, -1)[1]
    assert torch.allclose(m.encode(x)[1], torch.nn.functional.softplus(s))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="tau"):
        ModelConfig(tau=-0.1)
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(arch="transformer")
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE(ModelConfig(arch="conv", input_shape=(1, 10, 10)))
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({"latent": 3})


def test_bernoulli_log_likelihood_by_hand():
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=3))
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    m = m.double()
    z = torch.randn(4, 3, dtype=torch.float64)
    g = m.decode(z)
    by_hand = (x * g.log() + (1 - x) * (1 - g).log()).flatten(1).sum(1)
    assert torch.allclose(m.log_likelihood(x, z), by_hand, atol=1e-9)


def test_gaussian_log_likelihood_matches_torch_distributions():
    torch.manual_seed(0)
    m = VAE(ModelConfig(latent_dim=3, input_shape=(3, 4, 4), likelihood="gaussian", gaussian_scale=0.2)).double()
    x = torch.rand(4, 3, 4, 4, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(m.decode(z), 0.2).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(m.log_likelihood(x, z), ref, atol=1e-9)
    learned = VAE(ModelConfig(likelihood="gaussian", gaussian_scale=None))
    assert learned.likelihood.log_scale.requires_grad


def test_linear_vae_closed_forms_are_consistent():
    m = LinearVAE.random(d=3, input_shape=(1, 3, 3), s=0.2, singular_values=[2.0, 1.0, 0.5], seed=1)
    r = 0.5
    assert math.isclose(m.exact_r_min(), 0.2 * math.sqrt(stats.chi2.median(3)))
    margin = m.exact_margin(r)
    lam = (margin * 2.0 / 0.2) ** 2  # sigma_max(A) = 2
    assert stats.ncx2.cdf((r / 0.2) ** 2, 3, lam) == pytest.approx(0.5, abs=1e-8)
    bound = m.exact_bound(r)
    p = stats.chi2.cdf((r / 0.2) ** 2, 3)
    assert bound == pytest.approx(0.2 * stats.norm.ppf(p) / math.sqrt(4 + 1 + 0.25))
    assert 0 < bound <= margin
    assert m.exact_margin(0.1) == 0.0 and m.exact_bound(0.1) == 0.0  # r below r_min
    # encoder/decoder really are A x and W z with W^T W = I
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    mu, sigma = m.encode(x)
    assert torch.allclose(mu, x.flatten(1) @ m.A.T) and torch.all(sigma == 0.2)
    assert torch.allclose(m.W.T @ m.W, torch.eye(3, dtype=torch.float64), atol=1e-12)
    np.testing.assert_allclose(torch.linalg.svdvals(m.A).numpy(), [2.0, 1.0, 0.5], atol=1e-12)
