"""Shared click options and helpers for the robvae commands."""

from __future__ import annotations

import click

from ..objectives import OBJECTIVES

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


def float_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """Parse "1,2,4" into [1.0, 2.0, 4.0]; a bad entry is a usage error naming the option."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


dataset_option = click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
                              help="Data set to train on.")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="Folder holding the data files (MNIST/Fashion-MNIST IDX, cifar-10-batches-py).")
objective_option = click.option("--objective", type=click.Choice(OBJECTIVES), default="elbo", show_default=True)
device_option = click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, ...")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def format_table(rows: list[dict], floatfmt: str = ".4g") -> str:
    """A plain aligned text table of dicts (same keys), for terminal summaries."""
    if not rows:
        return "(empty)"
    keys = list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    cells = [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def format_summary(summary: dict, floatfmt: str = ".4g") -> str:
    """A two-column "quantity  value" listing of a summary dict."""
    w = max(len(str(k)) for k in summary)
    return "\n".join(f"{str(k).ljust(w)}  {format(v, floatfmt) if isinstance(v, float) else v}" for k, v in summary.items())


run_argument = click.argument("run", type=click.Path(exists=False, file_okay=False))
split_option = click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
n_option = click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True,
                        help="Number of inputs (the first N of the split).")
radius_options = [
    click.option("--r", "r", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="Radius r of r-robustness (L2 distance between reconstructions)."),
    click.option("--r-relative", "r_relative", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="r = K times the median r_min(x) over the inputs (when no natural scale is known)."),
]
samples_option = click.option("--samples", type=click.IntRange(min=1), default=1000, show_default=True,
                              help="Monte Carlo draws of eta per estimate of p.")


def add_options(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco
