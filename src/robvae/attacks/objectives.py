"""The objectives the PGD engine maximises (docs/THEORY.md section 5). Each builder takes any protocol model and the
clean inputs x [B, *shape] and returns ``f(x_adv [R, B, *shape]) -> [R, B]``.

- maximum damage (the paper's maximum-damage attack), averaged over K draws of eta (K = 0: eta = 0):
    f = mean_k || g(mu(x_adv) + eta_k * s) - g(mu(x)) ||,  s = sigma(x_adv) ("full") or sigma(x) ("mean")
- latent (targeted; Tabacof et al. 2016, Gondim-Ribeiro et al. 2018):
    f = -[ KL(q(z|x_adv) || q(z|x_target))  or  ||mu(x_adv) - mu(x_target)|| ] - c ||x_adv - x||
    KL(N(m, diag s^2) || N(m_t, diag s_t^2)) = sum_i log(s_t,i / s_i) + (s_i^2 + (m_i - m_t,i)^2) / (2 s_t,i^2) - 1/2
- output (targeted; Kos et al. 2018):
    f = -|| g(mu(x_adv)) - y_target || - c ||x_adv - x||,  y_target = g(mu(x_target)) or x_target
"""

from __future__ import annotations

import torch

from ..models.fast_decode import flat_decode
from ..rng import randn
from ..validation import as_radius
from .pgd import Norm, Objective

DISTANCES = ("kl", "mean")


def safe_norm(v: torch.Tensor) -> torch.Tensor:
    """||v|| over the last axis with a finite gradient at v = 0 (sqrt(sum v^2 + tiny) - sqrt(tiny)):
    the plain norm's gradient is NaN there, which the engine would turn into a zero step.
    Float16 / bfloat16 ``v`` is summed in float32 (float16's tiny ** 0.5 alone is 7.8e-3, which
    made a norm of 0.05 read 0.013)."""
    w = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
    tiny = torch.finfo(w.dtype).tiny ** 0.5
    return ((w.pow(2).sum(-1) + tiny).sqrt() - tiny ** 0.5).to(v.dtype)


def max_damage_objective(
    model: torch.nn.Module, x: torch.Tensor, *, eta_samples: int = 1, mode: str = "full",
    generator: torch.Generator | None = None,
) -> Objective:
    """E_eta ||g(mu(x_adv) + eta * sigma) - g(mu(x))|| by K = ``eta_samples`` draws (fresh at every
    call, shared by the restarts of an input so restarts are compared on common draws)."""
    if mode not in ("full", "mean"):
        raise ValueError(f"unknown mode {mode!r}; choose 'full' (sigma(x+delta)) or 'mean' (sigma(x))")
    if eta_samples < 0:
        raise ValueError(f"eta_samples must be >= 0, got {eta_samples}")
    with torch.no_grad():
        mu0, sigma0 = model.encode(x)
        ref = flat_decode(model, mu0)  # [B, D]
    B, d, D, K = mu0.shape[0], mu0.shape[1], ref.shape[1], int(eta_samples)

    def f(x_adv: torch.Tensor) -> torch.Tensor:
        R = x_adv.shape[0]
        mu, sigma = model.encode(x_adv.flatten(0, 1))  # [R*B, d]
        if K == 0:
            return safe_norm(flat_decode(model, mu).view(R, B, D) - ref)
        s = sigma.view(R, B, 1, d) if mode == "full" else sigma0.view(1, B, 1, d)
        eta = randn((1, B, K, d), mu, generator)
        z = (mu.view(R, B, 1, d) + eta * s).reshape(R * B * K, d)
        return safe_norm(flat_decode(model, z).view(R, B, K, D) - ref[None, :, None, :]).mean(dim=-1)

    f.deterministic = K == 0  # type: ignore[attr-defined]
    return f


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, mu_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(mu_t, diag sigma_t^2)) over the last axis (broadcasting)."""
    return (torch.log(sigma_t / sigma) + (sigma.pow(2) + (mu - mu_t).pow(2)) / (2 * sigma_t.pow(2)) - 0.5).sum(-1)


def latent_objective(
    model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor, *, distance: str = "kl", c: float = 0.0,
    norm: Norm,
) -> Objective:
    """-(distance(q(z|x_adv), q(z|x_target)) + c ||x_adv - x||)."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    with torch.no_grad():
        mu_t, sigma_t = model.encode(x_target)
    B, shape = x.shape[0], tuple(x.shape[1:])

    def f(x_adv: torch.Tensor) -> torch.Tensor:
        R = x_adv.shape[0]
        mu, sigma = model.encode(x_adv.flatten(0, 1))
        mu, sigma = mu.view(R, B, -1), sigma.view(R, B, -1)
        dist = gaussian_kl(mu, sigma, mu_t, sigma_t) if distance == "kl" else (mu - mu_t).norm(dim=-1)
        if c:
            dist = dist + c * norm.norm((x_adv - x).reshape(R * B, *shape)).view(R, B)
        return -dist

    return f


