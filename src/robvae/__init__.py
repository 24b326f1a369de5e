"""robvae: train VAEs, certify their r-robustness (Camuto et al., AISTATS 2021), attack them.

The public API, imported statically (``__all__`` is the README's API table; a test keeps them
equal). Everything else lives in the subpackages, by layer (see docs and tests/test_layers.py).
"""

from __future__ import annotations

import os as _os
import sys as _sys

# first, before anything here loads torch: OpenMP reads its wait policy once, when torch loads
# (robvae.threads; the robvae command relies on it; an OMP_WAIT_POLICY the user set is kept)
from .threads import prefer_passive_wait as _prefer_passive_wait

_prefer_passive_wait()

from ._version import __version__  # noqa: E402
from .errors import CheckpointError, DataError, InputError, RobvaeError  # noqa: E402

try:  # the imports that load torch and scipy (seconds): Ctrl-C while the robvae command starts is one line
    from .attacks import EnsembleAttack, MaxDamageAttack, latent_attack, max_damage_attack, output_attack
    from .data import ImageDataset, load_dataset
    from .evaluation import EvalConfig, EvalResult, EvalSummary, evaluate
    from .metrics import likelihood_degradation
    from .models import VAE, LinearVAE, ModelConfig, VAEProtocol
    from .objectives import ObjectiveConfig
    from .robustness import Certificate, CertifyConfig, certify, empirical_margin, jacobian_norm, r_min, r_robustness
    from .robustness.lipschitz import lipschitz_bound
    from .stats import BoundStats, bound_stats
    from .training import TrainConfig, load, train
    from .validation import ModelCheck, check_model
except KeyboardInterrupt:
    _orig = list(getattr(_sys, "orig_argv", []) or [])
    if _os.path.basename(_sys.argv[0] if _sys.argv else "") in ("robvae", "robvae.exe") or any(
            a == "-m" and b in ("robvae", "robvae.cli") for a, b in zip(_orig, _orig[1:])):  # the command
        _sys.stderr.write("robvae: interrupted (nothing was written; rerun the command to start again)\n")
        raise SystemExit(130) from None  # (a library import keeps Python's KeyboardInterrupt)
    raise

__all__ = [
    # models and data
    "VAE", "ModelConfig", "LinearVAE", "VAEProtocol", "load_dataset", "ImageDataset",
    # training
    "ObjectiveConfig", "TrainConfig", "train", "load",
    # robustness
    "r_robustness", "r_min", "jacobian_norm", "certify", "Certificate", "CertifyConfig", "empirical_margin",
    "lipschitz_bound", "check_model", "ModelCheck",
    # attacks and metrics
    "max_damage_attack", "latent_attack", "output_attack", "MaxDamageAttack", "EnsembleAttack",
    "likelihood_degradation",
    # evaluation and statistics
    "evaluate", "EvalConfig", "EvalResult", "EvalSummary", "bound_stats", "BoundStats",
    # errors
    "RobvaeError", "DataError", "CheckpointError", "InputError",
]
