"""The empirical ("sampled") margin R_hat_r(x) (docs/THEORY.md section 5), searched so that one weak attack run
cannot overstate it (issue 9).

R_hat_r(x) is the largest budget eps at which the strongest attack found still leaves the model
r-robust: p(x, delta*(eps)) > 1/2. Two settings:

- mode "full" (default): p_full(x, delta) = P(||g(mu(x+delta) + eta sigma(x+delta)) - g(mu(x))|| <= r),
  the attack moving mean and variance (the paper's experiments);
- mode "mean": p_r(x, delta) with sigma held at sigma(x) (Theorem 1's exact setting).

The search, for all inputs of a batch together (each input keeps its own state):

1. Clean: the sequential test decides p_r(x) > 1/2; inputs not settled robust get margin 0.
2. Bracket: the budget doubles from ``eps_init`` until the attack breaks robustness (capped at
   eps_max).
3. Refinement. Per input: lo (the largest budget decided robust), hi_conf (the smallest decided
   NOT robust) and the band [u_lo, u_hi] of budgets whose decision was not settled (p too close
   to 1/2 for ``n_samples`` draws). Bisection of the gap below the band (lo, u_lo) and the gap
   above it (u_hi, hi_conf), the wider first, until the gaps are below tol * budget or half the
   band, or ``max_unsettled`` decisions were not settled. At every budget the attack (default
   ``EnsembleAttack("cheap")``) starts from the non-robust (or unsettled) perturbation found at
   the smallest larger budget, scaled in (so a larger budget's success is never forgotten), from
   the top singular direction of the Jacobian of x -> g(mu(x)) and from its own starts, and
   attacks the smoothed p_r (common random numbers) besides the damage.
4. Decisions: p > 1/2 is decided on fresh draws of eta by an anytime-valid sequential test
   (:func:`robvae.robustness.sampling.sequential_robustness`, error <= alpha per decision) that
   stops drawing once settled. A decision not settled counts as NOT robust for the margin (the
   margin can only move down), and a robust decision above an unsettled budget is not believed.
5. Verification: the final lo is attacked again (fresh random stream, warm-started from the
   perturbation at the smallest larger bad budget) and re-decided on fresh draws; if it fails, the
   search resumes from the previous robust budget (at most 3 rounds); after a fourth search, a
   failed lo falls back to the last budget that passed a verification, else to its previous
   robust budget (verified once more), else to 0.9 lo (decided twice), within 5 more attack runs;
   else the margin is 0 (an unknown). The settled non-robust
   perturbation at hi_conf is re-tested on fresh draws (``upper_confirmed``).

The result is monotone in the budget (every budget tested above ``margin`` counts as not robust;
``margin`` itself was decided robust, and re-decided so after the search). Attacks only find some perturbations, so R_hat is an upper estimate
of the true margin R_r(x); the Monte Carlo ``tolerance`` is the distance from ``margin`` to the
smallest budget found NOT robust with confidence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..attacks.ensemble import PRESETS, EnsembleAttack, Stage
from ..attacks.pgd import get_norm
from ..config import ALPHA, MARGIN_TOL, N_SAMPLES
from ..errors import InputError
from ..rng import child_seed
from ..validation import as_radius, check_count, check_level, check_positive, check_x, rounded
from .sampling import r_robustness, sequential_robustness


#: After the search's last round: attack runs left to re-decide the margin, and the step down from a
#: budget that failed with no verified one below it (see empirical_margin, step 5).
VERIFY_EXTRA = 5
VERIFY_BACKOFF = 0.9


@dataclass
class MarginResult:
    """margin [B]: R_hat_r(x) (the largest budget decided robust; 0 when not robust clean).
    upper [B]: the smallest budget where robustness failed or was not settled (eps_max where capped):
    mostly not settled, so p there is near 1/2; the smallest budget settled NOT robust is margin + tolerance.
    p_clean [B]: p_r(x) unperturbed (from the clean decision's draws, at least 1000).
    robust_clean [B]: p_clean > 1/2 settled.  capped [B]: still robust at eps_max.
    mode: "full" or "mean".  r [B]: the radius.  eps_max: the search cap.  n_attacks: batched attack runs.
    tolerance [B]: the Monte Carlo tolerance, (smallest budget decided NOT robust; eps_max if none)
    - margin (0 where capped or not robust clean).  upper_confirmed [B]: the settled non-robust
    perturbation re-tested on fresh draws (n_samples / 4 at most) is still settled non-robust.
    preset: the attack's preset.  decoder_rows: latent vectors decoded by the whole search (attacks
    and draws).  alpha: error level per decision of the sequential test (per decision, not per input:
    a search makes many; with sequential=False no level holds, p > 1/2 is read off the point estimate).  sequential: whether decisions used the sequential
    test (False: fixed n_samples draws, p > 1/2).  delta [B, *shape]: the perturbation found at
    ``upper`` (zeros where none).  not_robust_clean [B]: p_clean <= 1/2 settled (its margin 0 is a
    measurement); an input neither robust_clean nor not_robust_clean was undecided unperturbed, and
    its margin 0 is an unknown."""

    margin: torch.Tensor
    upper: torch.Tensor
    p_clean: torch.Tensor
    robust_clean: torch.Tensor
    capped: torch.Tensor
    mode: str
    r: torch.Tensor
    eps_max: float
    n_attacks: int
    tolerance: torch.Tensor | None = None
    upper_confirmed: torch.Tensor | None = None
    preset: str = ""
    decoder_rows: int = 0
    alpha: float = ALPHA
    sequential: bool = True
    delta: torch.Tensor | None = None
    not_robust_clean: torch.Tensor | None = None


def legacy_attack(*, norm: str = "l2", mode: str = "full", steps: int | None = None, restarts: int | None = None,
                  eta_samples: int | None = None, generator: torch.Generator | None = None) -> EnsembleAttack:
    """The old keyword arguments (steps, restarts, eta_samples) as an ensemble: one APGD stage on the
    damage (eta_samples = 0) or the expected damage (K = eta_samples draws) with ``restarts`` random
    rows besides the singular and warm starts, then the cheap preset's probability stage."""
    steps = 40 if steps is None else int(steps)
    restarts = 2 if restarts is None else int(restarts)
    k = 4 if eta_samples is None else int(eta_samples)
    first = Stage("expected" if k > 0 else "damage", steps, draws=k, random=max(restarts - 1, 0),
                  starts=("singular", "warm"))
    return EnsembleAttack("legacy", stages=(first,) + tuple(s for s in PRESETS["cheap"] if s.needs_r), norm=norm,
                          mode=mode, generator=generator)


