"""The maximum-damage, latent and output attacks over the PGD engine (docs/THEORY.md section 5).

Foolbox style (the project's style, as :class:`robvae.attacks.EnsembleAttack`): the settings live
in the object, the model, the inputs and the budget are call arguments, and the call returns a
:class:`PGDResult` (``.delta`` and ``.value``, the best objective value per input)::

    atk = MaxDamageAttack(norm="linf", steps=40, generator=g)
    res = atk(model, x, eps)                       # also: r=, warm_start=, mode=, generator=
    res = LatentAttack(c=0.01)(model, x, eps, x_target=xt)
    robvae.empirical_margin(model, x, r, attack=MaxDamageAttack(eta_samples=0))

One object serves any number of models: a foolbox-style call never changes the object's stored
model or eps. A call is foolbox style when its first positional argument is a model (a
``torch.nn.Module``, or any non-tensor with ``encode`` and ``decode``).

The torchattacks style is kept: ``MaxDamageAttack(model, eps)(x) -> delta``,
``LatentAttack(model, eps)(x, x_target) -> delta``, ``OutputAttack(model, eps)(x, x_target) -> delta``;
``.run(...)`` returns the PGDResult. With the same seeded generator both styles give identical
deltas. Every delta satisfies ||delta|| <= eps per input and x + delta in [0, 1]. eps may be a
number or a per-input [B] tensor; None (targeted attacks only) means the pixel box alone, the
norm penalty c ||delta|| then keeping delta small.
"""

from __future__ import annotations

import torch

from ..validation import check_count, check_x
from .objectives import latent_objective, max_damage_objective, output_objective
from .pgd import PGDResult, _rows, as_eps, get_norm, pgd
from .starts import top_singular_direction


def _is_model(obj: object) -> bool:
    """A robvae model (foolbox-style first argument) rather than the inputs x."""
    if isinstance(obj, torch.nn.Module):
        return True
    return not isinstance(obj, torch.Tensor) and hasattr(obj, "encode") and hasattr(obj, "decode")


class _PGDAttack:
    """Shared settings: the optional bound model and budget eps (torchattacks style), norm ("l2" or
    "linf"), steps, restarts, step size, random start, generator."""

    _bound_call = "(x)"  # how a torchattacks-style call looks, for error messages
    _free_call = "(model, x, eps)"

    def __init__(
        self, model: torch.nn.Module | None = None, eps: float | torch.Tensor | None = None, *, norm: str = "l2",
        steps: int = 40, restarts: int = 1, step_size: float | torch.Tensor | None = None, random_start: bool = True,
        generator: torch.Generator | None = None,
    ):
        self._check_model(model)
        self.model = model
        self.eps = eps
        self.norm = get_norm(norm)
        self.steps = check_count(steps, 0, "steps")  # (2.7 ran 2 steps, "10" was accepted; 0: the starts only)
        self.restarts = check_count(restarts, 1, "restarts")
        self.step_size = step_size
        self.random_start = random_start
        self.generator = generator

    def _check_model(self, model: object) -> None:
        if model is not None and not _is_model(model):
            name = type(self).__name__
            raise ValueError(f"{name}: model must be a robvae model (encode / decode), got "
                             f"{type(model).__name__}; to attack inputs call {name}(...){self._free_call}")

    def __repr__(self) -> str:
        bound = "" if self.model is None else f"model={type(self.model).__name__}, "
        return (f"{type(self).__name__}({bound}eps={self.eps!r}, norm={self.norm.name!r}, steps={self.steps}, "
                f"restarts={self.restarts})")

    def _bound_model(self) -> torch.nn.Module:
        """The model given at construction, for a torchattacks-style call."""
        if self.model is None:
            name = type(self).__name__
            raise ValueError(
                f"{name} was built without a model: call it foolbox style, {name}(...){self._free_call} -> "
                f"PGDResult, or build it torchattacks style, {name}(model, eps, ...){self._bound_call} -> delta")
        return self.model

    def _pgd(self, objective, x: torch.Tensor, eps: float | torch.Tensor | None, init: torch.Tensor | None = None,
             *, generator: torch.Generator | None = None, warm_start: torch.Tensor | None = None) -> PGDResult:
        """The PGD run of the object's settings; ``warm_start`` [B, *shape] is one more restart
        (started there, made feasible), after the usual ones: each input keeps the better of the two
        runs, so the value is never below the run without it (for a deterministic objective)."""
        g = self.generator if generator is None else generator
        res = pgd(objective, x, eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                  restarts=self.restarts, random_start=self.random_start, generator=g, init=init)
        if warm_start is None:
            return res
        if warm_start.shape != x.shape:
            raise ValueError(f"warm_start has shape {tuple(warm_start.shape)}, x has {tuple(x.shape)}")
        warm = pgd(objective, x, eps, norm=self.norm, steps=self.steps, step_size=self.step_size, restarts=1,
                   random_start=False, generator=g, init=warm_start.detach().to(device=x.device, dtype=x.dtype))
        if getattr(objective, "deterministic", True):
            v_main, v_warm = res.value, warm.value
        else:  # noisy values (fresh draws per call): compare the two candidates on common draws
            with torch.no_grad():
                v_main, v_warm = objective(torch.stack([x + res.delta, x + warm.delta])).detach()
        better = v_warm > v_main
        return PGDResult(delta=torch.where(_rows(better, x), warm.delta, res.delta),
                         value=torch.where(better, v_warm, v_main))


