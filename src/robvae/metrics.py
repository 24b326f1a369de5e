"""Damage and quality measures (docs/THEORY.md section 6).

- reconstruction_error(x)      = ||g(mu(x)) - x||
- reconstruction_damage(x, d)  = ||g(mu(x + d)) - g(mu(x))||
- likelihood_degradation(x, d) = |log p(x|z*) - log p(x|z)| / |log p(x|z)|,  z = mu(x), z* = mu(x + d)
- perceptual_damage(x, d)      = SSIM and MS-SSIM between g(mu(x)) and g(mu(x + d)) (torchmetrics)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .models.fast_decode import flat_decode
from .rng import randn
from .validation import check_count, check_delta, check_x


#: Var_x(mu_j(x)) above which a latent unit counts as active (Burda et al. 2016, "Importance
#: Weighted Autoencoders", section 5.2)
ACTIVE_UNIT_THRESHOLD = 0.01


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """How many latent units carry information: those whose encoder mean varies across the inputs,
    Var_x(mu_j(x)) > ``threshold``, from the means ``mu`` [B, d] of B inputs (B >= 2). 0 means a
    collapsed posterior: the decoder ignores x, and every robustness number of the model is
    trivially large."""
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise InputError(f"active_units needs encoder means [B, d] of at least 2 inputs, got shape {tuple(mu.shape)}")
    return int((mu.detach().double().var(dim=0) > threshold).sum())


def reconstruction_error(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||g(mu(x)) - x|| per input: x [B, *shape] -> [B]."""
    check_x(model, x)
    with torch.inference_mode():
        return (flat_decode(model, model.encode(x)[0]) - x.flatten(1)).norm(dim=1)


