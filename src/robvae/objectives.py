"""Training objectives as pure functions of model outputs (SPEC 1).

All return per-example values of shape [B]; losses are the negatives of the objectives.

- KL(N(mu, diag sigma^2) || N(0, I)) = 1/2 sum_i (mu_i^2 + sigma_i^2 - 1 - 2 log sigma_i)
- ELBO = log p(x|z) - KL
- beta-VAE = log p(x|z) - beta * KL                          (beta = 1 is the ELBO)
- beta-TCVAE (Chen et al. 2018, minibatch-weighted sampling, dataset size N, batch size M):
    log q(z_b)        ~ logsumexp_c log q(z_b | x_c) - log(N M)
    log prod_k q(z_bk) ~ sum_k [logsumexp_c log q(z_bk | x_c) - log(N M)]
    MI  = log q(z_b|x_b) - log q(z_b)
    TC  = log q(z_b) - log prod_k q(z_bk)
    DWKL = log prod_k q(z_bk) - log p(z_b)
  objective = log p(x|z) - alpha MI - beta TC - gamma DWKL; MI + TC + DWKL = log q(z|x) - log p(z),
  the one-sample estimate of the KL, so alpha = beta = gamma = 1 is the (sampled-KL) ELBO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ConfigMixin

OBJECTIVES = ("elbo", "beta-vae", "beta-tcvae")
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class ObjectiveConfig(ConfigMixin):
    """name: "elbo", "beta-vae" or "beta-tcvae"; beta: weight on KL (beta-VAE) or TC (beta-TCVAE)."""

    name: str = "elbo"
    beta: float = 1.0

    _what = "objective"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}")
        if not (self.beta >= 0):
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per row: [B, d] -> [B]."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * sigma.log()).sum(-1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, sigma^2) (broadcasting), no reduction."""
    return -0.5 * ((z - mu) / sigma).pow(2) - sigma.log() - 0.5 * _LOG_2PI


def elbo(log_px: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ELBO = log p(x|z) - KL(q || p): [B]."""
    return log_px - gaussian_kl(mu, sigma)


def beta_vae(log_px: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, beta: float) -> torch.Tensor:
    """beta-VAE objective log p(x|z) - beta KL: [B]."""
    return log_px - beta * gaussian_kl(mu, sigma)


def tc_decomposition(
    z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, dataset_size: int
) -> dict[str, torch.Tensor]:
    """Minibatch-weighted-sampling estimates of (MI, TC, DWKL), each [B], for samples z [B, d]."""
    B = z.shape[0]
    # log q(z_b,k | x_c): [B, C, d]
    logq_pair = gaussian_log_density(z[:, None, :], mu[None, :, :], sigma[None, :, :])
    log_nm = math.log(dataset_size * B)
    log_qz = torch.logsumexp(logq_pair.sum(-1), dim=1) - log_nm
    log_prod_qzk = (torch.logsumexp(logq_pair, dim=1) - log_nm).sum(-1)
    log_qz_x = gaussian_log_density(z, mu, sigma).sum(-1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.ones_like(z)).sum(-1)
    return {
        "mi": log_qz_x - log_qz,
        "tc": log_qz - log_prod_qzk,
        "dwkl": log_prod_qzk - log_pz,
    }


def beta_tcvae(
    log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, beta: float, dataset_size: int,
    alpha: float = 1.0, gamma: float = 1.0,
) -> torch.Tensor:
    """beta-TCVAE objective log p(x|z) - alpha MI - beta TC - gamma DWKL: [B]."""
    t = tc_decomposition(z, mu, sigma, dataset_size)
    return log_px - alpha * t["mi"] - beta * t["tc"] - gamma * t["dwkl"]


def compute_objective(
    model: torch.nn.Module, x: torch.Tensor, config: ObjectiveConfig, dataset_size: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One reparameterised draw z = mu + sigma * eps; returns batch means of the terms.

    Keys: "loss" (minus the chosen objective), "elbo" (analytic-KL ELBO), "log_px", "kl".
    """
    mu, sigma = model.encode(x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + sigma * eps
    log_px = model.log_likelihood(x, z)
    kl = gaussian_kl(mu, sigma)
    if config.name == "elbo":
        obj = log_px - kl
    elif config.name == "beta-vae":
        obj = log_px - config.beta * kl
    else:
        obj = beta_tcvae(log_px, z, mu, sigma, config.beta, dataset_size)
    return {"loss": -obj.mean(), "elbo": (log_px - kl).mean(), "log_px": log_px.mean(), "kl": kl.mean()}