class MaxDamageAttack(_PGDAttack):
    """delta* = argmax_{||delta|| <= eps, x+delta in [0,1]} E_eta ||g(mu(x+delta) + eta s) - g(mu(x))||.

    Foolbox style: ``MaxDamageAttack(norm=..., steps=..., ...)(model, x, eps, *, r=None,
    warm_start=None, mode=None, generator=None) -> PGDResult`` (the keyword interface of
    :class:`robvae.attacks.EnsembleAttack`, so the object can be passed as ``attack=`` to
    :func:`robvae.empirical_margin`). Torchattacks style (kept): ``MaxDamageAttack(model, eps,
    ...)(x, eps=None) -> delta`` and ``.run(x, eps=None) -> PGDResult``.

    s = sigma(x + delta) (``mode="full"``, the paper's maximum-damage attack) or sigma(x) (``mode="mean"``); the
    expectation is a mean over ``eta_samples`` = K draws per step (K = 0: eta = 0, a deterministic objective).
    ``random_start=False`` starts every restart at eps times the top right-singular direction of
    the Jacobian of x -> g(mu(x)) (deterministic; delta = 0 itself never moves, its gradient being 0).
    The budget eps may be given at construction or at the call (the call's wins); a run without
    any raises ValueError. An object built with a model (torchattacks style) needs its eps there,
    as before. For reported damages prefer :class:`robvae.attacks.EnsembleAttack`.
    """

    def __init__(self, model: torch.nn.Module | None = None, eps: float | torch.Tensor | None = None, *,
                 eta_samples: int = 1, mode: str = "full", **kwargs):
        self._check_model(model)
        if model is not None and eps is None:
            raise ValueError("the maximum-damage attack needs a budget eps: MaxDamageAttack(model, eps)(x), "
                             "or without a model MaxDamageAttack(...)(model, x, eps)")
        super().__init__(model, eps, **kwargs)
        self.eta_samples = int(eta_samples)
        self.mode = mode

    def _attack(self, model: torch.nn.Module, x: torch.Tensor, eps: float | torch.Tensor | None, *,
                warm_start: torch.Tensor | None = None, mode: str | None = None,
                generator: torch.Generator | None = None) -> PGDResult:
        eps = self.eps if eps is None else eps
        if eps is None:
            raise ValueError("the maximum-damage attack needs a budget eps: pass it at the call, "
                             "attack(model, x, eps), or at construction, MaxDamageAttack(eps=...)")
        check_x(model, x)
        if not bool(torch.isfinite(as_eps(eps, x.shape[0], x)).all()):  # (as the ensemble attack)
            raise ValueError("the maximum-damage attack needs a finite budget eps (an infinite one starts at "
                             "delta = 0, a stationary point of the damage, and stays there)")
        g = self.generator if generator is None else generator
        f = max_damage_objective(model, x, eta_samples=self.eta_samples, mode=mode or self.mode, generator=g)
        init = None
        if not self.random_start:  # delta = 0 is a stationary point of the damage: start along J's top direction
            v, _ = top_singular_direction(model, x, iters=10)
            init = v * as_eps(eps, x.shape[0], x).view(-1, *[1] * (x.dim() - 1))
        return self._pgd(f, x, eps, init, generator=g, warm_start=warm_start)

    def attack(self, model: torch.nn.Module, x: torch.Tensor, eps: float | torch.Tensor | None = None, *,
               r: float | torch.Tensor | None = None, warm_start: torch.Tensor | None = None, mode: str | None = None,
               generator: torch.Generator | None = None) -> PGDResult:
        """Foolbox style: attack ``model`` at x [B, *shape] with budget eps (a number or [B]; default the
        object's eps) -> PGDResult(delta [B, *shape], value = the damage objective [B]).

        r: accepted for the interface of EnsembleAttack / empirical_margin, and not used (the damage
        objective has no radius). warm_start [B, *shape]: one more restart started there (made
        feasible); each input keeps the better run, so with ``eta_samples=0`` the value is at least
        the objective at the (feasible) warm start and at least the value without it (same seed).
        mode: overrides the object's mode for this call. generator: overrides the object's generator.
        The object's stored model and eps are left as they are."""
        del r  # the damage objective has no radius
        return self._attack(model, x, eps, warm_start=warm_start, mode=mode, generator=generator)

    def run(self, *args, **kwargs) -> PGDResult:
        """``run(model, x, eps, ...)`` (foolbox style, see :meth:`attack`) or ``run(x, eps=None)``
        (the model given at construction) -> PGDResult(delta [B, *shape], value = the damage objective [B])."""
        if (args and _is_model(args[0])) or "model" in kwargs:
            return self.attack(*args, **kwargs)
        return self._run_bound(*args, **kwargs)

    def _run_bound(self, x: torch.Tensor, eps: float | torch.Tensor | None = None) -> PGDResult:
        return self._attack(self._bound_model(), x, eps)

    def __call__(self, *args, **kwargs) -> PGDResult | torch.Tensor:
        """``(model, x, eps, *, r=None, warm_start=None, mode=None, generator=None) -> PGDResult``
        (foolbox style) or ``(x, eps=None) -> delta`` (the model given at construction)."""
        if (args and _is_model(args[0])) or "model" in kwargs:
            return self.attack(*args, **kwargs)
        return self._run_bound(*args, **kwargs).delta