def _as_delta(x: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """The checked perturbation (:func:`robvae.validation.check_delta`); None is delta = 0, as for
    :func:`robvae.robustness.r_robustness`."""
    delta = check_delta(x, delta)
    return torch.zeros_like(x) if delta is None else delta


def reconstruction_damage(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """||g(mu(x + delta)) - g(mu(x))|| per input: x, delta [B, *shape] -> [B]."""
    check_x(model, x)
    delta = _as_delta(x, delta)
    with torch.inference_mode():
        return (flat_decode(model, model.encode(x + delta)[0]) - flat_decode(model, model.encode(x)[0])).norm(dim=1)


def expected_damage(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None, n_draws: int = 64, *,
                    mode: str = "full", generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's expected damage (eq. 5), E_eta ||g(mu(x + d) + eta sigma) - g(mu(x))|| per input, the
    mean over ``n_draws`` draws of eta; sigma = sigma(x + d) (mode "full") or sigma(x) ("mean").
    x, delta [B, *shape] -> [B]. (The attack ensemble reports the same quantity for its own delta.)"""
    check_x(model, x)
    delta = _as_delta(x, delta)
    if mode not in ("full", "mean"):
        raise ValueError(f"unknown mode {mode!r}; choose 'full' or 'mean'")
    n_draws = check_count(n_draws, 1, "n_draws")  # 0 failed inside torch (a reshape error)
    with torch.inference_mode():
        mu0, s0 = model.encode(x)
        ref = flat_decode(model, mu0)
        mu, s = model.encode(x + delta)
        sig = s if mode == "full" else s0
        B, d, K = mu.shape[0], mu.shape[1], int(n_draws)
        z = (mu[:, None] + randn((B, K, d), mu, generator) * sig[:, None]).reshape(B * K, d)
        return (flat_decode(model, z).view(B, K, -1) - ref[:, None]).norm(dim=-1).mean(1)


def likelihood_degradation(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """|log p(x|z*) - log p(x|z)| / |log p(x|z)| with z = mu(x), z* = mu(x + delta): -> [B].

    Needs ``model.log_likelihood(x, z) -> [B]`` (log p(x|z) summed over pixels); the likelihood
    is always of the clean x.
    """
    if not callable(getattr(model, "log_likelihood", None)):
        raise InputError(
            f"likelihood_degradation needs a model with log_likelihood(x, z) -> [B] (log p(x|z)); "
            f"{type(model).__name__} has none"
        )
    check_x(model, x)
    delta = _as_delta(x, delta)
    with torch.inference_mode():
        z = model.encode(x)[0]
        z_adv = model.encode(x + delta)[0]
        ll, ll_adv = model.log_likelihood(x, z), model.log_likelihood(x, z_adv)
    return (ll_adv - ll).abs() / ll.abs()


#: MS-SSIM's scale weights (Wang, Simoncelli and Bovik 2003), finest scale first.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ssim_kernel(height: int, width: int) -> tuple[int, float] | None:
    """The Gaussian window (size, sigma) for images of this size: the standard 11 / 1.5 when both
    sides are at least 12 pixels, else the largest odd size below the shorter side with sigma
    scaled alike (7 / 0.95 for 8x8 digits); None below 4 pixels (SSIM unavailable)."""
    side = min(int(height), int(width))
    if side < 4:
        return None
    k = min(11, side - 1 if side % 2 == 0 else side - 2)
    return k, 1.5 * k / 11


@dataclass
class PerceptualDamage:
    """Structural similarity between clean and attacked reconstructions, per input ([B] each).

    ssim: SSIM (1 = identical; lower = more damage). ms_ssim: MS-SSIM over ``ms_ssim_scales``
    scales (NaN when unavailable, with the reason in ``note``). kernel_size / sigma: the Gaussian
    window used by both. Computed by torchmetrics with data_range 1 (images in [0, 1]).
    """

    ssim: torch.Tensor
    ms_ssim: torch.Tensor
    kernel_size: int
    sigma: float
    ms_ssim_scales: int
    note: str = ""


def image_similarity(a: torch.Tensor, b: torch.Tensor) -> PerceptualDamage:
    """SSIM and MS-SSIM of image batches ``a``, ``b`` [B, C, H, W] in [0, 1] -> :class:`PerceptualDamage`.

    The window follows the image size (:func:`ssim_kernel`). MS-SSIM uses as many of the five
    standard scales (:data:`MS_SSIM_BETAS`, renormalised to sum to 1) as torchmetrics accepts for
    that window and image size (each scale halves the image); with fewer than 2 it is NaN and
    ``note`` says why. Non-image shapes give NaN for both.
    """
    if a.shape != b.shape:
        raise InputError(f"image_similarity: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() >= 1 and a.shape[0] == 0:
        raise InputError("image_similarity: an empty batch")
    nan = torch.full((a.shape[0],), float("nan"), dtype=torch.float64)
    if a.dim() != 4:
        return PerceptualDamage(nan, nan.clone(), 0, 0.0, 0, f"SSIM needs images [B, C, H, W], got shape {tuple(a.shape)}")
    kern = ssim_kernel(a.shape[2], a.shape[3])
    if kern is None:
        return PerceptualDamage(nan, nan.clone(), 0, 0.0, 0, f"images of {a.shape[2]}x{a.shape[3]} are too small for SSIM")
    # torchmetrics imports all its metric families on first import (seconds, measured +5 s on a
    # loaded 2-core machine): loaded when SSIM is first computed, not with every robvae command
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        structural_similarity_index_measure,
    )

    k, sig = kern
    a64, b64 = a.detach().double(), b.detach().double()
    ssim = structural_similarity_index_measure(a64, b64, kernel_size=k, sigma=sig, data_range=1.0, reduction="none")
    ms, scales, note = nan.clone(), 0, ""
    for m in range(len(MS_SSIM_BETAS), 1, -1):
        total = sum(MS_SSIM_BETAS[:m])
        betas = tuple(bb / total for bb in MS_SSIM_BETAS[:m])
        try:
            ms = multiscale_structural_similarity_index_measure(
                a64, b64, kernel_size=k, sigma=sig, data_range=1.0, betas=betas, reduction="none")
        except ValueError:
            continue
        scales = m
        break
    if scales == 0:
        note = (f"MS-SSIM unavailable: {a.shape[2]}x{a.shape[3]} images are too small for 2 scales with a "
                f"{k}x{k} window")
    return PerceptualDamage(ssim.cpu(), ms.cpu(), k, float(sig), scales, note)


def perceptual_damage(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None) -> PerceptualDamage:
    """SSIM / MS-SSIM between g(mu(x)) and g(mu(x + delta)) per input (:func:`image_similarity`),
    the perceptual counterpart of :func:`reconstruction_damage`."""
    check_x(model, x)
    delta = _as_delta(x, delta)
    with torch.inference_mode():
        g = flat_decode(model, model.encode(x)[0]).reshape(x.shape)
        g_adv = flat_decode(model, model.encode(x + delta)[0]).reshape(x.shape)
    return image_similarity(g_adv.clamp(0, 1), g.clamp(0, 1))


__all__ = ["ACTIVE_UNIT_THRESHOLD", "active_units", "reconstruction_error", "reconstruction_damage", "likelihood_degradation", "perceptual_damage",
           "image_similarity", "PerceptualDamage", "ssim_kernel", "MS_SSIM_BETAS"]
