"""The rounding of the computed encoder outputs in the rigorous radii (robvae.robustness.rounding).

Found by audit h83: float32 rigorous radii were broken where sigma was within a few rounding steps
of the encoder's activations (a linear VAE with sigma = 1e-7 and |mu| = 1: the computed mu moved
3.58 sigma under a perturbation the exact map allows 2.38 sigma for, and p fell to 0.28; a VAE
whose hidden unit of 1e4 cancels to mu = 1). The bound must hold for every computed output, and
cost trained models next to nothing.
"""

from __future__ import annotations

import math

import pytest
import torch

import robvae
from robvae.models import LinearVAE, ModelConfig, VAE
from robvae.robustness.rigorous import rigorous_certify, rigorous_radii
from robvae.robustness.rounding import encoder_rounding

F64 = torch.float64


def _models():
    torch.manual_seed(0)
    mlp = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(32, 16), tau=0.05)).eval()
    conv = VAE(ModelConfig(input_shape=(1, 8, 8), arch="conv", latent_dim=3, conv_channels=(2, 3), conv_hidden=8)).eval()
    lip = VAE(ModelConfig(input_shape=(1, 8, 8), arch="lipschitz-mlp", latent_dim=3, hidden=(16,), lipschitz=4.0)).eval()
    tanh = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,), activation="tanh")).eval()
    for m in (mlp, tanh):  # large weights and offsets: big activations that cancel, as in the audit
        with torch.no_grad():
            m.encoder.net[0].weight.mul_(30.0)
            m.encoder.net[0].bias.add_(300.0)
    lin = LinearVAE.random(d=3, input_shape=(1, 8, 8), s=0.1, singular_values=[5.0, 2.0, 1.0], seed=1,
                           dtype=torch.float32)
    return {"mlp": mlp, "conv": conv, "lipschitz": lip, "tanh": tanh, "linear": lin}


@pytest.mark.parametrize("name", ["mlp", "conv", "lipschitz", "tanh", "linear"])
def test_the_bound_covers_the_computed_outputs_everywhere_in_the_ball(name):
    """float32 mu and ln sigma against float64 ones at x and at random points of the ball (and
    the ball's rim): never farther apart than the bound (it covers the float64 reference's own
    error many times over)."""
    model = _models()[name]
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, 8, 8, generator=g)
    eps = torch.full((6,), 0.3, dtype=F64)
    e_mu, e_ls = encoder_rounding(model, x, eps)
    ref = _double(model)  # the same weights, computed in float64
    seen = torch.zeros(6, dtype=F64)
    for k in range(20):
        d = torch.randn(6, 1, 8, 8, generator=g, dtype=F64)
        d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps.view(-1, 1, 1, 1) * (1.0 if k % 2 else torch.rand(1, generator=g, dtype=F64))
        xp = (x.to(F64) + d).float()  # the input as computed: float32
        with torch.no_grad():
            mu32, s32 = model.encode(xp)
            mu64, s64 = ref.encode(xp.to(F64))
        err = (mu32.to(F64) - mu64).norm(dim=1)
        assert (err <= e_mu).all()
        if name == "linear":  # sigma the same number at every input: ln rho = 0 exactly
            assert (s32 == s32[0, 0]).all() and (e_ls == 0).all()
        else:
            assert ((s32.to(F64).log() - s64.log()).norm(dim=1) <= e_ls).all()
        seen = torch.maximum(seen, err)
    assert (e_mu < 1e6 * seen.clamp(min=1e-9)).all()  # a worst case, not a wild one


def _double(model):
    import copy

    return copy.deepcopy(model).double()


def test_the_audits_linear_vae_abstains_where_its_radius_was_broken():
    """h83 break 1: sigma = 1e-7 with |mu| about 1 (one rounding step of mu is 1.19 sigma)."""
    vae = LinearVAE.random(d=1, input_shape=(1, 4, 4), s=1e-7, singular_values=[1.0], seed=0, dtype=torch.float32)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    cert = rigorous_certify(vae, x, 3e-7, n_samples=2000, generator=torch.Generator().manual_seed(1))
    exact_only = rigorous_radii(cert.p_lower, cert.constants.mean / cert.sigma_min, 0.0, 1)[0]
    assert (cert.p_lower > 0.9).all() and (exact_only > 2e-7).all()  # what it certified before
    assert (cert.radius_mean == 0).all() and (cert.radius_full == 0).all()


