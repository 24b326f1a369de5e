"""Attacks on VAEs: one PGD engine (L2 / L-inf balls inside the [0, 1] box) and its objectives."""

from .objectives import gaussian_kl, latent_objective, max_damage_objective, output_objective
from .pgd import L2, Linf, Norm, PGDResult, feasible, get_norm, pgd
from .vae_attacks import (
    LatentAttack,
    MaxDamageAttack,
    OutputAttack,
    latent_attack,
    max_damage_attack,
    output_attack,
)

__all__ = [
    "pgd", "PGDResult", "Norm", "L2", "Linf", "get_norm", "feasible",
    "max_damage_objective", "latent_objective", "output_objective", "gaussian_kl",
    "MaxDamageAttack", "LatentAttack", "OutputAttack", "max_damage_attack", "latent_attack", "output_attack",
]
