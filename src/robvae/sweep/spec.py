"""Trials and sweep files: a trial's identity (the hash of its config) and the YAML grid.

A sweep file (YAML) has four keys::

    out: runs/sweep-digits          # output folder (``--out`` overrides it)
    base:                           # a TrainConfig (see robvae.training.TrainConfig)
      dataset: digits
      epochs: 2
      model: {latent_dim: 4, hidden: [64]}
      objective: {name: beta-vae}
    grid:                           # dotted TrainConfig keys -> lists; the trials are the product
      objective.beta: [1, 4]
      seed: [0, 1]
    evaluation:                     # an EvalConfig (robvae.evaluation.EvalConfig), or null
      n: 50

Grid keys may also name evaluation fields (``evaluation.n_samples: [100, 1000]``).
Every error names the bad key in one line. Float fields take numeric strings (PyYAML reads
``1e-3``, without a dot, as one); grid points whose configs are equal with numbers compared by
value (``objective.beta: [1, 1.0]``) are refused as duplicates, though their ids (hashes of the
JSON) would differ. Devices are checked here too, not inside each trial.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import short_repr
from ..fileio import read_yaml
from ..data import dataset_shape
from ..evaluation import EvalConfig
from ..models import ModelConfig
from ..objectives import ObjectiveConfig
from ..training import TrainConfig, check_seed

#: Values of :attr:`Trial._fault` (test-only failure injection, see :class:`Trial`).
FAULTS = ("raise", "kill-once", "kill")

SWEEP_KEYS = ("out", "base", "grid", "evaluation")

#: the most values (list items, mapping entries and the scalars in them) one key of a sweep or zoo
#: file may hold: YAML aliases nested in one another expand a short file into millions of them
#: (9 levels of 9 aliases: 8 s, 1.8 GB and a 254 MB error line)
MAX_VALUES = 10_000


class SweepSpecError(ValueError):
    """A sweep file or trial config is invalid; the message names the bad key."""


def check_document(doc: Any, keys: tuple[str, ...], source: str, error: type[Exception]) -> None:
    """A parsed YAML file (sweep, zoo) must be a mapping of known ``keys``; ``error`` names a bad one."""
    if not isinstance(doc, dict):
        raise error(f"{source}: expected a mapping with keys {', '.join(keys)}, got {type(doc).__name__}")
    for k in doc:
        if k not in keys:
            raise error(f"{source}: {short_repr(k) if not isinstance(k, str) else k}: unknown key "
                        f"(known: {', '.join(keys)})")
        check_size(doc[k], f"{source}: {k}", error)


def check_size(value: Any, where: str, error: type[Exception], limit: int = MAX_VALUES) -> None:
    """``error`` when ``value`` (a parsed YAML tree) holds more than ``limit`` values, counted as
    written out (an alias counts once per use); stops counting at the limit, so it is quick."""
    stack, n = [value], 0
    while stack:
        v = stack.pop()
        n += 1
        if n > limit:
            raise error(f"{where}: holds more than {limit} values (YAML aliases nested in one another?); "
                        "a sweep or zoo file needs far fewer")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def folder_key(doc: dict[str, Any], key: str, error: type[Exception]) -> str | None:
    """``doc[key]``, a folder path (None when not given); ``error`` when it is not a string."""
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise error(f"{key}: expected a folder path, got {type(value).__name__}")
    return value


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    """``d["a"]["b"] = value`` (a copy) for the key "a.b", making the mappings on the way."""
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = copy.deepcopy(value)


def one_line(e: Exception) -> str:
    """The first line of an error's message (the error's type when the message is empty)."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _eval_to_dict(ev: Any) -> dict[str, Any] | None:
    if ev is None:
        return None
    if isinstance(ev, dict):
        return json.loads(json.dumps(ev))
    if hasattr(ev, "to_dict"):
        return json.loads(json.dumps(ev.to_dict()))
    if dataclasses.is_dataclass(ev):
        return json.loads(json.dumps(dataclasses.asdict(ev)))
    raise TypeError(f"evaluation must be an EvalConfig, a dict or None, got {type(ev).__name__}")


