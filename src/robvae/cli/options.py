"""Shared click options and helpers for the robvae commands."""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import types
import typing

import click
import torch
from click.core import ParameterSource

from ..config import R_RELATIVE
from ..data import load_dataset
from ..data.download import default_data_dir
from ..data.idx import FASHION_MNIST_SYSTEM_DIR, find_idx_files
from ..evaluation import EvalConfig
from ..objectives import OBJECTIVES
from ..models.vae import MAX_WIDTH
from ..threads import MAX_THREADS, set_threads
from ..training import MAX_SEED


class FiniteFloat(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (one usage line naming the option): every
    float option of robvae is a finite quantity (a rate, a radius, a budget, a weight), and inf
    had passed to code that overflowed or trained a model that diverged."""

    name = "float"

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")


def _list_parser(kind: type, what: str, into: type = list, ok=lambda v: True):
    """A click callback parsing "1,2,4" into a list (or an ``into``) of ``kind``; a bad or empty entry
    ("1,,4"), or one that fails ``ok`` (nan, a negative width), is a usage error naming the option."""
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list | tuple | None:
        if value is None:
            return None
        try:  # kind("") raises ValueError for int and float: an empty entry is refused like a bad one
            out = into(kind(v) for v in value.split(","))
        except ValueError:
            out = None
        if out is None or not all(ok(v) for v in out):
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}") from None
        return out
    return parse


#: "1,2,4" -> [1.0, 2.0, 4.0] (finite)
float_list = _list_parser(float, "finite numbers", ok=math.isfinite)
#: "0,1,2" -> [0, 1, 2] (seeds: >= 0)
int_list = _list_parser(int, "integers from 0 to 2**63 - 1", ok=lambda v: 0 <= v <= MAX_SEED)
#: "256,128" -> (256, 128) (layer widths: from 1 to robvae.models.vae.MAX_WIDTH)
int_tuple = _list_parser(int, f"integers from 1 to {MAX_WIDTH}", tuple, ok=lambda v: 1 <= v <= MAX_WIDTH)


dataset_option = click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
                              help="Data set to train on.")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="Folder holding the data files (MNIST/Fashion-MNIST IDX, cifar-10-batches-py).")
download_option = click.option(
    "--download", is_flag=True,
    help="Fetch the official MNIST / Fashion-MNIST files (checksummed) into --data-dir, or into "
         "$ROBVAE_DATA_DIR/NAME (default ~/.cache/robvae/NAME), when they are missing.")


def warn_if_fewer(option: str, n: int, source: str, count: int) -> None:
    """The one warning when ``--n`` / ``--n-train`` asks for more images than ``source`` holds
    (all ``count`` of them are used)."""
    if n > count:
        click.echo(f"robvae: warning: {option} {n} is larger than {source} ({count} images): using all {count}",
                   err=True)


def fetch_data(dataset: str, data_dir: str | None) -> str:
    """``--download``: fetch both splits of ``dataset`` into ``data_dir`` (default:
    robvae.data.download.default_data_dir); returns the folder. Fashion-MNIST without a folder is
    read from Debian's package folder when that holds both splits, as the library does."""
    if data_dir is None and dataset == "fashion-mnist" and all(
            find_idx_files(FASHION_MNIST_SYSTEM_DIR, split, dataset) for split in ("train", "test")):
        return str(FASHION_MNIST_SYSTEM_DIR)
    data_dir = data_dir or str(default_data_dir(dataset))
    for split in ("train", "test"):
        load_dataset(dataset, split, data_dir, download=True)
    return data_dir


run_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None,
    help="Folder holding the run's data files (default: the folder the run was trained from).")
objective_option = click.option("--objective", type=click.Choice(OBJECTIVES), default="elbo", show_default=True,
                                help="Training objective (the KL or total-correlation weight is --beta).")
def check_device(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> str | None:
    """A torch device this machine has: "cpu", "cuda", "cuda:1", "mps", ... (a usage error otherwise)."""
    if value is None:
        return None
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{value!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise click.BadParameter(f"{value!r}: MPS is not available on this machine (use --device cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise click.BadParameter(f"{value!r}: robvae runs on cpu, cuda or mps")
    return value


device_option = click.option("--device", default="cpu", show_default=True, callback=check_device,
                             help="torch device: cpu, cuda, cuda:1, ...")
seed_option = click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
                           help="Random seed.")


def format_summary(summary: dict, floatfmt: str = ".4g") -> str:
    """A two-column "quantity  value" listing of a summary dict."""
    w = max(len(str(k)) for k in summary)
    return "\n".join(f"{str(k).ljust(w)}  {format(v, floatfmt) if isinstance(v, float) else v}" for k, v in summary.items())


split_option = click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
                             help="Data split the inputs come from.")
n_option = click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True,
                        help="Number of inputs (the first N of the split).")
