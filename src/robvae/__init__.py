"""robvae: train VAEs, certify their r-robustness (Camuto et al., AISTATS 2021), attack them.

The public API is re-exported here lazily (importing robvae stays cheap).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "VAE": "robvae.models", "ModelConfig": "robvae.models", "LinearVAE": "robvae.models",
    "VAEProtocol": "robvae.models",
    # data
    "load_dataset": "robvae.data", "ImageDataset": "robvae.data",
    # objectives and training
    "ObjectiveConfig": "robvae.objectives", "TrainConfig": "robvae.training", "train": "robvae.training",
    "load": "robvae.training",
    # robustness
    "r_robustness": "robvae.robustness", "r_min": "robvae.robustness", "jacobian_norm": "robvae.robustness",
    "certify": "robvae.robustness", "empirical_margin": "robvae.robustness",
    # attacks and metrics
    "max_damage_attack": "robvae.attacks", "latent_attack": "robvae.attacks", "output_attack": "robvae.attacks",
    "likelihood_degradation": "robvae.metrics",
    # errors
    "RobvaeError": "robvae.errors", "DataError": "robvae.errors", "CheckpointError": "robvae.errors",
    "InputError": "robvae.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
