"""The demo: train a VAE on the embedded digits, certify it, attack it, find empirical margins.

Everything lands in ``out``: ``run/`` (the trained model's run folder) and ``eval/`` (per-input
CSV, summary JSON and the evaluation config), so a rerun resumes instead of recomputing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .evaluation import EvalConfig, EvalSummary, evaluate
from .models import ModelConfig
from .report.figures import save_reconstructions
from .objectives import ObjectiveConfig
from .training import TrainConfig, train


def demo_table(summary: EvalSummary, config: EvalConfig) -> list[tuple[str, str]]:
    """The demo's one table: (quantity, value) rows from an evaluation summary."""
    t1 = summary.bounds["theorem1"]
    rig = summary.rigorous_vs_margin
    med = summary.median
    return [
        ("inputs (digits test set)", f"{summary.n}"),
        ("radius r (1.5 x median r_min)", f"{float(summary.r):.4f}"),
        ("p_r(x), median", f"{med('p'):.3f}"),
        ("not r-robust even unperturbed", f"{summary.n_not_robust_clean}"),
        ("Theorem 1 radius, median", f"{med('radius'):.4f}"),
        ("sound radius (Clopper-Pearson), median", f"{med('radius_sound'):.4f}"),
        ("spectral / whitened radius, median", f"{med('radius_spectral'):.4f} / {med('radius_whitened'):.4f}"),
        ("abstentions (p <= 0.5)", f"{summary.n_abstain}"),
        (f"empirical margin ({config.margin_mode} encoder), median", f"{med('margin'):.4f}"),
        ("Spearman rho(bound, margin)", f"{t1.spearman:.3f}"),
        ("bound above margin (violations)", f"{t1.n_violations} of {t1.n_used} compared"),
        ("rigorous radius (mean-only), median", f"{med('radius_rigorous_mean'):.4g}"),
        ("rigorous radius (full), median", f"{med('radius_rigorous_full'):.4g}"),
        (f"rigorous radius ({config.margin_mode}) above margin", f"{rig['n_above_margin']} of {rig['n_compared']} compared"),
        ("attack preset (robvae.attacks.EnsembleAttack)", f"{summary.attack_preset}"),
        ("max-damage attack budget (L2, 0.1 x median ||x||)", f"{float(summary.attack_eps):.4f}"),
        ("damage ||g(mu(x+d)) - g(mu(x))|| (deterministic), median", f"{med('damage'):.4f}"),
        ("expected damage (paper eq. 5), median", f"{med('expected_damage'):.4f}"),
        ("relative log-likelihood degradation, median", f"{med('likelihood_degradation'):.4f}"),
        ("reconstruction error ||g(mu(x)) - x||, median", f"{med('reconstruction_error'):.4f}"),
    ]


def run_demo(
    out: str | Path, *, epochs: int = 60, n_eval: int = 50, seed: int = 0, device: str = "cpu",
    progress: bool = True, echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train an MLP VAE on scikit-learn's digits, evaluate ``n_eval`` test inputs, print a table."""
    out = Path(out)
    config = TrainConfig(
        dataset="digits", model=ModelConfig(input_shape=(1, 8, 8), latent_dim=8, hidden=(128, 64)),
        objective=ObjectiveConfig("elbo"), epochs=epochs, batch_size=32, lr=1e-3, seed=seed, device=device,
    )
    run = train(config, out / "run", progress=progress)
    save_reconstructions(run)
    nelbo = -float(run.metrics[-1]["test_elbo"])
    echo(f"trained an MLP VAE (latent 8) on digits for {epochs} epochs: held-out negative ELBO {nelbo:.2f} nats")
    eval_config = EvalConfig(n=n_eval, r_relative=1.5, n_samples=1000, attack_preset="cheap", rigorous=True,
                             margin_tol=0.05, seed=seed, device=device)
    result = evaluate(run, eval_config, out_dir=out / "eval", progress=progress)
    rows = demo_table(result.summary, eval_config)
    width = max(len(k) for k, _ in rows)
    echo("")
    echo(f"{'quantity'.ljust(width)}  value")
    echo(f"{'-' * width}  -----")
    for k, v in rows:
        echo(f"{k.ljust(width)}  {v}")
    echo("")
    echo(f"run folder: {out / 'run'}; per-input results: {out / 'eval'}")
    return {"run": str(out / "run"), "test_nelbo": nelbo, "summary": result.summary}