def test_the_audits_cancelling_vae_gets_a_radius_its_computed_shift_respects():
    """h83 break 2: h = relu(x0 + 1e4), mu = h - 9999 = 1, sigma = 0.0049: the computed mu moved
    2.0 sigma where the exact map allows 1.9; now the radius leaves room for it (here: none)."""
    m = VAE(ModelConfig(input_shape=(1, 1, 4), latent_dim=1, hidden=(2,), tau=0.0))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.encoder.net[0].weight[0, 0], m.encoder.net[0].bias[0] = 1.0, 1e4
        m.encoder.net[2].weight[0, 0], m.encoder.net[2].bias[0] = 1.0, 1.0 - 1e4
        m.encoder.net[2].bias[1] = math.log(math.expm1(0.00488281))
    x = torch.zeros(1, 1, 1, 4)
    cert = rigorous_certify(m, x, 0.25, n_samples=1000, generator=torch.Generator().manual_seed(7))
    ts = torch.linspace(0, 0.02, 4001)
    xs = x.repeat(len(ts), 1, 1, 1)
    xs[:, 0, 0, 0] = ts
    with torch.no_grad():
        mu0, sig = m.encode(x)
        shift = (m.encode(xs)[0][:, 0] - mu0[0, 0]).abs().double() / float(sig)
    allowed = torch.special.ndtri(cert.p_lower[0])  # the shift at which p' reaches 1/2 (tight here)
    inside = ts.double() < cert.radius_mean[0]
    assert (shift[inside] < allowed).all()


def test_trained_models_lose_almost_nothing(tmp_path):
    """A briefly trained digits VAE: the rounding costs under 2% of any rigorous radius."""
    from robvae.data import load_dataset
    from robvae.training import TrainConfig, train

    run = train(TrainConfig(model=ModelConfig(latent_dim=4, hidden=(64, 32)), epochs=2, n_train=400, seed=0), tmp_path / "run")
    model = run.model.eval()
    x = load_dataset("digits", "test").images[:16]
    cert = rigorous_certify(model, x, 1.0, n_samples=1000, generator=torch.Generator().manual_seed(0))
    c = cert.constants
    exact = rigorous_radii(cert.p_lower, c.mean / cert.sigma_min, c.log_sigma, cert.sigma_min.new_tensor(4.0).item())
    ok = exact[0] > 0
    assert ok.any()
    assert (cert.radius_mean[ok] >= 0.98 * exact[0][ok]).all() and (cert.radius_mean <= exact[0]).all()
    assert (cert.radius_full <= exact[1] + 1e-15).all()


def test_review_h85_edges(monkeypatch):
    """Review h85: an encoder whose mean does not move (L_D = 0) got a NaN radius once rounding
    used up the budget (+inf otherwise, beyond the ball the rounding was bounded over); a float64
    model's ln sigma bound missed F.softplus's jump at 20 (1.4e-14 against an actual 1.0e-10);
    products PyTorch may compute in bfloat16, and convolutions without oneDNN (Winograd), were
    taken as float32 ones."""
    from robvae.errors import InputError
    from robvae.robustness.rigorous import ROUNDING_BALL_MAX

    p = torch.tensor([0.99, 0.99], dtype=F64)
    got = rigorous_radii(p, 0.0, 0.0, 4, shift0=torch.tensor([0.1, 5.0], dtype=F64))
    assert got[0][0] == math.inf and got[0][1] == 0 and not got[0].isnan().any()
    m = VAE(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,))).eval()
    with torch.no_grad():
        m.encoder.net[-1].weight[:2].zero_()  # mu does not depend on x: L_mu = 0
    cert = rigorous_certify(m, torch.rand(3, 1, 4, 4), 2.0, n_samples=200, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(cert.radius_mean).all() and (cert.radius_mean <= ROUNDING_BALL_MAX).all()
    m64 = _double(m)
    with torch.no_grad():
        m64.encoder.net[-1].weight[2:].zero_()
        m64.encoder.net[-1].bias[2:] = 20.0 + 1e-6  # s just above F.softplus's threshold
    x = torch.rand(1, 1, 4, 4, dtype=F64)
    e_ls = encoder_rounding(m64, x, torch.tensor([0.1], dtype=F64))[1]
    jump = math.log(torch.nn.functional.softplus(torch.tensor(20.0 + 1e-6, dtype=F64)).item()) - math.log(
        math.log1p(math.exp(20.0 + 1e-6)))
    assert e_ls.item() >= abs(jump) > 1e-11
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    with pytest.raises(InputError, match="full float32 products"):
        encoder_rounding(m, torch.rand(1, 1, 4, 4), torch.tensor([0.1]))
    monkeypatch.undo()
    conv = _models()["conv"]
    with torch.backends.mkldnn.flags(enabled=False):
        with pytest.raises(InputError, match="oneDNN"):
            encoder_rounding(conv, torch.rand(1, 1, 8, 8), torch.tensor([0.1]))
        assert encoder_rounding(m, torch.rand(1, 1, 4, 4), torch.tensor([0.1]))[0].shape == (1,)  # no convolution
