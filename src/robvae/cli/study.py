"""``robvae study bound-vs-margin|beta|tau|theorem2``: the paper's studies, each into one folder."""

from __future__ import annotations

from pathlib import Path

import click

from . import app
from .options import data_dir_option, dataset_option, device_option, float_list, int_list


def _common(f):
    """Options shared by the studies that train models on a data set."""
    opts = [
        dataset_option, data_dir_option,
        click.option("--out", type=click.Path(file_okay=False), required=True,
                     help="Study folder (resumed if it exists: finished models and evaluations are reused)."),
        click.option("--seeds", callback=int_list, default="0", show_default=True, help="Training seeds, e.g. 0,1,2."),
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use only the first N training images."),
        click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True),
        click.option("--latent-dim", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--hidden", default="256,128", show_default=True, help="MLP hidden widths."),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
        click.option("--n", "n_eval", type=click.IntRange(min=1), default=100, show_default=True,
                     help="Test inputs evaluated per model (the first N of the test split)."),
        click.option("--n-samples", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Monte Carlo draws per estimate of p_r."),
        click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                     show_default=True, help="Level of the Clopper-Pearson bound (sound certificate)."),
        click.option("--r", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Absolute radius r (default: calibrated, see --r-relative)."),
        click.option("--r-relative", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True,
                     help="r = this x median r_min (of the reference model in the beta / tau studies)."),
        click.option("--attack-eps", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Absolute L2 budget of the maximum-damage attack."),
        click.option("--attack-eps-relative", type=click.FloatRange(min=0, min_open=True), default=0.1,
                     show_default=True, help="Attack budget = this x median ||x|| of the evaluated inputs."),
        click.option("--attack-steps", type=click.IntRange(min=1), default=20, show_default=True),
        click.option("--attack-restarts", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--margin-mode", type=click.Choice(["full", "mean"]), default="full", show_default=True,
                     help="Empirical margin with the full encoder attacked (SPEC 6) or the mean only."),
        click.option("--margin-tol", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
                     help="Relative tolerance of the margin bisection."),
        click.option("--eval-seed", type=int, default=0, show_default=True, help="Seed of the evaluation's draws."),
        click.option("--executor", type=click.Choice(["local", "ray", "serial"]), default="local", show_default=True),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--address", default=None, help="Ray cluster address (executor ray)."),
        device_option,
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _build(kw: dict):
    from ..evaluation import EvalConfig
    from ..studies import Executor, TrainOptions

    try:
        hidden = tuple(int(h) for h in kw.pop("hidden").split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated integers", param_hint="--hidden") from None
    train = TrainOptions(epochs=kw.pop("epochs"), n_train=kw.pop("n_train"), arch=kw.pop("arch"),
                         latent_dim=kw.pop("latent_dim"), hidden=hidden, batch_size=kw.pop("batch_size"),
                         lr=kw.pop("lr"), device=kw["device"])
    ev = EvalConfig(n=kw.pop("n_eval"), n_samples=kw.pop("n_samples"), alpha=kw.pop("alpha"), r=kw.pop("r"),
                    r_relative=kw.pop("r_relative"), attack_eps=kw.pop("attack_eps"),
                    attack_eps_relative=kw.pop("attack_eps_relative"), attack_steps=kw.pop("attack_steps"),
                    attack_restarts=kw.pop("attack_restarts"), margin_mode=kw.pop("margin_mode"),
                    margin_tol=kw.pop("margin_tol"), seed=kw.pop("eval_seed"), device=kw.pop("device"))
    ex = Executor(executor=kw.pop("executor"), workers=kw.pop("workers"), address=kw.pop("address"),
                  progress=not kw.pop("quiet"))
    return train, ev, ex


@app.group("study")
def study() -> None:
    """The paper's studies: bound vs margin, beta and tau sweeps, Theorem 2 (tables, figures, summary)."""


@study.command("bound-vs-margin")
@_common
def bound_vs_margin_cmd(**kw) -> None:
    """Theorem 1 bound (and variants) against the empirical margin over test inputs."""
    from ..studies import bound_vs_margin

    dataset, data_dir, out, seeds = kw.pop("dataset"), kw.pop("data_dir"), kw.pop("out"), kw.pop("seeds")
    train, ev, ex = _build(kw)
    res = bound_vs_margin(dataset, out, data_dir=data_dir, seeds=seeds, train=train, evaluation=ev, executor=ex)
    s = res["summary"]["theorem1"]
    click.echo(f"bound vs margin on {dataset}: {s['n']} inputs used, Pearson rho {s['pearson']:.3f}, "
               f"Spearman rho {s['spearman']:.3f}, bound above margin for {s['n_above']}")
    click.echo(f"study folder: {Path(out)} (bound_vs_margin.png, bound_variants.png, likelihood_vs_margin.png, "
               "per_input.csv, summary.json)")


@study.command("beta")
@_common
@click.option("--betas", callback=float_list, default="1,2,4,8,16", show_default=True)
@click.option("--objective", type=click.Choice(["beta-vae", "beta-tcvae"]), default="beta-vae", show_default=True)
def beta_cmd(**kw) -> None:
    """Margin, attack damage, encoder sigma, Jacobian norm, certified radius against beta."""
    from ..studies import beta_study

    dataset, data_dir, out, seeds = kw.pop("dataset"), kw.pop("data_dir"), kw.pop("out"), kw.pop("seeds")
    betas, objective = kw.pop("betas"), kw.pop("objective")
    if not betas or any(b <= 0 for b in betas):
        raise click.BadParameter("give positive numbers", param_hint="--betas")
    train, ev, ex = _build(kw)
    res = beta_study(dataset, out, betas=betas, objective=objective, data_dir=data_dir, seeds=seeds, train=train,
                     evaluation=ev, executor=ex)
    _echo_table(res["table"], "beta")
    click.echo(f"study folder: {Path(out)} (beta.png, beta_table.csv, beta_by_seed.csv, per_input.csv, summary.json)")


@study.command("tau")
@_common
@click.option("--taus", callback=float_list, default="0,0.05,0.1,0.2,0.5", show_default=True)
def tau_cmd(**kw) -> None:
    """The variance-offset study: margin, radius, damage, p_r(x), reconstruction against tau."""
    from ..studies import tau_study

    dataset, data_dir, out, seeds = kw.pop("dataset"), kw.pop("data_dir"), kw.pop("out"), kw.pop("seeds")
    taus = kw.pop("taus")
    if not taus or any(t < 0 for t in taus):
        raise click.BadParameter("give numbers >= 0", param_hint="--taus")
    train, ev, ex = _build(kw)
    res = tau_study(dataset, out, taus=taus, data_dir=data_dir, seeds=seeds, train=train, evaluation=ev, executor=ex)
    _echo_table(res["table"], "tau")
    below = res["summary"]["taus_with_median_p_at_most_half"]
    if below:
        click.echo(f"median p_r(x) <= 1/2 (not r-robust even unperturbed) at tau = {', '.join(f'{t:g}' for t in below)}")
    click.echo(f"study folder: {Path(out)} (tau.png, tau_table.csv, tau_by_seed.csv, per_input.csv, summary.json)")


def _echo_table(table, x: str) -> None:
    click.echo(f"{x:>8} {'margin':>9} {'radius':>9} {'damage':>9} {'sigma':>8} {'||J||_F':>8} {'p_r(x)':>7} {'recon':>8}")
    for r in table:
        click.echo(f"{r[x]:>8g} {r['margin_median']:>9.4g} {r['radius_median']:>9.4g} {r['damage_median']:>9.4g} "
                   f"{r['sigma_mean_median']:>8.4g} {r['jac_frobenius_median']:>8.4g} {r['p_median']:>7.3f} "
                   f"{r['reconstruction_error_median']:>8.4g}")


@study.command("theorem2")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Study folder.")
@click.option("--betas", callback=float_list, default="0.5,1,2,4,8,16", show_default=True)
@click.option("--column-norms", callback=float_list, default="0.5,1,2,4", show_default=True,
              help="Norms |w_i| of the decoder's orthogonal columns (one per latent axis).")
@click.option("--data-dim", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--noise-scale", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Decoder noise s: p(x|z) = N(W z, s^2 I).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="L-BFGS iterations.")
@click.option("--seed", type=int, default=0, show_default=True)
def theorem2_cmd(out, betas, column_norms, data_dim, noise_scale, steps, seed) -> None:
    """Theorem 2: a beta-VAE encoder trained against a fixed linear-Gaussian decoder vs the closed form."""
    from ..studies import Theorem2Config, theorem2_study

    if not betas or any(b <= 0 for b in betas):
        raise click.BadParameter("give positive numbers", param_hint="--betas")
    cfg = Theorem2Config(column_norms=tuple(column_norms), data_dim=data_dim, noise_scale=noise_scale, steps=steps,
                         seed=seed)
    res = theorem2_study(betas, out, cfg)
    s = res["summary"]
    click.echo(f"{'beta':>6} {'||J||_F trained':>16} {'||J||_F exact':>14}")
    for r in res["jacobian_rows"]:
        click.echo(f"{r['beta']:>6g} {r['jac_frobenius_trained']:>16.6g} {r['jac_frobenius_exact']:>14.6g}")
    click.echo(f"largest relative error: sigma {s['max_rel_error_sigma']:.2e}, Jacobian norm {s['max_rel_error_jacobian']:.2e}")
    click.echo(f"study folder: {Path(out)} (theorem2.png, theorem2.csv, theorem2_jacobian.csv, summary.json)")
