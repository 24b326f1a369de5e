"""Perceptual damage: SSIM / MS-SSIM (torchmetrics) between clean and attacked reconstructions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

import robvae
from robvae.metrics import image_similarity, perceptual_damage, ssim_kernel


def _ssim_reference(a: np.ndarray, b: np.ndarray, sigma: float, border: str) -> float:
    """Wang et al. (2004) SSIM of two 2-D images in [0, 1], written out with SciPy: Gaussian window
    of radius int(3.5 sigma + 0.5), C1 = 0.01^2, C2 = 0.03^2. border "valid": mean over the pixels
    whose window fits (skimage's convention); "reflect": reflect-padded, mean over every pixel
    (torchmetrics')."""
    rad = int(3.5 * sigma + 0.5)
    ax = np.arange(-rad, rad + 1)
    g = np.exp(-ax**2 / (2 * sigma**2))
    w = np.outer(g, g) / g.sum() ** 2
    if border == "reflect":
        a, b = np.pad(a, rad, mode="reflect"), np.pad(b, rad, mode="reflect")
    f = lambda t: correlate2d(t, w, mode="valid")  # noqa: E731
    ma, mb = f(a), f(b)
    saa, sbb, sab = np.maximum(f(a * a) - ma**2, 0), np.maximum(f(b * b) - mb**2, 0), f(a * b) - ma * mb
    c1, c2 = 0.01**2, 0.03**2
    return float((((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma**2 + mb**2 + c1) * (saa + sbb + c2))).mean())


def _pair(hw, noise=0.1, seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 1, *hw, generator=g, dtype=torch.float64)
    return a, (a + noise * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)


@pytest.mark.parametrize("hw", [(8, 8), (28, 28), (20, 24)])
def test_ssim_equals_the_written_out_formula(hw):
    a, b = _pair(hw)
    res = image_similarity(a, b)
    k, sigma = ssim_kernel(*hw)
    assert res.kernel_size == k and res.sigma == pytest.approx(sigma)
    ref = [_ssim_reference(a[i, 0].numpy(), b[i, 0].numpy(), sigma, "reflect") for i in range(3)]
    np.testing.assert_allclose(res.ssim.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_reference_formula_is_skimage_in_its_border_convention():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image not installed (an optional cross-check)")
    a, b = _pair((32, 32), seed=1)
    for i in range(3):
        sk = skm.structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), data_range=1.0, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False)
        assert _ssim_reference(a[i, 0].numpy(), b[i, 0].numpy(), 1.5, "valid") == pytest.approx(sk, rel=1e-10)


@pytest.mark.parametrize("hw, scales", [((8, 8), 2), ((28, 28), 2), ((64, 64), 3), ((256, 256), 5)])
def test_ssim_and_ms_ssim_properties(hw, scales):
    a, b = _pair(hw, n=2)
    ab, ba, aa = image_similarity(a, b), image_similarity(b, a), image_similarity(a, a)
    assert ab.ms_ssim_scales == scales and ab.note == ""
    torch.testing.assert_close(aa.ssim, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(aa.ms_ssim, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ab.ssim, ba.ssim)  # symmetric
    torch.testing.assert_close(ab.ms_ssim, ba.ms_ssim)
    worse = image_similarity(a, _pair(hw, noise=0.3, n=2)[1])
    assert bool((ab.ssim < 1).all() and (worse.ssim < ab.ssim).all())  # more noise, less similar
    assert bool((ab.ms_ssim < 1).all() and (worse.ms_ssim < ab.ms_ssim).all())


def test_too_small_or_flat_inputs_are_reported_unavailable():
    tiny = image_similarity(torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3))
    assert torch.isnan(tiny.ssim).all() and torch.isnan(tiny.ms_ssim).all() and "too small" in tiny.note
    flat = image_similarity(torch.rand(2, 64), torch.rand(2, 64))
    assert torch.isnan(flat.ssim).all() and "[B, C, H, W]" in flat.note


def test_perceptual_damage_of_a_model():
    torch.manual_seed(0)
    model = robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).eval()
    x = robvae.load_dataset("digits", "test").images[:6]
    none = perceptual_damage(model, x, torch.zeros_like(x))
    torch.testing.assert_close(none.ssim, torch.ones(6, dtype=torch.float64))
    delta = robvae.max_damage_attack(model, x, 1.0, steps=5, generator=torch.Generator().manual_seed(0))
    hit = perceptual_damage(model, x, delta)
    with torch.no_grad():
        g = model.decode(model.encode(x)[0])
        g_adv = model.decode(model.encode(x + delta)[0])
    torch.testing.assert_close(hit.ssim, image_similarity(g_adv, g).ssim)
    assert bool((hit.ssim < 1).all())
