"""Lipschitz-constrained VAE (THEORY.md section 9) and the continuous Bernoulli likelihood.

Construction constants >= lipschitz_bound (the measured weights) >= the largest observed difference
quotient; the continuous Bernoulli normaliser against a numerical integral; training and a
save / load round trip with the existing trainer.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from robvae import load
from robvae.models import ModelConfig, VAE
from robvae.models.likelihoods import ContinuousBernoulliLikelihood, cb_log_norm
from robvae.models.lipschitz import GroupSort, LipschitzMLP, construction_constants
from robvae.robustness.lipschitz import lipschitz_bound, vae_lipschitz
from robvae.training import TrainConfig, train

F64 = torch.float64


def _max_quotient(f, shape, n=128, steps=30, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=F64)
    y = x + 0.3 * torch.randn(n, *shape, generator=g, dtype=F64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.02)
    best = 0.0
    for _ in range(steps + 1):
        q = (f(x) - f(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        best = max(best, float(q.detach().max()))
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
    return best


def test_groupsort_is_maxmin_and_one_lipschitz():
    x = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
    assert torch.equal(GroupSort()(x), torch.tensor([[3.0, 1.0, 5.0, -2.0]]))
    assert _max_quotient(GroupSort(), (6,)) <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="even"):
        GroupSort()(torch.zeros(1, 3))


@pytest.mark.parametrize("L", [0.5, 1.0, 3.0])
def test_lipschitz_mlp_construction_bound_and_measurement_agree(L):
    torch.manual_seed(0)
    net = LipschitzMLP([10, 16, 8, 4], L).double()
    measured = lipschitz_bound(net)
    assert measured <= L * (1 + 1e-6)  # orthogonal parametrisation: spectral norms 1 up to rounding
    assert measured >= L * (1 - 1e-6)  # product of exact norms of the scaled orthonormal layers
    assert _max_quotient(net, (10,)) <= measured


@pytest.mark.parametrize("fixed", [None, 0.05])
def test_lipschitz_vae_constants_chain(fixed):
    torch.manual_seed(1)
    cfg = ModelConfig(input_shape=(1, 8, 8), arch="lipschitz-mlp", latent_dim=4, hidden=(32,), lipschitz=2.0,
                      sigma_cap=0.2, sigma_fixed=fixed, likelihood="cbernoulli")
    model = VAE(cfg).double()
    built = construction_constants(model.encoder, model.decoder)
    meas = vae_lipschitz(model)
    tol = 1 + 1e-6
    assert meas.mean <= built.mean * tol and meas.decoder <= built.decoder * tol
    assert meas.log_sigma <= built.log_sigma * tol and meas.sigma <= built.sigma * tol
    shape = (1, 8, 8)
    assert _max_quotient(lambda x: model.encode(x)[0], shape) <= meas.mean
    assert _max_quotient(model.decode, (4,), seed=1) <= meas.decoder
    if fixed is None:
        assert _max_quotient(lambda x: model.encode(x)[1].log(), shape, seed=2) <= meas.log_sigma
        assert _max_quotient(lambda x: model.encode(x)[1], shape, seed=3) <= meas.sigma
        sig = model.encode(torch.randn(64, *shape, dtype=F64) * 5)[1]
        assert float(sig.norm(dim=1).max()) <= 0.2 + 1e-12
    else:
        assert meas.sigma_constant and built.sigma == 0.0
        assert torch.all(model.encode(torch.rand(3, *shape, dtype=F64))[1] == fixed)


def test_lipschitz_config_errors():
    with pytest.raises(ValueError, match="even"):
        ModelConfig(arch="lipschitz-mlp", hidden=(31,))
    with pytest.raises(ValueError, match="lipschitz"):
        ModelConfig(arch="lipschitz-mlp", lipschitz=0.0)
    with pytest.raises(ValueError, match="sigma_cap"):
        ModelConfig(arch="lipschitz-mlp", sigma_cap=None)
    with pytest.raises(ValueError, match="tau"):
        ModelConfig(arch="lipschitz-mlp", tau=0.1)


@pytest.mark.parametrize("h", [0.0, 1e-9, -3e-3, 9.99e-3, 1.01e-2, -0.3, 1.0, 4.0, -12.0, 30.0])
def test_continuous_bernoulli_normaliser_against_quad(h):
    lam, one_minus = 1 / (1 + math.exp(-h)), 1 / (1 + math.exp(h))
    integral = integrate.quad(lambda x: lam ** x * one_minus ** (1 - x), 0, 1, epsabs=1e-300, epsrel=1e-13)[0]
    assert float(cb_log_norm(torch.tensor(h, dtype=F64))) == pytest.approx(-math.log(integral), rel=1e-10, abs=1e-12)


def test_continuous_bernoulli_density_integrates_to_one_and_has_finite_gradients():
    lik = ContinuousBernoulliLikelihood()
    for h in (-2.0, 0.0, 0.5):
        f = lambda x: math.exp(float(lik.log_prob(torch.tensor([[x]], dtype=F64), torch.tensor([[h]], dtype=F64))))  # noqa: E731
        assert integrate.quad(f, 0, 1)[0] == pytest.approx(1.0, rel=1e-9)
    h = torch.tensor([[0.0, 1e-4, 2.0]], dtype=F64, requires_grad=True)
    lik.log_prob(torch.tensor([[0.3, 0.7, 1.0]], dtype=F64), h).sum().backward()
    assert torch.isfinite(h.grad).all()


def test_lipschitz_vae_trains_and_round_trips(tmp_path, digits_small):
    cfg = TrainConfig(dataset="digits", model=ModelConfig(arch="lipschitz-mlp", latent_dim=4, hidden=(32,), lipschitz=4.0,
                                                          sigma_cap=0.3, likelihood="cbernoulli"),
                      epochs=3, batch_size=64, seed=0)
    run = train(cfg, tmp_path / "run", progress=False, data=digits_small)
    first, last = float(run.metrics[0]["test_elbo"]), float(run.metrics[-1]["test_elbo"])
    assert math.isfinite(last) and last > first
    again = load(tmp_path / "run")
    x = digits_small[1].images[:8]
    with torch.no_grad():
        assert torch.allclose(again.model.reconstruct(x), run.model.reconstruct(x))
    assert vae_lipschitz(again.model).mean <= 4.0 * (1 + 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_saturated_sigma_never_exceeds_its_cap_after_rounding(dtype):
    """||sigma(x)|| <= cap is what Barrett's bounds assume: with the scale cap / sqrt(d) rounded
    to float32, a saturated sigma (sigmoid = 1) lay 1 ulp above the cap for half the (cap, d)
    pairs (227 of 448 below, before the fix)."""
    from robvae.models.lipschitz import LipschitzEncoder

    over = 0
    for d in (1, 2, 3, 5, 7, 10, 16, 33, 64):
        for cap in (0.01, 0.05, 0.1, 0.2, 0.3, 0.7, 1.0):
            enc = LipschitzEncoder((1, 2, 2), d, (4,), 1.0, sigma_cap=cap).to(dtype)
            with torch.no_grad():
                for p in enc.std.parameters():
                    p.zero_()
                enc.std[-1].bias.fill_(1e4)  # sigmoid(1e4) = 1 exactly
                _, sigma = enc(torch.rand(3, 1, 2, 2, dtype=dtype))
            assert bool((sigma > 0).all())
            n = torch.linalg.vector_norm(sigma.double(), dim=1).max().item()
            over += n > cap
            assert n >= cap * (1 - 1e-5)  # shrunk by rounding only
    assert over == 0
