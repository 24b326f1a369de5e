"""The empirical margin: exact on the linear VAE; above the Theorem 1 bound on a nonlinear VAE."""

import pytest
import torch

from robvae.models import VAE, LinearVAE, ModelConfig
from robvae.robustness import certify, empirical_margin, r_min


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _sensitive_vae():
    """An untrained MLP VAE made sensitive (larger weights, sigma ~ 0.05) so margins lie well inside
    the box (an untrained VAE at default scale is robust up to the box diameter)."""
    torch.manual_seed(0)
    m = VAE(ModelConfig(input_shape=(1, 6, 6), latent_dim=3, hidden=(32, 16))).double()
    with torch.no_grad():
        enc = [layer for layer in m.encoder.net if isinstance(layer, torch.nn.Linear)]
        for layer in enc + [layer for layer in m.decoder.net if isinstance(layer, torch.nn.Linear)]:
            layer.weight.mul_(2.0)
        enc[-1].bias[3:] -= 3.0  # pre-softplus scale: sigma ~ softplus(-3) ~ 0.05
    return m


@pytest.mark.parametrize("mode", ["mean", "full"])
def test_linear_margin_matches_exact(mode):
    m = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, seed=0)
    x = torch.full((4, 1, 4, 4), 0.5, dtype=torch.float64)  # the box does not bind at the margin
    r = 0.25
    res = empirical_margin(m, x, r, mode=mode, n_samples=20000, eta_samples=0, steps=30, restarts=1,
                           generator=_gen())
    exact = m.exact_margin(r)
    assert torch.all((res.margin - exact).abs() <= 0.03 * exact), (res.margin, exact)
    assert res.robust_clean.all() and not res.capped.any() and res.mode == mode
    assert torch.all(res.margin <= res.upper)
    assert torch.all(res.upper - res.margin <= 1e-3 * res.upper * (1 + 1e-9))


def test_not_robust_clean_gets_zero_and_cap():
    m = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, seed=0)
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    r = torch.tensor([0.5 * m.exact_r_min(), 0.25], dtype=torch.float64)
    res = empirical_margin(m, x, r, mode="mean", eps_max=0.01, n_samples=2000, eta_samples=0, steps=5,
                           generator=_gen())
    assert not res.robust_clean[0] and res.margin[0] == 0 and res.p_clean[0] < 0.5
    assert res.capped[1] and res.margin[1] == 0.01


def test_bound_below_margin_on_a_nonlinear_vae():
    """Theorem 1 (first order) must stay below the attack-based margin for every input."""
    m = _sensitive_vae()
    x = torch.rand(6, 1, 6, 6, generator=_gen(1), dtype=torch.float64)
    r = 1.5 * r_min(m, x, 2000, generator=_gen(2))
    cert = certify(m, x, r, n_samples=2000, generator=_gen(3))
    assert not cert.abstain.any()
    for mode in ("mean", "full"):
        res = empirical_margin(m, x, r, mode=mode, n_samples=2000, eps_init=cert.radius, steps=20, restarts=2,
                               eta_samples=4, tol=1e-2, generator=_gen(4))
        violations = (cert.radius > res.margin).nonzero().flatten().tolist()
        assert violations == [], (mode, cert.radius, res.margin)
        assert torch.all(res.margin > 0) and not res.capped.any()
