"""One self-contained HTML page from one or several study folders.

Every PNG figure is embedded as a base64 ``data:image/png`` URI, tables are inlined, and each
study shows the exact command and the full config (from its ``study.json``) that produced it.
No script, stylesheet or image is fetched from anywhere: the page opens from disk, with no server.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import CheckpointError, RobvaeError
from ..fileio import atomic_write_text, file_sha256, read_csv, read_json, run_digest, write_json
from .figures import pyplot, save_figure

#: what every study folder holds besides its tables and figures (the report reads it):
#: {"study": name, "command": the exact robvae command line that reproduces the folder,
#: "config": every setting, "figures": [png names], "tables": [csv names], "robvae": version,
#: "created": UTC time}
STUDY_FILE = "study.json"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: rows of a CSV table shown inline (the rest are counted, the file is named)
MAX_TABLE_ROWS = 40
#: summary keys shown as headline numbers, per study
_HEADLINES = {
    # a robvae.evaluate output folder (eval_config.json, summary.json, per_input.csv: the demo's eval/)
    "evaluation": [("n", "inputs"), ("r", "radius r"), ("p.median", "p_r(x), median"),
                   ("radius.median", "Theorem 1 radius, median"), ("radius_sound.median", "sound radius, median"),
                   ("n_abstain", "abstentions"), ("margin.median", "empirical margin, median"),
                   ("bounds.theorem1.spearman", "Spearman rho (bound vs margin)"),
                   ("bounds.theorem1.n_violations", "Theorem 1 bounds above the margin"),
                   ("rigorous_vs_margin.n_above_margin", "rigorous radii above the margin"),
                   ("damage.median", "attack damage (deterministic), median"),
                   ("likelihood_degradation.median", "likelihood degradation, median")],
    "bound-vs-margin": [("theorem1.pearson", "Pearson rho (bound vs margin)"),
                        ("theorem1.spearman", "Spearman rho"), ("theorem1.n_violations", "bounds above the margin"),
                        ("theorem1.n_used", "inputs used"),
                        # BoundStats medians: over the inputs compared (per_model's margin.median is
                        # over every measured margin, so the two differ)
                        ("median_radius", "median certified radius (inputs compared)"),
                        ("median_margin", "median empirical margin (inputs compared)"), ("n_abstain", "abstentions"),
                        ("attack_preset", "attack preset (margin search)"),
                        ("rigorous.median_bound", "median rigorous radius"),
                        ("rigorous.n_violations", "rigorous radii above the margin"),
                        ("rigorous.n_used", "inputs compared (rigorous)")],
    "beta": [("r", "radius r"), ("attack_eps", "attack budget"),
             ("trends.margin.spearman_vs_setting", "Spearman rho, margin vs beta"),
             ("trends.damage.spearman_vs_setting", "Spearman rho, damage vs beta"),
             ("trends.sigma_mean.spearman_vs_setting", "Spearman rho, sigma vs beta"),
             ("trends.jac_frobenius.spearman_vs_setting", "Spearman rho, ||J||_F vs beta")],
    "tau": [("r", "radius r"), ("attack_eps", "attack budget"),
            ("trends.margin.spearman_vs_setting", "Spearman rho, margin vs tau"),
            ("trends.damage.spearman_vs_setting", "Spearman rho, damage vs tau"),
            ("taus_with_median_p_at_most_half", "taus with median p_r(x) <= 1/2")],
    "theorem2": [("max_rel_error_sigma", "largest relative error of sigma"),
                 ("max_rel_error_jacobian", "largest relative error of ||J||_F"),
                 ("sigma_increasing_in_beta", "sigma grows with beta"),
                 ("jacobian_decreasing_in_beta", "||J||_F shrinks with beta")],
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
pre{background:#f5f5f5;padding:.7em;overflow-x:auto;font-size:.85em;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}th{background:#eee}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dl.kv dt{font-weight:600}
dl.kv dd{margin:0}details{margin:.6em 0}nav a{margin-right:1em}
"""


