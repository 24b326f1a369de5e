"""One projected-gradient engine for L2 and L-inf balls inside the [0, 1] pixel box (docs/THEORY.md section 5).

The loop lives here once; each norm is a small class with its own random start, steepest-ascent
direction and ball projection (the layout of foolbox's gradient-descent attacks). Objectives are
callables ``f(x_adv [R, B, *shape]) -> [R, B]`` to MAXIMISE (optionally with the attribute
``deterministic = False`` when every call draws fresh noise) (targeted attacks return a negated
loss); R restarts are extra batch rows, never a Python loop per image or per restart.

Feasibility: after every step delta <- box(ball(delta)), where ball() is the norm's projection
and box(delta) = clip(x + delta, 0, 1) - x. Since x lies in [0, 1], the box step only shrinks
each |delta_j|, so both ||delta|| <= eps and x + delta in [0, 1] hold after it (up to rounding,
which a final shrink removes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..rng import rand, randn
from ..errors import InputError
from ..validation import check_count, rounded

Objective = Callable[[torch.Tensor], torch.Tensor]


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, ..., 1] broadcasting against ``like`` [N, *shape]."""
    return v.view(-1, *[1] * (like.dim() - 1))


def unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row of v [N, *shape] divided by its Euclidean norm (rows of zeros stay zero)."""
    return v / _rows(v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny), v)


class Norm:
    """An attack norm: ||delta||, a random start inside the ball, the ascent direction, the projection."""

    name = "norm"

    def diameter(self, D: int) -> float:
        """The largest possible ||delta|| inside the unit box of dimension D."""
        raise NotImplementedError

    def default_step(self, scale: torch.Tensor, steps: int) -> torch.Tensor:
        """The default step size for a budget ``scale`` [N] (eps, or the diameter when unbounded)."""
        return 2.5 * scale / max(steps, 1)

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """[N, *shape] -> [N]."""
        raise NotImplementedError

    def random_start(self, delta_like: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A uniform draw inside the ball of radius eps [N] (0 where eps is infinite)."""
        raise NotImplementedError

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent unit step for the gradient ``grad`` [N, *shape]."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Projection onto {||delta|| <= eps} (eps [N], possibly inf)."""
        raise NotImplementedError


class L2(Norm):
    """||delta||_2; start uniform in the ball (radius eps * U^(1/D)); step g/||g||; radial projection."""

    name = "l2"

    def diameter(self, D: int) -> float:
        return math.sqrt(D)

    def default_step(self, scale: torch.Tensor, steps: int) -> torch.Tensor:
        """eps / 4: normalised-gradient ascent on the sphere then moves like a damped power
        iteration (2.5 eps / steps, the L-inf habit, converges far too slowly on the sphere)."""
        return torch.maximum(0.25 * scale, 2.5 * scale / max(steps, 1))

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(dim=1)

    def random_start(self, delta_like, eps, generator):
        N, D = delta_like.shape[0], delta_like[0].numel()
        g = randn(delta_like.shape, delta_like, generator)
        radius = torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps)) * rand((N,), delta_like, generator) ** (1.0 / D)
        return g * _rows(radius / self.norm(g).clamp_min(torch.finfo(g.dtype).tiny), g)

    def direction(self, grad):
        return unit_rows(grad)

    def project(self, delta, eps):
        n = self.norm(delta)
        factor = torch.where(n > eps, eps / n.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(n))
        return delta * _rows(factor, delta)


class Linf(Norm):
    """||delta||_inf; start uniform in the cube; step sign(g); coordinate-wise clipping."""

    name = "linf"

    def diameter(self, D: int) -> float:
        return 1.0

    def norm(self, delta):
        return delta.flatten(1).abs().amax(dim=1)

    def random_start(self, delta_like, eps, generator):
        e = _rows(torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps)), delta_like)
        return (2 * rand(delta_like.shape, delta_like, generator) - 1) * e

    def direction(self, grad):
        return grad.sign()

    def project(self, delta, eps):
        e = _rows(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)


NORMS: dict[str, type[Norm]] = {"l2": L2, "linf": Linf}


