"""``robvae study bound-vs-margin|beta|tau|theorem2``: the paper's studies, each into one folder."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import click

from ..config import R_RELATIVE
from ..evaluation import EvalConfig
from ..fileio import folder_lock
from ..models.fast_decode import MAX_SAMPLES
from ..studies import Executor, Theorem2Config, TrainOptions, beta_study, bound_vs_margin, tau_study, theorem2_study
from ..studies.certified import certified_study, default_models
from ..studies.experiments import fmt_list
from ..sweep import EXECUTORS
from ..threads import MAX_THREADS
from . import app
from .options import (
    FiniteFloat,
    add_options, config_option, config_values, data_dir_option, dataset_option, device_option, download_option,
    eval_option as _eval, fetch_data, float_list, int_list, int_tuple, one_radius, threads_option,
)

#: an option generated from :class:`robvae.studies.TrainOptions`
_train = functools.partial(config_option, TrainOptions)


def _common(f):
    """Options shared by the studies that train models on a data set: the TrainOptions, EvalConfig
    and Executor fields the studies expose (flags, defaults and choices come from the dataclasses;
    ``--eval-seed`` is EvalConfig.seed) and the data set, output folder and seeds."""
    opts = [
        dataset_option, data_dir_option, download_option,
        click.option("--out", type=click.Path(file_okay=False), required=True,
                     help="Study folder (resumed if it exists: finished models and evaluations are reused)."),
        click.option("--seeds", callback=int_list, default="0", show_default=True, help="Training seeds, e.g. 0,1,2."),
        _train("epochs", type=click.IntRange(min=1), help="Training epochs per model."),
        _train("n_train", type=click.IntRange(min=1), help="Use only the first N training images."),
        _train("arch", help="Encoder / decoder architecture."),
        _train("latent_dim", type=click.IntRange(min=1), help="Latent dimension d."),
        click.option("--hidden", callback=int_tuple, default=",".join(map(str, TrainOptions.hidden)),
                     show_default=True, help="MLP hidden widths, comma-separated."),
        _train("batch_size", type=click.IntRange(min=1), help="Training batch size."),
        _train("lr", type=FiniteFloat(min=0, min_open=True), help="Adam learning rate."),
        _eval("n", type=click.IntRange(min=1), help="Test inputs evaluated per model (the first N of the test split)."),
        _eval("n_samples", type=click.IntRange(1, MAX_SAMPLES), help="Monte Carlo draws per estimate of p_r."),
        _eval("alpha", type=FiniteFloat(0, 0.5, min_open=True, max_open=True),
              help="Level alpha: the sound (Clopper-Pearson) radius holds with confidence 1 - alpha, and each "
                   "decision of the margin search errs with probability at most alpha."),
        _eval("r", type=FiniteFloat(min=0, min_open=True),
              help="Absolute radius r; replaces --r-relative."),
        _eval("r_relative", type=FiniteFloat(min=0, min_open=True),
              help="Without --r: r = this x median r_min (of the reference model in the beta / tau studies)."),
        _eval("attack_eps", type=FiniteFloat(min=0, min_open=True),
              help="Absolute L2 budget of the maximum-damage attack."),
        _eval("attack_eps_relative", type=FiniteFloat(min=0, min_open=True),
              help="Attack budget = this x median ||x|| of the evaluated inputs."),
        _eval("attack_preset", help="Attack ensemble preset (robvae.attacks.EnsembleAttack) of the fixed-budget "
                                    "attack and the margin search: cheap (studies) or strong (final numbers)."),
        _eval("margin_mode", help="Empirical margin with the full encoder attacked (docs/THEORY.md section 5) "
                                  "or the mean only."),
        _eval("margin_tol", type=FiniteFloat(min=0, min_open=True), help="Relative tolerance of the margin bisection."),
        _eval("seed", flag="--eval-seed", help="Seed of the evaluation's draws."),
        config_option(Executor, "executor", type=click.Choice(EXECUTORS),
                      help="Where the trials run: local processes, a Ray cluster, or this process."),
        config_option(Executor, "workers", type=click.IntRange(1, MAX_THREADS), help="Worker processes (local) or CPUs (Ray)."),
        config_option(Executor, "address", help="Ray cluster address (executor ray)."),
        device_option, threads_option,
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    return add_options(opts)(one_radius(f))


def _build(kw: dict) -> dict:
    """The arguments every study takes after (dataset, out), from the parsed options ``kw``:
    data_dir (with --download the data set's files are fetched first, into --data-dir or the
    default download folder), seeds, and the TrainOptions, EvalConfig and Executor."""
    dataset, data_dir, got = kw["dataset"], kw["data_dir"], config_values(kw)
    return dict(data_dir=fetch_data(dataset, data_dir) if kw["download"] and dataset != "digits" else data_dir,
                seeds=kw["seeds"], train=TrainOptions(**got[TrainOptions], hidden=kw["hidden"], device=kw["device"]),
                evaluation=EvalConfig(**got[EvalConfig], device=kw["device"]),
                executor=Executor(**got[Executor], progress=not kw["quiet"]))


@app.group("study")
def study() -> None:
    """The paper's studies: bound vs margin, beta and tau sweeps, Theorem 2 (tables, figures, summary)."""


