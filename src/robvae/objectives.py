"""Training objectives as pure functions of model outputs (docs/THEORY.md sections 1 and 10).

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

Robust-training penalties (added to the loss with their weights; both 0 = off):
- encoder Jacobian (Hoffman et al. 2019): ||J||_F^2 with J = d mu / d x [d, D] per input, estimated
  by random projections: ||J||_F^2 = d E_v ||v^T J||^2 for v uniform on the unit sphere of R^d
  (E[v v^T] = I / d), the vector-Jacobian products v^T J by torch.func.vjp; ``whitened`` uses
  diag(1 / sigma(x)) J instead (v^T diag(1/sigma) J = (v / sigma)^T J);
- smooth encoder (Cemgil et al. 2020): a divergence between q(z|x) and q(z|x + n), n ~ N(0, s^2 I)
  with s = ``smooth_noise``: "kl" = KL(q(z|x+n) || q(z|x)), "symmetric-kl" = the sum of both KLs.
  For Gaussians, KL(N(m1, diag s1^2) || N(m2, diag s2^2)) = sum log(s2/s1) + (s1^2 + (m1-m2)^2)/(2 s2^2) - 1/2.
Adversarial training (perturbing the inputs) lives in :mod:`robvae.training` (it needs the attacks);
here it is the ``target`` argument of :func:`compute_objective`: the encoder sees x (perturbed),
the likelihood scores the clean target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch.func import vjp

from .config import ConfigMixin
from .rng import randn
from .validation import check_count

OBJECTIVES = ("elbo", "beta-vae", "beta-tcvae")
#: the objectives that use ObjectiveConfig.beta (the ELBO has no weight)
WEIGHTED_OBJECTIVES = ("beta-vae", "beta-tcvae")
Divergence = Literal["kl", "symmetric-kl"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class ObjectiveConfig(ConfigMixin):
    """name: "elbo", "beta-vae" or "beta-tcvae"; beta: weight on KL (beta-VAE) or TC (beta-TCVAE).

    jacobian: weight of the encoder-Jacobian penalty ||J||_F^2 (0 = off); jacobian_whitened: penalise
    ||diag(1/sigma) J||_F^2 instead; jacobian_projections: random projections per input.
    smooth: weight of the smooth-encoder penalty (0 = off); smooth_noise: the std of the input
    noise n; smooth_divergence: "kl" (KL(q(z|x+n) || q(z|x))) or "symmetric-kl".
    """

    name: str = "elbo"
    beta: float = 1.0
    jacobian: float = 0.0
    jacobian_whitened: bool = False
    jacobian_projections: int = 1
    smooth: float = 0.0
    smooth_noise: float = 0.1
    smooth_divergence: Divergence = "kl"

    _what = "objective"

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}")
        for f in ("beta", "jacobian", "smooth"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{f} must be >= 0 (a finite number), got {v!r}")
        if not isinstance(self.smooth_noise, (int, float)) or isinstance(self.smooth_noise, bool) \
                or not (self.smooth_noise > 0 and math.isfinite(self.smooth_noise)):
            raise ValueError(f"smooth_noise must be a finite number > 0, got {self.smooth_noise!r}")
        if isinstance(self.jacobian_projections, bool) or not isinstance(self.jacobian_projections, int) \
                or self.jacobian_projections < 1:
            raise ValueError(f"jacobian_projections must be an integer >= 1, got {self.jacobian_projections!r}")
        if not isinstance(self.jacobian_whitened, bool):
            raise ValueError(f"jacobian_whitened must be true or false, got {self.jacobian_whitened!r}")
        if self.smooth_divergence not in DIVERGENCES:
            raise ValueError(f"unknown smooth_divergence {self.smooth_divergence!r}; choose one of {', '.join(DIVERGENCES)}")


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
    """Minibatch-weighted-sampling estimates of (MI, TC, DWKL), each [B], for samples z [B, d].

    The estimates use the other rows of the batch as samples of the aggregate posterior: with B = 1
    the MI and TC estimates are constants (log N and (d - 1) log N), so a batch of one input gives
    no gradient through them (TrainConfig refuses beta-tcvae with batch_size 1)."""
    check_count(dataset_size, 1, "dataset_size")  # the training set's size
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


def gaussian_kl_pair(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, diag sigma1^2) || N(mu2, diag sigma2^2)) per row: [B, d] -> [B]."""
    return (torch.log(sigma2 / sigma1) + (sigma1.pow(2) + (mu1 - mu2).pow(2)) / (2 * sigma2.pow(2)) - 0.5).sum(-1)


