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