def write_study_meta(out: Path, study: str, command: str, config: dict[str, Any], *,
                     figures: Sequence[str] = (), tables: Sequence[str] = ()) -> Path:
    """Write ``study.json`` (see :data:`STUDY_FILE`) into the study folder ``out``."""
    meta = {"study": study, "command": command, "config": config, "figures": list(figures), "tables": list(tables),
            "robvae": __version__, "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return write_json(Path(out) / STUDY_FILE, meta)


def _png_data_uri(path: Path) -> str | None:
    data = path.read_bytes()
    if not data.startswith(_PNG_MAGIC) or not data.endswith(b"IEND\xaeB`\x82"):  # not a PNG, or cut short
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_MISSING = object()


def _get(d: Any, dotted: str, missing: Any = None) -> Any:
    """``d["a"]["b"]`` for "a.b"; ``missing`` where a key is absent (a JSON null is None)."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return missing
        d = d[part]
    return d


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"  # NaN -> "nan", inf -> "inf"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) or "none"
    if isinstance(v, str):
        if v.strip().lstrip("+-").isdigit():
            return v.strip()  # an integer (a seed, a count) as written, never 1.235e+06
        try:
            return _fmt(float(v)) if v not in ("", "True", "False") else ("yes" if v == "True" else "no" if v == "False" else v)
        except ValueError:
            return v
    return "" if v is None else str(v)


def _table(path: Path, max_rows: int = MAX_TABLE_ROWS) -> str:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error):
        return f"<p><strong>{html.escape(path.name)} is not a text table (damaged?)</strong></p>"
    if not rows:
        return f"<p>{html.escape(path.name)}: empty</p>"
    head, body = rows[0], rows[1:]
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in body[:max_rows]:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    if len(body) > max_rows:
        out.append(f"<p><em>{max_rows} of {len(body)} rows shown; all in {html.escape(path.name)}.</em></p>")
    return "".join(out)


#: what a plain run folder (``robvae train``, then certify / attack / margin) may hold, shown by
#: ``robvae report RUN`` when the folder has no study.json
#: (glob patterns, in this order; the commands name their outputs after the split, certify-test.csv,
#: or after an --inputs file, certify-FILE.csv)
RUN_FIGURES = ("training_curves.png", "reconstructions.png", "attack-*/attack.png")
RUN_TABLES = ("metrics.csv", "certify-*.csv", "margin-*.csv", "attack-*/attack.csv")


def _training_curves(folder: Path) -> str | None:
    """training_curves.png from the run's metrics.csv: train and held-out ELBO per epoch; or why
    not (a damaged metrics.csv, named), shown in the report in place of the figure."""
    try:
        rows = read_csv(folder / "metrics.csv")
        if not rows:
            return None
        epochs = [int(r["epoch"]) for r in rows]
        curves = [(label, [float(r[key]) for r in rows])
                  for key, label in (("train_elbo", "train ELBO"), ("test_elbo", "held-out ELBO")) if key in rows[0]]
    except (KeyError, TypeError, ValueError, csv.Error) as e:  # (UnicodeDecodeError is a ValueError)
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return (f"metrics.csv is not a metrics table robvae train writes (damaged or edited: {why[:200]}): training "
                "curves not drawn")
    fig, ax = pyplot().subplots(figsize=(5, 3.2))
    for label, values in curves:
        ax.plot(epochs, values, marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="nats per image")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, folder / "training_curves.png", dpi=110, bbox_inches=None)


#: headline numbers of a plain run folder: (command, summary key, label), shown for each results
#: file of that command present (its label gets the file's split or inputs name unless it is "test")
_RUN_HEADLINES = [
    ("certify", "median_radius", "median Theorem 1 radius"),
    ("certify", "median_radius_rigorous_mean", "median rigorous radius (mean-only)"),
    ("certify", "median_radius_rigorous_full", "median rigorous radius (full)"),
    ("margin", "median_bound", "median Theorem 1 radius (inputs compared with the margin)"),
    ("margin", "median_margin", "median empirical margin"),
    ("margin", "attack_preset", "margin search attack preset"),
    ("margin", "n_violations", "Theorem 1 bounds above the margin"),
    ("margin", "rigorous_above_margin", "rigorous radii above the margin"),
    ("attack", "preset", "attack preset"),
    ("attack", "damage median", "attack damage (deterministic), median"),
    ("attack", "expected damage median", "attack damage (expected, eq. 5), median"),
]


def _is_results(name: str, res: Any) -> bool:
    """Whether a JSON file matching RUN_RESULTS is a command's results (a JSON object whose
    "command" is the file's prefix), not some other file that happens to match (margin-notes.json)."""
    return isinstance(res, dict) and res.get("command") == _results_name(name)[0]


def _results_name(name: str) -> tuple[str, str]:
    """'certify-test.json' -> ('certify', 'test'); 'attack-imgs/attack.json' -> ('attack', 'imgs')."""
    command, _, rest = name.partition("-")
    return command, rest.split("/")[0].removesuffix(".json")


#: results files of certify / margin / attack (a folder holding one renders, with or without config.json)
RUN_RESULTS = ("certify-*.json", "margin-*.json", "attack-*/attack.json")


def run_files(folder: Path, patterns: Sequence[str]) -> list[str]:
    """The files of ``folder`` matching ``patterns`` (relative paths; pattern by pattern, each
    sorted by name)."""
    return [p.relative_to(folder).as_posix() for pat in patterns for p in sorted(folder.glob(pat)) if p.is_file()]


def _results_csv(name: str) -> str:
    """The per-input CSV a results JSON describes: certify-X.json -> certify-X.csv,
    attack-X/attack.json -> attack-X/attack.csv."""
    return name.removesuffix(".json") + ".csv"


def result_problems(folder: Path, results: dict[str, Any]) -> dict[str, str]:
    """Why a run folder's results should not be read as the run's (name -> reason): a JSON whose run
    digest is not the run's config and weights now (computed before robvae train extended or
    retrained it), a JSON whose CSV digest does not match the CSV beside it (the pair of two runs,
    one interrupted while writing), and a results CSV without its JSON (interrupted while writing)."""
    problems: dict[str, str] = {}
    current = run_digest(folder) if (folder / "config.json").is_file() else None
    for name, res in results.items():
        csv_path = folder / _results_csv(name)
        if current is not None and res.get("run_digest") not in (None, current):
            problems[name] = ("computed for another model than this run folder holds now (this run before robvae "
                              "train changed it, or another run written here with --out): rerun the command")
        elif isinstance(res.get("csv_sha256"), str) and csv_path.is_file() and file_sha256(csv_path) != res["csv_sha256"]:
            problems[name] = (f"{_results_csv(name)} is not the CSV this summary describes (changed after it was "
                              "written: by a later run of the command interrupted while writing, or edited): rerun the "
                              "command")
    for tab in run_files(folder, RUN_TABLES[1:]):
        name = tab.removesuffix(".csv") + ".json"
        if name not in results:
            problems[name] = (f"{tab} has no summary beside it (the command was interrupted while writing): rerun "
                              "the command")
    return problems


def _run_meta(folder: Path) -> dict[str, Any]:
    """A study description for a plain run folder (or a ``--model`` output folder, which has no
    config.json): its config, and the figures, tables and results it has, and the results that
    should not be read as the run's (:func:`result_problems`: shown as warnings, their headline
    numbers left out)."""
    config = read_json(folder / "config.json", "config") if (folder / "config.json").is_file() else {}
    notes = [why] if (folder / "metrics.csv").is_file() and (why := _training_curves(folder)) else []
    figures = [f for f in run_files(folder, RUN_FIGURES) if not (notes and f == "training_curves.png")]  # not stale
    results, damaged = {}, {}
    for name in run_files(folder, RUN_RESULTS):  # a damaged one is said, as a mismatched CSV is, the rest shown
        try:
            res = read_json(folder / name, "results")
        except CheckpointError:
            damaged[name] = (f"{name} is not valid JSON (damaged: cut short by an interrupted write, or edited): "
                             "rerun the command")
            continue
        if _is_results(name, res):
            results[name] = res
    return {"study": "run" if config else "model",
            "command": " / ".join(dict.fromkeys(str(r.get("command", "")) for r in results.values())) or
            "robvae train (see config.json)", "config": config,
            "figures": figures, "tables": run_files(folder, RUN_TABLES), "results": results,
            "problems": {**result_problems(folder, results), **damaged}, "notes": notes}


#: what a ``robvae.evaluate`` output folder holds (robvae demo's eval/, an evaluation trial of a sweep)
EVAL_FILES = ("eval_config.json", "summary.json", "per_input.csv")


def _eval_meta(folder: Path) -> dict[str, Any]:
    """A study description for a ``robvae.evaluate`` output folder: its settings and per-input table."""
    config = read_json(folder / "eval_config.json", "evaluation settings")
    return {"study": "evaluation", "command": "robvae.evaluate (settings: eval_config.json)",
            "config": config if isinstance(config, dict) else {}, "figures": [], "tables": ["per_input.csv"]}


def _section(folder: Path, k: int) -> tuple[str, str]:
    meta = read_json(folder / "study.json", "study description") if (folder / "study.json").is_file() \
        else _eval_meta(folder) if all((folder / f).is_file() for f in EVAL_FILES) else _run_meta(folder)
    if not isinstance(meta, dict):
        raise RobvaeError(f"{folder / 'study.json'} is not a study description (a JSON object); "
                          "rerun the study to write it again")
    name = str(meta.get("study", "study"))
    anchor = f"s{k}"
    title = f"{name}" + (f" — {meta['config'].get('dataset')}" if isinstance(meta.get("config"), dict)
                         and meta["config"].get("dataset") else "") + f" ({folder.name})"
    parts = [f'<section id="{anchor}"><h2>{html.escape(title)}</h2>',
             f"<p>Folder: <code>{html.escape(str(folder))}</code> · created {html.escape(str(meta.get('created', '')))}"
             f" · robvae {html.escape(str(meta.get('robvae', '')))}</p>",
             "<h3>Command</h3>", f"<pre>{html.escape(str(meta.get('command', '')))}</pre>"]
    summary = read_json(folder / "summary.json", "summary") if (folder / "summary.json").is_file() else {}
    if not isinstance(summary, dict):
        raise RobvaeError(f"{folder / 'summary.json'} is not a study summary (a JSON object); "
                          "rerun the study to write it again")
    heads = [(lbl, _get(summary, key, _MISSING)) for key, lbl in _HEADLINES.get(name, [])]
    results = meta.get("results") if isinstance(meta.get("results"), dict) else {}
    problems = meta.get("problems") if isinstance(meta.get("problems"), dict) else {}
    named = [(_results_name(f), res) for f, res in results.items() if f not in problems]
    heads += [(lbl if label == "test" else f"{lbl} ({label})", _get(res or {}, "summary." + key, _MISSING))
              for command, key, lbl in _RUN_HEADLINES for (c, label), res in named if c == command]
    # a number that is undefined (NaN, stored as null: e.g. a correlation of constant values) is shown as such
    heads = [(lbl, "undefined" if v is None else v) for lbl, v in heads if v is not _MISSING]
    for name, why in problems.items():  # results that are not this run's: said first, their numbers left out
        parts.append(f"<p><strong>Not shown as this run's: {html.escape(name)}: {html.escape(why)}</strong></p>")
    for note in meta.get("notes", []) if isinstance(meta.get("notes"), list) else []:
        parts.append(f"<p><strong>{html.escape(str(note))}</strong></p>")
    if heads:
        parts.append('<h3>Headline numbers</h3><dl class="kv">')
        parts += [f"<dt>{html.escape(lbl)}</dt><dd>{html.escape(_fmt(v))}</dd>" for lbl, v in heads]
        parts.append("</dl>")
    for fig in meta.get("figures", []):
        p = folder / fig
        if not p.is_file():
            parts.append(f"<p><strong>missing figure {html.escape(fig)}</strong></p>")
            continue
        uri = _png_data_uri(p)
        if uri is None:
            parts.append(f"<p><strong>{html.escape(fig)} is not a whole PNG file (damaged?)</strong></p>")
            continue
        parts.append(f'<figure><img src="{uri}" alt="{html.escape(fig)}"><figcaption>{html.escape(fig)}'
                     "</figcaption></figure>")
    for tab in meta.get("tables", []):
        p = folder / tab
        if not p.is_file():
            parts.append(f"<p><strong>missing table {html.escape(tab)}</strong></p>")
        else:
            parts.append(f"<details{' open' if tab != 'per_input.csv' else ''}><summary>Table "
                         f"<code>{html.escape(tab)}</code></summary>{_table(p)}</details>")
    parts.append("<details><summary>Full config (study.json)</summary><pre>"
                 + html.escape(json.dumps(meta.get("config", {}), indent=2, sort_keys=True)) + "</pre></details>")
    for name, res in meta.get("results", {}).items():  # a run folder's certify / attack / margin results
        parts.append(f"<details open><summary>{html.escape(name)}</summary><pre>"
                     + html.escape(json.dumps(res, indent=2, sort_keys=True)[:200_000]) + "</pre></details>")
    if summary:
        parts.append("<details><summary>summary.json</summary><pre>"
                     + html.escape(json.dumps(summary, indent=2, sort_keys=True)[:200_000]) + "</pre></details>")
    parts.append("</section>")
    return f'<a href="#{anchor}">{html.escape(title)}</a>', "\n".join(parts)


def render_report(folders: Sequence[str | Path], out_file: str | Path | None = None, *,
                  title: str = "robvae studies") -> Path:
    """Render the study folders (each holding ``study.json``) into one HTML file.

    ``out_file`` defaults to ``report.html`` inside the first folder. Raises FileNotFoundError
    naming a folder without ``study.json``."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise ValueError("give at least one study folder")
    for f in folders:
        if not any((f / name).is_file() for name in ("study.json", "config.json")) and not run_files(f, RUN_RESULTS) \
                and not all((f / name).is_file() for name in EVAL_FILES):
            raise FileNotFoundError(f"{f} is not a study folder (no study.json) nor a run folder (no config.json) "
                                    "nor a results folder (no certify / margin / attack results) nor an evaluation "
                                    "folder (eval_config.json, summary.json, per_input.csv)")
    links, sections = zip(*(_section(f, k) for k, f in enumerate(folders)))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Rendered {when} by <code>robvae report</code>. Figures are embedded; this file needs no server "
            "and no network.</p>"
            f"<nav>{''.join(links)}</nav>" + "\n".join(sections) + "</body></html>\n")
    out = Path(out_file) if out_file is not None else folders[0] / "report.html"
    atomic_write_text(out, page)
    return out
