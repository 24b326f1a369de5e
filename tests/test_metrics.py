"""Damage metrics against hand computations (THEORY.md section 6)."""

import pytest
import torch

from robvae.errors import InputError
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
    with pytest.raises(InputError, match="log_likelihood"):
        likelihood_degradation(m, x, torch.zeros_like(x))
    with pytest.raises(InputError):
        reconstruction_error(m, x * 3)
    with pytest.raises(InputError):
        likelihood_degradation(_vae(), x, torch.zeros(2, 1, 4, 4, dtype=torch.float64) + 0.9)


def test_expected_damage_matches_a_direct_computation():
    """robvae.metrics.expected_damage (eq. 5) against model.decode on the same draws of eta; the
    mean-sigma mode differs from the full one; zero noise leaves the deterministic damage."""
    import robvae
    from robvae.metrics import expected_damage

    torch.manual_seed(0)
    model = robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).eval()
    x = torch.rand(4, 1, 8, 8)
    delta = 0.2 * torch.randn_like(x)
    delta = (x + delta).clamp(0, 1) - x
    got = expected_damage(model, x, delta, 50, generator=torch.Generator().manual_seed(7))
    eta = torch.randn((4, 50, 3), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mu0, _ = model.encode(x)
        mu, s = model.encode(x + delta)
        ref = model.decode(mu0).flatten(1)
        dec = model.decode((mu[:, None] + eta * s[:, None]).reshape(-1, 3)).flatten(1).view(4, 50, -1)
        want = (dec - ref[:, None]).norm(dim=-1).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    mean = expected_damage(model, x, delta, 50, mode="mean", generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(mean, got)
    assert (got > 0).all()
    with pytest.raises(ValueError):
        expected_damage(model, x, delta, 5, mode="median")


def test_active_units_known_answer():
    """Var_x(mu_j) > 0.01 (Burda et al.): a unit whose mean is constant, one that varies with
    variance 0.25, one just below the threshold."""
    from robvae.metrics import active_units

    t = torch.linspace(-1, 1, 101, dtype=torch.float64)
    mu = torch.stack([torch.full_like(t, 3.0), t * (0.25 / t.var()).sqrt(), t * (0.009 / t.var()).sqrt()], dim=1)
    assert active_units(mu) == 1
    assert active_units(mu, threshold=0.005) == 2
    with pytest.raises(InputError, match="at least 2 inputs"):
        active_units(mu[:1])


# --- found by an audit of the metric cores (session 13) ----------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_likelihood_degradation_of_a_half_precision_model_sums_in_float32(dtype):
    """A float16 / bfloat16 VAE summed log p(x|z) (~45 nats on 8x8 images) in its own 8-11 bits,
    stepping by 0.03-0.25 nats: the degradation, a relative difference of two such sums, came out 0
    or 6-45x off. The sum is now float32: against the same half-precision decoder outputs summed in
    float64 (an independent computation) it agrees to the float32 sum's rounding."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(32,))).eval().to(dtype)
    x = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1).to(dtype)
    delta = ((x.float() + 0.3 * torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
             .to(dtype) - x)
    got = likelihood_degradation(model, x, delta)
    with torch.inference_mode():
        ll = [-F.binary_cross_entropy_with_logits(model.decoder(model.encode(v)[0]).double(), x.double(),
                                                  reduction="none").flatten(1).sum(1) for v in (x, x + delta)]
    want = (ll[1] - ll[0]).abs() / ll[0].abs()
    assert got.dtype == torch.float32 and bool((want > 0).all())
    assert torch.allclose(got.double(), want, rtol=0.05, atol=0), (got, want)


def test_expected_damage_refuses_no_draws():
    from robvae.errors import InputError
    from robvae.metrics import expected_damage
    from robvae.models import VAE, ModelConfig

    model = VAE(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,))).eval()
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError, match="n_draws must be an integer >= 1, got 0"):
        expected_damage(model, x, torch.zeros_like(x), n_draws=0)
