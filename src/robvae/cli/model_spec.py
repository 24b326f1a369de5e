"""``--model pkg.module:build``: any protocol model on the command line.

``robvae certify|attack|margin --model my_pkg.module:build`` imports ``my_pkg.module``, takes its
attribute ``build`` (a dotted path after the colon is followed: ``mod:Factory.create``) and calls it
with no arguments when it is not already a model. The result must follow robvae's protocol
(:mod:`robvae.models.protocol`); it is checked on the first inputs (:func:`robvae.validation.check_model`)
before any work. Inputs come from ``--dataset`` / ``--data-dir`` / ``--split`` / ``--n``, or from
``--inputs FILE`` (``.npy`` read with ``allow_pickle=False``, ``.pt`` with ``torch.load(weights_only=True)``:
a float tensor [N, *input_shape] in [0, 1], or uint8 in [0, 255]). The positional RUN, when given
with ``--model``, is the output folder (default: the current folder).

A trained RUN folder takes ``--inputs FILE`` too (its own data set is the default): the run's model
certifies, attacks or measures the margins of those images, and the outputs go into the folder,
named after the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from ..data import load_dataset
from ..data.registry import SPLITS
from ..errors import InputError
from ..models.protocol import import_spec, register_user_code
from ..sweep.shard import certify_blocks  # re-exported: the CLI certifies --model inputs with it
from ..training import Run, TrainConfig, load
from ..validation import check_images, check_model, model_dtype, model_input_shape
from .options import DATASETS, warn_if_fewer

#: Keys of ``click.Context.meta`` where the model options are kept (they are not command arguments).
META = "robvae.model_spec"


def load_model_spec(spec: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model named by ``"pkg.module:attr"`` (``attr`` called with no arguments unless it is
    already a ``torch.nn.Module``; it may return ``(model, name)`` as for ``robvae bench``), on
    ``device`` and in eval mode.

    Raises :class:`robvae.errors.InputError` with one line naming the problem: a malformed spec, a
    module that does not import, a missing attribute, a callable that raises or that returns
    something without ``encode`` / ``decode``.
    """
    attr = str(spec).partition(":")[2]
    obj = import_spec(spec, f"--model {spec!r}")
    if not isinstance(obj, torch.nn.Module):
        if not callable(obj):
            raise InputError(f"--model {spec!r}: {attr} is a {type(obj).__name__}, not a model or a callable")
        try:
            obj = obj()
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else ""
            raise InputError(f"--model {spec!r}: {attr}() raised {type(e).__name__}: {msg}") from e
        except SystemExit as e:  # a script's main() behind the callable: it ended robvae without a word
            raise InputError(f"--model {spec!r}: {attr}() called sys.exit({e.code!r}) instead of returning a "
                             "model") from e
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], str):
        obj = obj[0]  # a robvae bench callable's (model, name): one contract for every --model
    missing = [m for m in ("encode", "decode") if not callable(getattr(obj, m, None))]
    if not isinstance(obj, torch.nn.Module) or missing:
        what = f"has no {' / '.join(missing)}" if missing else "is not a torch.nn.Module"
        raise InputError(f"--model {spec!r}: {attr} returned a {type(obj).__name__}, which {what} "
                         f"(robvae needs encode(x) -> (mu, sigma) and decode(z) -> mean; see robvae.models.protocol)")
    if any(t.is_meta for t in (*obj.parameters(), *obj.buffers())):
        raise InputError(f"--model {spec!r}: {attr} returned a model on the 'meta' device (shapes without "
                         "weights); load its weights first (e.g. to_empty() and load_state_dict())")
    register_user_code(obj)
    try:
        return obj.to(device).eval()
    except (RuntimeError, NotImplementedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"--model {spec!r}: the model cannot be moved to {device}: {msg}") from e


#: uint8 inputs whose largest value is at most this get a note: likely not 0..255 images (scikit-learn's
#: 8x8 digits in 0..16), near-black divided by 255; only 0 and 1 (binarized) is refused
_UINT8_LOW = 16


