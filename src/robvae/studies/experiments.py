"""The paper's studies on trained models (docs/THEORY.md section 1): bound vs. margin, beta sweep, tau sweep.

Each study trains its models through :func:`robvae.sweep.run_trials` (executor "local", "ray" or
"serial"; finished trials are skipped, interrupted training resumes), evaluates them with
:func:`robvae.evaluation.evaluate`, and writes into one output folder:

- ``study.json``   the exact ``robvae study ...`` command and every setting (read by the report);
- CSV tables, PNG figures and ``summary.json``;
- ``train/``       the training trials (one run folder per model, ``train/trials/<id>/run``);
- ``eval/``        the evaluation trials (``eval/trials/<id>/eval/per_input.csv`` ...).

Rerunning a study recomputes nothing that is finished: trained models and evaluations are reused,
tables and figures are redrawn from them.

One radius r for models that are compared. The beta and tau studies compare margins of different
models, which is only meaningful at one absolute r. Unless ``evaluation.r`` is given, r is
calibrated once from the trained models (written to ``calibration.json``), r_min drawn as the
evaluation draws it (:func:`robvae.evaluation.calibration_r_min`), so that r recomputes exactly from
the r_min column of the study's per_input.csv:
- beta study: r = r_relative x the largest, over the models, of the median r_min over the
  evaluated inputs, so that every model is r-robust on (most) clean inputs;
- tau study: r = r_relative x the median r_min of the smallest-tau model (the plain VAE), so that
  larger floors, whose noise alone moves reconstructions further, can fall below p_r(x) = 1/2:
  the minimum-r effect the study shows.
The bound-vs-margin study evaluates one model per seed with its own r (r_relative x median r_min).
The attack budget is the same for every model: ``attack_eps`` or ``attack_eps_relative`` x the
median ||x|| of the evaluated inputs (a property of the data, see :mod:`robvae.evaluation`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

import torch

from ..data import dataset_shape, load_dataset
from ..data.registry import missing_data
from ..errors import DataError, StudyError
from ..evaluation import (
    RIGOROUS_FOR_MODE, EvalConfig, calibration_r_min, jsonable, load_result, measured_margins, rows_bound_stats,
)
from ..fileio import read_json, write_csv, write_json
from ..models import ModelConfig
from ..objectives import ObjectiveConfig
from ..report.figures import VARIANTS, bound_variants_figure, bound_vs_margin_figure, degradation_figure, sweep_panels_figure
from ..report.html import write_study_meta
from ..stats import correlation, median, quartiles, spearman
from ..sweep import Trial, run_trials, trial_dir
from ..sweep.executors import using_torch_threads
from ..training import TrainConfig, load
from ..validation import model_dtype


def fmt_list(values: Sequence[float | int]) -> str:
    """[1.0, 2.0, 0.5] -> "1,2,0.5" (the CLI's list syntax)."""
    return ",".join(f"{v:g}" for v in values)

#: metrics aggregated over inputs in the sweep tables (column in per_input.csv -> label)
SWEEP_METRICS = {
    "margin": "empirical margin R_hat_r(x)",
    "damage": "max-damage attack damage ||g(mu(x+delta*)) - g(mu(x))||",
    "sigma_mean": "encoder sigma (mean over latent axes)",
    "sigma_min": "encoder sigma (min over latent axes)",
    "jac_frobenius": "encoder Jacobian ||J||_F",
    "radius": "certified radius (Theorem 1)",
    "radius_sound": "certified radius (sound)",
    "reconstruction_error": "reconstruction error ||g(mu(x)) - x||",
    "p": "p_r(x) (unperturbed)",
    "likelihood_degradation": "relative likelihood degradation",
    "r_min": "r_min(x)",
}


@dataclass
class TrainOptions:
    """How each model of a study is trained: the flat subset of
    :class:`robvae.training.TrainConfig` (with its :class:`~robvae.models.ModelConfig` and
    :class:`~robvae.objectives.ObjectiveConfig`) that the studies expose. Every default is the
    config's own, except ``epochs`` (10: studies train many models) and ``likelihood`` ("auto":
    Bernoulli for grey images, Gaussian for colour). objective / beta / tau are the defaults a
    study overrides where it sweeps them. :func:`make_train_config` builds the TrainConfig.
    """

    epochs: int = 10
    n_train: int | None = TrainConfig.n_train
    arch: Literal["mlp", "conv"] = ModelConfig.arch  # type: ignore[assignment]
    latent_dim: int = ModelConfig.latent_dim
    hidden: tuple[int, ...] = ModelConfig.hidden
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    objective: str = ObjectiveConfig.name
    beta: float = ObjectiveConfig.beta
    tau: float = ModelConfig.tau
    likelihood: Literal["auto", "bernoulli", "gaussian"] = "auto"
    device: str = TrainConfig.device

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)


