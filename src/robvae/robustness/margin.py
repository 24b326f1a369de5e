"""The empirical ("sampled") margin R_hat_r(x) (SPEC 6).

R_hat_r(x) is the largest budget eps at which the strongest attack found still leaves the model
r-robust: p(x, delta*(eps)) > 1/2 with delta*(eps) the maximum-damage attack at budget eps and p
estimated by Monte Carlo. Two settings:

- mode "full" (default): p_full(x, delta) = P(||g(mu(x+delta) + eta sigma(x+delta)) - g(mu(x))|| <= r),
  the attack moving mean and variance (the paper's experiments);
- mode "mean": p_r(x, delta) with sigma held at sigma(x) (Theorem 1's exact setting).

Search, for all inputs of a batch together (each input keeps its own [lo, hi] bracket, the
attack re-run at the vector of budgets): hi doubles from ``eps_init`` until the attack breaks
robustness (capped at ``eps_max``), then bisection until hi - lo <= tol * hi. Inputs not r-robust
unperturbed get 0; inputs still robust at eps_max get eps_max (``capped``). The Monte Carlo
estimates of p reuse one stream of eta draws (common random numbers), so the robust / not-robust
decisions along the search are consistent. Attacks only find some perturbations, so R_hat is an
upper estimate of the true margin R_r(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..attacks.objectives import max_damage_objective
from ..attacks.pgd import get_norm, pgd
from ..rng import child_seed
from ..validation import as_radius, check_x
from .sampling import r_robustness


@dataclass
class MarginResult:
    """margin [B]: R_hat_r(x) (the last budget found robust; 0 when not robust clean).
    upper [B]: the smallest budget found not robust (eps_max where capped).
    p_clean [B]: p_r(x) unperturbed.  robust_clean [B]: p_clean > 1/2.  capped [B]: still robust at
    eps_max.  mode: "full" or "mean".  r [B]: the radius.  eps_max: the search cap.
    n_attacks: attack runs (batched over inputs) the search took."""

    margin: torch.Tensor
    upper: torch.Tensor
    p_clean: torch.Tensor
    robust_clean: torch.Tensor
    capped: torch.Tensor
    mode: str
    r: torch.Tensor
    eps_max: float
    n_attacks: int


def empirical_margin(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    *,
    mode: str = "full",
    eps_max: float | None = None,
    eps_init: float | torch.Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 40,
    n_samples: int = 1000,
    norm: str = "l2",
    steps: int = 40,
    restarts: int = 2,
    eta_samples: int = 4,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> MarginResult:
    """R_hat_r(x) by doubling then bisection on eps, all inputs together: x [B, *shape] -> MarginResult.

    r: a number or a [B] tensor.  eps_init: the first budget tried (a number or [B]; default r;
    a Theorem 1 bound is a good choice).  eps_max: the cap (default: the box diameter, sqrt(D) for
    L2, 1 for L-inf).  tol: relative bracket width.  n_samples: draws for each p estimate.
    norm / steps / restarts / eta_samples / step_size: the maximum-damage attack (SPEC 5; its
    sigma follows ``mode``).
    """
    if mode not in ("full", "mean"):
        raise ValueError(f"unknown mode {mode!r}; choose 'full' or 'mean'")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    check_x(model, x)
    B = x.shape[0]
    rt = as_radius(r, B, x)
    nrm = get_norm(norm)
    cap = float(eps_max) if eps_max is not None else nrm.diameter(x[0].numel())
    seed = child_seed(generator)

    def crn() -> torch.Generator:
        return torch.Generator(device=x.device).manual_seed(seed)

    p_clean = r_robustness(model, x, rt, None, n_samples, mode=mode, generator=crn()).p
    robust_clean = p_clean > 0.5
    n_attacks = 0

    def robust_at(eps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Attack the inputs ``rows`` (bool [B]) at budgets eps [B]; p > 1/2 there (bool [B], False elsewhere)."""
        nonlocal n_attacks
        out = torch.zeros(B, dtype=torch.bool, device=x.device)
        idx = rows.nonzero().flatten()
        if idx.numel() == 0:
            return out
        n_attacks += 1
        xs = x[idx]
        f = max_damage_objective(model, xs, eta_samples=eta_samples, mode=mode, generator=generator)
        delta = pgd(f, xs, eps[idx], norm=nrm, steps=steps, step_size=step_size, restarts=restarts,
                    generator=generator).delta
        est = r_robustness(model, xs, rt[idx], delta, n_samples, mode=mode, generator=crn())
        out[idx] = est.p > 0.5
        return out

    lo = torch.zeros(B, dtype=x.dtype, device=x.device)
    init = rt if eps_init is None else torch.as_tensor(eps_init, dtype=x.dtype, device=x.device).expand(B)
    init = torch.where(torch.isfinite(init) & (init > 0), init, rt)
    hi = init.clamp(max=cap).clone()
    capped = torch.zeros_like(robust_clean)
    open_ = robust_clean.clone()  # rows still looking for a budget that breaks them
    for _ in range(max(1, math.ceil(math.log2(cap / float(hi[open_].min()))) + 2) if open_.any() else 0):
        if not open_.any():
            break
        rob = robust_at(hi, open_)
        at_cap = rob & (hi >= cap)
        capped |= at_cap
        lo = torch.where(rob, hi, lo)
        hi = torch.where(rob & ~at_cap, (2 * hi).clamp(max=cap), hi)
        open_ &= rob & ~at_cap
    capped |= open_  # safety: never bracketed within the iteration budget
    search = robust_clean & ~capped
    for _ in range(max_iter):
        active = search & (hi - lo > tol * hi)
        if not active.any():
            break
        mid = 0.5 * (lo + hi)
        rob = robust_at(mid, active)
        lo = torch.where(active & rob, mid, lo)
        hi = torch.where(active & ~rob, mid, hi)
    margin = torch.where(capped, torch.full_like(lo, cap), lo)
    margin = torch.where(robust_clean, margin, torch.zeros_like(margin))
    upper = torch.where(capped, torch.full_like(hi, cap), hi)
    upper = torch.where(robust_clean, upper, torch.zeros_like(upper))
    return MarginResult(margin=margin, upper=upper, p_clean=p_clean, robust_clean=robust_clean, capped=capped,
                        mode=mode, r=rt, eps_max=cap, n_attacks=n_attacks)