@study.command("bound-vs-margin")
@_common
def bound_vs_margin_cmd(**kw) -> None:
    """Theorem 1 bound (and variants) against the empirical margin over test inputs."""
    dataset, out = kw["dataset"], kw["out"]
    built = _build(kw)
    with folder_lock(out, "robvae study bound-vs-margin"):
        res = bound_vs_margin(dataset, out, **built)
    s = res["summary"]["theorem1"]
    corr = (f"Pearson rho {s['pearson']:.3f}, Spearman rho {s['spearman']:.3f}" if s["n_used"] >= 3
            else "too few to correlate")
    click.echo(f"bound vs margin on {dataset}: {s['n_used']} of {s['n']} inputs compared, {corr}, bound above "
               f"margin for {s['n_violations']}; not compared: {s['n'] - s['n_used']} (first reason that applies: "
               f"bound abstains {s['n_abstain']}, bound infinite {s['n_infinite']}, estimates disagree "
               f"{s['n_disagree']}, margin capped {s['n_capped']}, no measured margin {s.get('n_no_margin', 0)})")
    rig = ", rigorous_vs_margin.png" if (Path(out) / "rigorous_vs_margin.png").is_file() else ""
    click.echo(f"study folder: {Path(out)} (bound_vs_margin.png, bound_variants.png, likelihood_vs_margin.png{rig}, "
               "per_input.csv, summary.json, study.json)")


@study.command("beta")
@_common
@click.option("--betas", callback=float_list, default="1,2,4,8,16", show_default=True,
              help="The betas, comma-separated (one model per beta and seed).")
@click.option("--objective", type=click.Choice(["beta-vae", "beta-tcvae"]), default="beta-vae", show_default=True,
              help="The objective beta weights.")
def beta_cmd(**kw) -> None:
    """Margin, attack damage, encoder sigma, Jacobian norm, certified radius against beta."""
    dataset, out, betas = kw["dataset"], kw["out"], kw["betas"]
    if not betas or any(b <= 0 for b in betas):
        raise click.BadParameter("give positive numbers", param_hint="--betas")
    built = _build(kw)
    with folder_lock(out, "robvae study beta"):
        res = beta_study(dataset, out, betas=betas, objective=kw["objective"], **built)
    _echo_table(res["table"], "beta")
    click.echo(f"study folder: {Path(out)} (beta.png, beta_table.csv, beta_by_seed.csv, per_input.csv, summary.json, study.json)")


@study.command("tau")
@_common
@click.option("--taus", callback=float_list, default="0,0.05,0.1,0.2,0.5", show_default=True,
              help="The variance floors tau, comma-separated (one model per tau and seed).")