@dataclass
class Executor:
    """Where the trials run: the keyword arguments of :func:`robvae.sweep.run_trials` of the same names."""

    executor: str = "local"
    workers: int = 1
    address: str | None = None
    progress: bool = True


def make_train_config(dataset: str, data_dir: str | None, opts: TrainOptions, seed: int, **override: Any):
    o = replace(opts, **override)
    shape = dataset_shape(dataset)
    lik = o.likelihood if o.likelihood != "auto" else ("bernoulli" if shape[0] == 1 else "gaussian")
    name = o.objective if not (o.objective == "elbo" and o.beta != 1.0) else "beta-vae"
    return TrainConfig(
        dataset=dataset, data_dir=str(data_dir) if data_dir is not None else None, n_train=o.n_train,
        model=ModelConfig(input_shape=shape, arch=o.arch, latent_dim=o.latent_dim, hidden=o.hidden, tau=o.tau,
                          likelihood=lik),
        objective=ObjectiveConfig(name, o.beta), epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, seed=seed,
        device=o.device,
    )


# --- running trials ------------------------------------------------------------------------

def _trial_threads(ex: Executor) -> int | None:
    """torch threads of the study's trials: 1 in each worker (local, ray), this process's own
    (serial). The calibration runs with the same, so that its r_min equals the evaluation's to
    the last bit (a matrix product's rounding may depend on the thread count)."""
    return None if ex.executor == "serial" else 1


def _train_all(train_configs: list[tuple[str, Any]], out: Path, ex: Executor) -> dict[str, Path]:
    """Train every (name, TrainConfig) under out/train; returns name -> run folder. Failures raise."""
    trials = [Trial(train=c, evaluation=None, name=name) for name, c in train_configs]
    results = run_trials(trials, out / "train", **asdict(ex), torch_threads=_trial_threads(ex))
    _raise_failed(results, "training")
    return {t.name: r.dir / "run" for t, r in zip(trials, results)}


def _evaluate_all(items: list[tuple[str, Any, Path]], ev: EvalConfig, out: Path, ex: Executor) -> dict[str, Any]:
    """Evaluate every (name, TrainConfig, trained run folder) with ``ev`` under out/eval.

    Each evaluation is a sweep trial (train + evaluate) whose run folder is first seeded with a
    copy of the already trained run, so training finds its final checkpoint and does nothing and
    the evaluations run in parallel on the chosen executor. Returns name -> EvalResult."""
    trials = [Trial(train=c, evaluation=ev, name=name) for name, c, _ in items]
    for t, (_, _, run_dir) in zip(trials, items):
        dest = trial_dir(out / "eval", t.id) / "run"
        if not (dest / "model.safetensors").is_file():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(run_dir, dest)
    results = run_trials(trials, out / "eval", **asdict(ex), torch_threads=_trial_threads(ex))
    _raise_failed(results, "evaluation")
    return {t.name: load_result(r.dir / "eval") for t, r in zip(trials, results)}


def _raise_failed(results: Sequence[Any], what: str) -> None:
    bad = [r for r in results if r.status != "done"]
    if bad:
        first = (bad[0].error or "").strip().splitlines()
        raise StudyError(f"{len(bad)} {what} trial(s) failed, e.g. {bad[0].name} ({bad[0].dir}): "
                         f"{first[-1] if first else 'unknown error'}; rerun the study to retry them")


