"""``run_bench``: train a zoo through the sweep machinery, evaluate every model under the
protocol, and write the leaderboard.

Output folder:
- ``trials/<id>/``           each trained model (robvae.sweep: run/, status.json, ...), plus
                             ``bench-<protocol>-<subset>-<hash>.json``: its BenchResult (written once,
                             atomically, with the digests of the weights and the data it was computed on);
- ``models/<slug>-<hash>/``  the same result file for each user model (``module:callable``);
- ``leaderboard.csv`` / ``leaderboard.md``   one row per setting (mean over its seeds), sorted
                             by certified fraction (then by the sound median radius), ELBO beside it;
- ``leaderboard-models.csv`` one row per model (every seed);
- ``tradeoff.png``           ELBO vs certified fraction and vs median margin;
- ``protocol.json``, ``summary.json``, ``study.json`` and ``report.html`` (``robvae report OUT``).

Resuming: training resumes through robvae.sweep (finished trials are skipped, unfinished ones
resume from their checkpoint) and a model whose result file exists for the same protocol, the
same weights (a user model is built again and its digest compared) and the same data is not
evaluated again, so an interrupted bench rerun recomputes nothing that had finished, and an
edited model or another data folder is never served an old result.

Ranking: by certified fraction, then the sound median radius, except that rows with a flag
(:attr:`BenchResult.flags`: the encoder's gradients do not describe it at the certification
budget, i.e. gradient masking; or it reconstructs no better than the mean test image) come last,
with the reason under the table. A user model whose name a setting already has is listed as
``NAME [SPEC]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text, hash_arrays, read_json_dict, run_digest, write_csv, write_json
from ..report.figures import bench_tradeoff_figure
from ..report.html import render_report, write_study_meta

from ..sweep import run_trials, trial_dir
from ..sweep.shard import model_digest
from ..training import load
from .loader import build_model
from .protocol import BenchResult, evaluate_protocol, load_subset_data
from .zoo import ZooSpec

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
MODELS_CSV = "leaderboard-models.csv"
FIGURE = "tradeoff.png"
#: leaderboard columns shown in the markdown table: (key, header, format)
_MD_COLUMNS = (("certified_fraction", "certified", "{:.1%}"), ("elbo", "ELBO", "{:.2f}"),
               ("reconstruction_error", "recon err", "{:.3f}"), ("median_radius_sound", "radius (sound)", "{:.3g}"),
               ("rigorous_radius", "rigorous", "{:.3g}"), ("median_margin", "margin", "{:.3g}"))


@dataclass
class Leaderboard:
    """rows: one dict per setting (means over seeds), best first. models: every BenchResult.
    failed: (name, error) of trials or models that could not be trained or evaluated."""

    rows: list[dict[str, Any]]
    models: list[BenchResult]
    failed: list[tuple[str, str]]
    out: Path
    protocol_text: str
    markdown: str


#: the format of the stored result files: results of another format are evaluated again
RESULT_FORMAT = 3


def _slug(s: str) -> str:
    """A folder name for a user model's spec: readable, plus a hash so that two specs never share
    one (``um:a_b`` and ``um_a:b`` read the same)."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:64] or "model"
    return f"{readable}-{hashlib.sha256(s.encode()).hexdigest()[:10]}"


