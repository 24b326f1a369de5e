"""Model zoos: the YAML file that lists the methods (at a few settings, over seeds) to benchmark.

A zoo file::

    protocol: v1                 # the evaluation protocol (robvae.bench.protocol)
    subset: digits               # one of its named test subsets: digits, mnist-10k, fashion-mnist
    out: runs/bench-digits       # output folder (``--out`` overrides it)
    seeds: [0, 1]                # every trained setting is trained once per seed
    base:                        # TrainConfig fields shared by every trained model
      epochs: 30
      model: {latent_dim: 8, hidden: [128]}
    methods:                     # a method name, or a mapping {method: NAME, PARAM: value or [values]}
      - vae
      - {method: beta-vae, beta: [2, 4]}
      - {method: adversarial, eps: [0.5], steps: 3}
      - {method: jacobian, weight: [0.1, 1.0], whitened: false}
      - {method: smooth, weight: [10], noise: 0.2}
      - {method: lipschitz, lipschitz: [1.0], config: {model.sigma_cap: 0.5}}
    models:                      # user models, evaluated as they are: "package.module:callable"
      - my_pkg.my_module:build

Optional keys: ``data_dir`` (where the subset's files are), ``protocol_overrides`` (protocol
fields, e.g. n_samples) and ``subset_overrides`` (subset fields, e.g. n): any override labels the
results ``v1+custom``. A parameter given as a list is a grid axis (the settings are the product);
``config`` sets any further TrainConfig field by dotted key. Every problem (unknown key, method or
parameter, a bad value, a missing required parameter, a model spec that does not import) is a
one-line :class:`ZooError` raised before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from ..config import short_repr
from ..errors import InputError, RobvaeError
from ..fileio import read_yaml
from ..sweep import Trial
from ..sweep.spec import check_document, folder_key, one_line, set_dotted
from .loader import ModelSpecError, resolve_spec
from .protocol import PROTOCOL_FIELD_CHECKS, PROTOCOL_ROOT, SUBSET_FIELD_CHECKS, Protocol, get_protocol, subset_data_dir


class ZooError(RobvaeError):
    """A zoo file is invalid; the message names the bad key in one line."""


@dataclass(frozen=True)
class Method:
    """A training method: its parameters (zoo name -> dotted TrainConfig key), the fields it fixes,
    and the parameters a zoo must give."""

    params: dict[str, str]
    fixed: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    about: str = ""


METHODS: dict[str, Method] = {
    "vae": Method({}, {"objective.name": "elbo"}, about="the plain VAE (ELBO)"),
    "beta-vae": Method({"beta": "objective.beta"}, {"objective.name": "beta-vae"}, ("beta",),
                       "beta-VAE: log p(x|z) - beta KL"),
    "beta-tcvae": Method({"beta": "objective.beta"}, {"objective.name": "beta-tcvae"}, ("beta",),
                         "beta-TCVAE: total correlation weighted by beta"),
    "tau": Method({"tau": "model.tau"}, {}, ("tau",), "encoder std floor sigma >= tau"),
    "adversarial": Method({"eps": "adversarial_eps", "steps": "adversarial_steps", "norm": "adversarial_norm"}, {},
                          ("eps",), "adversarial training against the maximum-damage attack"),
    "jacobian": Method({"weight": "objective.jacobian", "projections": "objective.jacobian_projections",
                        "whitened": "objective.jacobian_whitened"}, {}, ("weight",),
                       "encoder-Jacobian penalty ||J||_F^2 (random projections)"),
    "smooth": Method({"weight": "objective.smooth", "noise": "objective.smooth_noise",
                      "divergence": "objective.smooth_divergence"}, {}, ("weight",),
                     "smooth-encoder penalty D(q(z|x+n), q(z|x))"),
    "lipschitz": Method({"lipschitz": "model.lipschitz", "sigma_cap": "model.sigma_cap",
                         "sigma_fixed": "model.sigma_fixed"}, {"model.arch": "lipschitz-mlp"}, (),
                        "Lipschitz VAE (arch lipschitz-mlp)"),
}

ZOO_KEYS = ("protocol", "subset", "out", "seeds", "base", "methods", "models", "data_dir", "protocol_overrides",
            "subset_overrides")


@dataclass
class ZooEntry:
    """One trained setting: its leaderboard name, method, parameters, and one trial per seed."""

    name: str
    method: str
    params: dict[str, Any]
    trials: list[Trial]


@dataclass
class ZooSpec:
    """A parsed zoo: the protocol and subset, the trained entries, the user model specs."""

    protocol: Protocol
    subset: str
    entries: list[ZooEntry]
    models: list[str]
    out: str | None = None
    data_dir: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    source: str = "zoo"

    @property
    def trials(self) -> list[Trial]:
        return [t for e in self.entries for t in e.trials]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


def _overrides(protocol: Protocol, subset: str, doc: dict[str, Any]) -> Protocol:
    for key, target in (("protocol_overrides", None), ("subset_overrides", subset)):
        ov = doc.get(key)
        if ov is None:
            continue
        if not isinstance(ov, dict):
            raise ZooError(f"{key}: expected a mapping of fields, got {type(ov).__name__}")
        checks = PROTOCOL_FIELD_CHECKS if target is None else SUBSET_FIELD_CHECKS
        for k, v in ov.items():
            if k not in checks:
                raise ZooError(f"{key}.{k}: unknown field (known: {', '.join(checks)})")
            try:
                v = checks[k](v)
            except InputError as e:
                raise ZooError(f"{key}.{k}: {e}") from None
            protocol = protocol.with_overrides(target, **{k: v})
    return protocol


def _entries_for(item: Any, k: int, base: dict[str, Any], subset_dataset: str, data_dir: str | None,
                 seeds: list[int], data_root: str | None = None) -> list[ZooEntry]:
    where = f"methods[{k}]"
    if isinstance(item, str):
        item = {"method": item}
    if not isinstance(item, dict) or "method" not in item:
        raise ZooError(f"{where}: expected a method name or a mapping with key 'method', got {short_repr(item)}")
    name = item["method"]
    if name not in METHODS:
        raise ZooError(f"{where}: unknown method {short_repr(name)} (known: {', '.join(METHODS)})")
    m = METHODS[name]
    params = {p: v for p, v in item.items() if p not in ("method", "config")}
    for p in params:
        if p not in m.params:
            raise ZooError(f"{where} ({name}): unknown parameter {p!r} (known: {', '.join(m.params) or 'none'})")
    for p in m.required:
        if p not in params:
            raise ZooError(f"{where} ({name}): missing parameter {p!r}")
    extra = item.get("config") or {}
    if not isinstance(extra, dict):
        raise ZooError(f"{where}.config: expected a mapping of dotted TrainConfig keys, got {type(extra).__name__}")
    axes = [(p, v if isinstance(v, list) else [v]) for p, v in params.items()]
    for p, vals in axes:
        if not vals:
            raise ZooError(f"{where}.{p}: empty list")
    entries = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        setting = dict(zip((p for p, _ in axes), combo))
        shown = [*(f"{p}={_fmt(v)}" for p, v in setting.items()), *(f"{k}={_fmt(v)}" for k, v in extra.items())]
        label = name + (f"({', '.join(shown)})" if shown else "")  # config overrides too: they make another model
        trials = []
        for seed in seeds:
            d = copy.deepcopy(base)
            d["dataset"], d["seed"] = subset_dataset, seed
            if data_dir is not None:
                d["data_dir"] = data_dir
            for key, v in m.fixed.items():
                set_dotted(d, key, v)
            for key, v in extra.items():
                set_dotted(d, str(key), v)
            for p, v in setting.items():
                set_dotted(d, m.params[p], v)
            try:
                trials.append(Trial(train=d, evaluation=None, name=f"{label} seed={seed}", data_root=data_root))
            except (TypeError, ValueError) as e:
                raise ZooError(f"{where} ({label}): {one_line(e)}") from None
        entries.append(ZooEntry(label, name, setting, trials))
    return entries


def parse_zoo(doc: Any, source: str = "zoo", *, extra_models: list[str] | None = None) -> ZooSpec:
    """Validate a zoo document (parsed YAML) into a :class:`ZooSpec` (see the module docstring)."""
    check_document(doc, ZOO_KEYS, source, ZooError)
    protocol = get_protocol(str(doc.get("protocol", "v1")))
    subset = doc.get("subset", "digits")
    if subset not in protocol.names:
        raise ZooError(f"subset: unknown test subset {short_repr(subset)} (protocol {protocol.version} has {', '.join(protocol.names)})")
    protocol = _overrides(protocol, subset, doc)
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           and 0 <= s <= 2**63 - 1 for s in seeds):
        raise ZooError(f"seeds: expected a non-empty list of integers in [0, 2**63 - 1], got {short_repr(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ZooError(f"seeds: duplicate seeds in {short_repr(seeds)}")
    base = doc.get("base") or {}
    if not isinstance(base, dict):
        raise ZooError(f"base: expected a mapping of TrainConfig fields, got {type(base).__name__}")
    for k in ("dataset", "seed", "data_dir"):
        if k in base:
            raise ZooError(f"base.{k}: set by the zoo itself (use 'subset', 'seeds', 'data_dir')")
    data_dir = folder_key(doc, "data_dir", ZooError)
    sub = protocol.subset(subset)
    # the protocol's folder, found from any working folder: the trials keep it as the protocol writes
    # it (their ids do not depend on where robvae runs), taken against the repository root where it
    # is not found from here (Trial.data_root); the evaluation reads the folder found
    # (:func:`subset_data_dir`)
    trial_data_dir, data_root = data_dir, None
    if data_dir is None:
        data_dir, trial_data_dir = subset_data_dir(protocol, subset), sub.data_dir
        if data_dir != trial_data_dir:
            data_root = str(PROTOCOL_ROOT)
    out = folder_key(doc, "out", ZooError)
    methods = doc.get("methods") or []
    if not isinstance(methods, list):
        raise ZooError(f"methods: expected a list, got {type(methods).__name__}")
    entries: list[ZooEntry] = []
    for k, item in enumerate(methods):
        entries += _entries_for(item, k, base, sub.dataset, trial_data_dir, seeds, data_root)
    seen: dict[str, str] = {}
    for e in entries:
        if e.name in seen.values():
            raise ZooError(f"methods: the setting {e.name} appears twice")
        for t in e.trials:
            key = t.value_key()  # numbers by value: beta 1 and 1.0 are one model
            if key in seen:
                raise ZooError(f"methods: {seen[key]} and {e.name} train the same model")
            seen[key] = e.name
    models = doc.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ZooError(f"models: expected a list of 'package.module:callable' strings, got {short_repr(models)}")
    models = list(dict.fromkeys(models + list(extra_models or [])))
    for spec in models:
        try:
            resolve_spec(spec)
        except ModelSpecError as e:
            raise ZooError(str(e)) from None
    if not entries and not models:
        raise ZooError(f"{source}: nothing to benchmark (no methods and no models)")
    return ZooSpec(protocol=protocol, subset=subset, entries=entries, models=models, out=out, data_dir=data_dir,
                   seeds=list(seeds), source=source)


def load_zoo(path: str | os.PathLike, *, extra_models: list[str] | None = None,
             seeds: list[int] | None = None) -> ZooSpec:
    """Read and validate a zoo YAML file (``seeds`` replaces the file's seeds)."""
    doc = read_yaml(path, ZooError, "zoo file")
    if seeds is not None and isinstance(doc, dict):
        doc["seeds"] = list(seeds)
    return parse_zoo(doc, source=str(path), extra_models=extra_models)
