"""``robvae certify``, ``robvae attack`` and ``robvae margin``: thin faces over robvae.robustness."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch

from . import app
from .options import (
    add_options, device_option, format_summary, n_option, radius_options, run_argument, samples_option,
    seed_option, split_option,
)


def _inputs(run_dir: str, split: str, n: int, device: str):
    """Load the run and the first n inputs of its data set's split."""
    from ..data import load_dataset
    from ..training import load

    run = load(run_dir, device=device)
    data = load_dataset(run.config.dataset, split, run.config.data_dir).subset(n)
    return run, data.images.to(device)


def resolve_radius(model, x, r: float | None, r_relative: float | None, n_samples: int, seed: int) -> float:
    """r as given, or K times the median r_min(x) over the inputs; exactly one must be set."""
    from ..robustness import r_min

    if (r is None) == (r_relative is None):
        raise click.UsageError("give exactly one of --r and --r-relative")
    if r is not None:
        return float(r)
    g = torch.Generator(device=x.device).manual_seed(seed)
    return float(r_relative) * float(r_min(model, x, n_samples, generator=g).median())


def _save(out: Path, rows: list[dict], meta: dict) -> None:
    from ..fileio import write_csv, write_json

    write_csv(out, rows)
    write_json(out.with_suffix(".json"), meta)


def _median(v) -> float:
    """The median, with +inf radii kept as values (see robvae.studies.stats.quartiles)."""
    from ..studies.stats import quartiles

    return quartiles(v)[1]


@app.command("certify")
@run_argument
@split_option
@n_option
@add_options(radius_options)
@samples_option
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.001, show_default=True,
              help="Confidence level 1 - alpha of the sound (Clopper-Pearson) radius.")
@click.option("--norm", type=click.Choice(["frobenius", "spectral", "whitened"]), default="frobenius",
              show_default=True, help="Which radius the summary leads with (all are computed and saved).")
@click.option("--mode", type=click.Choice(["mean", "full"]), default="mean", show_default=True,
              help="mean: sigma(x) held (Theorem 1's setting); full: sigma(x + delta).")
@click.option("--executor", type=click.Choice(["serial", "local", "ray"]), default="serial", show_default=True,
              help="serial: this process; local / ray: shards across worker processes / a Ray cluster.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--address", default=None, help="Ray cluster address (auto or HOST:PORT) for --executor ray.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="CSV path (default RUN/certify-SPLIT.csv).")
@seed_option
@device_option
@click.option("--quiet", is_flag=True)
def certify_cmd(run, split, n, r, r_relative, samples, alpha, norm, mode, executor, workers, address,
                out, seed, device, quiet) -> None:
    """Theorem 1 certificates (and the sound, spectral and whitened variants) for N inputs."""
    t0 = time.perf_counter()
    vae, x = _inputs(run, split, n, device)
    radius = resolve_radius(vae.model, x, r, r_relative, samples, seed)
    # one code path for every executor: each block of inputs draws its noise from a generator
    # seeded by (seed, the block's first index), whatever the executor (see robvae.sweep.shard)
    from ..sweep import certify_sharded

    # the serial path uses every core (workers use one thread each): Monte Carlo counts agree
    # exactly across executors, radii to float rounding
    cols = certify_sharded(run, x, radius, executor=executor, workers=workers, address=address, seed=seed,
                           device=device, progress=not quiet, n_samples=samples, alpha=alpha, mode=mode,
                           torch_threads=None if executor == "serial" else 1)
    rows = [{"index": i, **{k: v[i].item() for k, v in cols.items()}} for i in range(len(x))]
    out_path = Path(out) if out else Path(run) / f"certify-{split}.csv"
    lead = {"frobenius": "radius", "spectral": "radius_spectral", "whitened": "radius_whitened"}[norm]
    summary = {
        "inputs": len(x), "r": radius, "mode": mode, "samples": samples, "alpha": alpha,
        f"median {lead}": _median(cols[lead]),
        "median radius_sound": _median(cols["radius_sound"]),
        "abstain": int(cols["abstain"].sum()), "abstain_sound": int(cols["abstain_sound"].sum()),
        **{f"p q{int(q * 100)}": float(np.quantile(cols["p"], q)) for q in (0.05, 0.5, 0.95)},
        "seconds": time.perf_counter() - t0,
    }
    _save(out_path, rows, {"command": "certify", "run": str(run), "split": split, "n": n, "r": radius,
                           "r_relative": r_relative, "samples": samples, "alpha": alpha, "mode": mode,
                           "executor": executor, "seed": seed, "summary": summary})
    click.echo(format_summary(summary))
    click.echo(f"per-input results: {out_path}")


@app.command("attack")
@run_argument
@split_option
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), required=True, help="Perturbation budget.")
@click.option("--norm", type=click.Choice(["l2", "linf"]), default="l2", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--restarts", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--eta-samples", type=click.IntRange(min=0), default=4, show_default=True,
              help="Draws of eta averaged in the objective (0: eta = 0).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default RUN/attack-SPLIT).")