#: A decimal number written as a string: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as one
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _takes_float(tp: Any) -> bool:
    """The annotation accepts a float (float, float | None, ...)."""
    return tp is float or any(_takes_float(a) for a in typing.get_args(tp))


def _numbers(d: dict[str, Any], cls: type) -> dict[str, Any]:
    """``d`` with the numeric strings of ``cls``'s float fields made floats (nested configs too):
    YAML files (sweep, zoo) read ``lr: 1e-3`` as the string '1e-3'. Other values are left for
    the config to check. A copy; ``d`` is not changed."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not converted
        return d
    out = dict(d)
    for k, v in d.items():
        sub = _nested_class(cls, k)
        if sub is not None and isinstance(v, dict):
            out[k] = _numbers(v, sub)
        elif isinstance(v, str) and _takes_float(hints.get(k)) and _NUMBER.fullmatch(v.strip()):
            out[k] = float(v)
    return out


def make_eval_config(d: dict[str, Any] | Any | None) -> Any:
    """An EvalConfig from a dict (numeric strings of its float fields read as numbers; anything
    else is returned as it is)."""
    return EvalConfig.from_dict(_numbers(dict(d), EvalConfig)) if isinstance(d, dict) else d


def _check_device(device: Any, where: str) -> None:
    """A device string torch reads and robvae runs on; whether this machine has it is left to the
    trial (a Ray node may have a GPU this machine lacks)."""
    try:
        ok = torch.device(device).type in ("cpu", "cuda", "mps")
    except (RuntimeError, ValueError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: {short_repr(device)} is not a torch device robvae runs on (cpu, cuda, cuda:1, mps)")


def _check_runnable(config: TrainConfig, evaluation: Any) -> None:
    """What the configs leave to the trial, checked up front: the devices (layer widths are
    ModelConfig's own check)."""
    _check_device(config.device, "device")
    check_seed(config.seed)
    if isinstance(evaluation, EvalConfig):
        _check_device(evaluation.device, "evaluation.device")


def _resolve_input_shape(config: TrainConfig) -> None:
    """Set model.input_shape from the data set (as training would), so ids do not depend on it."""
    try:
        shape = tuple(dataset_shape(config.dataset))
    except Exception:  # unknown data set or data module not available: leave it to training
        return
    if tuple(config.model.input_shape) != shape:
        config.model = ModelConfig.from_dict({**config.model.to_dict(), "input_shape": shape})


@dataclass
class Trial:
    """One train-then-evaluate job of a sweep.

    train: the training run's config. evaluation: an ``robvae.evaluation.EvalConfig`` (a plain
    dict is accepted and converted), or None for training only. name: a label (not part of the
    identity). data_root: the folder a relative ``data_dir`` is taken against (default, None: the
    working folder of the process that runs the trials; a benchmark protocol's folders are
    relative to the repository root); not part of the identity either. ``id``: the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys)
    of the full config, devices excluded; a trial's outputs live in ``<out>/trials/<id>/``.

    ``_fault`` is a TEST-ONLY failure hook, never set by sweep files: "raise" raises in the
    middle of training, "kill-once" SIGKILLs the worker process after the first epoch on the
    first attempt only (a marker file in the trial folder remembers it; the retry resumes from
    the checkpoint), "kill" SIGKILLs it at the start of every attempt. A trial with a fault has
    a different id from the same trial without.
    """

    train: TrainConfig
    evaluation: Any = None
    name: str = ""
    _fault: str | None = None
    data_root: str | None = None

    def __post_init__(self) -> None:
        train = self.train if isinstance(self.train, dict) else self.train.to_dict()
        self.train = TrainConfig.from_dict(_numbers(copy.deepcopy(train), TrainConfig))  # a private copy
        _resolve_input_shape(self.train)
        self.evaluation = make_eval_config(self.evaluation)
        _check_runnable(self.train, self.evaluation)
        if self._fault is not None and self._fault not in FAULTS:
            raise ValueError(f"unknown _fault {self._fault!r}; choose one of {FAULTS}")

    def config_dict(self) -> dict[str, Any]:
        """The identity of the trial: its full config, devices excluded (a plain JSON tree)."""
        d: dict[str, Any] = {"train": self.train.training_fields(), "evaluation": _eval_to_dict(self.evaluation)}
        if isinstance(d["evaluation"], dict):
            d["evaluation"].pop("device", None)
        if self._fault is not None:
            d["_fault"] = self._fault
        return d

    def value_key(self) -> str:
        """The config as training and evaluation see it, numbers by value (1 and 1.0 are one beta,
        though their ids, hashes of the JSON kept so that folders resume, differ): two trials with
        the same key train the same model."""
        return _by_value_key(self.config_dict())

    @property
    def id(self) -> str:
        canonical = json.dumps(self.config_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the trial (written as ``trial.json``)."""
        d = {"id": self.id, "name": self.name, "train": self.train.to_dict(),
             "evaluation": _eval_to_dict(self.evaluation)}
        if self._fault is not None:
            d["_fault"] = self._fault
        if self.data_root is not None:
            d["data_root"] = self.data_root
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trial":
        return cls(train=d["train"], evaluation=d.get("evaluation"), name=d.get("name", ""), _fault=d.get("_fault"),
                   data_root=d.get("data_root"))


# ---------------------------------------------------------------------------------------------
# sweep files


@dataclass
class SweepSpec:
    """A parsed sweep file: its trials (grid order) and default output folder."""

    trials: list[Trial]
    out: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    source: str = ""
    doc: dict[str, Any] = field(default_factory=dict)  # the sweep file as parsed


def _dataclass_fields(cls: type) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _nested_class(cls: type, name: str) -> type | None:
    """The dataclass type of a nested config field (TrainConfig.model -> ModelConfig), if any."""
    if cls is TrainConfig:
        return {"model": ModelConfig, "objective": ObjectiveConfig}.get(name)
    return None


def _check_keys(d: Any, cls: type, where: str) -> None:
    """Every key of ``d`` must be a field of ``cls`` (recursively for nested configs)."""
    if not isinstance(d, dict):
        raise SweepSpecError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(d).__name__}")
    known = _dataclass_fields(cls)
    for k, v in d.items():
        if k not in known or k.startswith("_"):
            names = ", ".join(n for n in known if not n.startswith("_"))
            raise SweepSpecError(f"{where}.{k}: unknown field (known: {names})")
        sub = _nested_class(cls, k)
        if sub is not None and v is not None:
            _check_keys(v, sub, f"{where}.{k}")


def _resolve_grid_key(key: str, has_eval: bool) -> tuple[str, str]:
    """Map a dotted grid key to ("train" | "evaluation", dotted key in that config), checking each part."""
    if not isinstance(key, str) or not key:
        raise SweepSpecError(f"grid: keys must be dotted field names, got {short_repr(key)}")
    parts = key.split(".")
    if parts[0] == "evaluation":
        if not has_eval:
            raise SweepSpecError(f"grid.{key}: varies an evaluation field but the sweep has no evaluation")
        if len(parts) != 2:
            raise SweepSpecError(f"grid.{key}: expected evaluation.FIELD")
        if parts[1] not in _dataclass_fields(EvalConfig):
            raise SweepSpecError(f"grid.{key}: unknown evaluation field (known: {', '.join(_dataclass_fields(EvalConfig))})")
        return "evaluation", parts[1]
    cls: type | None = TrainConfig
    for i, p in enumerate(parts):
        if cls is None:
            raise SweepSpecError(f"grid.{key}: {'.'.join(parts[:i])} has no sub-fields")
        known = _dataclass_fields(cls)
        if p not in known:
            where = ".".join(parts[:i]) or "base"
            raise SweepSpecError(f"grid.{key}: unknown field {p!r} in {where} (known: {', '.join(known)})")
        cls = _nested_class(cls, p)
    if cls is not None:
        raise SweepSpecError(f"grid.{key}: is a group of fields; vary one of its fields (e.g. {key}.{next(iter(_dataclass_fields(cls)))})")
    return "train", key


#: the longest a grid value is written in a trial's name or a message (longer: shortened, "...")
_NAME_CHARS = 100


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    text = str(v)  # short: check_size bounds a value's size
    return text if len(text) <= _NAME_CHARS else short_repr(v, _NAME_CHARS)


def _exact(v: Any) -> str:
    """A grid value as written (1.0 stays 1.0), for messages that must tell two values apart."""
    return repr(v) if isinstance(v, float) else _fmt(v)


def _by_value(v: Any) -> Any:
    """A JSON tree with its numbers compared by value: an integral float as the int (1.0 -> 1)."""
    if isinstance(v, dict):
        return {k: _by_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_by_value(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _by_value_key(d: dict[str, Any]) -> str:
    return json.dumps(_by_value(d), sort_keys=True, separators=(",", ":"))


def _eval_error(message: str) -> str:
    """An EvalConfig error named by its key in the sweep file: "n must be >= 1, got -3" ->
    "evaluation.n must be >= 1, got -3" ("evaluation field n: ..." already names it)."""
    if message.startswith("evaluation"):
        return message
    first = message.split(" ", 1)[0]
    return f"evaluation.{message}" if first in _dataclass_fields(EvalConfig) else f"evaluation: {message}"


def parse_sweep(doc: Any, source: str = "sweep") -> SweepSpec:
    """Validate a sweep document (the parsed YAML) and expand its grid into trials."""
    check_document(doc, SWEEP_KEYS, source, SweepSpecError)
    base = doc.get("base") or {}
    _check_keys(base, TrainConfig, "base")
    out = folder_key(doc, "out", SweepSpecError)
    evaluation = doc.get("evaluation")
    if evaluation is not None:
        if not isinstance(evaluation, dict):
            raise SweepSpecError(f"evaluation: expected a mapping of EvalConfig fields or null, got {type(evaluation).__name__}")
        _check_keys(evaluation, EvalConfig, "evaluation")
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepSpecError(f"grid: expected a mapping of dotted keys to lists, got {type(grid).__name__}")
    axes: list[tuple[str, str, str, list[Any]]] = []
    for key, values in grid.items():
        target, path = _resolve_grid_key(key, evaluation is not None)
        if not isinstance(values, list):
            raise SweepSpecError(f"grid.{key}: expected a list of values, got {type(values).__name__} {short_repr(values)}")
        if not values:
            raise SweepSpecError(f"grid.{key}: empty list (every axis needs at least one value)")
        axes.append((key, target, path, values))

    trials: list[Trial] = []
    seen: dict[str, str] = {}  # config (numbers by value) -> the grid point that gave it
    for combo in itertools.product(*(a[3] for a in axes)):
        train_d = copy.deepcopy(base)
        eval_d = copy.deepcopy(evaluation)
        for (key, target, path, _), value in zip(axes, combo):
            set_dotted(train_d if target == "train" else eval_d, path, value)
        name = ",".join(f"{key}={_fmt(v)}" for (key, *_), v in zip(axes, combo)) or "base"
        if eval_d is not None and eval_d.get("r") is not None and eval_d.get("r_relative") is not None:
            where = "evaluation" if name == "base" else f"grid point {name}"  # as on the command line
            raise SweepSpecError(f"{where}: give r or r_relative, not both (r replaces r_relative)")
        point = "" if name == "base" else f"grid point {name}: "
        try:  # the evaluation first on its own, so that its errors name it
            ev = make_eval_config(eval_d)
            if isinstance(ev, EvalConfig):
                _check_device(ev.device, "evaluation.device")
        except (TypeError, ValueError) as e:
            raise SweepSpecError(point + _eval_error(one_line(e))) from None
        try:
            trial = Trial(train=train_d, evaluation=ev, name=name)
        except (TypeError, ValueError) as e:
            raise SweepSpecError(f"{point or 'base: '}{one_line(e)}") from None
        # the same config as training and evaluation see it: numbers by value (1 and 1.0 are one
        # beta), though the ids (hashes of the JSON, kept so that sweep folders resume) differ
        same = trial.value_key()
        exact = ",".join(f"{key}={_exact(v)}" for (key, *_), v in zip(axes, combo)) or "base"
        if same in seen:
            raise SweepSpecError(f"grid points {seen[same]} and {exact} give the same trial (a duplicate value?)")
        seen[same] = exact
        trials.append(trial)
    return SweepSpec(trials=trials, out=out, grid={a[0]: a[3] for a in axes}, source=source,
                     doc=json.loads(json.dumps(doc, default=str)))


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML file."""
    doc = read_yaml(path, SweepSpecError, "sweep file")
    return parse_sweep(doc, source=str(path))
