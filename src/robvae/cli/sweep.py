"""``robvae sweep SWEEP.yaml``: run a grid of train-then-evaluate trials (local processes or Ray)."""

from __future__ import annotations

import os
import shlex

import click

from ..data.registry import missing_data
from ..fileio import folder_lock
from . import app
from .options import FiniteFloat
from ..sweep import collect, is_done, load_sweep, run_trials
from ..sweep.results import write_study
from ..threads import MAX_THREADS


@app.command("sweep")
@click.argument("sweep_file", metavar="SWEEP.yaml", type=click.Path(dir_okay=False))
@click.option("--executor", type=click.Choice(["local", "ray", "serial"]), default="local", show_default=True,
              help="local: a pool of worker processes; ray: one Ray task per trial; serial: this process.")
@click.option("--address", default=None,
              help="Ray cluster to join (auto or HOST:PORT); default: start a local Ray instance.")
@click.option("--workers", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="Worker processes (local) or CPUs of the local Ray instance.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the sweep file's out:). Every Ray node must see it at the same path.")
@click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Reruns of a trial whose worker process died.")
@click.option("--cpus-per-trial", type=FiniteFloat(min=0, min_open=True), default=1, show_default=True,
              help="Ray CPUs reserved per trial (and torch threads per trial).")
@click.option("--gpus-per-trial", type=FiniteFloat(min=0), default=0, show_default=True,
              help="Ray GPUs reserved per trial (set device: cuda in base:).")
@click.option("--dry-run", is_flag=True, help="List the trials and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep_cmd(sweep_file, executor, address, workers, out, max_retries, cpus_per_trial, gpus_per_trial, dry_run,
              quiet) -> None:
    """Run the grid of trials in SWEEP.yaml; a rerun skips finished trials and retries the rest.

    \b
    SWEEP.yaml:
      out: runs/my-sweep          # output folder
      base: {dataset: digits, epochs: 5, model: {latent_dim: 4}, objective: {name: beta-vae}}
      grid: {objective.beta: [1, 4], seed: [0, 1]}
      evaluation: {n: 50}         # an EvalConfig, or null
    Results: OUT/results.csv and OUT/results.json (one row per trial); OUT/trials/ID/ per trial.
    """
    spec = load_sweep(sweep_file)
    out_dir = out or spec.out
    if not out_dir:
        raise click.UsageError("no output folder: give --out or set out: in the sweep file")
    missing = _missing_data([t for t in spec.trials if not is_done(out_dir, t)])  # done trials are skipped
    if dry_run:
        for t in spec.trials:
            click.echo(f"{t.id}  {t.name}")
        click.echo(f"{len(spec.trials)} trials -> {out_dir}/trials/")
        if missing:
            click.echo(f"robvae: error: {missing}", err=True)
            raise click.exceptions.Exit(1)
        return
    if executor != "ray" and address:
        raise click.UsageError("--address needs --executor ray")
    if missing and address is None:  # on a cluster the nodes may hold data this machine lacks
        raise click.UsageError(missing)
    if missing:
        click.echo(f"robvae: note: {missing}; the trials will fail unless the cluster's nodes have it", err=True)
    command = " ".join(["robvae sweep", shlex.quote(str(sweep_file)), "--executor", executor, "--workers", str(workers)]
                       + (["--address", address] if address else []) + ["--out", shlex.quote(str(out_dir))])
    with folder_lock(out_dir, "robvae sweep"):  # the tables and study.json too: a second sweep waits for them
        results = run_trials(spec.trials, out_dir, executor=executor, workers=workers, address=address,
                             progress=not quiet, max_retries=max_retries, cpus_per_trial=cpus_per_trial,
                             gpus_per_trial=gpus_per_trial)
        write_study(out_dir, command=command, config=spec.doc, grid=spec.grid)
        rows = collect(out_dir, write=False)
    n_done = sum(r.status == "done" for r in results)
    n_skip = sum(r.skipped for r in results)
    failed = [r for r in results if r.status != "done"]
    click.echo(f"{len(results)} trials: {n_done} done ({n_skip} already done before), {len(failed)} failed")
    for r in failed:
        click.echo(f"  {r.status}: {r.id} {r.name}: {r.error} (see {r.dir / 'status.json'})")
    click.echo(f"results: {out_dir}/results.csv, results-brief.csv, results.json ({len(rows)} row{'' if len(rows) == 1 else 's'}); "
               f"robvae report {out_dir} renders them")
    if failed:
        raise click.exceptions.Exit(1)


def _missing_data(trials) -> str | None:
    """One line naming the data the trials would not find (before any worker starts), or None.
    Relative data_dir paths are read from the current folder, as the workers read them."""
    found: dict[str, list[str]] = {}
    relative, key = False, "data_dir"
    for t in trials:
        wanted = [(t.train.dataset, split, t.train.data_dir, "data_dir") for split in ("train", "test")]
        ev = t.evaluation
        if ev is not None and ev.data_dir is not None:
            wanted.append((t.train.dataset, ev.split, ev.data_dir, "evaluation.data_dir"))
        for dataset, split, data_dir, field in wanted:
            folder = None if data_dir is None else os.path.expanduser(data_dir)
            why = missing_data(dataset, split, folder)
            if why:
                if not found:
                    relative, key = folder is not None and not os.path.isabs(folder), field
                found.setdefault(why, []).append(t.id)
                break
    if not found:
        return None
    why, ids = next(iter(found.items()))
    more = sum(len(v) for v in found.values()) - 1
    hint = (f"; relative {key} paths are read from the current folder ({os.getcwd()}): run robvae sweep from "
            "the folder they are relative to (the repository root for its examples/), or give absolute paths"
            if relative else f"; set {key} in the sweep file")
    return f"{why} (trial {ids[0]}{f' and {more} more' if more else ''}){hint}"