def tau_cmd(**kw) -> None:
    """The variance-offset study: margin, radius, damage, p_r(x), reconstruction against tau."""
    dataset, out, taus = kw["dataset"], kw["out"], kw["taus"]
    if not taus or any(t < 0 for t in taus):
        raise click.BadParameter("give numbers >= 0", param_hint="--taus")
    built = _build(kw)
    with folder_lock(out, "robvae study tau"):
        res = tau_study(dataset, out, taus=taus, **built)
    _echo_table(res["table"], "tau")
    below = res["summary"]["taus_with_median_p_at_most_half"]
    if below:
        click.echo(f"median p_r(x) <= 1/2 (not r-robust even unperturbed) at tau = {', '.join(f'{t:g}' for t in below)}")
    click.echo(f"study folder: {Path(out)} (tau.png, tau_table.csv, tau_by_seed.csv, per_input.csv, summary.json, study.json)")


def _echo_table(table, x: str) -> None:
    """The study's medians, one row per setting; a median margin at the search's cap is marked as
    the lower bound it is (">="), and an infinite median radius is explained below the table."""
    click.echo(f"{x:>8} {'margin':>9} {'radius':>9} {'damage':>9} {'sigma':>8} {'||J||_F':>8} {'p_r(x)':>7} {'recon':>8}")
    for r in table:
        margin = f"{'>=' if r.get('margin_median_at_cap') else ''}{r['margin_median']:.4g}"
        click.echo(f"{r[x]:>8g} {margin:>9} {r['radius_median']:>9.4g} {r['damage_median']:>9.4g} "
                   f"{r['sigma_mean_median']:>8.4g} {r['jac_frobenius_median']:>8.4g} {r['p_median']:>7.3f} "
                   f"{r['reconstruction_error_median']:>8.4g}")
    if any(r.get("margin_median_at_cap") for r in table):
        click.echo("margin >=: at least half the margins were still robust at the search's largest budget (capped), "
                   "so the median is a lower bound")
    if any(math.isinf(r["radius_median"]) for r in table):
        click.echo("radius inf: at least half the inputs had every draw within r (p_r(x) = 1), where Theorem 1's "
                   "radius is infinite; the sound radius (radius_sound in per_input.csv) stays finite")


@study.command("theorem2")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Study folder.")
@click.option("--betas", callback=float_list, default="0.5,1,2,4,8,16", show_default=True,
              help="The betas, comma-separated.")
@click.option("--column-norms", callback=float_list, default="0.5,1,2,4", show_default=True,
              help="Norms |w_i| of the decoder's orthogonal columns (one per latent axis).")
@click.option("--data-dim", type=click.IntRange(min=1), default=16, show_default=True,
              help="Data dimension D of the linear-Gaussian decoder.")