#: Version of calibration.json's key: a file written under another version (2: the draws of
#: :func:`robvae.evaluation.calibration_r_min`; before, one generator over all inputs) is recomputed.
CALIBRATION_VERSION = 2


def _calibrate(out: Path, runs: dict[str, Path], names: Sequence[str], ev: EvalConfig, rule: str) -> dict[str, Any]:
    """r = ev.r_relative x (max over ``names``' median r_min) -- cached in calibration.json.

    r_min is drawn as the evaluation draws it (:func:`robvae.evaluation.calibration_r_min`, the same
    inputs, seed and draws), so each model's median r_min equals that of the r_min column of its
    evaluation (per_input.csv) and r recomputes from the study's own tables."""
    key = {"version": CALIBRATION_VERSION, "names": list(names), "rule": rule, "r_relative": ev.r_relative,
           "n": ev.n, "split": ev.split, "n_samples": ev.n_samples, "seed": ev.seed,
           "runs": {n: str(runs[n]) for n in names}}
    path = out / "calibration.json"
    if path.is_file():
        cal = read_json(path, "calibration")
        if cal.get("key") == key:
            return cal
    med: dict[str, float] = {}
    for name in names:
        run = load(runs[name], device=ev.device)
        model = run.model.eval()
        data_dir = ev.data_dir if ev.data_dir is not None else run.config.data_dir  # as the evaluation reads them
        x = load_dataset(run.config.dataset, ev.split, data_dir).subset(ev.n).images
        x = x.to(ev.device, model_dtype(model) or torch.float32)
        med[name] = float(np.median(calibration_r_min(model, x, ev.n_samples, ev.seed).double().cpu().numpy()))
    ref = max(med, key=med.get)
    cal = {"key": key, "rule": rule, "median_r_min": med, "reference": ref, "r": ev.r_relative * med[ref]}
    write_json(path, cal)
    return cal


def check_data(dataset: str, data_dir: str | None, ev: EvalConfig | None = None) -> None:
    """DataError (one line) when the data set's train or test files (or, where the evaluation has
    its own data_dir, its split's) are not there: before any trial starts, the check ``robvae
    sweep`` makes (:func:`robvae.data.registry.missing_data`)."""
    wanted = [("train", data_dir), ("test", data_dir)]
    if ev is not None and ev.data_dir is not None:
        wanted.append((ev.split, ev.data_dir))
    for split, folder in wanted:
        why = missing_data(dataset, split, None if folder is None else Path(folder).expanduser())
        if why:
            raise DataError(f"{why}; give --data-dir DIR (the folder of the data set's files) or --download")


# --- tables ---------------------------------------------------------------------------------

