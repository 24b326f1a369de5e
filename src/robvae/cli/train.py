"""``robvae train`` and ``robvae demo``."""

from __future__ import annotations

import math
from pathlib import Path

import click
import torch

from ..data import dataset_shape, load_dataset
from ..demo import run_demo
from ..fileio import folder_lock
from ..metrics import ACTIVE_UNIT_THRESHOLD, active_units
from ..models import ModelConfig
from ..objectives import WEIGHTED_OBJECTIVES, ObjectiveConfig
from ..report.figures import save_reconstructions
from ..robustness.rigorous import plan_certified_margin
from ..studies.certified import verify_margin
from ..training import TrainConfig, train
from . import app
from .options import (
    FiniteFloat,
    config_option, config_values, data_dir_option, dataset_option, device_option, download_option, fetch_data,
    int_tuple, objective_option, seed_option, threads_option, warn_if_fewer,
)


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value < 0:
        raise click.BadParameter(f"must be >= 0, got {value}")
    return value


#: options that set up a training method, and the option that switches it on: given while the
#: method is off they would be ignored (and stored in config.json, so that extending the run
#: without them is refused as a different config)
_METHOD_OPTIONS = {
    "adversarial_steps": "adversarial_eps", "adversarial_norm": "adversarial_eps",
    "jacobian_whitened": "jacobian", "jacobian_projections": "jacobian",
    "smooth_noise": "smooth", "smooth_divergence": "smooth",
}


def _refuse_ignored(given: set[str], objective: str, robust: dict) -> None:
    """A usage error for options given on the command line that the training would ignore:
    a method's settings without the method (its weight or budget 0), --beta with --objective elbo."""
    if "beta" in given and objective not in WEIGHTED_OBJECTIVES:
        raise click.UsageError(f"--beta weighs the KL (beta-vae) or total correlation (beta-tcvae); --objective "
                               f"{objective} has no weight (it would be ignored)")
    for name, switch in _METHOD_OPTIONS.items():
        if name in given and not robust[switch]:
            flag, on = "--" + name.replace("_", "-"), "--" + switch.replace("_", "-")
            raise click.UsageError(f"{flag} goes with {on} > 0 (without it, it would be ignored)")


@app.command("train")
@dataset_option
@data_dir_option
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True,
              help="Encoder and decoder networks: mlp (fully connected, widths --hidden) or conv "
                   "(stride-2 convolutions; image sides divisible by 4).")
@click.option("--latent-dim", type=click.IntRange(min=1), default=10, show_default=True, help="Latent dimension d.")
@click.option("--hidden", callback=int_tuple, default="256,128", show_default=True,
              help="MLP hidden widths, comma-separated.")
@objective_option
@click.option("--beta", type=FiniteFloat(min=0), default=1.0, show_default=True, callback=_positive,
              help="KL weight (beta-vae) or total-correlation weight (beta-tcvae).")
@click.option("--tau", type=FiniteFloat(min=0), default=0.0, show_default=True, callback=_positive,
              help="Floor on the encoder standard deviation: sigma = softplus(s) + tau.")
@config_option(ObjectiveConfig, "jacobian", type=FiniteFloat(min=0),
               help="Weight of the encoder-Jacobian penalty ||J_mu(x)||_F^2 (random projections; 0 = off).")
@config_option(ObjectiveConfig, "jacobian_whitened", help="Penalise ||diag(1/sigma) J||_F^2 instead.")
@config_option(ObjectiveConfig, "jacobian_projections", type=click.IntRange(min=1),
               help="Random projections per input for the Jacobian penalty.")
@config_option(ObjectiveConfig, "smooth", type=FiniteFloat(min=0),
               help="Weight of the smooth-encoder penalty D(q(z|x+n), q(z|x)) (0 = off).")
@config_option(ObjectiveConfig, "smooth_noise", type=FiniteFloat(min=0, min_open=True),
               help="Std of the Gaussian input noise n of the smooth-encoder penalty.")
@config_option(ObjectiveConfig, "smooth_divergence",
               help="kl: KL(q(z|x+n) || q(z|x)); symmetric-kl: both directions summed.")
@config_option(TrainConfig, "adversarial_eps", type=FiniteFloat(min=0),
               help="Adversarial training budget (maximum-damage attack on each batch; 0 = off).")