def output_objective(
    model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor, *, match: str = "reconstruction",
    c: float = 0.0, norm: Norm,
) -> Objective:
    """-(||g(mu(x_adv)) - y_target|| + c ||x_adv - x||), y_target = g(mu(x_target)) or x_target."""
    if match not in ("reconstruction", "image"):
        raise ValueError(f"unknown match {match!r}; choose 'reconstruction' (g(mu(x_target))) or 'image' (x_target)")
    with torch.no_grad():
        target = flat_decode(model, model.encode(x_target)[0]) if match == "reconstruction" else x_target.flatten(1)
    B, shape = x.shape[0], tuple(x.shape[1:])

    def f(x_adv: torch.Tensor) -> torch.Tensor:
        R = x_adv.shape[0]
        out = flat_decode(model, model.encode(x_adv.flatten(0, 1))[0]).view(R, B, -1)
        dist = (out - target).norm(dim=-1)
        if c:
            dist = dist + c * norm.norm((x_adv - x).reshape(R * B, *shape)).view(R, B)
        return -dist

    return f


# --------------------------------------------------------------------------------------------
# The ensemble's objectives (issue 9): fixed draws of eta per attack run (common random numbers),
# so the objective is a deterministic function of delta and APGD's best-iterate bookkeeping is sound.
# --------------------------------------------------------------------------------------------
OBJECTIVES = ("damage", "expected", "p", "kl")


class RowCounter:
    """Counts the decoder rows (latent vectors decoded) an attack or a search spends."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, n: int) -> None:
        self.rows += int(n)


def ensemble_objective(
    name: str, model: torch.nn.Module, x: torch.Tensor, *, mode: str = "full", draws: int = 8,
    r: torch.Tensor | None = None, generator: torch.Generator | None = None, counter: RowCounter | None = None,
) -> Objective:
    """One of the ensemble's objectives, ``f(x_adv [R, B, *shape]) -> [R, B]`` to maximise:

    - "damage": ||g(mu(x_adv)) - g(mu(x))|| (deterministic damage, eta = 0);
    - "expected": (1/K) sum_k ||g(mu(x_adv) + eta_k s) - g(mu(x))|| (the paper's eq. 5, K fixed draws);
    - "p": -(1/K) sum_k sigmoid((r - ||g(mu(x_adv) + eta_k s) - g(mu(x))||) / T), a smoothed p_r with
      K fixed draws, T = std of the clean norms / 4 per input (needs ``r`` [B]);
    - "kl": KL(q(z|x_adv) || q(z|x)) (the latent attack away from x).
    s = sigma(x_adv) (mode "full") or sigma(x) ("mean"). ``counter`` counts the decoded rows.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    if mode not in ("full", "mean"):
        raise ValueError(f"unknown mode {mode!r}; choose 'full' or 'mean'")
    count = counter.add if counter is not None else (lambda n: None)
    with torch.no_grad():
        mu0, sigma0 = model.encode(x)
        ref = flat_decode(model, mu0)
    count(x.shape[0])
    B, d, D = mu0.shape[0], mu0.shape[1], ref.shape[1]
    K = max(int(draws), 1)
    eta = randn((1, B, K, d), mu0, generator)

    if name == "damage":
        def f(x_adv: torch.Tensor) -> torch.Tensor:
            R = x_adv.shape[0]
            mu = model.encode(x_adv.flatten(0, 1))[0]
            count(R * B)
            return safe_norm(flat_decode(model, mu).view(R, B, D) - ref)
        return f

    if name == "kl":
        def f(x_adv: torch.Tensor) -> torch.Tensor:
            R = x_adv.shape[0]
            mu, sigma = model.encode(x_adv.flatten(0, 1))
            return gaussian_kl(mu.view(R, B, d), sigma.view(R, B, d), mu0, sigma0)
        return f

    def norms(x_adv: torch.Tensor) -> torch.Tensor:
        R = x_adv.shape[0]
        mu, sigma = model.encode(x_adv.flatten(0, 1))
        s = sigma.view(R, B, 1, d) if mode == "full" else sigma0.view(1, B, 1, d)
        z = (mu.view(R, B, 1, d) + eta * s).reshape(R * B * K, d)
        count(R * B * K)
        return safe_norm(flat_decode(model, z).view(R, B, K, D) - ref[None, :, None, :])  # [R, B, K]

    if name == "expected":
        return lambda x_adv: norms(x_adv).mean(dim=-1)

    if r is None:
        raise ValueError("the probability objective 'p' needs the radius r")
    rr = as_radius(r, B, x).view(1, B, 1)  # rounded down to x's dtype, as every estimator
    with torch.no_grad():
        n0 = norms(x.unsqueeze(0))[0]  # [B, K]
    temp = (n0.std(dim=-1) / 4 if K > 1 else 0.05 * rr.view(B)).clamp_min(1e-3 * rr.view(B)).view(1, B, 1)
    return lambda x_adv: -torch.sigmoid((rr - norms(x_adv)) / temp).mean(dim=-1)
