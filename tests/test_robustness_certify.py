"""Theorem 1 certificates against the linear VAE's closed forms (THEORY.md sections 3 and 7)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from robvae.errors import InputError
from robvae.models import VAE, LinearVAE, ModelConfig
from robvae.robustness import Certificate, certify, encoder_jacobian, robust_reconstruction

N = 20000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _model():
    return LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, seed=0)


@pytest.mark.parametrize("r", [0.22, 0.3])
def test_radius_matches_exact_bound_and_never_exceeds_margin(r):
    m = _model()
    x = torch.rand(5, 1, 4, 4, generator=_gen(1), dtype=torch.float64)
    c = certify(m, x, r, n_samples=N, alpha=0.001, generator=_gen())
    p = float(m.exact_p(r))
    se_p = math.sqrt(p * (1 - p) / N)
    fro = float(torch.linalg.matrix_norm(m.A))
    # delta-method SE of s * probit(p_hat) / ||A||_F
    se_r = m.s / fro * se_p / stats.norm.pdf(stats.norm.ppf(p))
    bound, margin = m.exact_bound(r), m.exact_margin(r)
    assert np.all(np.abs(c.radius.numpy() - bound) <= 5 * se_r), (c.radius, bound)
    slack = 5 * se_r * fro / float(torch.linalg.matrix_norm(m.A, ord=2))
    for name in ("radius", "radius_sound", "radius_spectral", "radius_whitened"):
        assert torch.all(getattr(c, name) <= margin + slack), name
    assert torch.all(c.radius_sound <= c.radius)
    assert torch.all(c.radius <= c.radius_spectral * (1 + 1e-12))
    assert torch.all(c.radius_spectral <= c.radius_whitened * (1 + 1e-12))
    torch.testing.assert_close(c.jac_frobenius, torch.full((5,), fro, dtype=torch.float64))
    torch.testing.assert_close(c.sigma_min, torch.full((5,), m.s, dtype=torch.float64))
    assert not c.abstain.any() and not c.abstain_sound.any()
    torch.testing.assert_close(robust_reconstruction(m, x), m.decode(x.flatten(1) @ m.A.T))


def test_abstains_below_r_min_and_infinite_at_p_one():
    m = _model()
    x = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    r = torch.tensor([0.5 * m.exact_r_min(), 1.0 * m.exact_r_min(), 2.0], dtype=torch.float64)
    c = certify(m, x, r, n_samples=4000, alpha=0.001, generator=_gen())
    assert c.abstain[0] and c.abstain_sound[0] and c.radius[0] == 0 and c.radius_sound[0] == 0
    assert c.radius_whitened[0] == 0 and c.radius_spectral[0] == 0
    # at r_min: p = 1/2 up to noise, the sound certificate abstains (p_lower < 1/2 - 3 SE)
    assert c.abstain_sound[1] and c.radius_sound[1] == 0
    # every draw within r: p = 1, the paper's radius is infinite, the sound one is finite
    assert c.p[2] == 1 and math.isinf(float(c.radius[2])) and math.isfinite(float(c.radius_sound[2]))
    assert c.radius_sound[2] > 0
    assert c.summary()["n_infinite_radius"] == 1


def test_outputs_batches_and_rows():
    torch.manual_seed(0)
    m = VAE(ModelConfig(input_shape=(1, 6, 6), latent_dim=3, hidden=(16,))).double()
    x = torch.rand(7, 1, 6, 6, generator=_gen(2), dtype=torch.float64)
    c = certify(m, x, 2.0, n_samples=200, batch_size=3, generator=_gen())
    J = encoder_jacobian(m, x)
    torch.testing.assert_close(c.jac_frobenius, J.norm(dim=(1, 2)))
    torch.testing.assert_close(c.jac_spectral, torch.linalg.matrix_norm(J, ord=2))
    assert len(c) == 7 and robust_reconstruction(m, x).shape == x.shape
    # every radius is derived from the stored fields; slicing and concatenating keep them
    torch.testing.assert_close(Certificate.cat([c[:3], c[3:]]).radius, c.radius)
    assert not hasattr(Certificate, "__dataclass_fields__") or "radius" not in Certificate.__dataclass_fields__
    back = Certificate.from_numpy(c.as_numpy(), mode=c.mode, alpha=c.alpha, n_samples=c.n_samples)
    torch.testing.assert_close(back.radius_whitened, c.radius_whitened)
    rows = c.to_rows()
    assert len(rows) == 7 and rows[0]["mode"] == "mean" and isinstance(rows[0]["radius"], float)
    arrs = c.as_numpy()
    assert set(arrs) >= {"radius", "radius_sound", "p", "p_lower", "abstain"} and arrs["p"].shape == (7,)
    s = c.summary()
    assert s["n"] == 7 and set(s["p_quantiles"]) == {"0.05", "0.25", "0.5", "0.75", "0.95"}
    only = certify(m, x, 2.0, n_samples=50, norms=("frobenius",), generator=_gen())
    assert torch.isnan(only.jac_spectral).all() and torch.isfinite(only.jac_frobenius).all()


def test_certify_validation():
    m = _model()
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    with pytest.raises(InputError):
        certify(m, x.view(2, 16), 0.3)
    with pytest.raises(InputError):
        certify(m, x - 1, 0.3)
    with pytest.raises(InputError):
        certify(m, x, torch.tensor([0.3, 0.3, 0.3]))
    with pytest.raises(ValueError):
        certify(m, x, 0.3, norms=("nuclear",))
