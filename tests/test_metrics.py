"""Damage metrics against hand computations (THEORY.md section 6)."""

import pytest
import torch

from robvae.errors import InputError, RobvaeError
from robvae.metrics import likelihood_degradation, reconstruction_damage, reconstruction_error
from robvae.models import VAE, LinearVAE, ModelConfig


def _vae():
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,))).double()


def test_likelihood_degradation_by_hand():
    m = _vae()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    delta = ((x + 0.2 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)).clamp(0, 1) - x)

    def loglik(z):  # Bernoulli log p(x|z) by hand
        q = torch.sigmoid(m.decoder(z)).flatten(1)
        xf = x.flatten(1)
        return (xf * q.log() + (1 - xf) * (1 - q).log()).sum(1)

    with torch.no_grad():
        ll, ll_adv = loglik(m.encode(x)[0]), loglik(m.encode(x + delta)[0])
    torch.testing.assert_close(likelihood_degradation(m, x, delta), (ll_adv - ll).abs() / ll.abs())
    torch.testing.assert_close(likelihood_degradation(m, x, torch.zeros_like(x)), torch.zeros(3, dtype=torch.float64))


def test_reconstruction_error_and_damage():
    m = LinearVAE.random(d=4, s=0.1)
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    rec = (x.flatten(1) @ m.A.T) @ m.W.T
    torch.testing.assert_close(reconstruction_error(m, x), (rec - x.flatten(1)).norm(dim=1))
    delta = torch.full_like(x, 0.01)
    torch.testing.assert_close(reconstruction_damage(m, x, delta), (delta.flatten(1) @ m.A.T).norm(dim=1))


def test_metric_errors():
    m = LinearVAE.random(d=4, s=0.1)
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    with pytest.raises(RobvaeError, match="log_likelihood"):
        likelihood_degradation(m, x, torch.zeros_like(x))
    with pytest.raises(InputError):
        reconstruction_error(m, x * 3)
    with pytest.raises(InputError):
        likelihood_degradation(_vae(), x, torch.zeros(2, 1, 4, 4, dtype=torch.float64) + 0.9)
