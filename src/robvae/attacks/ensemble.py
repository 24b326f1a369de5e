"""A parameter-free attack ensemble for VAEs, in the spirit of AutoAttack (Croce and Hein 2020).

``EnsembleAttack(preset="cheap" | "strong")(model, x, eps, r=None, warm_start=None) -> AttackResult``
(foolbox style: the settings live in the object, the model and the inputs are call arguments).

Each preset is a list of stages; a stage runs APGD (:func:`robvae.attacks.pgd.apgd`) on one
objective (:func:`robvae.attacks.objectives.ensemble_objective`: deterministic damage, the paper's
expected damage (eq. 5), a smoothed p_r with common random numbers, the latent KL) from several
starts at once, as batch rows: the top right-singular direction of the Jacobian of x -> g(mu(x))
(both signs), random points in the ball, a warm start passed in, and the best perturbation of the
stages before. After every stage each input keeps the best candidate under the attack's target:

- target "damage" (default without r): the deterministic damage ||g(mu(x+delta)) - g(mu(x))||;
- target "expected": the expected damage on fresh draws of eta (the same draws for every candidate);
- target "p" (default with r): the lowest p_r(x, delta) on fresh draws (common random numbers),
  ties broken by the expected damage.

The result carries the deterministic AND the expected damage, the preset and which objective
produced each input's best perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.fast_decode import flat_decode
from ..rng import randn
from ..errors import InputError
from ..validation import as_radius, check_count, check_x, checked_encode
from .objectives import OBJECTIVES, RowCounter, ensemble_objective
from .pgd import _rows, apgd, as_eps, feasible, get_norm
from .starts import top_singular_direction

TARGETS = ("damage", "expected", "p")


@dataclass(frozen=True)
class Stage:
    """One APGD run: ``objective`` (see OBJECTIVES), ``steps``, ``draws`` K of eta (fixed for the run),
    ``random`` random start rows, and which other starts to use ("singular": +-eps v_1, "warm": the
    warm start passed in, "best": the best candidate of the stages before)."""

    objective: str
    steps: int
    draws: int = 0
    random: int = 0
    starts: tuple[str, ...] = ("singular", "warm")
    needs_r: bool = False


PRESETS: dict[str, tuple[Stage, ...]] = {
    # no costlier than the old default (40 PGD steps, 1 restart, 1 draw): 20 steps from the better
    # of the singular directions (or the warm start), then 12 steps on p_r when r is given
    "cheap": (
        Stage("damage", 20, starts=("best",)),
        Stage("p", 12, draws=8, starts=("best",), needs_r=True),
    ),
    "strong": (
        Stage("damage", 80, random=6, starts=("singular", "warm")),
        Stage("kl", 30, random=1, starts=("singular",)),
        Stage("expected", 50, draws=8, random=1, starts=("best", "singular", "warm")),
        Stage("p", 60, draws=16, random=1, starts=("best", "singular", "warm"), needs_r=True),
        Stage("p", 40, draws=32, starts=("best",), needs_r=True),
    ),
}
POWER_ITERS = {"cheap": 4, "strong": 20}
EVAL_DRAWS = {"cheap": 64, "strong": 256}


@dataclass
class AttackResult:
    """delta [B, *shape]: the best perturbation per input (||delta|| <= eps, x + delta in [0, 1]).
    damage [B]: ||g(mu(x+delta)) - g(mu(x))|| (deterministic).  expected_damage [B]: the paper's
    eq. 5, mean over ``eval_draws`` fresh draws of eta (sigma follows ``mode``).  p [B] or None:
    p_r(x, delta) on those draws (when r was given).  objective: per input, the stage objective that
    produced delta ("start" if no stage beat the warm start).  preset, target, mode: as run.
    decoder_rows: latent vectors decoded."""

    delta: torch.Tensor
    damage: torch.Tensor
    expected_damage: torch.Tensor
    p: torch.Tensor | None
    objective: list[str]
    preset: str
    target: str
    mode: str
    decoder_rows: int = 0
    eval_draws: int = 0
    extra: dict = field(default_factory=dict)


class EnsembleAttack:
    """The default attack for reported damages and margins (see the module docstring).

    preset: "cheap" (studies; no slower than the old 40-step PGD default) or "strong" (final
    numbers), or ``stages`` (a tuple of :class:`Stage`) for a custom ensemble (preset names it).
    norm: "l2" or "linf".  mode: "full" (sigma(x+delta), the default) or "mean" (sigma(x)).
    target: "damage" / "expected" / "p" (default: "p" when the call passes r, else "damage").
    eval_draws: fresh draws of eta for judging candidates (target "expected" / "p") and the reported
    expected damage (default 64 for "cheap", 256 for "strong").
    generator: the random stream (random starts, draws).
    """

    def __init__(
        self, preset: str = "cheap", *, norm: str = "l2", mode: str = "full", target: str | None = None,
        stages: tuple[Stage, ...] | None = None, eval_draws: int | None = None, power_iters: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if stages is None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if mode not in ("full", "mean"):
            raise ValueError(f"unknown mode {mode!r}; choose 'full' or 'mean'")
        if target is not None and target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        self.stages = tuple(stages) if stages is not None else PRESETS[preset]
        for st in self.stages:
            if st.objective not in OBJECTIVES:
                raise ValueError(f"unknown objective {st.objective!r}")
        self.preset = preset
        self.norm = get_norm(norm)
        self.mode = mode
        self.target = target
        self.eval_draws = check_count(eval_draws if eval_draws is not None else EVAL_DRAWS.get(preset, 128), 1,
                                      "eval_draws")
        self.power_iters = check_count(power_iters if power_iters is not None else POWER_ITERS.get(preset, 10), 1,
                                       "power_iters")
        self.generator = generator
        self.decoder_rows = 0  # cumulative over calls

    def __repr__(self) -> str:
        return f"EnsembleAttack(preset={self.preset!r}, norm={self.norm.name!r}, mode={self.mode!r})"

    # -- judging -------------------------------------------------------------------------------
    def _judge(self, model, x, cands: torch.Tensor, eta: torch.Tensor, r, target: str, mode: str,
               counter: RowCounter, final: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """cands [C, B, *shape] -> (score [C, B] (higher = stronger), damage, expected, p) each [C, B]
        (target "damage" draws no eta unless ``final``)."""
        C, B = cands.shape[0], x.shape[0]
        with torch.inference_mode():
            # checked: a sigma that overflows away from the clean inputs gave NaN damages, written
            # with exit status 0 (robvae margin refused the same model); copies for decode, which
            # may edit its argument, while mu stays the centre of the draws below
            mu0, sigma0 = checked_encode(model, x)
            ref = flat_decode(model, mu0.clone())
            mu, sigma = checked_encode(model, (x.unsqueeze(0) + cands).flatten(0, 1))
            d, D, K = mu.shape[1], ref.shape[1], eta.shape[2]
            damage = (flat_decode(model, mu.clone()).view(C, B, D) - ref).norm(dim=-1)
            counter.add(B + C * B)
            if not bool(torch.isfinite(damage).all()):
                raise InputError("model.decode returned NaN or inf at g(mu(x)) or at an attacked input's g(mu(x + "
                                 "delta)): robvae measures distances between finite reconstructions")
            if target == "damage" and not final:
                return damage, damage, damage, None
            s = sigma.view(C, B, 1, d) if mode == "full" else sigma0.view(1, B, 1, d)
            z = (mu.view(C, B, 1, d) + eta * s).reshape(C * B * K, d)
            norms = (flat_decode(model, z).view(C, B, K, D) - ref[None, :, None, :]).norm(dim=-1)
            counter.add(C * B * K)
            if not bool(torch.isfinite(norms).all()):
                raise InputError("model.decode returned NaN or inf at an attacked input's latent draws: robvae "
                                 "measures distances between finite reconstructions")
            expected = norms.mean(-1)
            p = None
            if r is not None:
                p = (norms <= r.view(1, B, 1)).to(x.dtype).mean(-1)
        if target == "damage":
            score = damage
        elif target == "expected":
            score = expected
        else:
            scale = expected.amax(0, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
            score = -p + 1e-3 * expected / scale  # lowest p; the expected damage breaks ties
        return score, damage, expected, p

    # -- the attack ----------------------------------------------------------------------------
    def __call__(
        self, model: torch.nn.Module, x: torch.Tensor, eps: float | torch.Tensor, *, r: float | torch.Tensor | None = None,
        warm_start: torch.Tensor | None = None, mode: str | None = None, target: str | None = None,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack x [B, *shape] at budget eps (a number or [B]); r (a number or [B]) enables the
        probability stages; warm_start [B, *shape] (projected into the ball) is one more start."""
        check_x(model, x)
        mode = mode or self.mode
        g = generator if generator is not None else self.generator
        B = x.shape[0]
        eps_b = as_eps(eps, B, x)
        if not torch.isfinite(eps_b).all():
            raise ValueError("the ensemble attack needs a finite budget eps")
        rt = None if r is None else as_radius(r, B, x)  # rounded down to x's dtype, as every estimator
        if target is not None and target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if warm_start is not None and tuple(warm_start.shape) != tuple(x.shape):
            raise ValueError(f"warm_start has shape {tuple(warm_start.shape)}, x has {tuple(x.shape)}")
        target = target or self.target or ("p" if rt is not None else "damage")
        if target == "p" and rt is None:
            raise ValueError("target 'p' needs the radius r")
        counter = RowCounter()
        e = _rows(eps_b, x)
        x = x.detach()
        v, _ = top_singular_direction(model, x, iters=self.power_iters, generator=g, counter=counter)
        singular = [feasible(x, v * e, eps_b, self.norm), feasible(x, -v * e, eps_b, self.norm)]
        warm = [] if warm_start is None else [feasible(x, warm_start.detach().to(x.dtype), eps_b, self.norm)]
        with torch.inference_mode():
            eta = randn((1, B, self.eval_draws, model.encode(x[:1])[0].shape[1]), x, g)
        # the incumbent: the best of the singular (and warm) starts
        cands = torch.stack(singular + warm)
        score, *_ = self._judge(model, x, cands, eta, rt, target, mode, counter)
        i = score.argmax(0)
        idx = torch.arange(B, device=x.device)
        best, best_score = cands[i, idx], score[i, idx]
        origin = torch.full((B,), -1, dtype=torch.long, device=x.device)  # stage index; -1: a start
        for k, st in enumerate(self.stages):
            if st.needs_r and rt is None:
                continue
            pools = {"singular": singular, "warm": warm, "best": [best]}
            starts = [s for name in st.starts for s in pools[name]]
            f = ensemble_objective(st.objective, model, x, mode=mode, draws=st.draws, r=rt, generator=g,
                                   counter=counter)
            res = apgd(f, x, eps_b, norm=self.norm, steps=st.steps, starts=torch.stack(starts) if starts else None,
                       restarts=st.random, random_start=st.random > 0, generator=g)
            sc, *_ = self._judge(model, x, res.delta.unsqueeze(0), eta, rt, target, mode, counter)
            better = sc[0] > best_score
            best = torch.where(_rows(better, best), res.delta, best)
            best_score = torch.where(better, sc[0], best_score)
            origin = torch.where(better, torch.full_like(origin, k), origin)
        _, damage, expected, p = self._judge(model, x, best.unsqueeze(0), eta, rt, target, mode, counter, final=True)
        self.decoder_rows += counter.rows
        return AttackResult(delta=best, damage=damage[0], expected_damage=expected[0], p=None if p is None else p[0],
                            objective=[self.stages[k].objective if k >= 0 else "start" for k in origin.tolist()],
                            preset=self.preset, target=target, mode=mode,
                            decoder_rows=counter.rows, eval_draws=int(eta.shape[2]))

    run = __call__