def load_inputs_file(path: str | Path, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Images from a ``.npy`` (no pickles) or ``.pt`` (``weights_only``) file: float32 [N, *shape].

    uint8 images are divided by 255 (refused when they hold only 0 and 1, binarized; a note on
    stderr when no value passes 16, near-black as 0..255); a batch
    [N, H, W] gets a channel axis when ``shape`` has one channel; big-endian ``.npy`` files are
    converted to the machine's byte order; sparse, meta, nested and quantized tensors are refused;
    the result is checked (:func:`robvae.validation.check_images`).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--inputs {p}: no such file")
    if p.suffix not in (".npy", ".pt"):
        raise InputError(f"--inputs {p}: expected a .npy or .pt file")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            if not isinstance(arr, np.ndarray):  # np.load reads any zip (an .npz, a torch.save file) as an archive
                arr.close()
                raise InputError(f"--inputs {p}: a zip archive (.npz, or a torch.save file named .npy), not a .npy "
                                 "array; save one array with numpy.save (or name a torch file .pt)")
            if not arr.dtype.isnative:  # a big-endian file: torch takes the machine's byte order only
                arr = arr.astype(arr.dtype.newbyteorder("="))
            t = torch.from_numpy(np.require(arr, requirements="C"))  # (ascontiguousarray makes 0-d 1-d)
        else:
            t = torch.load(p, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt or pickled file, in one line
        if "allow_pickle" in str(e):  # numpy's advice to unpickle is not ours to pass on either
            raise InputError(f"--inputs {p}: not a plain .npy array (robvae never unpickles; save an array "
                             "with numpy.save)") from e
        if "weights only load failed" in str(e).lower():  # torch's advice to unpickle is not ours to pass on
            raise InputError(f"--inputs {p}: not a plain tensor file (.pt files are read with "
                             "torch.load(weights_only=True); save one tensor with torch.save, or use .npy)") from e
        msg = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"--inputs {p}: cannot read ({type(e).__name__}: {msg})") from e
    if not isinstance(t, torch.Tensor):
        raise InputError(f"--inputs {p}: holds a {type(t).__name__}, expected one tensor of images")
    if t.layout != torch.strided or t.is_nested or t.is_meta or t.is_quantized:
        kind = ("nested" if t.is_nested else "meta" if t.is_meta else "quantized" if t.is_quantized
                else str(t.layout).removeprefix("torch."))
        hint = " (save x.to_dense())" if kind.startswith("sparse") else ""
        raise InputError(f"--inputs {p}: holds a {kind} tensor; expected a plain dense tensor of images{hint}")
    if t.dtype == torch.uint8:
        top = int(t.max()) if t.numel() else 255
        if top == 1:  # 0 and 1 only: binarized images, near-black as 0..255
            raise InputError(f"--inputs {p}: uint8 images are read as 0..255, but these hold only 0 and 1 "
                             "(binarized?); save them as float images in [0, 1]")
        if 1 < top <= _UINT8_LOW:  # dark images, or 0..16 digits: said, not refused (review h64)
            click.echo(f"robvae: note: --inputs {p}: uint8 images are read as 0..255 and these only reach {top}, "
                       "so they are near-black (0..16 digits? then save them as float images in [0, 1])", err=True)
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise InputError(f"--inputs {p}: dtype {t.dtype}; expected float images in [0, 1] or uint8")
    if shape is not None and t.dim() == len(shape) and len(shape) == 3 and shape[0] == 1:
        t = t.unsqueeze(1)
    return check_images(t, shape, name=f"--inputs {p.name}")


@dataclass
class ModelRun(Run):
    """A model from ``--model`` in the place of a trained run folder (``path``: the output folder).

    ``inputs``: images from ``--inputs`` (else ``config.dataset`` is read as for a run);
    ``inputs_name``: that file's name without its suffix, which names the default outputs."""

    inputs: torch.Tensor | None = field(default=None)
    spec: str = ""
    inputs_name: str = ""
    inputs_file: str = ""

    @property
    def from_spec(self) -> bool:
        """True for a ``--model`` model (runs in this process; there is no folder a worker could
        load), False for a trained run folder given ``--inputs FILE``."""
        return bool(self.spec)


def from_spec(run: Run) -> bool:
    """Whether ``run`` holds a ``--model`` model rather than a trained run folder."""
    return isinstance(run, ModelRun) and run.from_spec


def output_label(run: Run, split: str) -> str:
    """What a command's default output file is named after: the --inputs file's name (without its
    suffix) when the inputs came from one, else the split (certify-test.csv, attack-imgs/, ...); a
    file named after a split gets "-inputs" (train.npy: certify-train-inputs.csv), so that the two
    never share a name."""
    if not (isinstance(run, ModelRun) and run.inputs_name):
        return split
    return run.inputs_name + ("-inputs" if run.inputs_name in SPLITS else "")


def source_meta(run: Run, split: str) -> dict[str, str | None]:
    """Where a command's model and inputs came from, for its JSON: ``{"split": split}``, or with
    --inputs ``{"split": None, "inputs": FILE}`` (those inputs are no split); with --model also
    ``"model": MODULE:CALLABLE``."""
    model = {"model": run.spec} if isinstance(run, ModelRun) and run.spec else {}
    if isinstance(run, ModelRun) and run.inputs_file:
        return {"split": None, "inputs": run.inputs_file, **model}
    return {"split": split, **model}


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(META, {})[param.name] = value
    return value


#: RUN, optional: with ``--model`` it is the output folder.
optional_run_argument = click.argument("run", required=False, default=None, type=click.Path(file_okay=False))

#: ``--model``, ``--dataset`` and ``--inputs`` for certify / attack / margin (kept in ``ctx.meta``,
#: so the commands' signatures and configs stay as they are).
model_options = [
    click.option("--model", "model_spec", default=None, expose_value=False, callback=_remember,
                 help="Use MODULE:CALLABLE (a function returning a protocol model or (model, name), or the "
                      "model) instead of a RUN folder; the folder argument is then the output folder (default: "
                      "here)."),
    click.option("--dataset", "model_dataset", type=click.Choice(DATASETS), default=None, expose_value=False,
                 callback=_remember, help="With --model: the data set of the inputs (default digits)."),
    click.option("--inputs", "model_inputs", type=click.Path(dir_okay=False), default=None, expose_value=False,
                 callback=_remember, help="A .npy / .pt tensor of images [N, C, H, W], float in [0, 1] or uint8 in "
                                         "[0, 255], instead of a split (with --model; certify, attack and margin take "
                                         "it with a RUN folder too); the default outputs are named after the file "
                                         "(certify-FILE.csv, attack-FILE/, margin-FILE.csv)."),
]


def model_run(run_dir: str | None, split: str, n: int, device: str,
              data_dir: str | None = None) -> tuple[ModelRun, torch.Tensor] | None:
    """The ``--model`` branch of loading a run: (ModelRun, the first n inputs), or None when the
    command was not given ``--model`` (a usage error when neither RUN nor --model was given)."""
    ctx = click.get_current_context(silent=True)
    opts = (ctx.meta.get(META, {}) if ctx is not None else {})
    spec = opts.get("model_spec")
    if spec is None:
        if opts.get("model_dataset") is not None:
            raise click.UsageError("--dataset goes with --model (a run folder knows its data set; --inputs FILE "
                                   "gives it other images)")
        if run_dir is None:
            raise click.UsageError("give a RUN folder or --model MODULE:CALLABLE")
        if opts.get("model_inputs") is None:
            return None
        return _folder_with_inputs(ctx, run_dir, opts["model_inputs"], n, device, data_dir)
    if opts.get("model_dataset") is not None and opts.get("model_inputs") is not None:
        raise click.UsageError("give --dataset or --inputs, not both")
    model = load_model_spec(spec, device)
    shape = model_input_shape(model)
    dataset = opts.get("model_dataset") or "digits"
    if opts.get("model_inputs") is not None:
        pre = load_inputs_file(opts["model_inputs"], shape)
        x, source = pre[:n], f"--inputs {opts['model_inputs']}"
    else:
        pre = None
        data = load_dataset(dataset, split, data_dir)
        x, source = data.subset(n).images, f"the {split} split of {dataset}"
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):  # (check_model would name its check batch)
        hint = ("pass --dataset with the model's data (digits 1x8x8; mnist, fashion-mnist 1x28x28; cifar10 3x32x32)"
                if pre is None else "save images of the model's shape")
        raise InputError(f"the images of {source} are {'x'.join(map(str, x.shape[1:]))} but the model expects "
                         f"{'x'.join(map(str, shape))}: {hint}")
    if _n_given(ctx):  # as a run folder's split: said, not silent
        warn_if_fewer("--n", n, source, len(x))
    # images are read as float32; a model whose floating tensors all have another dtype (float64,
    # half) gets its inputs in that dtype (a CLI user cannot convert them)
    dtype = model_dtype(model) or x.dtype
    x = x.to(device=device, dtype=dtype)
    if pre is not None:
        pre = pre.to(dtype=dtype)
    check_model(model, x[: min(len(x), 8)]).raise_if_failed()  # the protocol, before any work
    out = Path(run_dir) if run_dir is not None else Path(".")
    run = ModelRun(path=out, config=TrainConfig(dataset=dataset, data_dir=data_dir), model=model, metrics=[],
                   inputs=None if pre is None else pre.to(device), spec=str(spec),
                   inputs_name="" if pre is None else Path(opts["model_inputs"]).stem,
                   inputs_file="" if pre is None else str(opts["model_inputs"]))
    return run, x


