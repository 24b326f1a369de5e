"""``robvae train`` and ``robvae demo``."""

from __future__ import annotations

from pathlib import Path

import click

from . import app
from .options import data_dir_option, dataset_option, device_option, objective_option, seed_option


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
    return value


@app.command("train")
@dataset_option
@data_dir_option
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--latent-dim", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--hidden", default="256,128", show_default=True, help="MLP hidden widths, comma-separated.")
@objective_option
@click.option("--beta", type=float, default=1.0, show_default=True, callback=_positive,
              help="KL weight (beta-vae) or total-correlation weight (beta-tcvae).")
@click.option("--tau", type=float, default=0.0, show_default=True, callback=_positive,
              help="Floor on the encoder standard deviation: sigma = softplus(s) + tau.")
@click.option("--likelihood", type=click.Choice(["auto", "bernoulli", "gaussian"]), default="auto", show_default=True,
              help="auto: Bernoulli for grey images, Gaussian for colour.")
@click.option("--gaussian-scale", type=float, default=0.1, show_default=True,
              help="Fixed Gaussian likelihood scale; 0 learns it.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use only the first N training images.")
@seed_option
@device_option
@click.option("--download", is_flag=True,
              help="Fetch the official MNIST / Fashion-MNIST files (checksummed) into --data-dir, or into "
                   "$ROBVAE_DATA_DIR/NAME (default ~/.cache/robvae/NAME), when they are missing.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder (resumed if it exists).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_cmd(dataset, data_dir, download, arch, latent_dim, hidden, objective, beta, tau, likelihood, gaussian_scale,
              epochs, batch_size, lr, n_train, seed, device, out, quiet) -> None:
    """Train a VAE and save it as a run folder (config, weights, metrics, reconstructions)."""
    from ..data import dataset_shape
    from ..models import ModelConfig
    from ..objectives import ObjectiveConfig
    from ..training import TrainConfig, train

    shape = dataset_shape(dataset)
    if download:
        from ..data import load_dataset
        from ..data.download import default_data_dir

        if data_dir is None:
            data_dir = str(default_data_dir(dataset))
        for split in ("train", "test"):
            load_dataset(dataset, split, data_dir, download=True)
    if likelihood == "auto":
        likelihood = "bernoulli" if shape[0] == 1 else "gaussian"
    try:
        hidden_t = tuple(int(h) for h in hidden.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {hidden!r}", param_hint="--hidden") from None
    config = TrainConfig(
        dataset=dataset, data_dir=data_dir, n_train=n_train,
        model=ModelConfig(input_shape=shape, arch=arch, latent_dim=latent_dim, hidden=hidden_t, tau=tau,
                          likelihood=likelihood, gaussian_scale=gaussian_scale or None),
        objective=ObjectiveConfig(objective, beta), epochs=epochs, batch_size=batch_size, lr=lr,
        seed=seed, device=device,
    )
    run = train(config, out, progress=not quiet)
    last = run.metrics[-1]
    click.echo(f"trained {arch} VAE on {dataset} ({objective}, beta={beta:g}, tau={tau:g}) for {epochs} epochs")
    click.echo(f"held-out negative ELBO: {-float(last['test_elbo']):.3f} nats per image")
    click.echo(f"run folder: {Path(out)} (config.json, model.safetensors, metrics.csv, reconstructions.png)")


@app.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Folder for the demo's run and results.")
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--n", "n_eval", type=click.IntRange(min=1), default=50, show_default=True,
              help="Test inputs to certify and attack.")
@seed_option
@device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_cmd(out, epochs, n_eval, seed, device, quiet) -> None:
    """Train a VAE on the embedded digits, certify it, attack it, and print one table."""
    from ..demo import run_demo

    run_demo(out, epochs=epochs, n_eval=n_eval, seed=seed, device=device, progress=not quiet, echo=click.echo)
