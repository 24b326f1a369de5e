"""Attacks on VAEs: PGD and APGD engines (L2 / L-inf balls inside the [0, 1] box), their
objectives, and the parameter-free ensemble (EnsembleAttack) used for reported damages and margins."""

from .ensemble import PRESETS, AttackResult, EnsembleAttack, Stage
from .objectives import (
    OBJECTIVES,
    RowCounter,
    ensemble_objective,
    gaussian_kl,
    latent_objective,
    max_damage_objective,
    output_objective,
)
from .pgd import L2, Linf, Norm, PGDResult, apgd, feasible, get_norm, pgd
from .starts import top_singular_direction
from .vae_attacks import (
    LatentAttack,
    MaxDamageAttack,
    OutputAttack,
    latent_attack,
    max_damage_attack,
    output_attack,
)

__all__ = [
    "EnsembleAttack", "AttackResult", "Stage", "PRESETS", "apgd", "top_singular_direction", "ensemble_objective",
    "OBJECTIVES", "RowCounter",
    "pgd", "PGDResult", "Norm", "L2", "Linf", "get_norm", "feasible",
    "max_damage_objective", "latent_objective", "output_objective", "gaussian_kl",
    "MaxDamageAttack", "LatentAttack", "OutputAttack", "max_damage_attack", "latent_attack", "output_attack",
]
