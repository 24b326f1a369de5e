"""Evaluate a trained run: certificates, empirical margin, attack damage and quality, per input.

``evaluate(run, EvalConfig(...), out_dir=None) -> EvalResult`` takes the first ``n`` inputs of
the run's data set ``split`` and computes, per input (SPEC sections 2-6):

- ``r_min``: median ||g(mu(x) + eta sigma(x)) - g(mu(x))||; ``x_norm``: ||x||;
- ``p``, ``p_lower``: Monte Carlo p_r(x) and its one-sided Clopper-Pearson lower bound;
- ``sigma_min``, ``sigma_mean``: min and mean over latent axes of sigma(x);
- ``jac_frobenius``, ``jac_spectral``, ``jac_whitened``: norms of the encoder-mean Jacobian;
- ``radius`` (Theorem 1), ``radius_sound``, ``radius_spectral``, ``radius_whitened``
  (0 = abstain, inf when every draw fell within r);
- ``margin``: the empirical margin R_hat_r(x) (``margin_mode`` "full", SPEC 6's default, or
  "mean"), ``margin_upper`` and ``margin_capped`` (still robust at the search cap);
- ``damage``: ||g(mu(x + delta*)) - g(mu(x))|| for the maximum-damage attack delta* at the fixed
  budget ``attack_eps``; ``likelihood_degradation``: |log p(x|z*) - log p(x|z)| / |log p(x|z)|
  for the same delta*;
- ``reconstruction_error``: ||g(mu(x)) - x||.

Choosing r. ``r`` is absolute; when it is None, r = ``r_relative`` times the median r_min over
the evaluated inputs (for users who do not know a natural scale). Models compared against each
other (the beta and tau studies) need one absolute r: the studies calibrate it once on a
reference model and pass it to every evaluation.

Choosing the attack budget. ``attack_eps`` is absolute (L2, pixel units); when it is None the
budget is ``attack_eps_relative`` times the median ||x|| over the evaluated inputs. That scale
depends on the data only, never on the model, so damages of different models evaluated on the
same inputs are damages at the same budget (a budget relative to a model's certified radius
would not be: it would shrink with exactly the quantity the studies compare).

The summary holds medians and quartiles of every column, abstention counts, and Pearson and
Spearman correlations between each bound and the margin with the count of bounds above the
margin (violations of bound <= R_r(x) <= R_hat, SPEC 6). Correlations use the inputs where the
bound is finite and positive (not abstaining) and the margin search was not capped.

With ``out_dir`` the result is written atomically as ``per_input.csv``, ``summary.json`` and
``eval_config.json``; a later call with the same config and the same trained model loads those
files instead of recomputing (resumable).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigMixin
from .fileio import read_csv, read_json, write_csv, write_json

PER_INPUT_FILE = "per_input.csv"
SUMMARY_FILE = "summary.json"
EVAL_CONFIG_FILE = "eval_config.json"

#: The per-input columns, in CSV order.
COLUMNS = (
    "index", "label", "r", "x_norm", "r_min", "p", "p_lower", "sigma_min", "sigma_mean",
    "jac_frobenius", "jac_spectral", "jac_whitened",
    "radius", "radius_sound", "radius_spectral", "radius_whitened", "abstain", "abstain_sound",
    "margin", "margin_upper", "margin_capped", "attack_eps", "damage", "likelihood_degradation",
    "reconstruction_error",
)
#: Bounds compared with the margin in the summary (name -> column).
BOUNDS = {"theorem1": "radius", "sound": "radius_sound", "spectral": "radius_spectral", "whitened": "radius_whitened"}
_NUMERIC_SUMMARY = ("r_min", "p", "p_lower", "sigma_min", "sigma_mean", "jac_frobenius", "jac_spectral",
                    "jac_whitened", "radius", "radius_sound", "radius_spectral", "radius_whitened", "margin",
                    "damage", "likelihood_degradation", "reconstruction_error", "x_norm")


@dataclass
class EvalConfig(ConfigMixin):
    """How a trained run is evaluated (see the module docstring for every quantity).

    split: data split to evaluate ("test"). n: the first n inputs of that split.
    r: absolute radius, or None to use ``r_relative`` x median r_min over the inputs.
    n_samples: Monte Carlo draws of eta per p estimate (and for r_min). alpha: Clopper-Pearson level.
    attack_eps: absolute L2 budget of the maximum-damage attack, or None to use
    ``attack_eps_relative`` x median ||x|| over the inputs. attack_steps / attack_restarts /
    attack_eta_samples: its PGD settings (also used inside the margin search).
    margin: compute the empirical margin (the slow part). margin_mode: "full" (SPEC 6 default:
    the attack moves mean and variance) or "mean" (Theorem 1's setting). margin_tol: relative
    bisection tolerance. margin_eps_max: search cap (None = the pixel box diameter).
    batch_size: inputs per batch. seed: seeds every random draw. device: torch device.
    """

    split: str = "test"
    n: int = 100
    r: float | None = None
    r_relative: float = 1.5
    n_samples: int = 1000
    alpha: float = 0.05
    attack_eps: float | None = None
    attack_eps_relative: float = 0.1
    attack_steps: int = 20
    attack_restarts: int = 1
    attack_eta_samples: int = 4
    margin: bool = True
    margin_mode: str = "full"
    margin_tol: float = 0.05
    margin_eps_max: float | None = None
    batch_size: int = 100
    seed: int = 0
    device: str = "cpu"

    _what = "evaluation"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.r is not None and not (self.r > 0 and math.isfinite(self.r)):
            raise ValueError(f"r must be a finite number > 0, got {self.r}")
        if not self.r_relative > 0:
            raise ValueError(f"r_relative must be > 0, got {self.r_relative}")
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.attack_eps is not None and not self.attack_eps > 0:
            raise ValueError(f"attack_eps must be > 0, got {self.attack_eps}")
        if not self.attack_eps_relative > 0:
            raise ValueError(f"attack_eps_relative must be > 0, got {self.attack_eps_relative}")
        if self.margin_mode not in ("full", "mean"):
            raise ValueError(f"margin_mode must be 'full' or 'mean', got {self.margin_mode!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        for name in ("attack_steps", "attack_restarts", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def identity(self) -> dict[str, Any]:
        """The fields that determine the numbers (device excluded)."""
        d = self.to_dict()
        d.pop("device")
        return d


@dataclass
class EvalResult:
    """rows: one dict per input (keys :data:`COLUMNS`). summary: medians, quartiles, correlations.
    config: the EvalConfig. out_dir: where it was written (None if not). loaded: read from disk.
    extra: free-form additions by callers (not written)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    config: EvalConfig
    out_dir: Path | None = None
    loaded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        """One per-input column as a float array."""
        return np.array([float(r[name]) for r in self.rows], dtype=float)


# --- evaluation -----------------------------------------------------------------------------

def _resolve_run(run: Any, device: str) -> Any:
    from .training import Run, load

    if isinstance(run, Run):
        if str(next(run.model.parameters()).device) != str(torch.device(device)):
            run.model.to(device)
        return run
    return load(run, device=device)


def _inputs(run: Any, config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import load_dataset

    data = load_dataset(run.config.dataset, config.split, run.config.data_dir)
    data = data.subset(config.n)
    return data.images.to(config.device), data.labels


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))