@config_option(TrainConfig, "adversarial_steps", type=click.IntRange(min=1),
               help="PGD steps of the adversarial-training attack.")
@config_option(TrainConfig, "adversarial_norm", help="Norm of the adversarial-training budget.")
@click.option("--likelihood", type=click.Choice(["auto", "bernoulli", "gaussian", "cbernoulli"]), default="auto",
              show_default=True, help="auto: Bernoulli for grey images, Gaussian for colour; cbernoulli: continuous Bernoulli.")
@click.option("--gaussian-scale", type=FiniteFloat(min=0), default=0.1, show_default=True,
              help="Fixed Gaussian likelihood scale; 0 learns it.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Training epochs. More than a finished run's continues that run (same result as "
                   "training that long from the start).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Training batch size.")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate (a diverging run stops with an error).")
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use only the first N training images.")
@seed_option
@device_option
@threads_option
@download_option
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder (resumed if it exists).")
@click.option("--quiet", is_flag=True, help="No progress bar (the summary lines are still printed).")
@click.option("--certify-margin", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Robustness specified upfront: train a Lipschitz VAE (arch lipschitz-mlp) whose Barrett et al. "
                   "margin is at least this L2 budget at radius --r for every input, then verify it on test inputs.")
@click.option("--r", "certify_r", type=FiniteFloat(min=0, min_open=True), default=None,
              help="The radius r of --certify-margin: P(||g(z') - g(z)|| <= r) > 1/2 (two independent draws).")
@click.option("--sigma-cap", type=FiniteFloat(min=0, min_open=True), default=0.1, show_default=True,
              help="With --certify-margin: cap on the encoder std, ||sigma(x)|| <= cap.")
