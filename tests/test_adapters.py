"""robvae.adapters: pythae models and diffusers AutoencoderKL seen through the protocol.

The pythae models are trained for a few steps here; every robvae estimate on the adapter must equal
the same estimate on an independently hand-written protocol wrapper of the same networks (same
seeds). The diffusers autoencoder is a tiny randomly initialised one (nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch

import robvae
from robvae.adapters import PythaeAdapter, from_diffusers, from_pythae
from robvae.errors import InputError
from robvae.robustness import certify, empirical_margin, jacobian_norm
from robvae.robustness import jacobian as jac_mod

pythae_models = pytest.importorskip("pythae.models", reason="pythae extra not installed (pip install -e '.[pythae]')")


def _digits(n: int = 64) -> torch.Tensor:
    return robvae.load_dataset("digits", "train").images[:n]


def _train_pythae(kind: str, steps: int = 30):
    """A pythae VAE / BetaTCVAE with its default MLP nets on 8x8 digits, a few Adam steps."""
    from pythae.data.datasets import DatasetOutput

    torch.manual_seed(0)
    if kind == "vae":
        model = pythae_models.VAE(pythae_models.VAEConfig(input_dim=(1, 8, 8), latent_dim=4, reconstruction_loss="bce"))
    else:
        model = pythae_models.BetaTCVAE(pythae_models.BetaTCVAEConfig(input_dim=(1, 8, 8), latent_dim=4, beta=2.0))
    x = _digits(256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = model(DatasetOutput(data=x), epoch=1, dataset_size=len(x)).loss
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < first  # it did train
    return model.eval()


class HandWritten(torch.nn.Module):
    """The protocol written out by hand from pythae's documented outputs (the reference)."""

    def __init__(self, pm):
        super().__init__()
        self.pm = pm
        self.input_shape = (1, 8, 8)

    def encode(self, x):
        out = self.pm.encoder(x)
        return out.embedding, out.log_covariance.mul(0.5).exp()

    def decode(self, z):
        return self.pm.decoder(z).reconstruction


@pytest.fixture(scope="module", params=["vae", "betatcvae"])
def pythae_pair(request):
    pm = _train_pythae(request.param)
    return from_pythae(pm), HandWritten(pm)