@seed_option
@device_option
def attack_cmd(run, split, n, eps, norm, steps, restarts, eta_samples, out, seed, device) -> None:
    """Maximum-damage attack: damage and likelihood degradation per input, and a PNG."""
    from ..attacks import max_damage_attack
    from ..metrics import likelihood_degradation, reconstruction_damage
    from ..report.figures import image_grid

    vae, x = _inputs(run, split, n, device)
    model = vae.model
    g = torch.Generator(device=x.device).manual_seed(seed)
    delta = max_damage_attack(model, x, eps, norm=norm, steps=steps, restarts=restarts, eta_samples=eta_samples,
                              generator=g)
    with torch.no_grad():
        damage = reconstruction_damage(model, x, delta)
        degr = likelihood_degradation(model, x, delta)
        size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
        recon, recon_adv = model.reconstruct(x), model.reconstruct(x + delta)
    out_dir = Path(out) if out else Path(run) / f"attack-{split}"
    rows = [{"index": i, "delta_norm": float(size[i]), "damage": float(damage[i]),
             "likelihood_degradation": float(degr[i])} for i in range(len(x))]
    from ..studies.stats import quartiles

    q25, med, q75 = quartiles(damage.cpu().numpy())
    summary = {"inputs": len(x), "eps": eps, "norm": norm, "damage median": med, "damage q25": q25,
               "damage q75": q75, "median degradation": _median(degr.cpu().numpy())}
    _save(out_dir / "attack.csv", rows, {"command": "attack", "run": str(run), "split": split, "n": n, "eps": eps,
                                         "norm": norm, "steps": steps, "restarts": restarts,
                                         "eta_samples": eta_samples, "seed": seed, "summary": summary})
    k = min(10, len(x))
    image_grid([x[:k], (x + delta)[:k], recon[:k], recon_adv[:k]], out_dir / "attack.png",
               row_titles=["x", "x + delta", "g(mu(x))", "g(mu(x+delta))"])
    click.echo(format_summary(summary))
    click.echo(f"per-input results: {out_dir / 'attack.csv'}; images: {out_dir / 'attack.png'}")


@app.command("margin")
@run_argument
@split_option
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True)
@add_options(radius_options)
@samples_option
@click.option("--mode", type=click.Choice(["full", "mean"]), default="full", show_default=True,
              help="full: the attack moves mu and sigma (SPEC 6 default); mean: sigma held at sigma(x).")
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--restarts", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True,
              help="Relative width of the bisection bracket.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="CSV path (default RUN/margin-SPLIT.csv).")
@seed_option
@device_option
@click.option("--quiet", is_flag=True)
def margin_cmd(run, split, n, r, r_relative, samples, mode, steps, restarts, tol, batch_size, out, seed, device,
               quiet) -> None:
    """Empirical (sampled) margins beside the Theorem 1 bounds, and their correlation."""
    from tqdm.auto import tqdm

    from ..robustness import certify, empirical_margin
    from ..studies.stats import count_above, pearson, spearman

    vae, x = _inputs(run, split, n, device)
    model = vae.model
    radius = resolve_radius(model, x, r, r_relative, samples, seed)
    g = torch.Generator(device=x.device).manual_seed(seed)
    cert = certify(model, x, radius, n_samples=samples, generator=g)
    margins = []
    for i in tqdm(range(0, len(x), batch_size), desc="margin", disable=quiet, unit="batch"):
        sl = slice(i, i + batch_size)
        res = empirical_margin(model, x[sl], radius, mode=mode, eps_init=cert.radius[sl].clamp(min=1e-3),
                               tol=tol, n_samples=samples, steps=steps, restarts=restarts, generator=g)
        margins.append(res.margin)
    margin = torch.cat(margins).cpu().numpy()
    bound = cert.radius.cpu().numpy()
    ok = ~cert.abstain.cpu().numpy() & np.isfinite(bound)
    above = count_above(margin[ok], bound[ok])
    pear, spear = pearson(bound[ok], margin[ok]), spearman(bound[ok], margin[ok])
    rows = [{"index": i, "bound": float(bound[i]), "margin": float(margin[i]), "p": float(cert.p[i]),
             "abstain": bool(cert.abstain[i])} for i in range(len(x))]
    summary = {"inputs": len(x), "r": radius, "mode": mode, "median bound": _median(bound[ok]),
               "median margin": _median(margin), "pearson": pear, "spearman": spear,
               "bound > margin": above, "abstain": int((~ok).sum())}
    out_path = Path(out) if out else Path(run) / f"margin-{split}.csv"
    _save(out_path, rows, {"command": "margin", "run": str(run), "split": split, "n": n, "r": radius,
                           "r_relative": r_relative, "samples": samples, "mode": mode, "steps": steps,
                           "restarts": restarts, "tol": tol, "seed": seed, "summary": summary})
    click.echo(format_summary(summary))
    click.echo(f"per-input results: {out_path}")