def _identity(run: Any, config: EvalConfig) -> dict[str, Any]:
    return {"evaluation": config.identity(), "train": run.config.training_fields()}


def load_result(out_dir: str | Path) -> EvalResult:
    """Read an evaluation folder written by :func:`evaluate`."""
    out_dir = Path(out_dir)
    meta = read_json(out_dir / EVAL_CONFIG_FILE, "evaluation config")
    summary = read_json(out_dir / SUMMARY_FILE, "evaluation summary")
    rows = [_parse_row(r) for r in read_csv(out_dir / PER_INPUT_FILE)]
    return EvalResult(rows, summary, EvalConfig.from_dict(meta["evaluation"]), out_dir, loaded=True)


def _parse_row(r: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        if v in ("True", "False"):
            out[k] = v == "True"
        else:
            try:
                out[k] = int(v) if k in ("index", "label") else float(v)
            except ValueError:
                out[k] = v
    return out


def _finished(out_dir: Path, ident: dict[str, Any]) -> bool:
    try:
        meta = read_json(out_dir / EVAL_CONFIG_FILE, "evaluation config")
    except Exception:
        return False
    same = {"evaluation": meta.get("evaluation_identity"), "train": meta.get("train")} == ident
    return same and (out_dir / SUMMARY_FILE).is_file() and (out_dir / PER_INPUT_FILE).is_file()


def evaluate(run: Any, config: EvalConfig | None = None, out_dir: str | Path | None = None,
             progress: bool = True) -> EvalResult:
    """Evaluate a trained run (a :class:`robvae.training.Run` or its folder); see the module doc.

    Resumable: with ``out_dir`` holding a finished evaluation of the same config and model, the
    files are loaded instead of recomputed.
    """
    from tqdm.auto import tqdm

    from .attacks import max_damage_attack
    from .metrics import likelihood_degradation, reconstruction_damage, reconstruction_error
    from .robustness import certify, empirical_margin, r_min

    config = config or EvalConfig()
    if isinstance(config, dict):
        config = EvalConfig.from_dict(config)
    run = _resolve_run(run, config.device)
    out = Path(out_dir) if out_dir is not None else None
    ident = _identity(run, config)
    if out is not None and _finished(out, ident):
        return load_result(out)

    t0 = time.perf_counter()
    model = run.model.eval()
    x_all, labels = _inputs(run, config)
    n = x_all.shape[0]
    batches = [slice(i, min(n, i + config.batch_size)) for i in range(0, n, config.batch_size)]
    stages = 4 if config.margin else 3
    bar = tqdm(total=stages * len(batches), desc=f"evaluate {run.config.dataset}", disable=not progress, unit="step")

    # 1. r_min and the radius r
    rmin = torch.cat([r_min(model, x_all[s], config.n_samples, generator=_gen(config.seed, 1 + i))
                      for i, s in enumerate(batches)])
    bar.update(len(batches))
    x_norm = x_all.flatten(1).norm(dim=1)
    r = float(config.r) if config.r is not None else float(config.r_relative * np.median(rmin.double().cpu().numpy()))
    if not r > 0:
        raise ValueError("the median r_min is 0 (the encoder has no noise); set an absolute r")
    eps = (float(config.attack_eps) if config.attack_eps is not None
           else float(config.attack_eps_relative * np.median(x_norm.double().cpu().numpy())))

    cols: dict[str, list[torch.Tensor]] = {}

    def add(name: str, t: torch.Tensor) -> None:
        cols.setdefault(name, []).append(t.detach().double().cpu().reshape(-1))

    for i, s in enumerate(batches):
        x = x_all[s]
        # 2. certificates (Theorem 1 and variants), p, sigma, Jacobian norms
        cert = certify(model, x, r, n_samples=config.n_samples, alpha=config.alpha, mode="mean",
                       generator=_gen(config.seed, 100 + i))
        for k in ("p", "p_lower", "sigma_min", "jac_frobenius", "jac_spectral", "jac_whitened", "radius",
                  "radius_sound", "radius_spectral", "radius_whitened", "abstain", "abstain_sound"):
            add(k, getattr(cert, k))
        with torch.inference_mode():
            add("sigma_mean", model.encode(x)[1].mean(dim=1))
        add("reconstruction_error", reconstruction_error(model, x))
        bar.update(1)
        # 3. maximum-damage attack at the fixed budget
        delta = max_damage_attack(model, x, eps, steps=config.attack_steps, restarts=config.attack_restarts,
                                  eta_samples=config.attack_eta_samples, mode="full",
                                  generator=_gen(config.seed, 200 + i))
        add("damage", reconstruction_damage(model, x, delta))
        add("likelihood_degradation", likelihood_degradation(model, x, delta) if hasattr(model, "log_likelihood")
            else torch.full((x.shape[0],), float("nan")))
        bar.update(1)
        # 4. empirical margin
        if config.margin:
            init = torch.where(torch.isfinite(cert.radius) & (cert.radius > 0), cert.radius,
                               torch.full_like(cert.radius, r))
            m = empirical_margin(model, x, r, mode=config.margin_mode, eps_max=config.margin_eps_max, eps_init=init,
                                 tol=config.margin_tol, n_samples=config.n_samples, steps=config.attack_steps,
                                 restarts=config.attack_restarts, eta_samples=config.attack_eta_samples,
                                 generator=_gen(config.seed, 300 + i))
            add("margin", m.margin)
            add("margin_upper", m.upper)
            add("margin_capped", m.capped)
        else:
            nan = torch.full((x.shape[0],), float("nan"))
            add("margin", nan)
            add("margin_upper", nan)
            add("margin_capped", torch.zeros(x.shape[0], dtype=torch.bool))
        bar.update(1)
    bar.close()

    arrays = {k: torch.cat(v).numpy() for k, v in cols.items()}
    arrays["r_min"] = rmin.double().cpu().numpy()
    arrays["x_norm"] = x_norm.double().cpu().numpy()
    rows: list[dict[str, Any]] = []
    for j in range(n):
        row: dict[str, Any] = {"index": j, "label": int(labels[j]), "r": r, "attack_eps": eps}
        for k in COLUMNS:
            if k in arrays:
                v = arrays[k][j]
                row[k] = bool(v) if k in ("abstain", "abstain_sound", "margin_capped") else float(v)
        rows.append({k: row[k] for k in COLUMNS})

    summary = summarize(rows, config)
    summary.update({
        "dataset": run.config.dataset, "run": str(run.path), "r": r, "r_from": "absolute" if config.r is not None
        else f"{config.r_relative:g} x median r_min", "attack_eps": eps,
        "attack_eps_from": "absolute" if config.attack_eps is not None
        else f"{config.attack_eps_relative:g} x median ||x||",
        "beta": run.config.objective.beta, "objective": run.config.objective.name, "tau": run.config.model.tau,
        "seed": run.config.seed, "test_elbo": _last_elbo(run), "seconds": time.perf_counter() - t0,
    })
    result = EvalResult(rows, summary, config, out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / PER_INPUT_FILE, rows, fieldnames=list(COLUMNS))
        write_json(out / SUMMARY_FILE, _jsonable(summary))
        # written last: its presence with a matching identity marks the evaluation finished
        write_json(out / EVAL_CONFIG_FILE, {"evaluation": config.to_dict(), "evaluation_identity": ident["evaluation"],
                                            "train": ident["train"], "run": str(run.path)})
    return result


def _last_elbo(run: Any) -> float:
    try:
        return float(run.metrics[-1]["test_elbo"])
    except (IndexError, KeyError, TypeError, ValueError):
        return math.nan


def _jsonable(o: Any) -> Any:
    """Strict JSON: NaN -> null, +-inf -> "inf" / "-inf"."""
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    return o


def summarize(rows: list[dict[str, Any]], config: EvalConfig | None = None) -> dict[str, Any]:
    """The summary of per-input rows: quartiles of each numeric column, abstentions, and for each
    bound its Pearson / Spearman correlation with the margin, least-squares slope and the count of
    bounds above the margin (over inputs with a finite positive bound and an uncapped margin)."""
    from .studies.stats import count_above, describe, least_squares, pearson, spearman

    col = lambda k: np.array([float(r[k]) for r in rows], dtype=float)  # noqa: E731
    s: dict[str, Any] = {"n": len(rows)}
    if config is not None:
        s["margin_mode"] = config.margin_mode if config.margin else None
    for k in _NUMERIC_SUMMARY:
        if rows and k in rows[0]:
            s[k] = describe(col(k))
    s["n_abstain"] = int(sum(bool(r["abstain"]) for r in rows))
    s["n_abstain_sound"] = int(sum(bool(r["abstain_sound"]) for r in rows))
    s["n_infinite_radius"] = int(np.isinf(col("radius")).sum())
    s["n_margin_capped"] = int(sum(bool(r["margin_capped"]) for r in rows))
    s["n_not_robust_clean"] = int((col("p") <= 0.5).sum())
    margin = col("margin")
    capped = np.array([bool(r["margin_capped"]) for r in rows])
    s["bounds"] = {}
    for name, c in BOUNDS.items():
        b = col(c)
        use = np.isfinite(b) & (b > 0) & np.isfinite(margin) & ~capped
        slope, intercept = least_squares(margin[use], b[use])
        s["bounds"][name] = {
            "column": c, "n_used": int(use.sum()), "pearson": pearson(margin[use], b[use]),
            "spearman": spearman(margin[use], b[use]), "slope": slope, "intercept": intercept,
            "n_above_margin": count_above(margin[use], b[use]),
            "median_ratio_bound_over_margin": float(np.median(b[use & (margin > 0)] / margin[use & (margin > 0)]))
            if (use & (margin > 0)).any() else math.nan,
        }
    return s
