"""A per-sample reference in the style of the published research code (written here, for timing).

One image at a time, one Monte Carlo draw per decoder call, the encoder Jacobian one latent row
at a time with autograd, the attack one image at a time. It computes the same quantities as
robvae (p_r(x), ||J||_F, ||J||_2, the Theorem 1 radius) so the comparison is like for like.
"""

from __future__ import annotations

import math

import torch
from scipy import stats


def sample_counts(model, x_i: torch.Tensor, r: float, n_samples: int) -> int:
    """Draws with ||g(mu + eta sigma) - g(mu)|| <= r for one image x_i [1, *shape], one draw per call."""
    k = 0
    with torch.no_grad():
        mu, sigma = model.encode(x_i)
        ref = model.decode(mu)
        for _ in range(n_samples):
            eta = torch.randn_like(mu)
            out = model.decode(mu + eta * sigma)
            if float((out - ref).norm()) <= r:
                k += 1
    return k


def jacobian_rows(model, x_i: torch.Tensor) -> torch.Tensor:
    """J = d mu / d x for one image, one autograd pass per latent row -> [d, D]."""
    x_g = x_i.detach().clone().requires_grad_(True)
    mu, _ = model.encode(x_g)
    rows = []
    for j in range(mu.shape[1]):
        (g,) = torch.autograd.grad(mu[0, j], x_g, retain_graph=True)
        rows.append(g.flatten())
    return torch.stack(rows)


def certify_one(model, x_i: torch.Tensor, r: float, n_samples: int) -> dict:
    """Theorem 1 for one image: p_r(x), ||J||_F, ||J||_2 and the radius."""
    k = sample_counts(model, x_i, r, n_samples)
    p = k / n_samples
    J = jacobian_rows(model, x_i)
    with torch.no_grad():
        sigma_min = float(model.encode(x_i)[1].min())
    jf = float(J.norm())
    js = float(torch.linalg.matrix_norm(J, ord=2))
    radius = sigma_min * stats.norm.ppf(p) / jf if p > 0.5 else 0.0
    return {"p": p, "jac_frobenius": jf, "jac_spectral": js, "radius": radius}


def certify_loop(model, x: torch.Tensor, r: float, n_samples: int) -> list[dict]:
    """The research-code loop over images."""
    return [certify_one(model, x[i:i + 1], r, n_samples) for i in range(x.shape[0])]


def max_damage_one(model, x_i: torch.Tensor, eps: float, steps: int, step_size: float) -> torch.Tensor:
    """L2 maximum-damage PGD on one image (one eta draw per step), the research-code way."""
    with torch.no_grad():
        ref = model.decode(model.encode(x_i)[0])
    delta = torch.zeros_like(x_i)
    for _ in range(steps):
        delta.requires_grad_(True)
        mu, sigma = model.encode(x_i + delta)
        out = model.decode(mu + torch.randn_like(mu) * sigma)
        loss = (out - ref).norm()
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + step_size * g / g.norm().clamp_min(1e-12)
            n = float(delta.norm())
            if n > eps:
                delta = delta * (eps / n)
            delta = (x_i + delta).clamp(0, 1) - x_i
    return delta.detach()


def hutchinson_rows_error(exact: torch.Tensor, approx: torch.Tensor) -> float:
    """Median relative error |approx - exact| / exact."""
    rel = (approx - exact).abs() / exact.clamp_min(1e-30)
    return float(rel.median())


def rel_err(exact: torch.Tensor, approx: torch.Tensor) -> float:
    e = (approx.double() - exact.double()).abs().max() / exact.double().abs().max().clamp_min(1e-300)
    return float(e) if math.isfinite(float(e)) else float("nan")
