"""Encoder Jacobians and their norms: exact vs autograd, Hutchinson, power iteration vs SVD."""

import math

import pytest
import torch

from robvae.models import VAE, LinearVAE, ModelConfig
from robvae.robustness import encoder_jacobian, jacobian_norm


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mlp():
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=(1, 6, 6), latent_dim=3, hidden=(16, 8), activation="tanh")).double()


def _conv():
    torch.manual_seed(1)
    return VAE(ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=3, conv_channels=(4, 8),
                           conv_hidden=16)).double()


def _autograd_jacobian(model, x):
    J = torch.autograd.functional.jacobian(lambda xx: model.encode(xx)[0], x)  # [B, d, B, *shape]
    B = x.shape[0]
    return torch.stack([J[b, :, b].reshape(J.shape[1], -1) for b in range(B)])


def test_linear_jacobian_is_A():
    m = LinearVAE.random(d=4, s=0.1)
    x = torch.rand(3, 1, 4, 4, generator=_gen(), dtype=torch.float64)
    J = encoder_jacobian(m, x)
    assert J.shape == (3, 4, 16)
    torch.testing.assert_close(J, m.A.expand(3, 4, 16), rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [_mlp, _conv])
def test_jacobian_matches_autograd(make):
    m = make()
    x = torch.rand(4, *m.input_shape, generator=_gen(2), dtype=torch.float64)
    J = encoder_jacobian(m, x)
    torch.testing.assert_close(J, _autograd_jacobian(m, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(encoder_jacobian(m, x, chunk_size=1), J, rtol=1e-12, atol=1e-14)
    with torch.inference_mode():  # works inside an outer inference-mode block
        torch.testing.assert_close(encoder_jacobian(m, x), J)


@pytest.mark.parametrize("probe", ["vjp", "jvp"])
def test_hutchinson_within_its_variance(probe):
    m = _mlp()
    x = torch.rand(5, 1, 6, 6, generator=_gen(3), dtype=torch.float64)
    J = encoder_jacobian(m, x)
    P = 400
    est = jacobian_norm(m, x, "frobenius", "hutchinson", n_probes=P, probe=probe, generator=_gen(4))
    sv = torch.linalg.svdvals(J)
    # Var ||J v||^2 = Var ||u^T J||^2 = 2 sum_i s_i^4 for Gaussian probes
    se = torch.sqrt(2 * sv.pow(4).sum(1) / P)
    assert torch.all((est.pow(2) - J.pow(2).sum((1, 2))).abs() <= 5 * se), (est, J.norm(dim=(1, 2)))
    torch.testing.assert_close(jacobian_norm(m, x), J.norm(dim=(1, 2)))


def test_power_iteration_matches_svd():
    m = LinearVAE.random(d=4, s=0.1, singular_values=[3.0, 2.0, 1.0, 0.5])
    x = torch.rand(3, 1, 4, 4, generator=_gen(), dtype=torch.float64)
    got = jacobian_norm(m, x, "spectral", "hutchinson", n_iter=60, generator=_gen(1))
    torch.testing.assert_close(got, torch.full((3,), 3.0, dtype=torch.float64), rtol=1e-8, atol=0)
    mm = _mlp()
    xx = torch.rand(4, 1, 6, 6, generator=_gen(5), dtype=torch.float64)
    svd = torch.linalg.svdvals(encoder_jacobian(mm, xx))
    exact = jacobian_norm(mm, xx, "spectral")
    torch.testing.assert_close(exact, svd[:, 0])
    power = jacobian_norm(mm, xx, "spectral", "hutchinson", n_iter=300, generator=_gen(6))
    gap = (svd[:, 1] / svd[:, 0]).max()
    assert torch.all(power <= exact * (1 + 1e-10))
    assert torch.all((exact - power) / exact <= max(1e-6, float(gap) ** 600)), (power, exact, gap)


def test_whitened_spectral_matches_svd():
    m = _mlp()
    x = torch.rand(4, 1, 6, 6, generator=_gen(7), dtype=torch.float64)
    J = encoder_jacobian(m, x)
    with torch.no_grad():
        sigma = m.encode(x)[1]
    ref = torch.linalg.svdvals(J / sigma[:, :, None])[:, 0]
    torch.testing.assert_close(jacobian_norm(m, x, "whitened"), ref)
    power = jacobian_norm(m, x, "whitened", "hutchinson", n_iter=300, generator=_gen(8))
    torch.testing.assert_close(power, ref, rtol=1e-5, atol=0)
    # ||J||_2 / sigma_max <= whitened <= ||J||_2 / sigma_min
    s2 = jacobian_norm(m, x, "spectral")
    assert torch.all(ref <= s2 / sigma.amin(1) * (1 + 1e-12)) and torch.all(ref >= s2 / sigma.amax(1) * (1 - 1e-12))


def test_bad_options():
    m = _mlp()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError):
        jacobian_norm(m, x, "nuclear")
    with pytest.raises(ValueError):
        jacobian_norm(m, x, "frobenius", "magic")
    assert math.isfinite(float(jacobian_norm(m, x, "frobenius", "hutchinson", n_probes=2).sum()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_get_spectral_norms(dtype):
    """Found by an audit: certify on a float16 model failed with torch's "Low precision dtypes not
    supported" from the SVD; the exact Jacobian of such a model is now read in float32."""
    from robvae.robustness.jacobian import jacobian_norms

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 6))

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec, self.input_shape = enc, torch.nn.Linear(3, 16), (1, 4, 4)

        def encode(self, x):
            h = self.enc(x)
            return h[:, :3], torch.nn.functional.softplus(h[:, 3:]) + 0.1

        def decode(self, z):
            return torch.sigmoid(self.dec(z)).view(-1, 1, 4, 4)

    m = M().eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = jacobian_norms(m, x, ("spectral", "whitened"), method="exact")
    low = jacobian_norms(m.to(dtype), x.to(dtype), ("spectral", "whitened"), method="exact")
    assert low.spectral.dtype == dtype
    torch.testing.assert_close(low.spectral.float(), ref.spectral, rtol=3e-2, atol=0)
    torch.testing.assert_close(low.whitened.float(), ref.whitened, rtol=3e-2, atol=0)


def test_first_order_check_known_answers():
    """A linear encoder: the finite difference IS J delta (ratio 1 to rounding), consistent at any
    eps. The same encoder behind round(16 x) / 16 (gradient masking): J = 0 while mu moves, so
    every input fails at a budget that crosses rounding steps; at one far below them nothing
    moves, and that is consistent too. A constant encoder is consistent (nothing moves)."""
    from robvae.models import LinearVAE
    from robvae.robustness.jacobian import first_order_check

    lin = LinearVAE.random(d=3, input_shape=(1, 8, 8), s=0.2, seed=0, dtype=torch.float64)
    x = (torch.randint(0, 17, (12, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16).double()
    for eps in (0.01, 0.5, 2.0):
        c = first_order_check(lin, x, eps, generator=torch.Generator().manual_seed(1))
        assert bool(c.consistent.all()) and c.fraction_inconsistent == 0.0
        torch.testing.assert_close(c.ratio, torch.ones(12, dtype=torch.float64), rtol=1e-9, atol=0)

    class Quantised(torch.nn.Module):
        input_shape = (1, 8, 8)

        def encode(self, xx):
            return lin.encode(torch.round(16 * xx) / 16)

        def decode(self, z):
            return lin.decode(z)

    q = first_order_check(Quantised(), x, 0.5, generator=torch.Generator().manual_seed(1))
    assert q.fraction_inconsistent == 1.0 and bool(torch.isinf(q.ratio).all())
    tiny = first_order_check(Quantised(), x, 1e-4, generator=torch.Generator().manual_seed(1))
    assert tiny.fraction_inconsistent == 0.0  # a step of 1e-4 crosses no rounding boundary

    class Constant(torch.nn.Module):
        input_shape = (1, 8, 8)

        def encode(self, xx):
            return torch.zeros(xx.shape[0], 3, dtype=xx.dtype), torch.ones(xx.shape[0], 3, dtype=xx.dtype)

        def decode(self, z):
            return torch.full((z.shape[0], 1, 8, 8), 0.5, dtype=z.dtype)

    assert first_order_check(Constant(), x, 0.5).fraction_inconsistent == 0.0