@click.option("--verify-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="With --certify-margin: test inputs on which the margin is verified.")
def train_cmd(dataset, data_dir, download, arch, latent_dim, hidden, objective, beta, tau, likelihood, gaussian_scale,
              epochs, batch_size, lr, n_train, seed, device, out, quiet, certify_margin, certify_r, sigma_cap, verify_n,
              **robust) -> None:
    """Train a VAE and save it as a run folder (config, weights, metrics, reconstructions)."""
    robust = config_values(robust)  # the robust-training options, by config class (ObjectiveConfig, TrainConfig)
    shape = dataset_shape(dataset)
    if download:
        data_dir = fetch_data(dataset, data_dir)
    if likelihood == "auto":
        likelihood = "bernoulli" if shape[0] == 1 else "gaussian"
    plan = None
    ctx = click.get_current_context()
    given = {p.name for p in ctx.command.params  # given on the command line, and not as their default
             if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE
             and (p.name in ("arch", "tau", "sigma_cap", "verify_n")
                  or p.name not in ctx.params or ctx.params[p.name] != p.default)}
    if certify_margin is None and certify_r is None and given & {"sigma_cap", "verify_n"}:
        raise click.UsageError("--sigma-cap and --verify-n go with --certify-margin (they would be ignored)")
    if not (Path(out) / "config.json").is_file():  # a new run (extending one: its stored config decides, and
        # a run trained before these refusals with such a setting can still be extended by giving it again)
        _refuse_ignored(given, objective, {**robust[ObjectiveConfig], **robust[TrainConfig]})
    if certify_margin is not None or certify_r is not None:  # robustness specified upfront (docs/THEORY.md section 9)
        if certify_margin is None or certify_r is None:
            raise click.UsageError("--certify-margin and --r go together")
        if "arch" in given and arch != "mlp":
            raise click.UsageError(f"--certify-margin trains a Lipschitz MLP VAE (arch lipschitz-mlp) itself; drop "
                                   f"--arch {arch}")
        if "tau" in given and tau != 0:
            raise click.UsageError("--certify-margin caps the encoder std itself (--sigma-cap); drop --tau")
        diameter = math.sqrt(math.prod(shape))  # the largest distance between two images (pixels in [0, 1])
        if certify_r >= diameter:
            raise click.UsageError(f"--r {certify_r:g} is at least the largest distance between two {dataset} images "
                                   f"(sqrt(D) = {diameter:.4g}): every pair of reconstructions is within it, so any "
                                   "margin would be trivial; give a smaller --r")
        if certify_margin > diameter:
            raise click.UsageError(f"--certify-margin {certify_margin:g} exceeds the largest distance between two "
                                   f"{dataset} images (sqrt(D) = {diameter:.4g}): a perturbation that large reaches "
                                   "every image")
        plan = plan_certified_margin(certify_margin, certify_r, latent_dim, sigma_cap)
        arch, tau = "lipschitz-mlp", 0.0
        even = tuple(h + h % 2 for h in hidden)  # GroupSort pairs
        if even != tuple(hidden):
            click.echo(f"robvae: note: hidden widths rounded up to even numbers for GroupSort: "
                       f"{','.join(map(str, even))}", err=True)
        hidden = even
    config = TrainConfig(
        dataset=dataset, data_dir=data_dir, n_train=n_train,
        model=ModelConfig(input_shape=shape, arch=arch, latent_dim=latent_dim, hidden=hidden, tau=tau,
                          likelihood=likelihood, gaussian_scale=gaussian_scale or None,
                          **({} if plan is None else {"lipschitz": plan.lipschitz, "sigma_cap": plan.sigma_cap})),
        objective=ObjectiveConfig(objective, beta, **robust[ObjectiveConfig]),
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, **robust[TrainConfig],
    )
    data = None
    if n_train is not None:  # as certify's --n: a larger number than the split says so (all images are used)
        data = tuple(load_dataset(dataset, split, data_dir) for split in ("train", "test"))
        warn_if_fewer("--n-train", n_train, f"the train split of {dataset}", len(data[0]))
    with folder_lock(out, "robvae train"):
        run = train(config, out, progress=not quiet, data=data)
        save_reconstructions(run)  # training draws no figures: the CLI does
    last = run.metrics[-1]
    weight = f", beta={beta:g}" if objective in WEIGHTED_OBJECTIVES else ""
    click.echo(f"trained {arch} VAE on {dataset} ({objective}{weight}, tau={tau:g}) for {epochs} epochs")
    click.echo(f"held-out negative ELBO: {-float(last['test_elbo']):.3f} nats per image")
    with torch.inference_mode():  # the first (at most) 1,000 held-out images
        mu = run.model.encode(load_dataset(dataset, "test", run.config.data_dir).subset(1000).images.to(
            next(run.model.parameters()).device))[0]
    active = active_units(mu)
    click.echo(f"active latent units: {active} of {mu.shape[1]} (Var_x(mu_j) > {ACTIVE_UNIT_THRESHOLD:g})")
    if active == 0:
        click.echo("robvae: note: no latent unit is active: the posterior collapsed (mu(x) barely depends on x), so "
                   "certificates and margins of this model are trivially large; train with a smaller beta, penalty "
                   "weight or attack budget, or longer", err=True)
    click.echo(f"run folder: {Path(out)} (config.json, model.safetensors, metrics.csv, reconstructions.png)")
    if plan is not None:
        click.echo(f"certified by construction: L={plan.lipschitz:.4g}, std cap {plan.sigma_cap:g}, Barrett margin "
                   f"{plan.margin:.4g} >= {certify_margin:g} at r={certify_r:g} (P(||g(z')-g(z)|| <= r) > 1/2)")
        x = load_dataset(dataset, "test", config.data_dir).images[:verify_n].to(device)
        ver = verify_margin(run.model.eval(), x, certify_margin, certify_r, seed=seed)
        click.echo(ver.table())
        if ver.contradicted:  # the certificate and the attack disagree: never pass that silently
            raise click.ClickException(f"the certified margin is contradicted: {ver.verdict}")
        if ver.barrett_margin < certify_margin:  # the saved weights do not certify what was announced
            raise click.ClickException(
                f"the trained weights certify a Barrett margin of {ver.barrett_margin:.4g} only, below the requested "
                f"{certify_margin:g} (their measured Lipschitz constants exceed the plan's); the run in {out} is not "
                "certified: train again with a slightly larger --certify-margin")


@app.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Folder for the demo's run and results.")
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True,
              help="Training epochs of the demo's VAE.")
@click.option("--n", "n_eval", type=click.IntRange(min=1), default=50, show_default=True,
              help="Test inputs to certify and attack.")
@seed_option
@device_option
@threads_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_cmd(out, epochs, n_eval, seed, device, quiet) -> None:
    """Train a VAE on the embedded digits, certify it, attack it, and print one table."""
    run_demo(out, epochs=epochs, n_eval=n_eval, seed=seed, device=device, progress=not quiet, echo=click.echo)