def _result_path(folder: Path, zoo: ZooSpec) -> Path:
    digest = hashlib.sha256(json.dumps(zoo.protocol.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return folder / f"bench-{zoo.protocol.label}-{zoo.subset}-{digest}.json"


def _cached(folder: Path, zoo: ZooSpec, identity: dict[str, str]) -> tuple[Path, BenchResult | None]:
    """The result file in ``folder`` for this protocol and subset, and the result it holds: None
    when there is none, or when it was computed for another model or other data (``identity``:
    their digests), in another format, or it cannot be read."""
    path = _result_path(folder, zoo)
    d = read_json_dict(path)
    want = json.loads(json.dumps(zoo.protocol.to_dict()))  # as stored: tuples become lists
    if (d.get("protocol") != want or d.get("subset") != zoo.subset or d.get("format") != RESULT_FORMAT
            or d.get("identity") != identity):
        return path, None
    try:
        return path, BenchResult.from_dict(_decode(d["result"]))
    except (KeyError, TypeError, ValueError):  # a damaged or hand-edited file: evaluate again
        return path, None


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _encode(v: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (JSON has no such numbers)."""
    if isinstance(v, dict):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf" or "-inf"
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    return _NONFINITE.get(v, v) if isinstance(v, str) else v


def _store(path: Path, zoo: ZooSpec, result: BenchResult, identity: dict[str, str], **extra: Any) -> None:
    write_json(path, {"format": RESULT_FORMAT, "protocol": zoo.protocol.to_dict(), "subset": zoo.subset,
                      "identity": identity, "result": _encode(result.to_dict()), **extra})


def data_digest(data) -> str:
    """A digest of a test split's images (a rerun with other data is evaluated again)."""
    return hash_arrays(hashlib.sha256(), [("images", data.images)]).hexdigest()


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def aggregate(results: list[tuple[str, str, BenchResult]]) -> list[dict[str, Any]]:
    """(setting name, method, result) per model -> one row per setting: means over its seeds,
    sorted by certified fraction, then the sound median radius (both descending)."""
    groups: dict[str, list[tuple[str, BenchResult]]] = {}
    for name, method, res in results:
        groups.setdefault(name, []).append((method, res))
    rows = []
    for name, items in groups.items():
        flat = [res.row() for _, res in items]
        row: dict[str, Any] = {"name": name, "method": items[0][0], "models": len(items)}
        keys = list(dict.fromkeys(k for f in flat for k in f))  # every column of every seed
        for key in keys:
            if key in ("name", "protocol", "subset", "n", "r", "cert_eps", "flags"):
                continue
            vals = [_num(f.get(key)) for f in flat]
            row[key] = None if any(v is None for v in vals) else sum(vals) / len(vals)  # type: ignore[arg-type]
        if len(items) > 1:
            cf = [f["certified_fraction"] for f in flat]
            row["certified_fraction_spread"] = max(cf) - min(cf)
        kinds: dict[str, list[str]] = {}  # each kind of flag once: the first seed's words, and how many seeds
        for _, res in items:
            for kind, text in res.flag_items.items():
                kinds.setdefault(kind, []).append(text)
        row["flags"] = "; ".join(texts[0] + (f" [{len(texts)} of {len(items)} seeds]" if len(items) > 1 else "")
                                 for texts in kinds.values())
        rows.append(row)
    # flagged rows (gradient masking, no better than the mean image) rank after every other row; a
    # missing or NaN number ranks below every number (a total order), the name breaks ties
    rows.sort(key=lambda r: (bool(r["flags"]), _descending(r["certified_fraction"]),
                             _descending(r["median_radius_sound"]), r["name"]))
    return rows


def _descending(v: Any) -> float:
    """A sort key ranking larger numbers first and None / NaN last."""
    v = _num(v)
    return math.inf if v is None or math.isnan(v) else -v


def _cell(v: Any, fmt: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return fmt.format(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a GitHub markdown table (damage columns included)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))  # a column any row has (the first may lack one)
    dmg = [k for k in keys if k.startswith("damage@")]
    deg = [k for k in keys if k.startswith("degradation@")]
    cols = list(_MD_COLUMNS) + [(k, f"damage @{k[7:]}", "{:.3f}") for k in dmg] + \
        [(k, f"LL degr. @{k[12:]}", "{:.3f}") for k in deg]
    head = ["#", "model", "seeds"] + [h for _, h, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:", ":---", "---:"] + ["---:"] * len(cols)) + "|"]
    for i, r in enumerate(rows, 1):
        name = f"{r['name']} (flagged)" if r.get("flags") else r["name"]
        cells = [str(i), name, str(r["models"])] + [_cell(r.get(k), f) for k, _, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['name']}: {r['flags']}" for r in rows if r.get("flags")]
    if notes:
        lines += ["", "Flagged rows are ranked last, whatever their numbers:", *notes]
    return "\n".join(lines)


def run_bench(
    zoo: ZooSpec, out: str | os.PathLike, *, executor: str = "local", workers: int = 1, address: str | None = None,
    progress: bool = True, command: str | None = None, echo: Callable[[str], None] = lambda s: None,
) -> Leaderboard:
    """Train the zoo's settings (robvae.sweep.run_trials, resumable; ``address`` joins a Ray
    cluster with executor "ray"), evaluate each model and each user model under the protocol
    (cached per model), and write the leaderboard (module docstring)."""
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "protocol.json", zoo.protocol.to_dict())
    echo(zoo.protocol.describe(zoo.subset))
    failed: list[tuple[str, str]] = []
    evaluated: list[tuple[str, str, BenchResult]] = []
    trials = zoo.trials
    if trials:
        results = run_trials(trials, out, executor=executor, workers=workers, address=address, progress=progress)
        by_id = {r.id: r for r in results}
    data = load_subset_data(zoo.protocol, zoo.subset, zoo.data_dir)
    data_id = data_digest(data)
    for entry in zoo.entries:
        for t in entry.trials:
            res = by_id[t.id]
            if res.status != "done":
                failed.append((t.name, res.error or res.status))
                continue
            tdir = trial_dir(out, t.id)
            identity = {"model": run_digest(tdir / "run"), "data": data_id}
            path, bench = _cached(tdir, zoo, identity)
            if bench is None:
                echo(f"evaluating {t.name} ...")
                bench = evaluate_protocol(load(tdir / "run").model, data, zoo.protocol, zoo.subset, name=t.name)
                _store(path, zoo, bench, identity, trial=t.id)
            evaluated.append((entry.name, entry.method, bench))
    taken = {e.name for e in zoo.entries}
    for spec in zoo.models:
        try:
            model, name = build_model(spec)  # cheap next to an evaluation; its digest keys the result
            identity = {"model": model_digest(model), "data": data_id}
            path, bench = _cached(out / "models" / _slug(spec), zoo, identity)
            if bench is None:
                echo(f"evaluating {name} ({spec}) ...")
                bench = evaluate_protocol(model, data, zoo.protocol, zoo.subset, name=name)
                _store(path, zoo, bench, identity, spec=spec)  # write_json makes the folder
        except Exception as e:  # noqa: BLE001 - one bad user model does not stop the leaderboard
            failed.append((spec, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
            continue
        # a row per model: a name a zoo setting or another user model already has gets its spec
        row_name = bench.name if bench.name not in taken else f"{bench.name} [{spec}]"
        taken.add(row_name)
        evaluated.append((row_name, f"user: {spec}", bench))

    rows = aggregate(evaluated)
    model_rows = [{"setting": s, "method": m, **b.row()} for s, m, b in evaluated]
    write_csv(out / MODELS_CSV, model_rows)
    write_csv(out / LEADERBOARD_CSV, rows)
    table = markdown_table(rows)
    header = (f"# robvae bench leaderboard ({zoo.subset})\n\n```\n{zoo.protocol.describe(zoo.subset)}\n```\n\n"
              "Sorted by certified fraction (sound Theorem 1 radius >= eps); means over seeds; flagged rows "
              "last.\n\n")
    fail_txt = "".join(f"- failed: {n}: {e}\n" for n, e in failed)
    atomic_write_text(out / LEADERBOARD_MD, header + table + "\n" + (f"\n{fail_txt}" if fail_txt else ""))
    figures = []
    if rows:
        bench_tradeoff_figure(rows, out / FIGURE, title=f"robvae bench, protocol {zoo.protocol.label}, {zoo.subset}")
        figures.append(FIGURE)
    summary = {"protocol": zoo.protocol.label, "subset": zoo.subset, "n_models": len(evaluated),
               "n_failed": len(failed), "top": rows[:3], "failed": [{"name": n, "error": e} for n, e in failed]}
    write_json(out / "summary.json", summary)
    cmd = command or f"robvae bench {shlex.quote(zoo.source)} --out {shlex.quote(str(out))}"
    write_study_meta(out, "bench", cmd, {"dataset": zoo.subset, "protocol": zoo.protocol.to_dict(),
                                         "settings": [{"name": e.name, "method": e.method, "params": e.params}
                                                      for e in zoo.entries],
                                         "seeds": zoo.seeds, "models": zoo.models},
                     figures=figures, tables=[LEADERBOARD_CSV, MODELS_CSV])
    render_report([out], out / "report.html", title=f"robvae bench ({zoo.subset}, protocol {zoo.protocol.label})")
    return Leaderboard(rows=rows, models=[b for _, _, b in evaluated], failed=failed, out=out,
                       protocol_text=zoo.protocol.describe(zoo.subset), markdown=table)