@click.option("--noise-scale", type=FiniteFloat(min=0, min_open=True), default=0.5, show_default=True,
              help="Decoder noise s: p(x|z) = N(W z, s^2 I).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="L-BFGS iterations.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Random seed.")
def theorem2_cmd(out, betas, column_norms, data_dim, noise_scale, steps, seed) -> None:
    """Theorem 2: a beta-VAE encoder trained against a fixed linear-Gaussian decoder vs the closed form."""
    if not betas or any(b <= 0 for b in betas):
        raise click.BadParameter("give positive numbers", param_hint="--betas")
    cfg = Theorem2Config(column_norms=tuple(column_norms), data_dim=data_dim, noise_scale=noise_scale, steps=steps,
                         seed=seed)
    with folder_lock(out, "robvae study theorem2"):
        res = theorem2_study(betas, out, cfg)
    s = res["summary"]
    click.echo(f"{'beta':>6} {'||J||_F trained':>16} {'||J||_F exact':>14}")
    for r in res["jacobian_rows"]:
        click.echo(f"{r['beta']:>6g} {r['jac_frobenius_trained']:>16.6g} {r['jac_frobenius_exact']:>14.6g}")
    click.echo(f"largest relative error: sigma {s['max_rel_error_sigma']:.2e}, Jacobian norm {s['max_rel_error_jacobian']:.2e}")
    click.echo(f"study folder: {Path(out)} (theorem2.png, theorem2.csv, theorem2_jacobian.csv, summary.json, study.json)")


@study.command("certified")
@dataset_option
@data_dir_option
@download_option
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Study folder (finished models are reused).")
@click.option("--lipschitz", callback=float_list, default="2,8,32", show_default=True,
              help="Constants L of the Lipschitz VAEs (arch lipschitz-mlp).")
@click.option("--sigma-cap", type=FiniteFloat(min=0, min_open=True), default=0.5, show_default=True,
              help="Std cap ||sigma(x)|| <= cap of the Lipschitz VAEs.")
@click.option("--beta", type=FiniteFloat(min=0, min_open=True), default=4.0, show_default=True,
              help="beta of the beta-VAE.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True, help="Training epochs per model.")
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Use only the first N training images.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=8, show_default=True, help="Latent dimension d.")
@click.option("--hidden", callback=int_tuple, default="256,128", show_default=True, help="Hidden widths (even).")
@click.option("--n", "n_eval", type=click.IntRange(min=1), default=20, show_default=True, help="Test inputs evaluated.")
@click.option("--n-samples", type=click.IntRange(1, MAX_SAMPLES), default=2000, show_default=True, help="Draws per estimate of p.")
@click.option("--r", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Radius r; replaces --r-relative.")
@click.option("--r-relative", type=FiniteFloat(min=0, min_open=True), default=R_RELATIVE, show_default=True,
              help="Without --r: r = this x median r_min of the standard VAE.")
@click.option("--attack-eps", type=FiniteFloat(min=0, min_open=True), default=1.0, show_default=True,
              help="L2 budget of the maximum-damage attack.")
@click.option("--cert-eps", type=FiniteFloat(min=0, min_open=True), default=0.05, show_default=True,
              help="Budget at which the fraction of rigorously certified inputs is reported.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Random seed.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@threads_option
@one_radius
def certified_cmd(dataset, data_dir, download, out, lipschitz, sigma_cap, beta, epochs, n_train, latent_dim, hidden,
                  n_eval, n_samples, r, r_relative, attack_eps, cert_eps, seed, quiet) -> None:
    """Standard VAE, beta-VAE and Lipschitz VAEs: rigorous radii (docs/THEORY.md), Theorem 1, margins, damage."""
    if not lipschitz or any(v <= 0 for v in lipschitz):
        raise click.BadParameter("give positive numbers", param_hint="--lipschitz")
    if any(h % 2 for h in hidden):  # before the first models train, not when the Lipschitz VAEs do
        raise click.BadParameter(f"the Lipschitz VAEs need even widths, got {fmt_list(hidden)}", param_hint="--hidden")
    if download and dataset != "digits":
        data_dir = fetch_data(dataset, data_dir)
    with folder_lock(out, "robvae study certified"):
        res = certified_study(out, dataset=dataset, data_dir=data_dir,
                              models=default_models(tuple(lipschitz), beta, sigma_cap), epochs=epochs,
                              latent_dim=latent_dim, hidden=hidden, n_train=n_train, n=n_eval, n_samples=n_samples,
                              r=r, r_relative=r_relative, attack_eps=attack_eps, cert_eps=cert_eps, seed=seed,
                              progress=not quiet)
    click.echo(f"certified-robustness study on {dataset}, r={res.r:.4g}, {n_eval} test inputs")
    click.echo(res.markdown())
    click.echo(f"inputs whose rigorous radius an attack refuted (above a budget settled not robust; must be 0): "
               f"{sum(w.n_violations for w in res.rows)}; inside the margin search's last bracket (unresolved): "
               f"{sum(w.n_unresolved for w in res.rows)}")
    click.echo(f"study folder: {Path(out)} (certified.md, certified.csv, certified.json, study.json, model*/)")