def _pooled_table(results: dict[str, Any], settings: dict[str, dict[str, Any]], x: str) -> tuple[list, list, list]:
    """(per-input rows, per-setting rows pooled over seeds, per-setting-and-seed rows)."""
    per_input = [{**settings[name], **row} for name, res in results.items() for row in res.rows]
    values = sorted({s[x] for s in settings.values()})
    table, per_seed = [], []
    for v in values:
        sel = [r for r in per_input if r[x] == v]
        row: dict[str, Any] = {x: v, "n_inputs": len(sel), "n_seeds": len({r["seed"] for r in sel})}
        measured = measured_margins(sel)  # the margin's values: its unknowns left out
        for m in SWEEP_METRICS:
            q1, med, q3 = quartiles(measured if m == "margin" else [r[m] for r in sel])
            row.update({f"{m}_median": med, f"{m}_q1": q1, f"{m}_q3": q3})
        capped = np.array([bool(r["margin_capped"]) for r in sel])
        row["n_margin_unknown"] = int(np.isnan(measured).sum())  # left out of the margin's quartiles
        # at least half the measured margins at the search's cap: the median is only a lower bound
        row["margin_median_at_cap"] = bool(capped.sum() * 2 >= max(1, np.isfinite(measured).sum()))
        row["frac_not_robust_clean"] = float(np.mean([float(r["p"]) <= 0.5 for r in sel]))
        row["frac_abstain"] = float(np.mean([bool(r["abstain"]) for r in sel]))
        row["frac_infinite_radius"] = float(np.mean([np.isinf(float(r["radius"])) for r in sel]))
        row["frac_margin_capped"] = float(np.mean([bool(r["margin_capped"]) for r in sel]))
        for s in sorted({r["seed"] for r in sel}):
            ss = [r for r in sel if r["seed"] == s]
            srow: dict[str, Any] = {x: v, "seed": s,
                                    **{f"{m}_median": median(_metric(ss, m)) for m in SWEEP_METRICS}}
            srow["test_elbo"] = results[next(n for n, st in settings.items() if st[x] == v and st["seed"] == s)].summary.test_elbo
            per_seed.append(srow)
        seed_meds = {m: [sr[f"{m}_median"] for sr in per_seed if sr[x] == v] for m in SWEEP_METRICS}
        for m in ("margin", "damage", "sigma_mean", "jac_frobenius"):
            row[f"{m}_seed_min"] = float(np.nanmin(seed_meds[m])) if seed_meds[m] else float("nan")
            row[f"{m}_seed_max"] = float(np.nanmax(seed_meds[m])) if seed_meds[m] else float("nan")
        row["test_elbo_mean"] = float(np.mean([sr["test_elbo"] for sr in per_seed if sr[x] == v]))
        table.append(row)
    return per_input, table, per_seed


def distinct(values: Any) -> list:
    """The values in their order, each once."""
    return list(dict.fromkeys(values))


def _metric(rows: list[dict[str, Any]], m: str) -> Any:
    """One metric's per-input values; the margin's without its unknowns (:func:`measured_margins`)."""
    return measured_margins(rows) if m == "margin" else [r[m] for r in rows]


def _trend(table: list[dict[str, Any]], x: str, metric: str) -> dict[str, Any]:
    """Spearman rho of the per-setting medians against the setting, and first -> last change."""
    rows = sorted(table, key=lambda r: r[x])
    xs = [r[x] for r in rows]
    ys = [r[f"{metric}_median"] for r in rows]
    return {"spearman_vs_setting": spearman(xs, ys), "first": ys[0] if ys else None, "last": ys[-1] if ys else None}


# --- the studies ----------------------------------------------------------------------------

def _eval_cli(ev: EvalConfig) -> str:
    parts = [f"--n {ev.n}", f"--n-samples {ev.n_samples}", f"--alpha {ev.alpha:g}"]
    parts.append(f"--r {ev.r:g}" if ev.r is not None else f"--r-relative {ev.r_relative:g}")
    parts.append(f"--attack-eps {ev.attack_eps:g}" if ev.attack_eps is not None
                 else f"--attack-eps-relative {ev.attack_eps_relative:g}")
    parts += [f"--attack-preset {ev.attack_preset}",
              f"--margin-mode {ev.margin_mode}", f"--margin-tol {ev.margin_tol:g}", f"--eval-seed {ev.seed}"]
    return " ".join(parts)


def _train_cli(o: TrainOptions) -> str:
    s = (f"--epochs {o.epochs} --arch {o.arch} --latent-dim {o.latent_dim} --hidden {fmt_list(o.hidden)} "
         f"--batch-size {o.batch_size} --lr {o.lr:g}")
    if o.n_train is not None:
        s += f" --n-train {o.n_train}"
    return s


def _command(study: str, dataset: str, data_dir: Any, out: Path, o: TrainOptions, ev: EvalConfig,
             seeds: Sequence[int], extra: str = "") -> str:
    dd = f" --data-dir {data_dir}" if data_dir is not None else ""
    return (f"robvae study {study} --dataset {dataset}{dd} --out {out}{extra} --seeds {fmt_list(seeds)} "
            f"{_train_cli(o)} {_eval_cli(ev)}")


