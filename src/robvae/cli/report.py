"""``robvae report OUT [OUT...] [--html FILE]``: study folders into one self-contained HTML page.

``robvae report --model MODULE:CALLABLE [--dataset NAME | --inputs FILE] [--n N] OUT`` first
evaluates the model into OUT as ``robvae margin`` and ``robvae attack --model`` do
(:func:`robvae.evaluation.margin_report`, then :func:`robvae.evaluation.attack_report` at the
budget :class:`robvae.evaluation.EvalConfig` sets by default), then renders OUT.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import app
from ..evaluation import EvalConfig, attack_report, margin_report
from ..fileio import live_holder
from ..report.html import render_report
from .model_spec import META, model_options, model_run, output_label, source_meta
from .options import add_options, config_option, device_option, run_data_dir_option

#: options that mean something only with --model (a usage error without it)
_MODEL_ONLY = ("model_dataset", "model_inputs", "split", "n", "seed", "device", "data_dir", "quiet")


@app.command("report")
@click.argument("folders", nargs=-1, type=click.Path(file_okay=False))
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Output HTML file (default: report.html in the first folder).")
@click.option("--title", default="robvae studies", show_default=True, help="Title of the HTML page.")
@add_options(model_options)
@config_option(EvalConfig, "split", help="With --model: data split of the inputs.")
@config_option(EvalConfig, "n", type=click.IntRange(min=1), help="With --model: number of inputs (the first N).")
@config_option(EvalConfig, "seed", help="With --model: random seed.")
@device_option
@run_data_dir_option
@click.option("--quiet", is_flag=True, help="With --model: no progress bars.")
@click.pass_context
def report_cmd(ctx, folders, html_file, title, split, n, seed, device, data_dir, quiet) -> None:
    """Render study folders (figures embedded, tables, commands and configs) into one HTML page.

    With --model MODULE:CALLABLE, OUT (one folder, created if missing) first receives the model's
    evaluation: certificates and empirical margins (margin-SPLIT.csv / .json, as `robvae margin`)
    and the fixed-budget attack (attack-SPLIT/, as `robvae attack`), with EvalConfig's defaults."""
    if ctx.meta.get(META, {}).get("model_spec") is not None:
        if len(folders) != 1:
            raise click.UsageError("with --model give one output folder OUT")
        _evaluate(folders[0], EvalConfig(split=split, n=n, seed=seed, device=device, data_dir=data_dir), quiet)
    else:
        given = [p.opts[0] for p in ctx.command.params if p.name in _MODEL_ONLY
                 and ctx.get_parameter_source(p.name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)} go with --model (a folder is rendered as it is)")
        param = next(p for p in ctx.command.params if p.name == "folders")
        if not folders:  # as before --model: at least one folder, each existing
            raise click.MissingParameter(ctx=ctx, param=param)
        folders = tuple(click.Path(exists=True, file_okay=False).convert(f, param, ctx) for f in folders)
        for f in folders:  # rendered all the same (a look at a long study's progress), with a word
            owner = live_holder(f)
            if owner is not None:
                who = f"{owner.get('command', 'robvae')} (pid {owner.get('pid')})" if owner else "another robvae process"
                click.echo(f"robvae: note: {f} is still being written by {who}; the report shows what has "
                           "finished so far", err=True)
    path = render_report(folders, html_file, title=title)
    click.echo(f"report: {path} ({len(folders)} stud{'y' if len(folders) == 1 else 'ies'}; opens with no server)")


def _evaluate(out: str, config: EvalConfig, quiet: bool) -> None:
    """The --model branch: the model's margins and certificates, then the attack, into ``out``."""
    loaded, x = model_run(out, config.split, config.n, config.device, config.data_dir)  # checks the model first
    Path(out).mkdir(parents=True, exist_ok=True)
    meta = {"run": str(out), **source_meta(loaded, config.split)}  # split or --inputs, and the --model spec
    label = output_label(loaded, config.split)  # the split, or the --inputs file's name
    margin_report(loaded, config, Path(out) / f"margin-{label}.csv", progress=not quiet, meta=meta)
    attack_report(loaded.model, x, config.attack_budget(x), preset=config.attack_preset, batch_size=config.batch_size,
                  seed=config.seed, out_dir=Path(out) / f"attack-{label}", progress=not quiet,
                  meta={**meta, "n": len(x)})