def get_norm(norm: str | Norm) -> Norm:
    if isinstance(norm, Norm):
        return norm
    key = str(norm).lower().replace("-", "").replace("_", "")
    aliases = {"l2": "l2", "2": "l2", "linf": "linf", "inf": "linf", "linfinity": "linf"}
    if key not in aliases:
        raise ValueError(f"unknown norm {norm!r}; choose 'l2' or 'linf'")
    return NORMS[aliases[key]]()


def box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """clip(x + delta, 0, 1) - x: keeps x + delta in the pixel box, shrinking every |delta_j|.

    Rounded towards x in every coordinate: x + delta rounded to nearest in x's dtype can land
    farther from x than delta reaches (by half an ulp of x: in bfloat16 a step of 1e-3 from 0.5
    became 0.004), which made short perturbations exceed their budget. The sum is formed in
    float64, stepped back towards x where rounding overshot, and the difference rounded towards 0,
    so |box(x, delta)_j| <= |delta_j| for every j."""
    w = torch.float64
    xw, dw = x.to(w), delta.to(w)
    y = (xw + dw).clamp(0.0, 1.0)
    yt = y.to(x.dtype)
    yt = torch.where((yt.to(w) - xw).abs() > dw.abs(), torch.nextafter(yt, x.expand_as(yt)), yt)
    exact = yt.to(w) - xw
    out = exact.to(x.dtype)
    return torch.where(out.to(w).abs() > exact.abs(), torch.nextafter(out, torch.zeros_like(out)), out)