def empirical_margin(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    attack: EnsembleAttack | None = None,
    *,
    mode: str = "full",
    eps_max: float | None = None,
    eps_init: float | torch.Tensor | None = None,
    tol: float = MARGIN_TOL,
    max_iter: int = 40,
    n_samples: int = N_SAMPLES,
    alpha: float = ALPHA,
    sequential: bool = True,
    max_unsettled: int = 2,
    norm: str | None = None,
    steps: int | None = None,
    restarts: int | None = None,
    eta_samples: int | None = None,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MarginResult:
    """R_hat_r(x) for x [B, *shape] (see the module docstring) -> MarginResult.

    r: a number or a [B] tensor.  attack: an attack object called as
    ``attack(model, x, eps, r=r, warm_start=delta, mode=mode, generator=g)`` returning an object with
    ``.delta`` (default ``EnsembleAttack("cheap", norm=norm)``).  eps_init: the first budget tried (a
    number or [B]; default r; a Theorem 1 bound is a good choice; r where it is not finite and > 0).
    eps_max: the cap (default: the
    box diameter).  tol: relative bracket width (default MARGIN_TOL = 0.05, as ``robvae margin``; the
    margin is the bracket's lower end, so a wider bracket only understates it).  n_samples: the most
    draws of eta per decision (default N_SAMPLES = 1,000, as ``robvae margin``).  generator: the
    random stream (None: torch's global one, so two calls differ; the CLI seeds with ``--seed``).
    alpha: error level of each decision.  sequential=False: the old fixed-sample decisions
    (n_samples draws, p > 1/2), kept for comparison.  max_unsettled: unsettled decisions after which
    an input stops refining (more: a narrower tolerance for more draws).
    progress: called as ``progress(attacks_so_far, inputs_attacked)`` after every attack (each
    doubling and bisection step), e.g. to move a progress bar.
    Deprecated: steps / restarts / eta_samples / step_size (use ``attack=``); when given without
    ``attack`` they build :func:`legacy_attack` (APGD needs no step size: step_size is ignored).
    """
    if mode not in ("full", "mean"):
        raise ValueError(f"unknown mode {mode!r}; choose 'full' or 'mean'")
    check_positive(tol, "tol")
    check_count(n_samples, 1, "n_samples")
    check_count(max_iter, 1, "max_iter")
    check_count(max_unsettled, 0, "max_unsettled")
    check_level(alpha, "alpha")
    if eps_max is not None:
        check_positive(eps_max, "eps_max")
    check_x(model, x)
    if isinstance(attack, str):  # a preset's name, as robvae margin --attack-preset takes it
        if attack not in PRESETS:
            raise InputError(f"attack={attack!r}: an attack object, or a preset name ({', '.join(PRESETS)})")
        attack = EnsembleAttack(attack, norm=norm or "l2", mode=mode)
    given_norm = getattr(attack, "norm", None) if attack is not None else None
    if norm is not None and given_norm is not None and get_norm(given_norm).name != get_norm(norm).name:
        raise InputError(f"norm={norm!r} but the attack given attacks in {get_norm(given_norm).name!r}: "
                         "the budgets are the attack's; give one of the two")
    norm = norm or "l2"
    legacy = {k: v for k, v in dict(steps=steps, restarts=restarts, eta_samples=eta_samples,
                                    step_size=step_size).items() if v is not None}
    if legacy and attack is not None:  # they were ignored, with only the deprecation warning
        raise InputError(f"{', '.join(legacy)}: settings of the deprecated built-in attack; with attack= give them "
                         "to the attack object")
    if legacy:
        warnings.warn(f"empirical_margin({', '.join(legacy)}=...) is deprecated: pass attack=EnsembleAttack(...)",
                      DeprecationWarning, stacklevel=2)
        if attack is None:
            attack = legacy_attack(norm=norm, mode=mode, steps=steps, restarts=restarts, eta_samples=eta_samples)
    if attack is None:
        attack = EnsembleAttack("cheap", norm=norm, mode=mode)
    B = x.shape[0]
    col = (-1, *[1] * (x.dim() - 1))  # a per-input [B] tensor as a view broadcasting against x
    rt = as_radius(r, B, x)
    nrm = getattr(attack, "norm", None) or get_norm(norm)
    cap = float(eps_max) if eps_max is not None else nrm.diameter(x[0].numel())
    # the largest budget the inputs' dtype holds at or below the cap: a bfloat16 search capped at
    # 0.3 tested (and reported) 0.30078, the pixel box's 9.798 as 9.8125
    cap = float(rounded(torch.tensor(cap, dtype=torch.float64), x.dtype, down=True))
    seed = child_seed(generator)
    streams = iter(range(1, 1 << 30))

    def fresh() -> torch.Generator:  # an independent stream per use: decisions never reuse draws
        return torch.Generator().manual_seed(seed + 7919 * next(streams))

    rows_used = 0
    n_attacks = 0
    n_max = int(n_samples)

    def decide(idx: torch.Tensor, delta: torch.Tensor | None, n_first: int = 64,
               n_cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(decision int [len(idx)]: +1 robust / -1 not / 0 unsettled, p estimate) on fresh draws."""
        nonlocal rows_used
        xs = x[idx]
        if sequential:
            res = sequential_robustness(model, xs, rt[idx], delta, alpha=alpha, n_max=n_cap or n_max, n_first=n_first,
                                        mode=mode, generator=fresh())
            rows_used += int(res.n_samples.sum())
            return res.decision.to(torch.int8), res.p
        est = r_robustness(model, xs, rt[idx], delta, n_max, mode=mode, generator=fresh())
        rows_used += n_max * len(idx)
        return torch.where(est.p > 0.5, 1, -1).to(torch.int8).to(x.device), est.p

    def attack_at(eps: torch.Tensor, rows: torch.Tensor, warm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attack the inputs ``rows`` (bool [B]) at budgets eps [B] from ``warm`` [B, *shape];
        -> (decision int8 [B] (0 elsewhere), delta [B, *shape])."""
        nonlocal rows_used, n_attacks
        dec = torch.zeros(B, dtype=torch.int8, device=x.device)
        delta = torch.zeros_like(x)
        idx = rows.nonzero().flatten()
        if idx.numel() == 0:
            return dec, delta
        n_attacks += 1
        res = attack(model, x[idx], eps[idx], r=rt[idx], warm_start=warm[idx], mode=mode, generator=fresh())
        rows_used += int(getattr(res, "decoder_rows", 0))
        d = res.delta.detach()
        dec[idx], _ = decide(idx, d)
        delta[idx] = d
        if progress is not None:
            progress(n_attacks, int(idx.numel()))
        return dec, delta

    def scaled(d: torch.Tensor, frm: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
        """d found at budget ``frm`` rescaled to budget ``to`` (per input; zeros stay zeros). Scaling
        in keeps x + d in the box (a convex combination of x and x + d)."""
        f = torch.where(frm > 0, to / frm.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(to))
        return d * f.view(col)

    # 1. clean
    dec0, p_clean = decide(torch.arange(B, device=x.device), None, n_first=min(1000, n_max))
    robust_clean = dec0 == 1
    zeros = torch.zeros(B, dtype=x.dtype, device=x.device)
    inf = torch.full_like(zeros, math.inf)
    # state per input: lo (robust, settled), hi_conf (NOT robust, settled), and the band [u_lo, u_hi]
    # of budgets whose decision was unsettled (inf when none); perturbations d_lo, d_conf, d_u.
    lo, lo_prev = zeros.clone(), zeros.clone()
    hi_conf, u_lo, u_hi = inf.clone(), inf.clone(), inf.clone()
    d_lo, d_conf, d_u = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    unsettled = torch.zeros(B, dtype=torch.long, device=x.device)
    init = rt if eps_init is None else torch.as_tensor(eps_init, dtype=x.dtype, device=x.device)
    if init.dim() > 1 or init.numel() not in (1, B):
        raise InputError(f"eps_init must be a number or a tensor of shape [{B}], got shape {tuple(init.shape)}")
    init = init.expand(B)  # a budget that is not finite and > 0 (a Theorem 1 bound of 0 or inf): r instead
    init = torch.where(torch.isfinite(init) & (init > 0), init, rt).clamp(max=cap)

    def warm_at(eps: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """The warm start at budget eps: the non-robust (or unsettled) perturbation of the smallest such
        budget above eps, scaled in to eps; ``fallback`` where there is none."""
        use_u = torch.isfinite(u_lo) & (u_lo > eps) & (u_lo < hi_conf)
        b = torch.where(use_u, u_lo, hi_conf)
        d_b = torch.where(use_u.view(col), d_u, d_conf)
        bad = torch.isfinite(b)
        return torch.where(bad.view(col), scaled(d_b, torch.where(bad, b, eps), eps), fallback)

    def record(rows: torch.Tensor, eps: torch.Tensor, dec: torch.Tensor, delta: torch.Tensor) -> None:
        """Fold the decisions at eps into the state, keeping it monotone: a robust decision above an
        unsettled budget is not believed (it only narrows the band)."""
        nonlocal lo, lo_prev, hi_conf, u_lo, u_hi, d_lo, d_conf, d_u, unsettled
        below_band = eps < u_lo
        rob = rows & (dec == 1) & below_band
        lo_prev = torch.where(rob, lo, lo_prev)
        lo = torch.where(rob, eps, lo)
        d_lo = torch.where(rob.view(col), delta, d_lo)
        conf = rows & (dec == -1)
        hi_conf = torch.where(conf, eps, hi_conf)
        d_conf = torch.where(conf.view(col), delta, d_conf)
        gone = conf & (u_lo >= eps)  # the band lies above the new hi_conf: forget it
        clip = conf & (u_lo < eps) & (u_hi >= eps)
        u_lo, u_hi = torch.where(gone, inf, u_lo), torch.where(gone, inf, torch.where(clip, u_lo, u_hi))
        und = rows & ((dec == 0) | ((dec == 1) & ~below_band))
        new_lo = und & (eps < u_lo)
        u_lo = torch.where(new_lo, eps, u_lo)
        d_u = torch.where(new_lo.view(col), delta, d_u)
        u_hi = torch.where(und, torch.where(torch.isfinite(u_hi), torch.maximum(u_hi, eps), eps), u_hi)
        unsettled = unsettled + (rows & (dec == 0)).long()

    # 2. bracket: double the budget until the attack breaks robustness (settled or not)
    capped = torch.zeros_like(robust_clean)
    hi = init.clone()
    open_ = robust_clean.clone()
    n_double = max(1, math.ceil(math.log2(cap / float(hi[open_].min()))) + 2) if open_.any() else 0
    for _ in range(n_double):
        if not open_.any():
            break
        dec, delta = attack_at(hi, open_, scaled(d_lo, lo, hi))
        record(open_, hi.clone(), dec, delta)
        rob = open_ & (dec == 1)
        at_cap = rob & (hi >= cap)
        capped |= at_cap
        grow = rob & ~at_cap
        hi = torch.where(grow, (2 * hi).clamp(max=cap), hi)
        open_ = grow
    capped |= open_  # safety: never bracketed within the iteration budget
    search = robust_clean & ~capped

    # 3. bisection of the gaps below and above the unsettled band, 5. verification
    def refine() -> None:
        for _ in range(max_iter):
            top = torch.where(torch.isfinite(hi_conf), hi_conf, torch.full_like(hi_conf, cap))
            has_band = torch.isfinite(u_lo)
            g_low = torch.where(has_band, u_lo, top) - lo
            g_up = torch.where(has_band, top - u_hi, zeros)
            # above the band with no settled non-robust budget yet: keep doubling towards the cap
            up_open = has_band & ~torch.isfinite(hi_conf) & (u_hi < cap)
            g_up = torch.where(up_open, top - u_hi, g_up)
            scale = torch.where(torch.isfinite(hi_conf), hi_conf, torch.where(has_band, u_hi, top))
            # a gap narrower than half the unsettled band cannot shrink the tolerance much: stop there
            band = torch.where(has_band, u_hi - u_lo, zeros)
            need = torch.maximum(tol * scale, 0.5 * band)
            # nothing settled robust yet (lo = 0): the band rule would leave the input without a
            # margin at all, so bisect below the band until a budget settles or the gap is tol-narrow
            go_low = g_low > torch.where(lo > 0, need, tol * scale)
            go_up = g_up > need
            # (and two more unsettled decisions allowed for that, below the band only: p_r(x) nears
            # p_clean as the budget shrinks; above it they could never give a margin)
            room = unsettled < max_unsettled
            go_low = go_low & (room | ((lo == 0) & (unsettled < max_unsettled + 2)))
            go_up = go_up & room
            active = search & (go_low | go_up)
            if not active.any():
                return
            low_side = go_low & (~go_up | (g_low >= g_up) | ~room)
            mid_low = 0.5 * (lo + torch.where(has_band, u_lo, top))
            mid_up = torch.where(up_open, torch.minimum(2 * u_hi, top), 0.5 * (u_hi + top))
            mid = torch.where(low_side, mid_low, mid_up)
            dec, delta = attack_at(mid, active, warm_at(mid, scaled(d_lo, lo, mid)))
            record(active, mid, dec, delta)

    # up to 4 rounds of refine + verify (a failed lo falls back to the previous robust budget and
    # the search resumes). After the 4th refine the margin must be a budget decided robust and
    # re-decided so: an input whose lo was not verified yet is verified; one that fails falls back
    # to the last budget it passed a verification at (below lo), else to its previous robust
    # budget (decided once: one more pass needed), else to VERIFY_BACKOFF x lo (new: two passes),
    # for at most VERIFY_EXTRA more attack runs; an input left without one gets 0 (an unknown).
    verified = torch.full_like(lo, math.nan)  # the budget each input's last verification passed at
    need = torch.zeros_like(lo)  # passes still needed at lo (after the 4th refine)
    for round_ in range(4 + VERIFY_EXTRA):
        if round_ < 4:
            refine()
        if round_ == 3:  # a lo the 4th refine moved (or a fallen-back one) has not been re-decided
            need = torch.where(search & (lo > 0) & (lo != verified), torch.ones_like(need), zeros)
        check = search & (lo > 0) & ((need > 0) if round_ >= 3 else True)
        if not check.any():
            break
        dec, delta = attack_at(lo, check, warm_at(lo, d_lo))
        failed = check & (dec != 1)
        passed = check & ~failed
        if round_ >= 3:
            need = torch.where(passed, need - 1, need)
            verified = torch.where(passed & (need == 0), lo, verified)
        else:
            verified = torch.where(passed, lo, verified)
        if not failed.any():
            if round_ < 3:
                break
            continue
        failed_lo = lo.clone()
        if round_ < 3:  # the search resumes from the previous robust budget
            lo = torch.where(failed, lo_prev, lo)
        else:
            back = torch.isfinite(verified) & (verified < lo)
            prev = ~back & (lo_prev > 0)
            lo = torch.where(failed, torch.where(back, verified, torch.where(prev, lo_prev, VERIFY_BACKOFF * lo)), lo)
            need = torch.where(failed, torch.where(back, zeros, torch.where(prev, torch.ones_like(need),
                                                                            torch.full_like(need, 2.0))), need)
        lo_prev = torch.where(failed, zeros, lo_prev)
        record(failed, failed_lo, dec, delta)
        unsettled = torch.where(failed, torch.zeros_like(unsettled), unsettled)

    left = search & (need > 0)  # ran out of verifications
    lo = torch.where(left, torch.where(torch.isfinite(verified) & (verified < lo), verified, zeros), lo)

    # the settled non-robust perturbation at hi_conf, re-tested on fresh draws
    confirmed = torch.zeros_like(robust_clean)
    idx = (search & torch.isfinite(hi_conf)).nonzero().flatten()
    if idx.numel():
        dec, _ = decide(idx, d_conf[idx], n_cap=max(n_max // 4, 1))
        confirmed[idx] = dec == -1

    hi = torch.where(torch.isfinite(u_lo), torch.minimum(u_lo, hi_conf), hi_conf)
    hi = torch.where(torch.isfinite(hi), hi, torch.full_like(hi, cap))
    d_hi = torch.where((torch.isfinite(u_lo) & (u_lo < hi_conf)).view(col), d_u, d_conf)
    margin = torch.where(capped, torch.full_like(lo, cap), lo)
    margin = torch.where(robust_clean, margin, zeros)
    upper = torch.where(capped, torch.full_like(hi, cap), hi)
    upper = torch.where(robust_clean, upper, zeros)
    tolerance = torch.where(torch.isfinite(hi_conf), hi_conf, torch.full_like(hi_conf, cap)) - lo
    tolerance = torch.where(search, tolerance.clamp_min(0), zeros)
    preset = getattr(attack, "preset", type(attack).__name__)
    return MarginResult(margin=margin, upper=upper, p_clean=p_clean.to(x.dtype), robust_clean=robust_clean,
                        not_robust_clean=dec0 == -1,
                        capped=capped, mode=mode, r=rt, eps_max=cap, n_attacks=n_attacks, tolerance=tolerance,
                        upper_confirmed=confirmed, preset=str(preset), decoder_rows=rows_used, alpha=float(alpha),
                        sequential=bool(sequential), delta=torch.where(search.view(col), d_hi, torch.zeros_like(d_hi)))