def _n_given(ctx: click.Context | None) -> bool:
    return ctx is not None and "n" in ctx.params and \
        ctx.get_parameter_source("n") == click.core.ParameterSource.COMMANDLINE


def _folder_with_inputs(ctx: click.Context | None, run_dir: str, inputs: str, n: int, device: str,
                        data_dir: str | None) -> tuple[ModelRun, torch.Tensor]:
    """A trained run folder with ``--inputs FILE``: (the run, its model and the file's images as a
    ModelRun without a spec, the first n images). The images must have the run's input shape;
    ``--data-dir`` is not used (said on stderr)."""
    run = load(run_dir, device=device)
    if data_dir is not None:  # it would be ignored without a word
        click.echo(f"robvae: note: --data-dir {data_dir} is not used: the inputs come from --inputs {inputs}",
                   err=True)
    pre = load_inputs_file(inputs, tuple(run.config.model.input_shape))  # (checks the shape)
    if _n_given(ctx):
        warn_if_fewer("--n", n, f"--inputs {inputs}", len(pre))
    pre = pre.to(device=device, dtype=model_dtype(run.model) or pre.dtype)
    folder = ModelRun(path=run.path, config=run.config, model=run.model, metrics=run.metrics, inputs=pre,
                      inputs_name=Path(inputs).stem, inputs_file=str(inputs))
    return folder, pre[:n]


__all__ = ["load_model_spec", "load_inputs_file", "ModelRun", "from_spec", "model_options", "optional_run_argument", "model_run",
           "certify_blocks", "output_label", "source_meta"]