def feasible(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """box(ball(delta)), then shrink the rows that the projection's rounding pushed past eps,
    judged by their norm in float64 (:func:`box` itself never lengthens a coordinate)."""
    d = box(x, norm.project(delta, eps))
    tiny = 8 * torch.finfo(d.dtype).eps
    wide = torch.float64  # the norm of the delta as stored, not its rounding in d's dtype
    for _ in range(8):
        n = norm.norm(d.to(wide))
        over = n > eps.to(wide)
        if not bool(over.any()):
            break
        factor = torch.where(over, eps.to(wide) / n.clamp_min(torch.finfo(wide).tiny) * (1 - tiny), torch.ones_like(n))
        d = box(x, d * _rows(factor.to(d.dtype), d))
    return d


def as_eps(eps: float | torch.Tensor | None, batch: int, like: torch.Tensor, name: str = "eps") -> torch.Tensor:
    """A budget (a number, a [B] tensor or None = unbounded) as a [B] tensor; eps >= 0 (``name``:
    the argument the errors name)."""
    if eps is None:
        return torch.full((batch,), math.inf, dtype=like.dtype, device=like.device)
    # a number (or a tensor of another dtype) is rounded down to like's dtype, so no perturbation
    # exceeds the budget asked for (float32: 0.3 -> 0.29999998; bfloat16: 0.2988, never 0.30078)
    e = torch.as_tensor(eps, device=like.device, dtype=torch.float64) if not isinstance(eps, torch.Tensor) else eps
    e = e.to(like.device) if e.dtype == like.dtype else rounded(e.to(like.device, torch.float64), like.dtype, down=True)
    if e.dim() == 0:
        e = e.expand(batch)
    if e.shape != (batch,):
        raise ValueError(f"{name} must be a number or a tensor of shape [{batch}], got shape {tuple(e.shape)}")
    if torch.isnan(e).any() or (e < 0).any():
        raise ValueError(f"{name} must be >= 0")
    return e.clone()


@dataclass
class PGDResult:
    """delta [B, *shape]: the best restart's perturbation; value [B]: its objective (maximised)."""

    delta: torch.Tensor
    value: torch.Tensor


def _best_rows(delta: torch.Tensor, value: torch.Tensor, R: int) -> PGDResult:
    """The best of R rows per input: delta [R * B, *shape], value [R * B] (restart-major)."""
    B = value.shape[0] // R
    best = value.view(R, B).argmax(dim=0)  # [B]
    idx = torch.arange(B, device=value.device)
    return PGDResult(delta=delta.view(R, B, *delta.shape[1:])[best, idx].detach(), value=value.view(R, B)[best, idx])


def _value_grad(objective: Objective, xr: torch.Tensor, d: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective at x + d (rows [R * B, *shape]) and its gradient in d (NaN -> 0), both detached."""
    d = d.detach().requires_grad_(True)
    v = objective((xr + d).view(R, xr.shape[0] // R, *xr.shape[1:])).reshape(-1)
    if not v.requires_grad:  # the objective does not depend on the input (a constant model): no gradient
        return v.detach(), torch.zeros_like(d)
    (g,) = torch.autograd.grad(v.sum(), d, allow_unused=True)
    return v.detach(), torch.zeros_like(d) if g is None else torch.nan_to_num(g.detach())


def pgd(
    objective: Objective,
    x: torch.Tensor,
    eps: float | torch.Tensor | None,
    *,
    norm: str | Norm = "l2",
    steps: int = 40,
    step_size: float | torch.Tensor | None = None,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
) -> PGDResult:
    """Projected gradient ascent: maximise ``objective`` over {||delta|| <= eps, x + delta in [0, 1]}.

    x: [B, *shape] in [0, 1]; eps: a number or a per-input [B] tensor (None: the box only).
    Each of ``steps`` iterations: delta <- feasible(delta + step_size * direction(grad)).
    step_size (a number or [B]) defaults to eps / 4 for L2 and 2.5 * eps / steps for L-inf
    (0.25 * box diameter / steps when unbounded). ``restarts`` R >= 1 start points per input, random inside the ball (or
    all at delta = 0 when ``random_start`` is False). For a deterministic objective the iterate
    with the largest value seen over steps and restarts is kept; an objective with the attribute
    ``deterministic = False`` (fresh eta draws per call) keeps each restart's last iterate and the
    restart with the largest final value, so noisy values do not select lucky draws step by step. The objective receives x + delta of shape [R, B, *shape] and returns [R, B].
    ``init`` [B, *shape]: the start of every restart instead of delta = 0 when ``random_start`` is
    False (e.g. the top singular direction; at delta = 0 the damage gradient vanishes).
    """
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    nrm = get_norm(norm)
    B, shape = x.shape[0], tuple(x.shape[1:])
    R = int(restarts)
    track = bool(getattr(objective, "deterministic", True))
    eps_b = as_eps(eps, B, x)
    if step_size is None:
        finite = torch.isfinite(eps_b)
        unbounded = torch.full_like(eps_b, 0.25 * nrm.diameter(x[0].numel()) / max(steps, 1))
        alpha_b = torch.where(finite, nrm.default_step(torch.where(finite, eps_b, 0 * eps_b), steps), unbounded)
    else:
        alpha_b = as_eps(step_size, B, x, "step_size")
    with torch.inference_mode(False), torch.enable_grad():
        xr = x.detach().repeat(R, *[1] * len(shape))  # R copies, restart-major
        eps_r, alpha_r = eps_b.repeat(R), alpha_b.repeat(R)
        delta = torch.zeros_like(xr)
        if random_start:
            delta = nrm.random_start(delta, eps_r, generator)
        elif init is not None:
            delta = init.detach().to(x.dtype).repeat(R, *[1] * len(shape))
        delta = feasible(xr, delta, eps_r, nrm)
        best_delta = delta.clone()
        best_value = torch.full((R * B,), -math.inf, dtype=x.dtype, device=x.device)
        for _ in range(steps):
            value, grad = _value_grad(objective, xr, delta, R)
            with torch.no_grad():
                better = (value > best_value) if track else torch.zeros_like(best_value, dtype=torch.bool)
                best_value = torch.where(better, value, best_value)
                best_delta = torch.where(_rows(better, delta), delta, best_delta)
                delta = feasible(xr, delta + _rows(alpha_r, delta) * nrm.direction(grad), eps_r, nrm)
        with torch.no_grad():
            value = objective((xr + delta).view(R, B, *shape)).detach().reshape(R * B)
            better = (value > best_value) | ~torch.tensor(track, device=x.device)
            best_value = torch.where(better, value, best_value)
            best_delta = torch.where(_rows(better, delta), delta, best_delta)
    return _best_rows(best_delta, best_value, R)


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints (Croce and Hein 2020): w_j = ceil(p_j * steps), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(round(q * steps, 9)) for q in p if 0 < q < 1})


def apgd(
    objective: Objective,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    norm: str | Norm = "l2",
    steps: int = 50,
    starts: torch.Tensor | None = None,
    restarts: int = 1,
    random_start: bool = True,
    momentum: float = 0.75,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
) -> PGDResult:
    """Auto-PGD (Croce and Hein 2020): maximise ``objective`` over {||delta|| <= eps, x + delta in [0, 1]}
    with no step size to tune.

    Rows: the given ``starts`` [S, B, *shape] (made feasible) and ``restarts`` random starts inside the
    ball (when ``random_start``), all as extra batch rows of one objective call per step. Step size
    eta = 2 eps (L2) or 2 eps (L-inf), halved at the checkpoints (:func:`apgd_checkpoints`) of a row
    where fewer than ``rho`` of the steps since the last checkpoint increased the objective, or where
    neither eta nor the best value changed since it; a halving restarts that row from its best
    point. Each step: z = P(x_k + eta * direction(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)
    (x_k - x_{k-1})) with a = ``momentum`` (a = 1 on the first step). The best iterate per row is
    kept (the objective must be deterministic, e.g. with fixed draws), and the best row per input
    returned.
    """
    check_count(steps, 0, "steps")
    check_count(restarts, 0, "restarts")
    if not (0 <= rho <= 1 and 0 < momentum <= 1):  # a share of steps, and a convex weight
        raise InputError(f"apgd needs 0 <= rho <= 1 and 0 < momentum <= 1, got rho={rho}, momentum={momentum}")
    nrm = get_norm(norm)
    B, shape = x.shape[0], tuple(x.shape[1:])
    eps_b = as_eps(eps, B, x)
    if not torch.isfinite(eps_b).all():
        raise ValueError("apgd needs a finite budget eps")
    rows = [] if starts is None else [s for s in starts.to(x.dtype)]
    n_rand = int(restarts) if random_start else 0
    if not rows and n_rand == 0:
        n_rand = 1  # one row at delta = 0 (random_start False, no starts)
    R = len(rows) + n_rand
    with torch.inference_mode(False), torch.enable_grad():
        xr = x.detach().repeat(R, *[1] * len(shape))  # R copies, restart-major
        eps_r = eps_b.repeat(R)
        extra = torch.zeros((n_rand * B, *shape), dtype=x.dtype, device=x.device)
        if random_start and n_rand:
            extra = nrm.random_start(extra, eps_r[len(rows) * B:], generator)
        delta = torch.cat([s.detach().clone().reshape(B, *shape) for s in rows] + [extra], dim=0)
        delta = feasible(xr, delta, eps_r, nrm)
        eta = 2.0 * eps_r
        value, grad = _value_grad(objective, xr, delta, R)
        best_value, best_delta, best_grad = value.clone(), delta.clone(), grad.clone()
        prev = delta.clone()
        checkpoints = set(apgd_checkpoints(steps))
        last_cp, n_up = 0, torch.zeros(R * B, device=x.device)
        eta_cp, best_cp = eta.clone(), best_value.clone()
        for k in range(steps):
            with torch.no_grad():
                z = feasible(xr, delta + _rows(eta, delta) * nrm.direction(grad), eps_r, nrm)
                a = 1.0 if k == 0 else momentum
                new = feasible(xr, delta + a * (z - delta) + (1 - a) * (delta - prev), eps_r, nrm)
            prev = delta
            new_value, grad = _value_grad(objective, xr, new, R)
            with torch.no_grad():
                n_up += (new_value > value).to(n_up.dtype)
                better = new_value > best_value
                best_value = torch.where(better, new_value, best_value)
                best_delta = torch.where(_rows(better, new), new, best_delta)
                best_grad = torch.where(_rows(better, new), grad, best_grad)
                delta, value = new, new_value
                if k + 1 in checkpoints:
                    span = k + 1 - last_cp
                    halve = (n_up < rho * span) | ((eta == eta_cp) & (best_value == best_cp))
                    eta_cp = eta.clone()
                    eta = torch.where(halve, eta / 2, eta)
                    hrow = _rows(halve, delta)
                    delta = torch.where(hrow, best_delta, delta)
                    prev = torch.where(hrow, best_delta, prev)
                    value = torch.where(halve, best_value, value)
                    grad = torch.where(hrow, best_grad, grad)
                    best_cp, last_cp = best_value.clone(), k + 1
                    n_up.zero_()
    return _best_rows(best_delta, best_value, R)