def bound_vs_margin(
    dataset: str, out: str | Path, *, data_dir: str | None = None, seeds: Sequence[int] = (0,),
    train: TrainOptions | None = None, evaluation: EvalConfig | None = None, executor: Executor | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Theorem 1 bound (and variants) against the empirical margin over test inputs.

    One model per seed (``train``'s objective, beta, tau), each evaluated with its own r.
    Writes per_input.csv, bound_vs_margin.png, bound_variants.png, likelihood_vs_margin.png,
    summary.json, study.json. Returns {"rows", "summary"}.
    """
    o = train or TrainOptions()
    ev = evaluation or EvalConfig()
    ex = executor or Executor()
    out = Path(out)
    check_data(dataset, data_dir, ev)  # before any trial (and folder)
    out.mkdir(parents=True, exist_ok=True)
    seeds = distinct(seeds)  # a seed given twice would count its inputs twice
    cfgs = [(f"seed={s}", make_train_config(dataset, data_dir, o, s)) for s in seeds]
    runs = _train_all(cfgs, out, ex)
    results = _evaluate_all([(n, c, runs[n]) for n, c in cfgs], ev, out, ex)
    rows = [{"seed": s, **row} for s, (n, _) in zip(seeds, cfgs) for row in results[n].rows]
    write_csv(out / "per_input.csv", rows)

    stats = {col: rows_bound_stats(rows, col) for col, _ in VARIANTS}
    mlabel = f"empirical margin R_hat_r(x) ({ev.margin_mode} encoder, {ev.attack_preset} attack)"
    title = (f"{dataset}: Theorem 1 bound vs empirical margin "
             f"({len(rows)} test inputs, {len(seeds)} model{'s' if len(seeds) > 1 else ''})")
    bound_vs_margin_figure(rows, out / "bound_vs_margin.png", stats["radius"], title=title, margin_label=mlabel)
    bound_variants_figure(rows, out / "bound_variants.png", stats, title=f"{dataset}: bound variants",
                          margin_label=mlabel)
    measured = measured_margins(rows)  # unknown margins (0 in the rows) left out
    degr = correlation(measured, [r["likelihood_degradation"] for r in rows])
    degradation_figure([{**r, "margin": m} for r, m in zip(rows, measured)], out / "likelihood_vs_margin.png", degr,
                       title=f"{dataset}: likelihood degradation", margin_label=mlabel)
    figures = ["bound_vs_margin.png", "bound_variants.png", "likelihood_vs_margin.png"]
    rig_col = RIGOROUS_FOR_MODE[ev.margin_mode]
    rig = rows_bound_stats(rows, rig_col) if rows and rig_col in rows[0] else None
    if rig is not None and rig.n_used > 0:  # the rigorous radius of the margin's setting, where the model has one
        bound_vs_margin_figure(rows, out / "rigorous_vs_margin.png", rig, title=f"{dataset}: rigorous radius vs margin",
                               column=rig_col, bound_label=f"rigorous radius ({ev.margin_mode})", margin_label=mlabel)
        figures.append("rigorous_vs_margin.png")
    per_model = {n: results[n].summary.to_dict() for n, _ in cfgs}
    summary = {
        "study": "bound-vs-margin", "attack_preset": ev.attack_preset,
        "rigorous": None if rig is None else {"column": rig_col, **rig.to_dict()}, "dataset": dataset, "n_inputs": len(rows), "seeds": list(seeds),
        "margin_mode": ev.margin_mode,
        **{k: {n: s[k] for n, s in per_model.items()} for k in ("r", "attack_eps", "test_elbo")},  # per model
        "theorem1": stats["radius"].to_dict(), "variants": {c: st.to_dict() for c, st in stats.items()},
        "likelihood_degradation_vs_margin": degr.to_dict(),
        **{k: sum(s[k] for s in per_model.values()) for k in ("n_abstain", "n_infinite_radius", "n_margin_capped",
                                                                    "n_margin_unknown")},
        "median_margin": stats["radius"].median_margin,
        "median_radius": stats["radius"].median_bound,
        "per_model": per_model,
    }
    write_json(out / "summary.json", jsonable(summary))
    write_study_meta(out, "bound-vs-margin", command or _command("bound-vs-margin", dataset, data_dir, out, o, ev, seeds),
                     {"dataset": dataset, "data_dir": data_dir, "seeds": list(seeds), "train": asdict(o),
                      "evaluation": ev.to_dict(), "executor": asdict(ex)},
                     figures=figures, tables=["per_input.csv"])
    return {"rows": rows, "summary": summary, "stats": stats["radius"]}


def _sweep_study(
    study: str, values: Sequence[float], dataset: str, out: str | Path, data_dir: str | None, seeds: Sequence[int],
    o: TrainOptions, evaluation: EvalConfig | None, executor: Executor | None, command: str | None, *, rule: str,
    cli: str, settings: dict[str, Any], summary_head: dict[str, Any], panels: list[tuple[str, str]],
    trends: Sequence[str], title: str, **figure_kw: Any,
) -> dict[str, Any]:
    """The beta and tau studies: train one model per (value of ``study``, seed), fix r (``rule``
    "max": over all models; "first": over the smallest value's models), evaluate them all, pool
    the per-input rows into tables and draw ``<study>.png`` (``panels``, ``title`` + r and budget).
    ``cli``: the study's own flags in the command line; ``settings`` / ``summary_head``: its
    settings as study.json / summary.json record them."""
    x = study
    ev = evaluation or EvalConfig()
    ex = executor or Executor()
    out = Path(out)
    seeds = distinct(seeds)
    cmd = command or _command(study, dataset, data_dir, out, o, ev, seeds, cli)
    values = distinct(float(v) for v in values)
    if not values:
        raise ValueError(f"give at least one {x} value")
    check_data(dataset, data_dir, ev)  # before any trial (and folder)
    out.mkdir(parents=True, exist_ok=True)
    grid = [(f"{x}={v:g},seed={s}", v, s) for v in values for s in seeds]  # (trial name, value, seed)
    settings_of = {name: {x: v, "seed": s} for name, v, s in grid}
    cfgs = [(name, make_train_config(dataset, data_dir, o, s, **{x: v})) for name, v, s in grid]
    runs = _train_all(cfgs, out, ex)
    if ev.r is None:
        ref_names = [n for n in settings_of if rule == "max" or settings_of[n][x] == min(values)]
        with using_torch_threads(_trial_threads(ex)):
            cal = _calibrate(out, runs, ref_names, ev, rule)
        ev_abs = replace(ev, r=float(cal["r"]))
    else:
        cal = {"rule": "absolute", "r": ev.r}
        ev_abs = ev
    results = _evaluate_all([(n, c, runs[n]) for n, c in cfgs], ev_abs, out, ex)
    per_input, table, per_seed = _pooled_table(results, settings_of, x)
    write_csv(out / "per_input.csv", per_input)
    write_csv(out / f"{study}_table.csv", table)
    write_csv(out / f"{study}_by_seed.csv", per_seed)
    r, eps = ev_abs.r, per_input[0]["attack_eps"]
    sweep_panels_figure(table, per_seed, out / f"{study}.png", x=x, panels=panels,
                        title=f"{title}r = {r:.3g}, attack budget {eps:.3g}, {ev.margin_mode}-encoder margin",
                        **figure_kw)
    summary = {"study": study, "dataset": dataset, **summary_head, "seeds": list(seeds), "r": r,
               "calibration": cal, "attack_eps": eps, "margin_mode": ev.margin_mode}
    if x == "tau":
        summary["taus_with_median_p_at_most_half"] = [row["tau"] for row in table if row["p_median"] <= 0.5]
    summary.update(trends={m: _trend(table, x, m) for m in trends}, table=table)
    write_json(out / "summary.json", jsonable(summary))
    write_study_meta(out, study, cmd, {"dataset": dataset, "data_dir": data_dir, **settings, "seeds": list(seeds),
                                       "train": asdict(o), "evaluation": ev.to_dict(), "r_used": r,
                                       "executor": asdict(ex)},
                     figures=[f"{study}.png"], tables=[f"{study}_table.csv", f"{study}_by_seed.csv", "per_input.csv"])
    return {"table": table, "per_seed": per_seed, "rows": per_input, "summary": summary}


def beta_study(
    dataset: str, out: str | Path, *, betas: Sequence[float] = (1, 2, 4, 8, 16), objective: str = "beta-vae",
    data_dir: str | None = None, seeds: Sequence[int] = (0,), train: TrainOptions | None = None,
    evaluation: EvalConfig | None = None, executor: Executor | None = None, command: str | None = None,
) -> dict[str, Any]:
    """Train one model per beta (and seed) with ``objective`` ("beta-vae" or "beta-tcvae") and
    plot against beta: the paper's four panels (margin, attack damage at a fixed budget, encoder
    sigma, Jacobian norm) plus the certified radius and reconstruction error.

    Writes beta_table.csv (median and quartiles over inputs, pooled over seeds, plus the range of
    the seed medians), beta_by_seed.csv, per_input.csv, beta.png, summary.json, study.json."""
    if objective not in ("beta-vae", "beta-tcvae"):
        raise ValueError(f"objective must be 'beta-vae' or 'beta-tcvae', got {objective!r}")
    betas = distinct(float(b) for b in betas)  # each once, in every file the study writes
    panels = [("margin", "empirical margin R_hat_r(x)"), ("damage", "attack damage (fixed budget)"),
              ("sigma_mean", "encoder sigma (mean over axes)"), ("jac_frobenius", "encoder Jacobian ||J||_F"),
              ("radius_sound", "certified radius (Theorem 1, sound p)"),
              ("reconstruction_error", "reconstruction error ||g(mu(x)) - x||")]
    return _sweep_study(
        "beta", betas, dataset, out, data_dir, seeds, replace(train or TrainOptions(), objective=objective), evaluation,
        executor, command, rule="max", cli=f" --betas {fmt_list(betas)} --objective {objective}",
        settings={"betas": list(betas), "objective": objective},
        summary_head={"objective": objective, "betas": [float(b) for b in betas]}, panels=panels,
        trends=("margin", "damage", "sigma_mean", "jac_frobenius", "radius", "radius_sound", "reconstruction_error", "p"),
        title=f"{dataset}, {objective}: ", xlabel="beta", logx=True)


def tau_study(
    dataset: str, out: str | Path, *, taus: Sequence[float] = (0, 0.05, 0.1, 0.2, 0.5), data_dir: str | None = None,
    seeds: Sequence[int] = (0,), train: TrainOptions | None = None, evaluation: EvalConfig | None = None,
    executor: Executor | None = None, command: str | None = None,
) -> dict[str, Any]:
    """Train one model per variance floor tau (and seed) and plot margin, certified radius,
    attack damage, p_r(x) and reconstruction error against tau, shading the floors whose median
    p_r(x) falls to 1/2 or below (the minimum-r effect).

    Writes tau_table.csv, tau_by_seed.csv, per_input.csv, tau.png, summary.json, study.json."""
    if any(t < 0 for t in taus):
        raise ValueError("taus must be >= 0")
    taus = distinct(float(t) for t in taus)
    panels = [("margin", "empirical margin R_hat_r(x)"), ("radius_sound", "certified radius (Theorem 1, sound p)"),
              ("damage", "attack damage (fixed budget)"), ("p", "p_r(x) (unperturbed)"),
              ("reconstruction_error", "reconstruction error ||g(mu(x)) - x||"),
              ("sigma_min", "encoder sigma (min over axes)")]
    return _sweep_study(
        "tau", taus, dataset, out, data_dir, seeds, train or TrainOptions(), evaluation, executor, command,
        rule="first", cli=f" --taus {fmt_list(taus)}", settings={"taus": list(taus)},
        summary_head={"taus": [float(t) for t in taus]}, panels=panels,
        trends=("margin", "damage", "radius", "radius_sound", "p", "reconstruction_error", "sigma_min"),
        title=f"{dataset}: variance offset; ", xlabel="tau (floor on sigma)", p_threshold_panel="p")
