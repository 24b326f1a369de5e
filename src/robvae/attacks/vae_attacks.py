"""torchattacks-style attack classes and functional forms over the PGD engine (docs/THEORY.md section 5).

``MaxDamageAttack(model, eps)(x) -> delta``; ``LatentAttack(model, eps)(x, x_target) -> delta``;
``OutputAttack(model, eps)(x, x_target) -> delta``. ``.run(...)`` returns a :class:`PGDResult`
(delta and the best objective value). Every delta satisfies ||delta|| <= eps per input and
x + delta in [0, 1]. eps may be a number or a per-input [B] tensor; None (targeted attacks only)
means the pixel box alone, the norm penalty c ||delta|| then keeping delta small.
"""

from __future__ import annotations

import torch

from ..validation import check_x
from .objectives import latent_objective, max_damage_objective, output_objective
from .pgd import PGDResult, as_eps, get_norm, pgd
from .starts import top_singular_direction


class _PGDAttack:
    """Shared settings: budget eps, norm ("l2" or "linf"), steps, restarts, step size, generator."""

    def __init__(
        self, model: torch.nn.Module, eps: float | torch.Tensor | None, *, norm: str = "l2", steps: int = 40,
        restarts: int = 1, step_size: float | torch.Tensor | None = None, random_start: bool = True,
        generator: torch.Generator | None = None,
    ):
        self.model = model
        self.eps = eps
        self.norm = get_norm(norm)
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.step_size = step_size
        self.random_start = random_start
        self.generator = generator

    def _pgd(self, objective, x: torch.Tensor, eps: float | torch.Tensor | None,
             init: torch.Tensor | None = None) -> PGDResult:
        return pgd(objective, x, eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                   restarts=self.restarts, random_start=self.random_start, generator=self.generator, init=init)


class MaxDamageAttack(_PGDAttack):
    """delta* = argmax_{||delta|| <= eps, x+delta in [0,1]} E_eta ||g(mu(x+delta) + eta s) - g(mu(x))||.

    s = sigma(x + delta) (``mode="full"``, the paper's maximum-damage attack) or sigma(x) (``mode="mean"``); the
    expectation is a mean over ``eta_samples`` = K draws per step (K = 0: eta = 0).
    ``random_start=False`` starts every restart at eps times the top right-singular direction of
    the Jacobian of x -> g(mu(x)) (deterministic; delta = 0 itself never moves, its gradient being 0).
    For reported damages prefer :class:`robvae.attacks.EnsembleAttack`.
    """

    def __init__(self, model: torch.nn.Module, eps: float | torch.Tensor, *, eta_samples: int = 1,
                 mode: str = "full", **kwargs):
        if eps is None:
            raise ValueError("the maximum-damage attack needs a budget eps")
        super().__init__(model, eps, **kwargs)
        self.eta_samples = int(eta_samples)
        self.mode = mode

    def run(self, x: torch.Tensor, eps: float | torch.Tensor | None = None) -> PGDResult:
        """x [B, *shape] -> PGDResult(delta [B, *shape], value = the damage objective [B])."""
        check_x(self.model, x)
        f = max_damage_objective(self.model, x, eta_samples=self.eta_samples, mode=self.mode, generator=self.generator)
        eps = self.eps if eps is None else eps
        init = None
        if not self.random_start:  # delta = 0 is a stationary point of the damage: start along J's top direction
            v, _ = top_singular_direction(self.model, x, iters=10)
            init = v * as_eps(eps, x.shape[0], x).view(-1, *[1] * (x.dim() - 1))
        return self._pgd(f, x, eps, init)

    def __call__(self, x: torch.Tensor, eps: float | torch.Tensor | None = None) -> torch.Tensor:
        return self.run(x, eps).delta


class _TargetedAttack(_PGDAttack):
    """An attack towards ``x_target``: ``run(x, x_target)`` / ``(x, x_target) -> delta``."""

    def run(self, x: torch.Tensor, x_target: torch.Tensor) -> PGDResult:
        """-> PGDResult(delta, value = minus the attack's loss [B])."""
        check_x(self.model, x)
        check_x(self.model, x_target, "x_target")
        if x_target.shape[0] != x.shape[0]:
            raise ValueError(f"x_target has {x_target.shape[0]} inputs, x has {x.shape[0]}")
        return self._pgd(self._objective(x, x_target), x, self.eps)

    def __call__(self, x: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
        return self.run(x, x_target).delta


class LatentAttack(_TargetedAttack):
    """delta* = argmin_{||delta|| <= eps} D(q(z|x+delta), q(z|x_target)) + c ||delta||.

    D is the KL divergence (``distance="kl"``) or the distance of the means (``"mean"``).
    ``run`` returns PGDResult(delta, value = -(D + c ||delta||) [B]).
    """

    def __init__(self, model: torch.nn.Module, eps: float | torch.Tensor | None = None, *, c: float = 0.0,
                 distance: str = "kl", **kwargs):
        super().__init__(model, eps, **kwargs)
        self.c, self.distance = float(c), distance

    def _objective(self, x: torch.Tensor, x_target: torch.Tensor):
        return latent_objective(self.model, x, x_target, distance=self.distance, c=self.c, norm=self.norm)


class OutputAttack(_TargetedAttack):
    """delta* = argmin_{||delta|| <= eps} ||g(mu(x+delta)) - y|| + c ||delta||, y = g(mu(x_target))
    (``match="reconstruction"``) or x_target (``match="image"``). ``run`` returns
    PGDResult(delta, value = -(||g(mu(x+delta)) - y|| + c ||delta||) [B])."""

    def __init__(self, model: torch.nn.Module, eps: float | torch.Tensor | None = None, *, c: float = 0.0,
                 match: str = "reconstruction", **kwargs):
        super().__init__(model, eps, **kwargs)
        self.c, self.match = float(c), match

    def _objective(self, x: torch.Tensor, x_target: torch.Tensor):
        return output_objective(self.model, x, x_target, match=self.match, c=self.c, norm=self.norm)


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