radius_options = [
    click.option("--r", "r", type=FiniteFloat(min=0, min_open=True), default=None,
                  help="Radius r of r-robustness (L2 distance between reconstructions); replaces --r-relative."),
    click.option("--r-relative", "r_relative", type=FiniteFloat(min=0, min_open=True), default=R_RELATIVE,
                  show_default=True,
                  help="Without --r: r = K times the median r_min(x) over the inputs (certify estimates each r_min "
                       "from min(--n-samples, 1000) draws)."),
]


#: where an option's value counts as the user's choice (not a default, nor a default_map entry)
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def one_radius(f):
    """Decorate a command taking ``r`` and ``r_relative``: giving both --r and --r-relative is a
    usage error, checked before any work; --r alone replaces --r-relative's default, and a given
    --r-relative replaces an r that only came from a default map."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        r_given = ctx.get_parameter_source("r") in _GIVEN
        k_given = ctx.get_parameter_source("r_relative") in _GIVEN
        if r_given and k_given:
            raise click.UsageError("give one of --r and --r-relative: --r is the radius, --r-relative K computes "
                                   "it as K x the median r_min")
        if k_given:
            kwargs["r"] = None
        return f(*args, **kwargs)
    return wrapper


#: ``--threads N``: torch threads in this process (default: robvae.threads.resolve_threads; see
#: docs/PERFORMANCE.md). Applied on parsing, so a command needs no code for it.
threads_option = click.option(
    "--threads", type=click.IntRange(1, MAX_THREADS), default=None, expose_value=False, is_eager=True,
    callback=lambda ctx, param, value: set_threads(value),
    help="torch threads in this process (default: one per core, with OpenMP threads waiting passively so "
         "they stay fast when other jobs share the cores; 1 where passive waiting could not be set).")
#: ``--workers N`` for commands that shard inputs over processes (default: one per core for large work).
auto_workers_option = click.option(
    "--workers", type=click.IntRange(1, MAX_THREADS), default=None,
    help="Worker processes (local) or CPUs (Ray). Default: one per core when the work is large, else this process.")


def add_options(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


# --- options generated from the typed configs (one source for names, defaults, choices) ---------

class ConfigOption(click.Option):
    """A click option whose old names (``aliases``) still work but are hidden from ``--help``."""

    def __init__(self, *args, aliases: tuple[str, ...] = (), config_field: tuple[type, str] | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.aliases = tuple(aliases)
        self.config_field = config_field  # (config dataclass, field name) the option was generated from

    def get_help_record(self, ctx):
        saved = self.opts
        self.opts = [o for o in self.opts if o not in self.aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = saved


def _click_type(tp):
    """(click type, is_flag) for a dataclass field's annotation (``X | None`` as X; a bool is a flag)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _click_type(args[0])
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)]), False
    return {int: click.INT, float: FiniteFloat()}.get(tp, click.STRING), tp is bool


def config_option(cls, name: str, *, flag: str | None = None, aliases: tuple[str, ...] = (), help: str = "",
                  type=None, **kwargs):
    """A click option for field ``name`` of the config dataclass ``cls``: the flag is
    ``--field-name`` (or ``flag``), the default and the choices (``Literal``) come from the
    field; ``aliases``: old flag names, still accepted but hidden from ``--help``. Booleans become --x/--no-x."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    hints = typing.get_type_hints(cls)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    ctype, is_flag = _click_type(hints[name])
    if type is None and (name == "seed" or name.endswith("_seed")):
        type = click.IntRange(0, 2**63 - 1)  # as --seed everywhere: a negative seed is refused
    opt = flag or "--" + name.replace("_", "-")
    decls = [f"{opt}/--no-{opt[2:]}" if is_flag else opt, *aliases, name]
    return click.option(*decls, cls=ConfigOption, aliases=aliases, config_field=(cls, name), default=default,
                        type=None if is_flag else type or ctype, show_default=default is not None, help=help, **kwargs)


#: an option generated from :class:`robvae.evaluation.EvalConfig` (``eval_option("n", help=...)``)
eval_option = functools.partial(config_option, EvalConfig)


def config_values(kw: dict) -> dict[type, dict]:
    """The values in ``kw`` (the running command's arguments) of its options generated by
    :func:`config_option`, grouped by config class: ``{cls: {field: value}}``."""
    out: dict[type, dict] = collections.defaultdict(dict)
    for p in click.get_current_context().command.params:
        if isinstance(p, ConfigOption) and p.config_field:
            out[p.config_field[0]][p.name] = kw[p.name]
    return out
