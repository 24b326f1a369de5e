"""Rigorous certified radii and Barrett et al.'s margins (docs/THEORY.md sections 8 and 9).

Notation (docs/THEORY.md section 8): q = N(mu(x), diag sigma(x)^2), q' the same at x' = x + delta,
A = {z : ||g(z) - g(mu(x))|| <= r}, p = q(A) (we use its Clopper-Pearson lower bound p_lo),
d = (mu(x') - mu(x)) / sigma(x) elementwise, D = ||d||, l = ln rho, rho_i = sigma_i(x') / sigma_i(x).

Lower bounds on p' = q'(A), each valid for EVERY set A (so every decoder):

- ``shift_bound``  (Neyman-Pearson, tight for rho = 1):   Phi(Phi^{-1}(p) - D)
- ``shift_variance_bound``:  Phi(Phi^{-1}(p) - D) - TV_var,  TV_var <= min(sqrt(1 - BC_var^2), sqrt(KL_var / 2))
- ``bhattacharyya_bound``:   sin^2(max(0, arcsin sqrt(p) - arccos BC))
- ``binary_kl_bound``:       the smallest p' <= p with kl(p || p') <= KL(q || q')

Over the ball ||delta|| <= eps we only know D <= L_D eps (L_D = L_mu / min_i sigma_i(x)) and
||l||_2 <= L_ls eps (L_ls: the Lipschitz constant of log sigma). The ``worst_*`` functions give the
worst case of each divergence under these two norm constraints (derivations in their docstrings),
so the resulting lower bound holds for every delta in the ball. Each bound falls as D and ||l||
grow, so the rigorous radius (the largest eps with a lower bound > 1/2) is

- mean only (sigma held at sigma(x)): eps = Phi^{-1}(p_lo) / L_D, in closed form;
- full encoder (sigma moves too): bisection on eps of the best of the three full bounds.

Barrett et al. (AISTATS 2022) certify a different notion: P(||g(z') - g(z)|| <= r) > 1/2 for two
independent draws z ~ q(.|x), z' ~ q(.|x + delta); ``barrett_bound1`` / ``barrett_bound2`` /
``barrett_margin`` implement their two margins (docs/THEORY.md section 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ALPHA, N_SAMPLES
from ..errors import InputError
from ..validation import check_count, check_positive, check_x
from .lipschitz import VAELipschitz, latent_width, vae_lipschitz
from .rounding import encoder_rounding
from .sampling import r_robustness

_F64 = torch.float64
BISECT_STEPS = 64
#: Inputs whose p_lower is within this of 1/2 abstain (radii 0): there the float64 rounding of the
#: bounds is no longer small against the radius itself (radii of about 1e-8 L^-1 and below).
P_MARGIN = 1e-7
#: The full radius's bound must exceed 1/2 by this much: its float64 value is within about 1e-16
#: of the exact one, so the exact bound is above 1/2 too.
BOUND_SLACK = 1e-12
#: Models computing in these dtypes get no rigorous radius: mu moves in rounding steps (bfloat16:
#: 2^-8 of |mu|) that no Lipschitz constant bounds, and where sigma is about one such step, a
#: perturbation far inside the ball moves mu by several sigma.
INEXACT_DTYPES = (torch.float16, torch.bfloat16)
#: The largest ball the rounding of a model's outputs is bounded over: a radius (of an encoder
#: whose mean does not move, L_D = 0) is never stated beyond it.
ROUNDING_BALL_MAX = 1e6


def check_exact_arithmetic(model: torch.nn.Module, *tensors: torch.Tensor) -> None:
    """Refuse rigorous radii for a model whose parameters, buffers or outputs (``tensors``, e.g.
    sigma) are float16 / bfloat16: their rounding steps (2^-11, 2^-8 of the activations) are too
    coarse; float32 and float64 rounding is counted (:func:`radii_with_rounding`, docs/THEORY.md
    section 8)."""
    held = (*model.parameters(), *model.buffers(), *tensors)
    dtype = next((t.dtype for t in held if t.dtype in INEXACT_DTYPES), None)
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        raise InputError(f"rigorous radii need exact arithmetic, and this model computes in {name}: its mu moves "
                         f"in rounding steps no Lipschitz constant bounds; certify a float32 copy "
                         f"(model.float(), x.float()), whose radii hold for that copy only, or leave rigorous off")


def _t(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=_F64)


# --- divergences between diagonal Gaussians (exact, for given d and rho) ----------------------
def bc_variance(rho: torch.Tensor) -> torch.Tensor:
    """Bhattacharyya coefficient of N(0, I) and N(0, diag rho^2): prod_i sqrt(2 rho_i / (1 + rho_i^2)); [..., m] -> [...]."""
    return torch.exp(log_bc_variance(rho))


def log_bc_variance(rho: torch.Tensor) -> torch.Tensor:
    """ln of :func:`bc_variance`: -1/2 sum_i ln cosh(ln rho_i) (2 rho / (1 + rho^2) = 1 / cosh ln rho)."""
    return -0.5 * _log_cosh(_t(rho).log()).sum(-1)


def kl_variance(rho: torch.Tensor) -> torch.Tensor:
    """KL(N(0, diag rho^2) || N(0, I)) = 1/2 sum_i (rho_i^2 - 1 - 2 ln rho_i); [..., m] -> [...]."""
    l = _t(rho).log()
    return 0.5 * (torch.expm1(2 * l) - 2 * l).sum(-1)


def bhattacharyya(d: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """BC(q, q') = prod_i sqrt(2 rho_i / (1 + rho_i^2)) exp(-d_i^2 / (4 (1 + rho_i^2))); [..., m] -> [...]."""
    return torch.exp(log_bhattacharyya(d, rho))


def log_bhattacharyya(d: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """ln of :func:`bhattacharyya`."""
    d, rho = _t(d), _t(rho)
    return log_bc_variance(rho) - (d.square() / (4 * (1 + rho.square()))).sum(-1)


def kl_full(d: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """KL(q || q') = 1/2 sum_i ((1 + d_i^2) / rho_i^2 - 1 + 2 ln rho_i); [..., m] -> [...]."""
    d, rho = _t(d), _t(rho)
    return 0.5 * ((1 + d.square()) / rho.square() - 1 + 2 * rho.log()).sum(-1)


# --- worst cases over ||d|| <= D, ||ln rho||_2 <= t -------------------------------------------
def worst_bc_variance(t, m: int | float = math.inf) -> torch.Tensor:
    """min BC_var over ||ln rho||_2 <= t in m dimensions: cosh(t / sqrt m)^(-m/2) (exp(-t^2/4) for m = inf).

    -ln BC_var = 1/2 sum_i ln cosh(l_i); phi(u) = ln cosh(sqrt u) is concave in u (its derivative
    tanh(sqrt u) / (2 sqrt u) decreases), so under sum u_i <= t^2 the sum is largest when all u_i equal.
    """
    return torch.exp(worst_log_bc_variance(t, m))


def worst_log_bc_variance(t, m: int | float = math.inf) -> torch.Tensor:
    """ln of :func:`worst_bc_variance`, kept as a logarithm: 1 - BC^2 = -expm1(2 ln BC) keeps its
    digits when BC is within 1e-8 of 1 (p_lower near 1/2), where 1 - BC^2 from BC itself did not."""
    t = _t(t)
    if math.isinf(m):
        return -t.square() / 4
    return -(m / 2) * _log_cosh(t / math.sqrt(m))


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    """ln cosh x without cancellation: ln(1 + 2 sinh^2(x/2)) below 1 (x + ln(1 + e^-2x) - ln 2 loses
    every digit for tiny x), that form above (sinh^2 would overflow)."""
    x = x.abs()
    small = torch.log1p(2 * torch.sinh(x.clamp(max=1.0) / 2).square())
    return torch.where(x < 1.0, small, x + torch.log1p(torch.exp(-2 * x)) - math.log(2.0))


def worst_kl_variance(t) -> torch.Tensor:
    """max KL_var over ||ln rho||_2 <= t (either direction of the KL): 1/2 (e^(2t) - 1 - 2t).

    f(l) = e^(2l) - 1 - 2l = l^2 phi(l) with phi increasing on l >= 0 and f(-l) <= f(l) there, so
    sum_i f(+-l_i) <= phi(t) sum_i l_i^2 <= f(t): one coordinate takes the whole budget.
    """
    t = _t(t)
    return 0.5 * (torch.expm1(2 * t) - 2 * t)


def worst_bhattacharyya(D, t, m: int | float = math.inf) -> torch.Tensor:
    """A lower bound on BC(q, q') over ||d|| <= D, ||ln rho|| <= t: worst_bc_variance(t, m) exp(-D^2 / 4)
    (each exp(-d_i^2 / (4 (1 + rho_i^2))) >= exp(-d_i^2 / 4))."""
    return torch.exp(worst_log_bhattacharyya(D, t, m))


def worst_log_bhattacharyya(D, t, m: int | float = math.inf) -> torch.Tensor:
    """ln of :func:`worst_bhattacharyya`."""
    return worst_log_bc_variance(t, m) - _t(D).square() / 4


def worst_kl_full(D, t) -> torch.Tensor:
    """An upper bound on KL(q || q') over ||d|| <= D, ||ln rho|| <= t: 1/2 (e^(2t) - 1 - 2t) + 1/2 D^2 e^(2t)
    (the variance part as in worst_kl_variance; d_i^2 / rho_i^2 <= d_i^2 e^(2t))."""
    D, t = _t(D), _t(t)
    shift = 0.5 * D.square() * torch.exp(2 * t)
    return worst_kl_variance(t) + torch.where(D == 0, torch.zeros_like(shift), shift)  # not 0 * inf = NaN


# --- lower bounds on p' -----------------------------------------------------------------------
def shift_bound(p, D) -> torch.Tensor:
    """Neyman-Pearson: p' >= Phi(Phi^{-1}(p) - D) when only the mean moves (whitened shift D)."""
    return torch.special.ndtr(torch.special.ndtri(_t(p)) - _t(D))


def tv_variance(log_bc_var, kl_var) -> torch.Tensor:
    """TV between the variance-only pair <= min(sqrt(1 - BC^2), sqrt(KL / 2)), from ln BC (see
    :func:`worst_log_bc_variance`); NaN (an overflow) gives the trivial bound 1."""
    log_bc_var, kl_var = _t(log_bc_var), _t(kl_var)
    tv = torch.minimum(torch.sqrt((-torch.expm1(2 * log_bc_var)).clamp(min=0)), torch.sqrt(kl_var.clamp(min=0) / 2))
    return torch.where(torch.isnan(tv), torch.ones_like(tv), tv.clamp(max=1.0))


def shift_variance_bound(p, D, log_bc_var, kl_var) -> torch.Tensor:
    """Shift then rescale: p' >= Phi(Phi^{-1}(p) - D) - TV_var (clamped at 0); the variance part's
    Bhattacharyya coefficient as its logarithm."""
    return (shift_bound(p, D) - tv_variance(log_bc_var, kl_var)).clamp(min=0)


def bhattacharyya_bound(p, log_bc) -> torch.Tensor:
    """p' >= sin^2(max(0, arcsin sqrt p - arccos BC)) (BC of q, q' is >= its value on any binary split),
    from ln BC: arccos e^L = 2 arcsin sqrt(-expm1(L) / 2) keeps its digits for BC near 1, where
    arccos of BC itself lost them (1 - BC of 1e-15 is known to 5% as a float64 near 1)."""
    p, log_bc = _t(p), _t(log_bc).clamp(max=0)
    angle = 2 * torch.arcsin(torch.sqrt((-torch.expm1(log_bc) / 2).clamp(0, 1)))
    return torch.sin((torch.arcsin(p.clamp(0, 1).sqrt()) - angle).clamp(min=0)).square()


def binary_kl(p, q) -> torch.Tensor:
    """kl(p || q) for Bernoulli parameters (0 log 0 = 0), as p ln(1 + (p - q)/q) + (1 - p) ln(1 - (p - q)/(1 - q)):
    for q near p its four logarithms of about 0.35 each cancelled down to a value of 1e-14, with a
    relative error of 1e-2 (a full radius 0.2% too large at p_lower - 1/2 = 1.5e-7)."""
    p, q = torch.broadcast_tensors(_t(p), _t(q))
    d = p - q
    one = torch.where(p > 0, p * torch.log1p(d / q), torch.zeros_like(p))
    two = torch.where(p < 1, (1 - p) * torch.log1p(-d / (1 - q)), torch.zeros_like(p))
    return one + two


def binary_kl_bound(p, kl) -> torch.Tensor:
    """The smallest p' in [0, p] with kl(p || p') <= KL (data processing), by vectorised bisection;
    a NaN KL (an overflow) gives the trivial bound 0."""
    p, kl = torch.broadcast_tensors(_t(p), _t(kl))
    kl = torch.where(torch.isnan(kl), torch.full_like(kl, math.inf), kl)
    lo, hi = torch.zeros_like(p), p.clone()  # kl(p || .) decreases on [0, p]; kl(p || p) = 0 <= KL
    # invariant: hi feasible (kl <= KL), lo infeasible or 0, so the smallest feasible p* is in [lo, hi]
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        ok = binary_kl(p, mid) <= kl
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return lo  # the boundary p* lies in [lo, hi]: lo <= p* is the conservative (valid) end


def lower_bound(p, d, rho) -> torch.Tensor:
    """The best of the four lower bounds on p' for given d, rho [..., m] and p [...]."""
    D = _t(d).norm(dim=-1)
    return torch.maximum(torch.maximum(shift_variance_bound(p, D, log_bc_variance(rho), kl_variance(rho)),
                                       bhattacharyya_bound(p, log_bhattacharyya(d, rho))),
                         binary_kl_bound(p, kl_full(d, rho)))


def worst_lower_bound(p, D, t, m: int | float = math.inf) -> torch.Tensor:
    """A lower bound on p' valid for every d, rho with ||d|| <= D and ||ln rho||_2 <= t (the best of three)."""
    a = shift_variance_bound(p, D, worst_log_bc_variance(t, m), worst_kl_variance(t))
    b = bhattacharyya_bound(p, worst_log_bhattacharyya(D, t, m))
    c = binary_kl_bound(p, worst_kl_full(D, t))
    return torch.maximum(torch.maximum(a, b), c)


# --- radii --------------------------------------------------------------------------------------
def rigorous_radii(p_lower, lip_shift, lip_log_sigma, m: int | float = math.inf, shift0=0.0,
                   log_sigma0=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(radius_mean, radius_full) [B] from p_lo [B], L_D [B] (D <= shift0 + L_D eps) and L_ls
    (||ln rho|| <= log_sigma0 + L_ls eps); the offsets [B] (default 0) carry the rounding of the
    computed mu and log sigma (:func:`robvae.robustness.rounding.encoder_rounding`, at x and x').

    Mean only: (Phi^{-1}(p_lo) - shift0) / L_D (Neyman-Pearson is tight, so no other bound helps).
    Full: the largest eps with worst_lower_bound(p_lo, shift0 + L_D eps, log_sigma0 + L_ls eps) >
    1/2, by bisection on [0, radius_mean] (every full bound is at most the shift bound). Both 0
    where p_lo <= 1/2 + :data:`P_MARGIN` or where the offsets alone use up the budget. InputError
    for a negative or non-finite constant. The returned radius is the lower end of the final
    bracket, so the bound there is > 1/2.
    """
    p = _t(p_lower)
    p, ld = torch.broadcast_tensors(p, _t(lip_shift).to(p.device))  # constants: CPU numbers
    lls = _t(lip_log_sigma).to(p.device).expand_as(p)
    d0 = _t(shift0).to(p.device).expand_as(p)
    l0 = _t(log_sigma0).to(p.device).expand_as(p)
    for name, v in (("the shift constant L_D", ld), ("the log-sigma constant", lls)):
        if bool(((v < 0) | ~torch.isfinite(v)).any()):
            raise InputError(f"rigorous radii: {name} must be finite and >= 0 (an upper bound), got {v.flatten()[:4].tolist()}")
    for name, v in (("the shift offset", d0), ("the log-sigma offset", l0)):  # +inf: no radius
        if bool(((v < 0) | torch.isnan(v)).any()):
            raise InputError(f"rigorous radii: {name} must be >= 0, got {v.flatten()[:4].tolist()}")
    ok = p > 0.5 + P_MARGIN
    room = (torch.special.ndtri(p) - d0).clamp(min=0)
    r_mean = torch.where(ok & (room > 0), room / ld, torch.zeros_like(p))  # L_D = 0: inf only with room left
    if bool((lls == 0).all()) and bool((l0 == 0).all()):
        return r_mean, r_mean.clone()
    ok = ok & (worst_lower_bound(p, d0, l0, m) > 0.5 + BOUND_SLACK)  # the offsets alone may use it up
    lo = torch.zeros_like(p)
    hi = torch.where(torch.isfinite(r_mean), r_mean, torch.full_like(p, 1e6))
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        good = worst_lower_bound(p, d0 + ld * mid, l0 + lls * mid, m) > 0.5 + BOUND_SLACK
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
    return r_mean, torch.where(ok, lo, torch.zeros_like(p))


def radii_with_rounding(model: torch.nn.Module, x: torch.Tensor, p_lower: torch.Tensor, sigma_min: torch.Tensor,
                        constants: VAELipschitz, m: int | float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rigorous_radii` of the model as it computes: the exact maps' radii first, then again
    with the rounding of the computed mu and log sigma over that ball counted at x and at x'
    (:func:`robvae.robustness.rounding.encoder_rounding`; audit h83 broke float32 radii without it).
    A model robvae cannot walk keeps the first radii: its constants, passed by the user, must
    cover its rounding too (docs/THEORY.md section 8)."""
    lls = 0.0 if constants.sigma_constant else constants.log_sigma
    ld = constants.mean / sigma_min
    r_mean, r_full = rigorous_radii(p_lower, ld, lls, m)
    try:
        ball = torch.maximum(r_mean, r_full).nan_to_num(ROUNDING_BALL_MAX).clamp(max=ROUNDING_BALL_MAX)
        e_mu, e_ls = encoder_rounding(model, x, ball)
    except InputError:
        return r_mean, r_full
    e_ls = torch.zeros_like(e_ls) if constants.sigma_constant else e_ls
    r_mean, r_full = rigorous_radii(p_lower, ld, lls, m, shift0=(2 * e_mu / sigma_min).to(p_lower.device),
                                    log_sigma0=(2 * e_ls).to(p_lower.device))
    ball = ball.to(p_lower.device)  # the rounding was bounded over this ball only (review h85)
    return torch.minimum(r_mean, ball), torch.minimum(r_full, ball)


@dataclass
class RigorousCertificate:
    """Rigorous certified radii per input (tensors [B], float64), valid for every ||delta|| <= radius with
    confidence 1 - alpha (the only randomness is the Monte Carlo estimate of p).

    radius_mean: sigma held at sigma(x) (docs/THEORY.md section 2).  radius_full: sigma moves too (section 5).
    p_lower: Clopper-Pearson lower bound on p_r(x).  abstain: p_lower <= 1/2 (radii 0).
    sigma_min: min_i sigma_i(x).  constants: the Lipschitz bounds used.  r, alpha, n_samples: settings.
    Notion: Camuto et al.'s ball of radius r around g(mu(x)).
    """

    radius_mean: torch.Tensor
    radius_full: torch.Tensor
    p_lower: torch.Tensor
    abstain: torch.Tensor
    sigma_min: torch.Tensor
    constants: VAELipschitz
    r: torch.Tensor
    alpha: float
    n_samples: int

    def __len__(self) -> int:
        return int(self.radius_mean.shape[0])


def rigorous_certify(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    *,
    n_samples: int = N_SAMPLES,
    alpha: float = ALPHA,
    constants: VAELipschitz | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> RigorousCertificate:
    """Rigorous radii for x [B, *shape] at radius r (a number or [B]).

    constants: Lipschitz bounds (default :func:`vae_lipschitz`, rigorous for robvae's VAEs and the
    linear VAE; pass your own, which must be upper bounds, for any other protocol model).
    """
    check_x(model, x)
    check_exact_arithmetic(model, x)
    if constants is None:
        constants = vae_lipschitz(model)
    if not (constants.mean >= 0 and constants.log_sigma >= 0):
        raise InputError(f"Lipschitz constants must be >= 0, got {constants}")
    est = r_robustness(model, x, r, None, n_samples, alpha=alpha, mode="mean", chunk_size=chunk_size,
                       generator=generator)
    with torch.inference_mode():
        sigma = model.encode(x)[1].to(_F64)
    smin = sigma.amin(dim=1)
    p_lo = est.p_lower.to(_F64)
    r_mean, r_full = radii_with_rounding(model, x, p_lo, smin, constants, sigma.shape[1])
    return RigorousCertificate(radius_mean=r_mean, radius_full=r_full, p_lower=p_lo, abstain=p_lo <= 0.5,
                               sigma_min=smin, constants=constants, r=est.r, alpha=float(alpha), n_samples=int(n_samples))


# --- Barrett et al. (docs/THEORY.md section 9) ----------------------------------------------------------------
def _check_barrett(a, b, c, s, r) -> None:
    for name, v in (("a", a), ("b", b), ("c", c), ("s", s)):
        if not (v >= 0 and math.isfinite(v)):
            raise InputError(f"Barrett bound: {name} must be finite and >= 0, got {v}")
    if not (a > 0 and r > 0 and math.isfinite(r)):
        raise InputError(f"Barrett bound: need a > 0 and r > 0, got a={a}, r={r}")


def barrett_bound1(a: float, b: float, c: float, s: float, r: float) -> float:
    """Bound 1: the largest eps >= 0 with b^2 eps^2 + (2 s + c eps)^2 <= r^2 / (2 a^2); 0 unless s < r / (sqrt 8 a).

    The quadratic (b^2 + c^2) eps^2 + 4 s c eps + 4 s^2 - R <= 0, R = r^2 / (2 a^2), has its positive
    root at (-2 s c + sqrt(4 s^2 c^2 - (b^2 + c^2)(4 s^2 - R))) / (b^2 + c^2); inf when b = c = 0.
    """
    _check_barrett(a, b, c, s, r)
    rho = r / (math.sqrt(2.0) * a)  # R = rho^2: no square of r / a is formed (it overflowed at 1e200)
    if not math.isfinite(rho):
        raise InputError(f"Barrett bound: r / a out of range (r={r:g}, a={a:g})")
    sig = s / rho
    if not 2 * sig < 1.0:
        return 0.0
    n = math.hypot(b, c)
    if n == 0:
        return math.inf
    gam = c / n  # eps = (rho / n) x with x^2 + 4 sig gam x + 4 sig^2 - 1 = 0, every term of order 1
    x = -2 * sig * gam + math.sqrt(4 * sig * sig * gam * gam - 4 * sig * sig + 1.0)
    return max(0.0, (rho / n) * x)


def _log_cm(m: int) -> float:
    return -0.5 * math.log(math.pi) + (m - (m - 1) * math.log(m)) / 2


def barrett_u(eps, a: float, b: float, c: float, s: float, r: float, gamma: float | None = None) -> np.ndarray:
    """Bound 2's u(eps) = (r/a - b eps)^2 / (c eps + 2 s)^2, or (r/a - b eps)^2 / (2 gamma^2) for a fixed std gamma."""
    eps = np.asarray(eps, dtype=np.float64)
    num = np.square(r / a - b * eps)
    with np.errstate(divide="ignore"):
        return num / (2 * gamma * gamma) if gamma is not None else num / np.square(c * eps + 2 * s)


def barrett_condition(eps, a: float, b: float, c: float, s: float, r: float, m: int, gamma: float | None = None) -> np.ndarray:
    """Bound 2's test at eps: eps < r/(a b), u > m - 2 and C_m u^(m/2) e^(-u/2) / (u - m + 2) <= 1/2."""
    eps = np.asarray(eps, dtype=np.float64)
    u = barrett_u(eps, a, b, c, s, r, gamma)
    below = eps * a * b < r
    with np.errstate(divide="ignore", invalid="ignore"):
        logh = _log_cm(m) + (m / 2) * np.log(u) - u / 2 - np.log(u - m + 2)
        return below & (u > m - 2) & (logh <= math.log(0.5))


def barrett_bound2(a: float, b: float, c: float, s: float, r: float, m: int, gamma: float | None = None) -> float:
    """Bound 2: the largest certified eps (see :func:`barrett_condition`); 0 when even eps = 0 fails.

    With a fixed std gamma (c = 0) pass ``gamma``. Found by a grid on [0, r / (a b)) and bisection
    between the last certified grid point and the next one. Needs m >= 2: Inglot's chi-square tail
    bound behind it holds for two or more degrees of freedom (for m = 1 it stays below 1/2 at every
    u, and would certify any budget).
    """
    _check_barrett(a, b, c, s, r)
    if int(m) < 2:
        raise InputError(f"Barrett bound 2 needs m >= 2 latent dimensions (Inglot's chi-square tail bound), got {m}")
    m = int(m)
    if gamma is not None and not gamma > 0:
        raise InputError(f"Barrett bound 2: gamma must be > 0, got {gamma}")
    if gamma is None and s == 0 and c == 0:
        return r / (a * b) if b > 0 else math.inf  # u = inf: certified up to r / (a b)
    cond = lambda e: barrett_condition(e, a, b, c, s, r, m, gamma)  # noqa: E731
    if not cond(0.0):
        return 0.0
    if b > 0:
        hi = r / (a * b)
    else:  # u falls to 0 only through c eps; find a failing budget by doubling
        hi = 1.0
        while cond(hi):
            hi *= 2
            if hi > 1e12:
                return math.inf
    grid = np.linspace(0.0, hi, 4097)
    ok = cond(grid)
    last = int(np.nonzero(ok)[0].max())
    if last == grid.size - 1:
        return float(grid[-1])
    lo_e, hi_e = float(grid[last]), float(grid[last + 1])
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo_e + hi_e)
        if cond(mid):
            lo_e = mid
        else:
            hi_e = mid
    return lo_e


def barrett_margin(a: float, b: float, c: float, s: float, r: float, m: int, gamma: float | None = None) -> float:
    """Barrett et al.'s certified margin: the larger of bounds 1 and 2 (fixed std gamma: c = 0, s = gamma sqrt m);
    bound 1 alone for m = 1 (bound 2 needs m >= 2, :func:`barrett_bound2`)."""
    m = check_count(m, 1, "the latent dimension m")
    if gamma is not None:
        c, s = 0.0, gamma * math.sqrt(m)
    one = barrett_bound1(a, b, c, s, r)
    return one if int(m) < 2 else max(one, barrett_bound2(a, b, c, s, r, m, gamma))


# --- robustness specified upfront -------------------------------------------------------------
L_MIN, L_MAX = 0.05, 1e4  # a Lipschitz VAE below L_MIN is nearly constant: treated as "impossible"
PLAN_SLACK = 1e-3  # plan for eps (1 + slack)
#: the plan's margin is Barrett's at constants from L (1 + this): a trained lipschitz-mlp's measured
#: norms exceed L by up to ~5e-7 relative, and where bound 1 stops giving a margin the margin falls
#: so steeply in L that this excess alone took a planned 1.001e-5 to a measured 9.7e-6 (h74)
LIPSCHITZ_EXCESS = 1e-4


@dataclass(frozen=True)
class MarginPlan:
    """Construction constants of a lipschitz-mlp VAE whose Barrett margin is >= eps at r for every input.

    lipschitz: L (encoder mean, std and decoder networks).  sigma_cap: ||sigma(x)|| <= cap.
    a, b, c, s: Barrett's constants (decoder g = sigmoid(h): L/4; mean: L; std: cap L / (4 sqrt m); cap).
    margin: Barrett's certified margin at these constants with L raised by :data:`LIPSCHITZ_EXCESS`
    (>= eps).  eps, r, latent_dim: the request.
    """

    lipschitz: float
    sigma_cap: float
    a: float
    b: float
    c: float
    s: float
    margin: float
    eps: float
    r: float
    latent_dim: int


def lipschitz_vae_barrett_constants(lipschitz: float, sigma_cap: float, m: int) -> tuple[float, float, float, float]:
    """(a, b, c, s) of a lipschitz-mlp VAE built with constant L and std cap (see robvae.models.lipschitz)."""
    return lipschitz / 4.0, lipschitz, sigma_cap * lipschitz / (4.0 * math.sqrt(m)), sigma_cap


def plan_certified_margin(eps: float, r: float, latent_dim: int, sigma_cap: float = 0.1) -> MarginPlan:
    """The largest L (bisection on log L; Barrett's margin falls as L grows) whose margin is >= eps,
    even with the weights' norms up to :data:`LIPSCHITZ_EXCESS` above L (the plan's ``margin``).

    Raises InputError when even L = L_MIN cannot certify eps (or eps, r, cap are out of range).
    """
    eps, r, sigma_cap = (check_positive(v, f"--certify-margin: {name}")
                         for name, v in (("eps", eps), ("r", r), ("sigma_cap", sigma_cap)))
    m = check_count(latent_dim, 1, "--certify-margin: latent_dim")
    margin = lambda L: barrett_margin(*lipschitz_vae_barrett_constants(L * (1 + LIPSCHITZ_EXCESS), sigma_cap, m),  # noqa: E731
                                      r, m)
    target = eps * (1 + PLAN_SLACK)
    if margin(L_MIN) < target:
        raise InputError(f"cannot certify margin {eps:g} at r={r:g} with std cap {sigma_cap:g} and {m} latents: "
                         f"even L={L_MIN:g} gives only {margin(L_MIN):.3g}; raise r, lower eps or the std cap")
    lo, hi = math.log(L_MIN), math.log(L_MAX)
    if margin(L_MAX) >= target:
        lo = hi
    for _ in range(BISECT_STEPS):
        if hi - lo < 1e-9:
            break
        mid = 0.5 * (lo + hi)
        if margin(math.exp(mid)) >= target:
            lo = mid
        else:
            hi = mid
    L = math.exp(lo)
    a, b, c, s = lipschitz_vae_barrett_constants(L, sigma_cap, m)
    return MarginPlan(lipschitz=L, sigma_cap=float(sigma_cap), a=a, b=b, c=c, s=s, margin=margin(L), eps=float(eps),
                      r=float(r), latent_dim=m)


def rigorous_columns(model: torch.nn.Module, x: torch.Tensor, p_lower: torch.Tensor, sigma_min: torch.Tensor,
                     constants: VAELipschitz | None = None) -> dict[str, torch.Tensor]:
    """The rigorous radii as per-input columns for :class:`robvae.robustness.certify.Certificate` extras:
    {"radius_rigorous_mean", "radius_rigorous_full"} from a certificate's p_lower and sigma_min [B]
    for the inputs x [B, *shape] (the rounding of their encoder outputs is counted)."""
    check_exact_arithmetic(model, sigma_min)
    L = constants if constants is not None else vae_lipschitz(model)
    # the full radius falls with m: the width encode really gives (a stale latent_dim is refused)
    m = latent_width(model) if getattr(model, "input_shape", None) else getattr(model, "latent_dim", math.inf)
    rm, rf = radii_with_rounding(model, x, p_lower.detach().to(_F64).cpu(), sigma_min.detach().to(_F64).cpu(), L, m)
    return {"radius_rigorous_mean": rm.to(p_lower.device), "radius_rigorous_full": rf.to(p_lower.device)}