class _TargetedAttack(_PGDAttack):
    """An attack towards ``x_target``: foolbox style ``(model, x, eps, *, x_target) -> PGDResult``;
    torchattacks style ``run(x, x_target)`` / ``(x, x_target) -> delta``."""

    _bound_call = "(x, x_target)"
    _free_call = "(model, x, eps, x_target=...)"

    def _attack(self, model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor,
                eps: float | torch.Tensor | None, *, warm_start: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> PGDResult:
        check_x(model, x)
        check_x(model, x_target, "x_target")
        if x_target.shape[0] != x.shape[0]:
            raise ValueError(f"x_target has {x_target.shape[0]} inputs, x has {x.shape[0]}")
        return self._pgd(self._objective(model, x, x_target), x, eps, generator=generator, warm_start=warm_start)

    def attack(self, model: torch.nn.Module, x: torch.Tensor, eps: float | torch.Tensor | None = None, *,
               x_target: torch.Tensor | None = None, warm_start: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> PGDResult:
        """Foolbox style: attack ``model`` at x [B, *shape] towards ``x_target`` [B, *shape] (required)
        with budget eps (a number or [B]; None or left out: the object's eps, and when that is None
        too, the pixel box alone)
        -> PGDResult(delta, value = minus the attack's loss [B]). warm_start [B, *shape]: one more
        restart started there; generator: overrides the object's. The object's stored model and eps
        are left as they are."""
        if x_target is None:
            name = type(self).__name__
            raise ValueError(f"{name}: a foolbox-style call needs the target as a keyword, "
                             f"{name}(...)(model, x, eps, x_target=x_target)")
        return self._attack(model, x, x_target, self.eps if eps is None else eps, warm_start=warm_start,
                            generator=generator)

    def run(self, *args, **kwargs) -> PGDResult:
        """``run(model, x, eps, *, x_target)`` (foolbox style, see :meth:`attack`) or
        ``run(x, x_target)`` (the model and eps given at construction)
        -> PGDResult(delta, value = minus the loss [B])."""
        if (args and _is_model(args[0])) or "model" in kwargs:
            return self.attack(*args, **kwargs)
        return self._run_bound(*args, **kwargs)

    def _run_bound(self, x: torch.Tensor, x_target: torch.Tensor) -> PGDResult:
        return self._attack(self._bound_model(), x, x_target, self.eps)

    def __call__(self, *args, **kwargs) -> PGDResult | torch.Tensor:
        """``(model, x, eps, *, x_target, warm_start=None, generator=None) -> PGDResult`` (foolbox style)
        or ``(x, x_target) -> delta`` (the model given at construction)."""
        if (args and _is_model(args[0])) or "model" in kwargs:
            return self.attack(*args, **kwargs)
        return self._run_bound(*args, **kwargs).delta


class LatentAttack(_TargetedAttack):
    """delta* = argmin_{||delta|| <= eps} D(q(z|x+delta), q(z|x_target)) + c ||delta||.

    Foolbox style: ``LatentAttack(c=..., distance=..., ...)(model, x, eps, x_target=xt) -> PGDResult``.
    Torchattacks style (kept): ``LatentAttack(model, eps, ...)(x, x_target) -> delta``.
    D is the KL divergence (``distance="kl"``) or the distance of the means (``"mean"``).
    The result is PGDResult(delta, value = -(D + c ||delta||) [B]).
    """

    def __init__(self, model: torch.nn.Module | None = None, eps: float | torch.Tensor | None = None, *,
                 c: float = 0.0, distance: str = "kl", **kwargs):
        super().__init__(model, eps, **kwargs)
        self.c, self.distance = float(c), distance

    def _objective(self, model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor):
        return latent_objective(model, x, x_target, distance=self.distance, c=self.c, norm=self.norm)


class OutputAttack(_TargetedAttack):
    """delta* = argmin_{||delta|| <= eps} ||g(mu(x+delta)) - y|| + c ||delta||, y = g(mu(x_target))
    (``match="reconstruction"``) or x_target (``match="image"``).

    Foolbox style: ``OutputAttack(c=..., match=..., ...)(model, x, eps, x_target=xt) -> PGDResult``.
    Torchattacks style (kept): ``OutputAttack(model, eps, ...)(x, x_target) -> delta``.
    The result is PGDResult(delta, value = -(||g(mu(x+delta)) - y|| + c ||delta||) [B])."""

    def __init__(self, model: torch.nn.Module | None = None, eps: float | torch.Tensor | None = None, *,
                 c: float = 0.0, match: str = "reconstruction", **kwargs):
        super().__init__(model, eps, **kwargs)
        self.c, self.match = float(c), match

    def _objective(self, model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor):
        return output_objective(model, x, x_target, match=self.match, c=self.c, norm=self.norm)


def max_damage_attack(
    model: torch.nn.Module, x: torch.Tensor, eps: float | torch.Tensor, *, norm: str = "l2", steps: int = 40,
    restarts: int = 1, eta_samples: int = 1, mode: str = "full", step_size: float | torch.Tensor | None = None,
    random_start: bool = True, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The maximum-damage perturbation delta [B, *shape] (see :class:`MaxDamageAttack`)."""
    return MaxDamageAttack(model, eps, norm=norm, steps=steps, restarts=restarts, eta_samples=eta_samples, mode=mode,
                           step_size=step_size, random_start=random_start, generator=generator)(x)


def latent_attack(
    model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor, eps: float | torch.Tensor | None = None, *,
    c: float = 0.0, distance: str = "kl", norm: str = "l2", steps: int = 100, restarts: int = 1,
    step_size: float | torch.Tensor | None = None, random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The latent-attack perturbation delta [B, *shape] (see :class:`LatentAttack`)."""
    return LatentAttack(model, eps, c=c, distance=distance, norm=norm, steps=steps, restarts=restarts,
                        step_size=step_size, random_start=random_start, generator=generator)(x, x_target)


def output_attack(
    model: torch.nn.Module, x: torch.Tensor, x_target: torch.Tensor, eps: float | torch.Tensor | None = None, *,
    c: float = 0.0, match: str = "reconstruction", norm: str = "l2", steps: int = 100, restarts: int = 1,
    step_size: float | torch.Tensor | None = None, random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The output-attack perturbation delta [B, *shape] (see :class:`OutputAttack`)."""
    return OutputAttack(model, eps, c=c, match=match, norm=norm, steps=steps, restarts=restarts,
                        step_size=step_size, random_start=random_start, generator=generator)(x, x_target)