def test_pythae_certify_attack_margin_match_hand_written_wrapper(pythae_pair):
    model, ref = pythae_pair
    x = _digits(12)
    assert model.latent_dim == 4 and model.input_shape == (1, 8, 8)
    mu, sigma = model.encode(x)
    assert mu.shape == sigma.shape == (12, 4) and bool((sigma > 0).all())
    r = 0.6
    c1 = certify(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(3))
    c2 = certify(ref, x, r, n_samples=300, generator=torch.Generator().manual_seed(3))
    for k in ("p", "p_lower", "sigma_min", "jac_frobenius", "jac_spectral", "jac_whitened", "radius", "radius_sound"):
        torch.testing.assert_close(getattr(c1, k), getattr(c2, k), rtol=1e-6, atol=0, msg=k)
    assert 0 < float(c1.p.mean()) < 1 or bool((c1.radius > 0).any())  # not a degenerate comparison
    d1 = robvae.max_damage_attack(model, x, 0.5, steps=10, generator=torch.Generator().manual_seed(4))
    d2 = robvae.max_damage_attack(ref, x, 0.5, steps=10, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(d1, d2, rtol=1e-5, atol=1e-6)
    assert float(d1.flatten(1).norm(dim=1).max()) > 0.1  # the attack moved
    m1 = empirical_margin(model, x[:4], r, n_samples=100, steps=5, restarts=1, tol=0.05,
                          generator=torch.Generator().manual_seed(5))
    m2 = empirical_margin(ref, x[:4], r, n_samples=100, steps=5, restarts=1, tol=0.05,
                          generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(m1.margin, m2.margin, rtol=1e-5, atol=1e-7)


def test_pythae_log_likelihood_is_minus_pythae_reconstruction_loss(pythae_pair):
    """pythae's own loss_function gives the reconstruction term: bce = -log p, mse = 0.5||.||^2."""
    model, _ = pythae_pair
    pm = model.model
    x = _digits(8)
    with torch.no_grad():
        out = pm.encoder(x)
        mu, logv = out.embedding, out.log_covariance
        recon = pm.decoder(mu).reconstruction
        if type(pm).__name__ == "VAE":
            _, rec_loss, _ = pm.loss_function(recon, x, mu, logv, mu)
            expected = -rec_loss  # mean over the batch of -log p
            got = model.log_likelihood(x, mu).mean()
        else:  # BetaTCVAE trained with pythae's default mse
            assert model.reconstruction_loss == "mse"
            expected = -0.5 * (x - recon).flatten(1).pow(2).sum(1).mean() - 32 * math.log(2 * math.pi)
            got = model.log_likelihood(x, mu).mean()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    deg = robvae.likelihood_degradation(model, x, torch.zeros_like(x))
    assert torch.equal(deg, torch.zeros(8))


def test_pythae_models_without_gaussian_encoder_are_refused():
    ae = pythae_models.AE(pythae_models.AEConfig(input_dim=(1, 8, 8), latent_dim=4))
    with pytest.raises(InputError, match="log_covariance"):
        from_pythae(ae)
    with pytest.raises(InputError, match="not a pythae model"):
        from_pythae(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["HVAE", "RHVAE", "VAE_IAF", "VAE_LinNF", "Adversarial_AE", "MSSSIM_VAE", "PoincareVAE"])
def test_pythae_models_robvae_would_misread_are_refused(kind):
    """Found by an audit: from_pythae took HVAE's std as exp(log_var / 2) (pythae: softplus(log_var),
    1.4-1.6x off, radii 1.5-1.8x too small) and ignored the flows / Hamiltonian steps that move z
    after the encoder, the deterministic posterior of Adversarial_AE and the MS-SSIM loss."""
    config = getattr(pythae_models, f"{kind}Config", None) or getattr(pythae_models, f"{kind}_Config")
    cfg = config(input_dim=(1, 8, 8), latent_dim=4)
    with pytest.raises(InputError, match=f"cannot wrap a pythae {kind}: .*; supported: VAE, BetaVAE"):
        from_pythae(getattr(pythae_models, kind)(cfg))


def test_pythae_vamp_is_wrapped_but_gets_no_standard_normal_elbo():
    """Found by an audit: the bench's ELBO of a pythae VAMP used N(0, I) instead of its VampPrior
    (-33.07 nats against the model's own -24.88). Its posterior and likelihood are read as for a
    VAE; the ELBO is not reported."""
    from robvae.bench.protocol import heldout_elbo
    from robvae.data import ImageDataset

    vamp = pythae_models.VAMP(pythae_models.VAMPConfig(input_dim=(1, 8, 8), latent_dim=4, number_components=5))
    model = from_pythae(vamp)
    assert model.prior_is_standard_normal is False
    x = _digits(6)
    data = ImageDataset(x, torch.zeros(6, dtype=torch.long), "digits", "test")
    assert heldout_elbo(model, data) is None
    vae = from_pythae(pythae_models.VAE(pythae_models.VAEConfig(input_dim=(1, 8, 8), latent_dim=4)))
    assert vae.prior_is_standard_normal is True and heldout_elbo(vae, data) is not None
    with torch.no_grad():  # the posterior as pythae samples it: exp(log_var / 2)
        out = vamp.encoder(x)
        mu, sigma = model.encode(x)
    assert torch.equal(mu, out.embedding) and torch.equal(sigma, torch.exp(0.5 * out.log_covariance))


# ---------------------------------------------------------------- diffusers

def _tiny_kl(channels: int = 1, size: int = 8, latent: int = 2):
    diffusers = pytest.importorskip("diffusers", reason="diffusers extra not installed (pip install -e '.[diffusers]')")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=channels, out_channels=channels, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent, norm_num_groups=4, sample_size=size,
    ).eval()


def test_diffusers_adapter_conventions():
    vae = _tiny_kl()
    model = from_diffusers(vae)
    assert model.input_shape == (1, 8, 8) and model.latent_shape == (2, 4, 4) and model.latent_dim == 32
    x = _digits(5)
    with torch.no_grad():
        mu, sigma = model.encode(x)
        dist = vae.encode(x * 2 - 1).latent_dist  # diffusers' [-1, 1] pixels
        assert torch.equal(mu, dist.mean.reshape(5, 32)) and torch.equal(sigma, dist.std.reshape(5, 32))
        g = model.decode(mu)
        ref = (vae.decode(dist.mean).sample / 2 + 0.5).clamp(0, 1)
    assert g.shape == (5, 1, 8, 8)
    torch.testing.assert_close(g, ref, rtol=0, atol=1e-6)
    assert float(g.min()) >= 0 and float(g.max()) <= 1


def test_diffusers_certify_and_automatic_matrix_free_switch(monkeypatch):
    model = from_diffusers(_tiny_kl())
    x = _digits(4)
    with torch.no_grad():
        spread = (model.reconstruct(x) - model.decode(model.encode(x)[0] + model.encode(x)[1] * 1.0)).flatten(1).norm(dim=1)
    r = float(spread.median()) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", jac_mod.JacobianSizeWarning)  # small: exact, silently
        exact = certify(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(0))
    assert bool((exact.p > 0.5).all()) and bool(torch.isfinite(exact.radius_sound).all())
    assert bool((exact.radius_sound > 0).any())
    J = jac_mod.encoder_jacobian(model, x)
    torch.testing.assert_close(exact.jac_frobenius, J.norm(dim=(1, 2)))
    # the same model with a tiny limit: matrix-free estimates, and a warning saying so
    monkeypatch.setattr(jac_mod, "EXACT_MAX_ELEMENTS", 100)
    with pytest.warns(jac_mod.JacobianSizeWarning, match="matrix-free"):
        est = certify(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est.jac_frobenius, exact.jac_frobenius, rtol=0.3, atol=0)
    assert not torch.equal(est.jac_frobenius, exact.jac_frobenius)  # really estimated
    assert bool((est.jac_spectral <= exact.jac_spectral * (1 + 1e-4)).all())  # power iteration: from below
    torch.testing.assert_close(est.jac_spectral, exact.jac_spectral, rtol=0.05, atol=0)
    with pytest.warns(jac_mod.JacobianSizeWarning):
        assert jac_mod.jacobian_norms(model, x, ("frobenius",)).method == "hutchinson"
    with pytest.warns(jac_mod.JacobianSizeWarning):
        jacobian_norm(model, x)
    assert jac_mod.jacobian_norms(model, x, ("frobenius",), method="exact").method == "exact"


def test_diffusers_default_attention_block_can_be_attacked():
    """Found by an audit: with the mid-block attention every Stable Diffusion VAE has, forward-mode
    products failed inside group_norm (the attack's start, the margin search, jvp probes: a raw
    traceback). They now fall back to a second reverse pass; the start direction is still J's
    top right-singular vector (checked against the exact Jacobian)."""
    from robvae.attacks.starts import top_singular_direction
    from robvae.evaluation import attack_report
    from robvae.models.fast_decode import flat_decode

    model = from_diffusers(_tiny_kl())
    x = _digits(2)
    v, sigma = top_singular_direction(model, x, iters=30)
    for i in range(2):
        J = torch.func.jacrev(lambda xx: flat_decode(model, model.encode(xx)[0]))(x[i : i + 1])
        s = torch.linalg.svdvals(J.reshape(J.shape[1], -1))
        torch.testing.assert_close(sigma[i], s[0], rtol=1e-3, atol=0)
    est = jacobian_norm(model, x, method="hutchinson", probe="jvp", n_probes=400,
                        generator=torch.Generator().manual_seed(0))
    exact = jacobian_norm(model, x, method="exact")
    torch.testing.assert_close(est, exact, rtol=0.15, atol=0)
    rep = attack_report(model, x, 0.5, preset="cheap", seed=0)
    assert len(rep.rows) == 2


def test_diffusers_unsupported_configs_are_refused():
    with pytest.raises(InputError, match="not divisible"):
        from_diffusers(_tiny_kl(), input_shape=(1, 9, 9))
    with pytest.raises(InputError, match="channels"):
        from_diffusers(_tiny_kl(), input_shape=(3, 8, 8))
    diffusers = pytest.importorskip("diffusers")
    tiny = diffusers.AutoencoderTiny(in_channels=1, out_channels=1, encoder_block_out_channels=(8,),
                                     decoder_block_out_channels=(8,), num_encoder_blocks=(1,),
                                     num_decoder_blocks=(1,), latent_channels=2)
    with pytest.raises(InputError):
        from_diffusers(tiny, input_shape=(1, 8, 8))


# ---------------------------------------------------------------- the README's five-line examples

PYTHAE_EXAMPLE = '''\
import robvae
from pythae.models import AutoModel
from robvae.adapters import from_pythae
model = from_pythae(AutoModel.load_from_folder("my_pythae_run/final_model"))
print(robvae.certify(model, robvae.load_dataset("digits", "test").images[:20], r=0.5).summary())
'''

DIFFUSERS_EXAMPLE = '''\
import torch, robvae
from diffusers import AutoencoderKL
from robvae.adapters import from_diffusers
model = from_diffusers(AutoencoderKL.from_pretrained("my_autoencoder"))
print(robvae.certify(model, torch.rand(4, *model.input_shape), r=0.05, n_samples=200).summary())
'''


def _in_readme(snippet: str) -> None:
    """Once the README shows an example, it must be this one, verbatim."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    key = snippet.splitlines()[3].split("(")[0]
    if key in readme:
        assert snippet in readme


def test_pythae_five_line_example(tmp_path, monkeypatch, capsys):
    pm = _train_pythae("vae", steps=10)
    pm.save(str(tmp_path / "my_pythae_run" / "final_model"))
    monkeypatch.chdir(tmp_path)
    exec(compile(PYTHAE_EXAMPLE, "README-pythae", "exec"), {})
    out = capsys.readouterr().out
    assert "'n': 20" in out or '"n": 20' in out
    _in_readme(PYTHAE_EXAMPLE)


def test_diffusers_five_line_example(tmp_path, monkeypatch, capsys):
    diffusers = pytest.importorskip("diffusers", reason="diffusers extra not installed (pip install -e '.[diffusers]')")
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=2, norm_num_groups=4, sample_size=8,
    ).save_pretrained(str(tmp_path / "my_autoencoder"))
    monkeypatch.chdir(tmp_path)
    exec(compile(DIFFUSERS_EXAMPLE, "README-diffusers", "exec"), {})
    out = capsys.readouterr().out
    assert "'n': 4" in out or '"n": 4' in out
    _in_readme(DIFFUSERS_EXAMPLE)


def test_diffusers_variants_robvae_cannot_read_are_refused_in_one_line():
    """Found by an audit: AutoencoderTiny first got "pass input_shape" (then, with it, the real
    refusal); AutoencoderKLTemporalDecoder was accepted and every decode raised a raw TypeError."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers extra not installed (pip install -e '.[diffusers]')")
    tiny = diffusers.AutoencoderTiny(in_channels=1, out_channels=1, encoder_block_out_channels=(8, 8),
                                     decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                                     num_decoder_blocks=(1, 1), latent_channels=2)
    with pytest.raises(InputError, match="AutoencoderTiny is not supported: its encode"):
        from_diffusers(tiny)
    temporal = diffusers.AutoencoderKLTemporalDecoder(in_channels=1, out_channels=1, block_out_channels=(32, 32),
                                                      down_block_types=("DownEncoderBlock2D",) * 2,
                                                      layers_per_block=1, latent_channels=2, sample_size=8)
    with pytest.raises(InputError, match=r"decode\(latent batch\) failed \(TypeError: .*num_frames"):
        from_diffusers(temporal)



