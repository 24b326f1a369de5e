"""``robvae certify``, ``robvae attack`` and ``robvae margin``: thin faces over robvae.robustness and
robvae.evaluation (``attack_report``, ``margin_report``)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from pathlib import Path

import click

from ..attacks import PRESETS
from ..data import load_dataset
from ..data.download import default_data_dir
from ..errors import InputError
from ..evaluation import (
    LEGACY_ATTACK, EvalConfig, attack_report, calibration_r_min, jsonable, margin_report, relative_radius,
)
from ..fileio import check_not_held, folder_lock, result_paths, run_digest, write_results
from ..models.fast_decode import MAX_SAMPLES
from ..robustness import CertifyConfig
from ..robustness.rigorous import rigorous_columns
from ..sweep import BLOCK_SIZE, SHARD_EXECUTORS, certify_sharded, partial_folder
from ..threads import auto_executor
from ..training import load
from . import app
from .model_spec import (
    certify_blocks, from_spec, model_options, model_run, optional_run_argument, output_label, source_meta,
)
from .options import (
    FiniteFloat,
    ConfigOption, add_options, auto_workers_option, config_option, device_option, download_option,
    eval_option as _eval, format_summary, n_option, one_radius, radius_options, run_data_dir_option, seed_option,
    split_option, threads_option, warn_if_fewer,
)


def _inputs(run_dir: str, split: str, n: int, device: str, data_dir: str | None = None, download: bool = False):
    """Load the run and the first n inputs of its data set's split (from ``data_dir`` when given,
    else the folder the run was trained from); says so when the split has fewer than n.
    With ``--model`` (robvae.cli.model_spec) the model and inputs come from there instead."""
    given = model_run(run_dir, split, n, device, data_dir)
    if given is not None:
        return given
    run = load(run_dir, device=device)
    if data_dir is not None and run.config.dataset == "digits":  # it would be ignored without a word
        click.echo(f"robvae: note: --data-dir {data_dir} is not used: the run's data set, digits, is embedded",
                   err=True)
    folder = data_dir or run.config.data_dir
    if download and folder is None and run.config.dataset != "digits":
        folder = str(default_data_dir(run.config.dataset))
    data = load_dataset(run.config.dataset, split, folder, download=download)
    warn_if_fewer("--n", n, f"the {split} split of {run.config.dataset}", len(data))
    data = data.subset(n)
    return run, data.images.to(device)


#: Draws per input of the --r-relative calibration (at most; fewer when --samples is smaller): r is
#: one number, the median over the inputs of per-input medians, so 1,000 draws each pin it down to
#: well under 1% on a test set, at a tenth of the decoder work of a certify run at --n-samples 10000.
CALIBRATION_SAMPLES = 1000


def resolve_radius(model, x, r: float | None, r_relative: float | None, n_samples: int, seed: int) -> float:
    """r as given, or K times the median r_min(x) over the inputs, drawn as the evaluation (and so
    ``robvae margin``) draws them, with min(n_samples, CALIBRATION_SAMPLES) draws each: for
    n_samples <= CALIBRATION_SAMPLES, certify and margin give the same r for the same inputs and seed."""
    if r is not None:
        return float(r)
    rmin = calibration_r_min(model, x, min(n_samples, CALIBRATION_SAMPLES), seed)
    return relative_radius(float(r_relative), rmin)


@app.command("certify")
@optional_run_argument
@add_options(model_options)
@split_option
@n_option
@add_options(radius_options)
@config_option(CertifyConfig, "n_samples", aliases=("--samples",), type=click.IntRange(1, MAX_SAMPLES),
               help="Monte Carlo draws of eta per estimate of p.")
@config_option(CertifyConfig, "alpha", type=FiniteFloat(0, 0.5, min_open=True, max_open=True),
               help="Confidence level 1 - alpha of the sound (Clopper-Pearson) radius.")
@click.option("--jacobian-norm", "--norm", "jacobian_norm", cls=ConfigOption, aliases=("--norm",),
              type=click.Choice(["frobenius", "spectral", "whitened"]), default="frobenius", show_default=True,
              help="Which radius the summary leads with: the Jacobian norm in the denominator (all are saved).")
@config_option(CertifyConfig, "mode", help="mean: sigma(x) held (Theorem 1's setting); full: sigma(x + delta).")
@config_option(CertifyConfig, "precision",
               help="The decoder's arithmetic for the draws: bfloat16 runs its heaviest layer in bfloat16 with "
                    "rigorous error bounds and decodes undecided draws again in float32, so every count (and "
                    "certificate) equals float32's; auto: bfloat16 where it is measured faster (MLP decoders, "
                    "worker processes, CPUs with native bfloat16), given up for float32 once more than 10% of its draws "
                    "are decoded again.")
@config_option(CertifyConfig, "early_abstain",
               help="Stop drawing for an input once an anytime-valid sequential test settles p < 1/2 at level "
                    "--alpha: it abstains, with p from the draws made (column n_drawn). Other inputs get the "
                    "same draws and certificates as with --no-early-abstain.")
@click.option("--rigorous/--no-rigorous", default=True, show_default=True,
              help="Also the rigorous radii (hold for every perturbation; docs/THEORY.md section 8), mean-only and "
                   "full, for models with Lipschitz bounds (robvae's VAE, the linear VAE); skipped with a note "
                   "for other models.")
@click.option("--executor", type=click.Choice(("auto", *SHARD_EXECUTORS)), default="auto", show_default=True,
              help="serial: this process; local / ray: shards across worker processes / a Ray cluster; auto: local "
                   "with one process per core when the work is large, else serial (robvae.threads).")
@auto_workers_option
@threads_option
@click.option("--address", default=None, help="Ray cluster address (auto or HOST:PORT) for --executor ray.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="CSV path (default RUN/certify-SPLIT.csv; with --inputs FILE, certify-FILE.csv).")
@seed_option
@device_option
@run_data_dir_option
@download_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_radius
def certify_cmd(run, split, n, r, r_relative, n_samples, alpha, jacobian_norm, mode, precision, early_abstain, rigorous,
                executor, workers, address, out, seed, device, quiet, data_dir, download) -> None:
    """Theorem 1 certificates (and the sound, spectral and whitened variants) for N inputs."""
    t0 = time.perf_counter()
    if r is not None:
        r_relative = None  # --r replaces --r-relative (both given: a usage error, robvae.cli.options.one_radius)
    if address is not None and executor != "ray":  # as robvae sweep: it would be ignored
        raise click.UsageError("--address joins a Ray cluster: it goes with --executor ray")
    if executor == "serial" and workers is not None and workers > 1:  # it would be ignored
        raise click.UsageError("--workers goes with --executor auto, local or ray (serial runs in this process; "
                               "its threads are --threads)")
    # a RUN folder: its workers load it again, so it must not change while certify runs; its digest
    # from before it is loaded here is checked by certify_sharded and by every shard
    digest = _folder_digest(run)
    vae, x = _inputs(run, split, n, device, data_dir, download)
    if from_spec(vae):  # --model: no run folder to check
        digest = None
    else:  # e.g. a robvae train extending the run
        check_not_held(run, "certify it once that has finished")
    default = Path(vae.path) / f"certify-{output_label(vae, split)}.csv"
    out_path, json_path = result_paths(Path(out) if out else default, "certify")
    # one code path for every executor: each block of inputs draws its noise from a generator
    # seeded by (seed, the block's first index), whatever the executor (see robvae.sweep.shard);
    # the serial path uses every core (workers use one thread each): Monte Carlo counts agree
    # exactly across executors, radii to float rounding
    if from_spec(vae) and executor == "auto":
        executor = "serial"  # --model runs in this process (workers load a RUN folder)
    executor, workers = auto_executor(len(x) * n_samples, executor, workers, device,
                                      units=math.ceil(len(x) / BLOCK_SIZE))
    if from_spec(vae) and executor != "serial":
        raise click.UsageError("--executor local / ray need a RUN folder (the workers load it); --model runs in "
                               "this process")
    # finished shards are kept here until the CSV is written: an interrupted run resumes from them;
    # held under a lock, so that two commands into one --out never save into each other's folder
    partial = partial_folder(out_path)
    with folder_lock(partial, "robvae certify", what=f"output {out_path}"):
        # r under the lock: a second certify into this --out is refused before its calibration
        radius = resolve_radius(vae.model, x, r, r_relative, n_samples, seed)
        if from_spec(vae):  # --model: this process, blocks seeded as certify_sharded's
            cert = certify_blocks(vae.model, x, radius, seed=seed, progress=not quiet, n_samples=n_samples,
                                  alpha=alpha, mode=mode, precision=precision, early_abstain=early_abstain,
                                  partial=partial)
        else:
            cert = certify_sharded(run, x, radius, executor=executor, workers=workers, address=address, seed=seed,
                                   device=device, progress=not quiet, n_samples=n_samples, alpha=alpha, mode=mode,
                                   precision=precision, early_abstain=early_abstain,
                                   torch_threads=None if executor == "serial" else 1,  # serial: --threads
                                   partial=partial, weights_digest=digest)
        rigorous_note = "off (--no-rigorous)"
        if rigorous:  # from the certificate's p_lower and sigma_min: the same for every executor
            try:
                cert.extras.update(rigorous_columns(vae.model, x, cert.p_lower, cert.sigma_min))
                rigorous_note = "Lipschitz bounds from the weights"
            except InputError as e:
                rigorous_note = f"not available for this model ({e})"
                click.echo(f"robvae: note: no rigorous radii: {e}", err=True)
        summary = cert.summary()
        lead = {"frobenius": "radius", "spectral": "radius_spectral", "whitened": "radius_whitened"}[jacobian_norm]
        r_from = "absolute" if r_relative is None else f"{r_relative:g} x median r_min"  # as evaluation's r_from
        summary = {"lead": lead, **{k: v for item in summary.items()
                                    for k, v in ([item, ("r_from", r_from)] if item[0] == "r" else [item])},
                   "rigorous": rigorous_note, "seconds": time.perf_counter() - t0}
        _unchanged(run, digest, "certify")()
        write_results(out_path, cert.to_rows(), json_path, jsonable({  # an infinite median radius as "inf"
            "command": "certify", "run": str(run), **source_meta(vae, split), **_digest_meta(digest),
            "n": len(x), "r": radius, "r_relative": r_relative,
            "calibration_samples": None if r_relative is None else min(n_samples, CALIBRATION_SAMPLES),
            "n_samples": n_samples, "alpha": alpha, "mode": mode, "precision": precision,
            "early_abstain": early_abstain, "rigorous": rigorous, "executor": executor, "seed": seed,
            "summary": summary}))
        shutil.rmtree(partial, ignore_errors=True)
        click.echo(format_summary({k: v for k, v in summary.items() if not isinstance(v, dict)}))
        click.echo(f"per-input results: {out_path}")
        lead_radius = getattr(cert, lead)
        beyond = int((lead_radius > math.sqrt(x[0].numel())).sum())
        if beyond:  # a first-order, mean-only radius past the whole pixel box says nothing useful
            rig = (" The rigorous radii (radius_rigorous_*) hold for every perturbation." if rigorous_note.startswith(
                "Lipschitz") else "")
            click.echo(f"robvae: note: {beyond} of {len(cert)} Theorem 1 radii ({lead}) exceed the diameter of the "
                       f"pixel box (sqrt(D) = {math.sqrt(x[0].numel()):.3g}) or are infinite: they are first-order and "
                       "hold with sigma(x) held fixed (docs/THEORY.md section 3); an attack that also moves sigma(x) "
                       f"can break robustness far inside them.{rig}", err=True)


def _folder_digest(run: str | None) -> str | None:
    """:func:`run_digest` of a RUN folder, taken before the command loads it (None without one; a
    ``--model`` command's folder is its output folder and the caller drops it once loaded)."""
    return run_digest(run) if run is not None and Path(run).is_dir() else None


def _digest_meta(digest: str | None) -> dict[str, str]:
    """``{"run_digest": ...}`` for a result of a run folder (the digest of its config and weights
    before they were loaded; ``robvae report`` flags results whose run has changed since), else {}."""
    return {} if digest is None else {"run_digest": digest}


def _unchanged(run: str | None, digest: str | None, command: str):
    """A check, run just before a command writes its results, that the run folder still holds the
    config and weights it had when the command loaded it (``digest``; None: nothing to check): a
    robvae train extending the run meanwhile made attack and margin save the old model's results
    into the new model's folder (audit h73)."""
    def check() -> None:
        if digest is not None and run_digest(run) != digest:
            raise InputError(f"the run folder {run} changed while robvae {command} ran (a robvae train extending "
                             "it?): its results were not written; rerun the command once that has finished")
    return check


#: where attack and margin run and where a run's data is read from
_RUN_OPTIONS = [threads_option, device_option, run_data_dir_option, download_option]


@app.command("attack")
@optional_run_argument
@add_options(model_options)
@split_option
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of inputs (the first N of the split).")
@click.option("--eps", type=FiniteFloat(min=0, min_open=True), required=True,
              help="Perturbation budget: the largest ||delta|| allowed, in the norm of --threat (L2 by default).")
@click.option("--threat", "--norm", "norm", cls=ConfigOption, aliases=("--norm",), type=click.Choice(["l2", "linf"]),
              default="l2", show_default=True,
              help="Threat model: the norm of the budget --eps, l2 (Euclidean) or linf (largest pixel change).")
@click.option("--preset", type=click.Choice([*PRESETS, "legacy"]), default="cheap", show_default=True,
              help="The attack: the ensemble (robvae.attacks.EnsembleAttack) cheap (fast) or strong (final "
                   "numbers), or legacy: one PGD run (max_damage_attack) with --steps / --restarts / --eta-samples.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help=f"--preset legacy: projected-gradient steps per restart [default: {LEGACY_ATTACK['steps']}].")
@click.option("--restarts", type=click.IntRange(min=1), default=None,
              help=f"--preset legacy: random starts per input; the most damaging is kept [default: "
                   f"{LEGACY_ATTACK['restarts']}].")
@click.option("--eta-samples", type=click.IntRange(min=0), default=None,
              help=f"--preset legacy: draws of eta averaged in the objective (0: eta = 0) [default: "
                   f"{LEGACY_ATTACK['eta_samples']}].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default RUN/attack-SPLIT; with --inputs FILE, attack-FILE).")
@seed_option
@add_options(_RUN_OPTIONS)
@click.option("--batch-size", type=click.IntRange(min=1), default=25, show_default=True,
              help="Inputs attacked together (the progress bar moves per batch). The random starts come from one "
                   "stream across the batches, so another batch size gives other, equally valid, perturbations.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def attack_cmd(run, split, n, eps, norm, preset, steps, restarts, eta_samples, out, seed, device, data_dir,
               download, batch_size, quiet) -> None:
    """Maximum-damage attack: deterministic and expected damage, likelihood degradation per input, and a PNG."""
    pgd = {"steps": steps, "restarts": restarts, "eta_samples": eta_samples}
    if preset != "legacy" and any(v is not None for v in pgd.values()):  # before loading anything
        given = ", ".join("--" + k.replace("_", "-") for k, v in pgd.items() if v is not None)
        raise click.UsageError(f"{given} only apply to --preset legacy (the ensemble presets have no step settings)")
    digest = _folder_digest(run)
    vae, x = _inputs(run, split, n, device, data_dir, download)
    if from_spec(vae):
        digest = None
    else:  # e.g. a robvae train extending the run
        check_not_held(run, "attack it once that has finished")
    out_dir = Path(out) if out else Path(vae.path) / f"attack-{output_label(vae, split)}"
    with folder_lock(out_dir, "robvae attack"):  # a second attack into this folder would mix its files in
        rep = attack_report(vae.model, x, eps, norm=norm, preset=preset, batch_size=batch_size, seed=seed,
                            out_dir=out_dir, progress=not quiet,
                            meta={"run": str(run), **source_meta(vae, split), **_digest_meta(digest), "n": len(x)},
                            check=_unchanged(run, digest, "attack"), **pgd)
    click.echo(format_summary(rep.summary))
    if not callable(getattr(vae.model, "log_likelihood", None)):  # its column is NaN: say why
        click.echo("robvae: note: no likelihood degradation: the model has no log_likelihood(x, z)", err=True)
    images = f"; images: {rep.paths['png']}" if "png" in rep.paths else ""
    click.echo(f"per-input results: {rep.paths['csv']}{images}")


@app.command("margin")
@optional_run_argument
@add_options(model_options)
@_eval("split", help="Data split.")
@_eval("n", type=click.IntRange(min=1), help="Number of inputs (the first N of the split).")
@_eval("r", type=FiniteFloat(min=0, min_open=True),
       help="Radius r of r-robustness (L2 distance between reconstructions); replaces --r-relative.")
@_eval("r_relative", type=FiniteFloat(min=0, min_open=True),
       help="Without --r: r = K times the median r_min(x) over the inputs.")
@_eval("n_samples", aliases=("--samples",), type=click.IntRange(1, MAX_SAMPLES),
       help="Monte Carlo draws of eta per estimate of p.")
@_eval("alpha", type=FiniteFloat(0, 0.5, min_open=True, max_open=True),
       help="Level alpha: the sound (Clopper-Pearson) radius holds with confidence 1 - alpha, and each "
            "decision of the margin search errs with probability at most alpha.")
@_eval("margin_mode", aliases=("--mode",),
       help="full: the attack moves mu and sigma (the default); mean: sigma held at sigma(x).")
@_eval("attack_preset", aliases=("--preset",),
       help="Attack ensemble preset of the margin search (robvae.attacks.EnsembleAttack): cheap or strong.")
@_eval("rigorous", help="Also the rigorous radii (models with Lipschitz bounds) and how many exceed the margin.")
@_eval("margin_tol", aliases=("--tol",), type=FiniteFloat(min=0, min_open=True),
       help="Relative width of the bisection bracket, where the decisions settle: a budget whose decision "
            "cannot be settled within --n-samples draws ends the search with a wider bracket (column "
            "margin_upper; more draws narrow it).")
@_eval("margin_eps_max", type=FiniteFloat(min=0, min_open=True),
       help="Largest budget searched (default: the pixel box diameter).")
@_eval("batch_size", type=click.IntRange(min=1),
       help="Inputs per batch. A batch's margin searches share one random stream, so another batch size gives "
            "other, equally valid, margins (within their brackets); r does not change.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="CSV path (default RUN/margin-SPLIT.csv; with --inputs FILE, margin-FILE.csv).")
@_eval("seed", help="Random seed.")
@add_options(_RUN_OPTIONS)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_radius
def margin_cmd(run, out, quiet, download, **kw) -> None:
    """Empirical (sampled) margins beside the Theorem 1 bounds, and their correlation.

    Violations (bound above the margin) are counted only where both Monte Carlo estimates agree
    the input is robust and the margin search was not capped; the other inputs are counted in
    their own columns. The statistics are robvae.stats.bound_stats, as in `robvae study
    bound-vs-margin`."""
    config = EvalConfig(**kw)
    digest = _folder_digest(run)
    loaded, _ = _inputs(run, config.split, config.n, config.device, config.data_dir, download)
    if download and config.data_dir is None and loaded.config.data_dir is None and loaded.config.dataset != "digits":
        config = dataclasses.replace(config, data_dir=str(default_data_dir(loaded.config.dataset)))  # fetched there
    if from_spec(loaded):
        digest = None
    else:  # e.g. a robvae train extending the run
        check_not_held(run, "measure its margins once that has finished")
    out_path = Path(out) if out else Path(loaded.path) / f"margin-{output_label(loaded, config.split)}.csv"
    source = {**source_meta(loaded, config.split), **_digest_meta(digest)}  # the split, or the --inputs file
    # held as certify holds its output: a second margin into this --out would write its CSV / JSON
    # over the first's (each write atomic, the pair from two runs)
    held = partial_folder(out_path)
    with folder_lock(held, "robvae margin", what=f"output {out_path}"):
        rep = margin_report(loaded, config, out_path, progress=not quiet, meta={"run": str(run), **source},
                            check=_unchanged(run, digest, "margin"))
    with contextlib.suppress(OSError):  # emptied by the lock's release; one a killed margin left is removed too
        held.rmdir()
    click.echo(format_summary(rep.summary()))
    click.echo(f"per-input results: {out_path}")