def _sphere(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draws uniform on the unit sphere of the last axis."""
    v = randn(shape, like, generator)
    return v / v.norm(dim=-1, keepdim=True)


def jacobian_penalty(
    model: torch.nn.Module, x: torch.Tensor, *, projections: int = 1, whitened: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unbiased random-projection estimate of ||J_mu(x)||_F^2 (or ||diag(1/sigma) J||_F^2) per input: [B].

    d * mean_k ||v_k^T J||^2 over ``projections`` draws v_k uniform on the unit sphere of R^d,
    all K x B vector-Jacobian products in one batched torch.func.vjp; differentiable in the
    model's parameters (use it in a loss).
    """
    K = check_count(projections, 1, "projections")
    xs = x.unsqueeze(0).expand(K, *x.shape).reshape(K * x.shape[0], *x.shape[1:])

    (mu, sigma), pullback = vjp(lambda inp: tuple(model.encode(inp)), xs)
    d = mu.shape[-1]
    v = _sphere(tuple(mu.shape), mu, generator)
    if whitened:
        v = v / sigma
    (vj,) = pullback((v, torch.zeros_like(sigma)))  # [K*B, *shape]: v^T J per row
    sq = vj.flatten(1).pow(2).sum(-1).view(K, x.shape[0])
    return d * sq.mean(0)


def smooth_penalty(
    model: torch.nn.Module, x: torch.Tensor, *, noise: float = 0.1, divergence: str = "kl",
    generator: torch.Generator | None = None, eps: torch.Tensor | None = None,
    encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Divergence between q(z|x + n) and q(z|x) per input, n = noise * eps, eps ~ N(0, I): [B].

    "kl": KL(q(z|x+n) || q(z|x)); "symmetric-kl": KL(q(z|x+n) || q(z|x)) + KL(q(z|x) || q(z|x+n)).
    ``eps`` (optional, shaped like x) fixes the noise draw; ``encoded`` = model.encode(x) if known.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if eps is None:
        eps = randn(x.shape, x, generator)
    mu, sigma = encoded if encoded is not None else model.encode(x)
    mu_n, sigma_n = model.encode(x + noise * eps)
    kl = gaussian_kl_pair(mu_n, sigma_n, mu, sigma)
    if divergence == "symmetric-kl":
        kl = kl + gaussian_kl_pair(mu, sigma, mu_n, sigma_n)
    return kl


def compute_objective(
    model: torch.nn.Module, x: torch.Tensor, config: ObjectiveConfig, dataset_size: int,
    generator: torch.Generator | None = None, target: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One reparameterised draw z = mu(x) + sigma(x) * eps; returns batch means of the terms.

    ``target`` (default x): the images the likelihood scores, log p(target | z) — adversarial
    training passes the perturbed inputs as x and the clean images as target.
    Keys: "loss" (minus the chosen objective, plus the weighted penalties), "elbo" (analytic-KL
    ELBO), "log_px", "kl", and "jacobian" / "smooth" (the penalties) when their weights are > 0.
    """
    target = x if target is None else target
    mu, sigma = model.encode(x)
    eps = randn(mu.shape, mu, generator)
    z = mu + sigma * eps
    log_px = model.log_likelihood(target, z)
    kl = gaussian_kl(mu, sigma)
    if config.name == "elbo":
        obj = log_px - kl
    elif config.name == "beta-vae":
        obj = log_px - config.beta * kl
    else:
        obj = beta_tcvae(log_px, z, mu, sigma, config.beta, dataset_size)
    loss = -obj.mean()
    out = {"elbo": (log_px - kl).mean(), "log_px": log_px.mean(), "kl": kl.mean()}
    if config.jacobian > 0:
        out["jacobian"] = jacobian_penalty(model, x, projections=config.jacobian_projections,
                                           whitened=config.jacobian_whitened, generator=generator).mean()
        loss = loss + config.jacobian * out["jacobian"]
    if config.smooth > 0:
        out["smooth"] = smooth_penalty(model, x, noise=config.smooth_noise, divergence=config.smooth_divergence,
                                       generator=generator, encoded=(mu, sigma)).mean()
        loss = loss + config.smooth * out["smooth"]
    return {"loss": loss, **out}