def test_half_precision_adapters_sum_their_likelihood_in_float32():
    """A bfloat16 pythae / diffusers model's log p(x|z) is summed in float32 from its own bfloat16
    decode (the float32 sum of the same outputs, to 1e-5): in bfloat16 the ~50-nat sums stepped
    by 0.25 nats and the likelihood degradation came out 0 or far off."""
    x = _digits(6)
    pm = pythae_models.VAE(pythae_models.VAEConfig(input_dim=(1, 8, 8), latent_dim=4, reconstruction_loss="bce"))
    models = [from_pythae(pm.eval().to(torch.bfloat16))]
    with contextlib.suppress(pytest.skip.Exception):
        models.append(from_diffusers(_tiny_kl().to(torch.bfloat16)))
    for model in models:
        xb = x.to(torch.bfloat16)
        with torch.no_grad():
            z = model.encode(xb)[0]
            g = model.decode(z).float().flatten(1)
            got = model.log_likelihood(xb, z)
        xf = xb.float().flatten(1)
        if isinstance(model, PythaeAdapter):
            want = (xf * g.log().clamp_min(-100) + (1 - xf) * (1 - g).log().clamp_min(-100)).sum(1)
        else:
            want = -0.5 * (2 * (xf - g)).pow(2).sum(1) - 0.5 * 64 * math.log(2 * math.pi)
        assert got.dtype == torch.float32, type(model).__name__
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
