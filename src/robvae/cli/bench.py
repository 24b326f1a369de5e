"""``robvae bench [ZOO.yaml] --out DIR``: the robustness benchmark over a model zoo (and user models)."""

from __future__ import annotations

import shlex

import click

from ..fileio import folder_lock
from ..sweep import EXECUTORS
from ..threads import MAX_THREADS
from . import app
from .options import int_list
from ..bench import load_zoo, parse_zoo, run_bench


@app.command("bench")
@click.argument("zoo_file", metavar="[ZOO.yaml]", required=False, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the zoo file's out:). Rerunning into it resumes.")
@click.option("--model", "models", multiple=True, metavar="MODULE:CALLABLE",
              help="A user model to add: the callable returns (model, name). Repeatable.")
@click.option("--subset", default=None,
              help="The protocol's test subset (digits, mnist-10k, fashion-mnist); default: the zoo's, else digits.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the subset's data files (default: the protocol's).")
@click.option("--seeds", default=None, callback=int_list, metavar="0,1",
              help="Train these seeds instead of the zoo's (finished models of other seeds are kept on disk).")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="How the zoo is trained (robvae sweep): worker processes, Ray tasks, or this process.")
@click.option("--workers", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="Training processes (local) or CPUs of the local Ray instance.")
@click.option("--address", default=None, help="Ray cluster address (auto or HOST:PORT) for --executor ray.")
@click.option("--dry-run", is_flag=True, help="Validate the zoo, list the models and the protocol, and exit.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench_cmd(zoo_file, out, models, subset, data_dir, seeds, executor, workers, address, dry_run, quiet) -> None:
    """Train a model zoo, evaluate every model under the fixed protocol (v1), write a leaderboard.

    \b
    ZOO.yaml (see examples/zoo-digits.yaml and docs/BENCHMARK.md):
      protocol: v1
      subset: digits
      seeds: [0, 1]
      base: {epochs: 30, model: {latent_dim: 8, hidden: [128]}}
      methods: [vae, {method: beta-vae, beta: [2, 4]}, {method: jacobian, weight: [0.1]}]
      models: [my_pkg.my_module:build]
    Writes OUT/leaderboard.md, leaderboard.csv, tradeoff.png and report.html.
    """
    if zoo_file is None and not models:
        raise click.UsageError("give a zoo file, or at least one --model MODULE:CALLABLE")
    if address is not None and executor != "ray":  # as robvae sweep and certify: it would be ignored
        raise click.UsageError("--address joins a Ray cluster: it goes with --executor ray")
    if zoo_file is not None:
        zoo = load_zoo(zoo_file, extra_models=list(models), seeds=seeds)
    else:
        zoo = parse_zoo({"subset": subset or "digits", "models": list(models)}, source="--model")
    if zoo_file is not None and subset is not None and subset != zoo.subset:
        raise click.UsageError(f"--subset {subset} differs from the zoo's subset {zoo.subset}; edit the zoo file")
    if data_dir is not None:
        zoo.data_dir = data_dir
        for t in zoo.trials:
            t.train.data_dir, t.data_root = data_dir, None  # the user's folder, from the working folder
    out_dir = out or zoo.out
    if not out_dir:
        raise click.UsageError("no output folder: give --out or set out: in the zoo file")
    click.echo(zoo.protocol.describe(zoo.subset))
    if dry_run:
        for e in zoo.entries:
            click.echo(f"  {e.name}: {len(e.trials)} model(s) ({', '.join(t.id for t in e.trials)})")
        for m in zoo.models:
            click.echo(f"  user model {m}")
        click.echo(f"{len(zoo.trials)} models to train, {len(zoo.models)} user models -> {out_dir}")
        return
    parts = ["robvae bench"] + ([shlex.quote(str(zoo_file))] if zoo_file else []) + \
        [f"--model {shlex.quote(m)}" for m in models] + \
        ([f"--subset {subset}"] if subset and not zoo_file else []) + \
        ([f"--data-dir {shlex.quote(data_dir)}"] if data_dir else []) + \
        ([f"--seeds {','.join(map(str, seeds))}"] if seeds else []) + \
        ["--executor", executor, "--workers", str(workers)] + \
        ([f"--address {shlex.quote(address)}"] if address else []) + ["--out", shlex.quote(str(out_dir))]
    with folder_lock(out_dir, "robvae bench"):
        board = run_bench(zoo, out_dir, executor=executor, workers=workers, address=address, progress=not quiet,
                          command=" ".join(parts), echo=lambda s: None)
    click.echo("")
    click.echo(board.markdown)
    for name, err in board.failed:
        click.echo(f"  failed: {name}: {err}")
    click.echo(f"\nleaderboard: {board.out}/leaderboard.md, leaderboard.csv, tradeoff.png, report.html "
               f"({len(board.models)} model{'' if len(board.models) == 1 else 's'}, {len(board.failed)} failed)")
    if board.failed:  # as robvae sweep: the leaderboard is written, but the command did not do everything
        raise click.exceptions.Exit(1)
