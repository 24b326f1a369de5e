"""Gathering a sweep's trials into one table: ``results.csv`` and ``results.json``.

One row per trial (in the order of the last ``run_trials`` call, from ``sweep.json``):
``id, name, status``; the core config fields (``dataset, objective.name, objective.beta,
model.tau, model.arch, model.latent_dim, epochs, seed``) and every other config field that
varies across the trials, flattened with dots (evaluation fields as ``evaluation.FIELD``);
``error, attempts, wall_s``; ``test_elbo`` (held-out ELBO of the trained model, nats per image);
then the evaluation summary fields (prefixed ``eval.`` only where a name clashes).

``results-brief.csv`` keeps the headline columns (config, status, test_elbo, the medians, the
counts of abstentions, infinite radii, capped and unknown margins that say how to read them, and
the bound-vs-margin correlations); :func:`write_study` adds ``study.json`` and ``sweep.png`` so that
``robvae report OUT`` renders a sweep like a study.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from .._version import __version__
from ..fileio import read_json, read_json_dict, write_csv, write_json
from ..report.figures import number_or_none, sweep_figure
from .worker import TRIAL_FILE, read_status

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
RESULTS_BRIEF_CSV = "results-brief.csv"
STUDY_FILE = "study.json"
FIGURE_FILE = "sweep.png"
_BRIEF_METRICS = ("radius", "radius_sound", "margin", "damage", "p", "sigma_mean", "jac_frobenius")
#: the brief's other columns: with the medians, the counts that say what they are over (a capped
#: margin is a lower bound kept as a number, an infinite radius is p = 1: margin.median and
#: radius.median read differently when many inputs are so)
_BRIEF_FIELDS = ("id", "name", "status", "attempts", "wall_s", "test_elbo", "n", "n_abstain", "n_infinite_radius",
                 "n_margin_capped", "n_margin_unknown")
CORE_FIELDS = ("dataset", "objective.name", "objective.beta", "model.tau", "model.arch", "model.latent_dim",
               "epochs", "seed")
_NOT_CONFIG = ("device",)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"tau": 0.1}} -> {"model.tau": 0.1} (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _trial_ids(out: Path) -> list[str]:
    sweep = out / "sweep.json"
    if sweep.is_file():
        try:
            ids = read_json(sweep, "sweep file").get("trials", [])
            return list(dict.fromkeys(ids))
        except (ValueError, AttributeError):
            pass
    root = out / "trials"
    return sorted(p.name for p in root.iterdir() if (p / TRIAL_FILE).is_file()) if root.is_dir() else []


def collect(out_dir: str | os.PathLike, *, write: bool = True) -> list[dict[str, Any]]:
    """One row per trial of the sweep in ``out_dir``; writes results.csv and results.json."""
    out = Path(out_dir)
    records = []
    for tid in _trial_ids(out):
        tdir = out / "trials" / tid
        trial = read_json_dict(tdir / TRIAL_FILE)
        status = read_status(tdir)
        config = flatten({k: v for k, v in (trial.get("train") or {}).items() if k not in _NOT_CONFIG})
        config.update(flatten({k: v for k, v in (trial.get("evaluation") or {}).items() if k not in _NOT_CONFIG},
                              "evaluation."))
        records.append((tid, trial, status, config))

    keys: list[str] = [k for k in CORE_FIELDS if any(k in r[3] for r in records)]
    all_keys = dict.fromkeys(k for r in records for k in r[3])  # the other fields that vary
    keys += [k for k in all_keys if k not in keys and len({repr(r[3].get(k)) for r in records}) > 1]

    rows = []
    for tid, trial, status, config in records:
        row: dict[str, Any] = {"id": tid, "name": trial.get("name", status.get("name", "")),
                               "status": status.get("status", "missing")}
        row.update({k: config.get(k) for k in keys})
        row.update(error=status.get("error"), attempts=status.get("attempts", 0), wall_s=status.get("wall_s"),
                   test_elbo=(status.get("summary") or {}).get("test_elbo"))
        summary = flatten(dict(status.get("summary") or {}))
        for k, v in summary.items():
            row[f"eval.{k}" if k in row and k != "test_elbo" else k] = v
        rows.append(row)

    if write:
        fieldnames = list(dict.fromkeys(k for row in rows for k in row)) or ["id", "name", "status"]
        csv_rows = [{k: _cell(row.get(k)) for k in fieldnames} for row in rows]
        write_csv(out / RESULTS_CSV, csv_rows, fieldnames=fieldnames)
        brief = [k for k in fieldnames if _is_brief(k, keys)]
        write_csv(out / RESULTS_BRIEF_CSV, [{k: r[k] for k in brief} for r in csv_rows], fieldnames=brief)
        write_json(out / RESULTS_JSON, rows)
    return rows


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def _is_brief(key: str, config_keys: list[str]) -> bool:
    if key in _BRIEF_FIELDS or key in config_keys:
        return True
    if key.startswith("bounds.") and key.endswith((".spearman", ".pearson")):
        return True
    return any(key == f"{m}.median" for m in _BRIEF_METRICS)


def write_study(out_dir: str | os.PathLike, *, command: str, config: dict[str, Any],
                grid: dict[str, list[Any]]) -> Path:
    """Write ``study.json`` (and ``sweep.png``) so that ``robvae report OUT`` shows the sweep."""
    out = Path(out_dir)
    rows = collect(out)
    figures = []
    axis = next((k for k, vals in grid.items() if len(vals) > 1 and all(number_or_none(v) is not None for v in vals)), None)
    if axis is not None and rows:
        metrics = [m for m in ("test_elbo", "radius.median", "margin.median", "damage.median", "p.median",
                               "sigma_mean.median") if any(number_or_none(r.get(m)) is not None for r in rows)]
        if metrics and sweep_figure(rows, axis, metrics, out / FIGURE_FILE):
            figures.append(FIGURE_FILE)
    doc = {"study": "sweep", "command": command, "config": config, "grid": grid,
           "tables": [RESULTS_BRIEF_CSV, RESULTS_CSV], "figures": figures,
           "created": datetime.datetime.now().isoformat(timespec="seconds"), "robvae": __version__,
           "trials": len(rows), "done": sum(r["status"] == "done" for r in rows)}
    return write_json(out / STUDY_FILE, doc)
