"""Damage and quality measures (SPEC 5).

- reconstruction_error(x)      = ||g(mu(x)) - x||
- reconstruction_damage(x, d)  = ||g(mu(x + d)) - g(mu(x))||
- likelihood_degradation(x, d) = |log p(x|z*) - log p(x|z)| / |log p(x|z)|,  z = mu(x), z* = mu(x + d)
"""

from __future__ import annotations

import torch

from .errors import RobvaeError
from .models.fast_decode import flat_decode
from .validation import check_delta, check_x


def reconstruction_error(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||g(mu(x)) - x|| per input: x [B, *shape] -> [B]."""
    check_x(model, x)
    with torch.inference_mode():
        return (flat_decode(model, model.encode(x)[0]) - x.flatten(1)).norm(dim=1)


def reconstruction_damage(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """||g(mu(x + delta)) - g(mu(x))|| per input: x, delta [B, *shape] -> [B]."""
    check_x(model, x)
    delta = check_delta(x, delta)
    with torch.inference_mode():
        return (flat_decode(model, model.encode(x + delta)[0]) - flat_decode(model, model.encode(x)[0])).norm(dim=1)


def likelihood_degradation(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """|log p(x|z*) - log p(x|z)| / |log p(x|z)| with z = mu(x), z* = mu(x + delta): -> [B].

    Needs ``model.log_likelihood(x, z) -> [B]`` (log p(x|z) summed over pixels); the likelihood
    is always of the clean x.
    """
    if not callable(getattr(model, "log_likelihood", None)):
        raise RobvaeError(
            f"likelihood_degradation needs a model with log_likelihood(x, z) -> [B] (log p(x|z)); "
            f"{type(model).__name__} has none"
        )
    check_x(model, x)
    delta = check_delta(x, delta)
    with torch.inference_mode():
        z = model.encode(x)[0]
        z_adv = model.encode(x + delta)[0]
        ll, ll_adv = model.log_likelihood(x, z), model.log_likelihood(x, z_adv)
    return (ll_adv - ll).abs() / ll.abs()


__all__ = ["reconstruction_error", "reconstruction_damage", "likelihood_degradation"]
