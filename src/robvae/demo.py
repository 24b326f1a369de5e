"""The demo: train a VAE on the embedded digits and report what it did."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .models import ModelConfig
from .objectives import ObjectiveConfig
from .training import TrainConfig, train


def run_demo(
    out: str | Path, *, epochs: int = 60, n_eval: int = 50, seed: int = 0, device: str = "cpu",
    progress: bool = True, echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train an MLP VAE on scikit-learn's digits into ``out/run`` and return a summary dict."""
    out = Path(out)
    config = TrainConfig(
        dataset="digits", model=ModelConfig(input_shape=(1, 8, 8), latent_dim=8, hidden=(128, 64)),
        objective=ObjectiveConfig("elbo"), epochs=epochs, batch_size=32, lr=1e-3, seed=seed, device=device,
    )
    run = train(config, out / "run", progress=progress)
    nelbo = -float(run.metrics[-1]["test_elbo"])
    echo(f"trained an MLP VAE (latent 8) on digits for {epochs} epochs: held-out negative ELBO {nelbo:.2f} nats")
    echo(f"run folder: {out / 'run'}")
    return {"run": str(out / "run"), "test_nelbo": nelbo}
