"""The paper's studies (docs/THEORY.md sections 1 and 7), each a function returning tables and writing CSV tables,
PNG figures, ``summary.json`` and ``study.json`` into one output folder.

- :func:`bound_vs_margin` — Theorem 1 bound (and variants) vs the empirical margin;
- :func:`beta_study` — margin, damage, sigma, Jacobian norm, certified radius vs beta;
- :func:`tau_study` — the variance-offset study and the minimum-r effect;
- :func:`theorem2_study` — the closed-form beta-VAE optimum vs a trained linear encoder;
- the statistics they use live in :mod:`robvae.stats` (re-exported here for old callers).
"""

from .experiments import Executor, TrainOptions, beta_study, bound_vs_margin, make_train_config, tau_study
from ..stats import count_above, describe, least_squares, pearson, quartiles, spearman
from .theorem2 import Theorem2Config, exact_optimum, theorem2_study, train_linear_encoder

__all__ = [
    "bound_vs_margin", "beta_study", "tau_study", "theorem2_study", "Theorem2Config", "exact_optimum",
    "train_linear_encoder", "TrainOptions", "Executor", "make_train_config",
    "pearson", "spearman", "least_squares", "quartiles", "count_above", "describe",
]
