"""Evaluate a trained run: certificates, empirical margin, attack damage and quality, per input.

``evaluate(run, EvalConfig(...), out_dir=None) -> EvalResult`` takes the first ``n`` inputs of
the run's data set ``split`` and computes, per input (docs/THEORY.md sections 2-6):

- ``r_min``: median ||g(mu(x) + eta sigma(x)) - g(mu(x))||; ``x_norm``: ||x||;
- ``p``, ``p_lower``: Monte Carlo p_r(x) and its one-sided Clopper-Pearson lower bound;
  ``n_drawn``: the draws they come from (``n_samples``, or fewer for an input that stopped early,
  settled p < 1/2: :class:`robvae.robustness.CertifyConfig`);
- ``sigma_min``, ``sigma_mean``: min and mean over latent axes of sigma(x);
- ``jac_frobenius``, ``jac_spectral``, ``jac_whitened``: norms of the encoder-mean Jacobian;
- ``radius`` (Theorem 1), ``radius_sound``, ``radius_spectral``, ``radius_whitened``
  (0 = abstain, inf when every draw fell within r);
- ``margin``: the empirical margin R_hat_r(x) (``margin_mode`` "full", the default of docs/THEORY.md section 5, or
  "mean"), ``margin_upper``, ``margin_capped`` (still robust at the search cap) and
  ``margin_robust_clean`` (the search settled that x is robust unperturbed);
- ``radius_rigorous_mean``, ``radius_rigorous_full``: the rigorous radii (docs/THEORY.md section 8,
  :func:`robvae.robustness.rigorous.rigorous_columns`: hold for every perturbation; mean-only and
  with sigma moving), for models with Lipschitz bounds (robvae's VAE, LinearVAE); NaN otherwise
  (the summary says why in ``rigorous_note``);
- ``damage``: ||g(mu(x + delta*)) - g(mu(x))|| (deterministic) and ``expected_damage``:
  E_eta ||g(mu(x + delta*) + eta sigma(x + delta*)) - g(mu(x))|| (the paper's eq. 5) for the attack
  ensemble's perturbation delta* (:class:`robvae.attacks.EnsembleAttack`, preset ``attack_preset``,
  recorded per input with the objective that found delta*: ``attack_preset``, ``attack_objective``)
  at the fixed budget ``attack_eps``; ``likelihood_degradation``: |log p(x|z*) - log p(x|z)| / |log p(x|z)|
  for the same delta*; ``ssim`` / ``ms_ssim``: the structural similarity of g(mu(x + delta*)) and
  g(mu(x)) (:func:`robvae.metrics.perceptual_damage`; 1 = undamaged, NaN where unavailable);
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

The summary holds medians and quartiles of every column, abstention counts, and for each bound
its comparison with the margin, :class:`robvae.stats.BoundStats` from
:func:`robvae.stats.bound_stats` (correlations, slope, violations of bound <= R_r(x) <= R_hat
(docs/THEORY.md section 5), medians), over the inputs where the comparison is meaningful: the
bound does not abstain and is finite, the margin search's own clean estimate ``p_clean`` agrees
the input is robust and its sequential test settled that (``margin_robust_clean``; unsettled, the
margin is 0 by convention, an unknown rather than a measurement), and the margin is not capped.

With ``out_dir`` the result is written atomically as ``per_input.csv``, ``summary.json`` and
``eval_config.json``; a later call with the same config and the same trained model loads those
files instead of recomputing (resumable).

The commands' reports are library calls too: :func:`margin_report` (``robvae margin``) and
:func:`attack_report` (``robvae attack``: the fixed-budget attack on given inputs ->
:class:`AttackReport` with ``.rows``, ``.summary``, and ``attack.csv`` / ``.json`` / ``.png``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .attacks import EnsembleAttack, max_damage_attack
from .config import ALPHA, MARGIN_TOL, N_SAMPLES, R_RELATIVE, ConfigMixin
from .data import load_dataset
from .errors import CheckpointError, InputError
from .fileio import read_csv, read_json, remove_stale_temporaries, result_paths, write_csv, write_json, write_results
from .metrics import (
    PerceptualDamage, expected_damage, image_similarity, likelihood_degradation, perceptual_damage,
    reconstruction_damage, reconstruction_error,
)
from .models.fast_decode import MAX_SAMPLES
from .models.protocol import model_device
from .report.figures import image_grid, is_image_batch
from .robustness import certify, empirical_margin, r_min
from .robustness.lipschitz import VAELipschitz, vae_lipschitz
from .robustness.rigorous import check_exact_arithmetic
from .stats import BoundStats, bound_stats, describe, median, quartiles
from .training import Run, load
from .validation import check_count, check_level, host_numpy, model_dtype

PER_INPUT_FILE = "per_input.csv"
SUMMARY_FILE = "summary.json"
EVAL_CONFIG_FILE = "eval_config.json"

#: The per-input columns, in CSV order.
COLUMNS = (
    "index", "label", "r", "x_norm", "r_min", "p", "p_lower", "n_drawn", "sigma_min", "sigma_mean",
    "jac_frobenius", "jac_spectral", "jac_whitened",
    "radius", "radius_sound", "radius_spectral", "radius_whitened", "abstain", "abstain_sound",
    "radius_rigorous_mean", "radius_rigorous_full",
    "margin", "margin_upper", "margin_refuted_at", "margin_capped", "margin_robust_clean", "margin_not_robust_clean",
    "p_clean", "attack_eps", "attack_preset",
    "attack_objective",
    "damage", "expected_damage", "likelihood_degradation", "ssim", "ms_ssim", "reconstruction_error",
)
#: the per-input flags (bool columns)
FLAGS = ("abstain", "abstain_sound", "margin_capped", "margin_robust_clean", "margin_not_robust_clean")
#: the value of a column whose stage did not run (attack=False, margin=False, a model without Lipschitz
#: bounds or log p(x|z)); every other column not computed is NaN
NOT_COMPUTED = {"margin_capped": False, "margin_robust_clean": True, "margin_not_robust_clean": False,
                "attack_preset": "", "attack_objective": ""}
#: Bounds compared with the margin in the summary (name -> column).
BOUNDS = {"theorem1": "radius", "sound": "radius_sound", "spectral": "radius_spectral", "whitened": "radius_whitened",
          "rigorous_mean": "radius_rigorous_mean", "rigorous_full": "radius_rigorous_full"}
#: the abstention flag of each bound's column (the rigorous radii abstain exactly when p_lower <= 1/2)
ABSTAIN = {"radius": "abstain", "radius_sound": "abstain_sound", "radius_spectral": "abstain",
           "radius_whitened": "abstain", "radius_rigorous_mean": "abstain_sound",
           "radius_rigorous_full": "abstain_sound"}
#: the rigorous radius that certifies the margin's setting (sigma held: mean; sigma moving: full)
RIGOROUS_FOR_MODE = {"mean": "radius_rigorous_mean", "full": "radius_rigorous_full"}
_NUMERIC_SUMMARY = ("r_min", "p", "p_lower", "sigma_min", "sigma_mean", "jac_frobenius", "jac_spectral",
                    "jac_whitened", "radius", "radius_sound", "radius_spectral", "radius_whitened",
                    "radius_rigorous_mean", "radius_rigorous_full", "margin",
                    "damage", "expected_damage", "likelihood_degradation", "ssim", "ms_ssim", "reconstruction_error", "x_norm")


@dataclass
class EvalConfig(ConfigMixin):
    """How a trained run is evaluated (see the module docstring for every quantity).

    split: data split to evaluate ("test"). n: the first n inputs of that split. data_dir: where
    the data files are (None: the run's own data_dir).
    r: absolute radius, or None to use ``r_relative`` x median r_min over the inputs.
    n_samples: Monte Carlo draws of eta per p estimate (and for r_min). alpha: the level of the sound radii (Clopper-Pearson)
    and of each margin-search decision.
    attack_eps: absolute L2 budget of the fixed-budget attack, or None to use
    ``attack_eps_relative`` x median ||x|| over the inputs. attack_preset: the
    :class:`robvae.attacks.EnsembleAttack` preset of that attack and of the margin search ("cheap"
    for studies, "strong" for final numbers). attack: run the fixed-budget attack (damages,
    likelihood degradation; NaN when off). rigorous: also the rigorous radii (NaN for models
    without Lipschitz bounds).
    margin: compute the empirical margin (the slow part). margin_mode: "full" (docs/THEORY.md section 5, the default:
    the attack moves mean and variance) or "mean" (Theorem 1's setting). margin_tol: relative
    bisection tolerance. margin_eps_max: search cap (None = the pixel box diameter).
    batch_size: inputs per batch. seed: seeds every random draw. device: torch device.
    """

    split: Literal["train", "test"] = "test"
    n: int = 100
    r: float | None = None
    r_relative: float = R_RELATIVE
    n_samples: int = N_SAMPLES
    alpha: float = ALPHA
    attack: bool = True
    attack_eps: float | None = None
    attack_eps_relative: float = 0.1
    attack_preset: Literal["cheap", "strong"] = "cheap"
    rigorous: bool = True
    margin: bool = True
    margin_mode: Literal["full", "mean"] = "full"
    margin_tol: float = MARGIN_TOL
    margin_eps_max: float | None = None
    batch_size: int = 100
    seed: int = 0
    device: str = "cpu"
    data_dir: str | None = None

    _what = "evaluation"

    def __post_init__(self) -> None:
        check_count(self.n, 1, "n")  # (n = 2.5 failed deep inside evaluate)
        if self.r is not None and not (self.r > 0 and math.isfinite(self.r)):
            raise ValueError(f"r must be a finite number > 0, got {self.r}")
        if not self.r_relative > 0:
            raise ValueError(f"r_relative must be > 0, got {self.r_relative}")
        check_count(self.n_samples, 1, "n_samples")
        if self.n_samples > MAX_SAMPLES:  # before a sweep trains its trials (review h82)
            raise ValueError(f"n_samples must be at most 2^40 (MAX_SAMPLES), got {self.n_samples}")
        check_level(self.alpha, "alpha")
        if self.attack_eps is not None and not self.attack_eps > 0:
            raise ValueError(f"attack_eps must be > 0, got {self.attack_eps}")
        if not self.attack_eps_relative > 0:
            raise ValueError(f"attack_eps_relative must be > 0, got {self.attack_eps_relative}")
        if self.margin_mode not in ("full", "mean"):
            raise ValueError(f"margin_mode must be 'full' or 'mean', got {self.margin_mode!r}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.attack_preset not in ("cheap", "strong"):
            raise ValueError(f"attack_preset must be 'cheap' or 'strong', got {self.attack_preset!r}")
        check_count(self.batch_size, 1, "batch_size")
        # checked by empirical_margin too, but only after the first batch's calibration, certificates
        # and attack had run
        if not (self.margin_tol > 0 and math.isfinite(self.margin_tol)):
            raise ValueError(f"margin_tol must be a finite number > 0, got {self.margin_tol}")
        if self.margin_eps_max is not None and not (self.margin_eps_max > 0 and math.isfinite(self.margin_eps_max)):
            raise ValueError(f"margin_eps_max must be a finite number > 0 (or null: the pixel box diameter), got "
                             f"{self.margin_eps_max}")

    def identity(self) -> dict[str, Any]:
        """The fields that determine the numbers (device and data_dir excluded)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("device", "data_dir")}

    def attack_budget(self, x: torch.Tensor) -> float:
        """The maximum-damage attack's L2 budget for inputs x [N, *shape]: ``attack_eps``, or
        ``attack_eps_relative`` x median ||x||."""
        if self.attack_eps is not None:
            return float(self.attack_eps)
        return float(self.attack_eps_relative * np.median(x.flatten(1).norm(dim=1).double().cpu().numpy()))


@dataclass
class EvalResult:
    """rows: one dict per input (keys :data:`COLUMNS`). summary: medians, quartiles, correlations.
    config: the EvalConfig. out_dir: where it was written (None if not). loaded: read from disk.
    extra: free-form additions by callers (not written)."""

    rows: list[dict[str, Any]]
    summary: EvalSummary
    config: EvalConfig
    out_dir: Path | None = None
    loaded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        """One per-input column as a float array."""
        return np.array([float(r[name]) for r in self.rows], dtype=float)

    def bound_stats(self, bound: str = "theorem1") -> BoundStats:
        """A bound (a :data:`BOUNDS` name or column) against the margin: :func:`rows_bound_stats`."""
        return rows_bound_stats(self.rows, BOUNDS.get(bound, bound))


# --- evaluation -----------------------------------------------------------------------------

def _resolve_run(run: Any, device: str) -> Any:
    if isinstance(run, Run):
        if model_device(run.model) != torch.device(device):
            run.model.to(device)
        return run
    return load(run, device=device)


def _inputs(run: Any, config: EvalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    given = getattr(run, "inputs", None)  # images handed over with the model (robvae margin --model --inputs)
    dtype = model_dtype(run.model) or torch.float32  # a float64 / half --model gets its own dtype
    if given is not None:
        x = given[: config.n].to(config.device, dtype)
        return x, torch.full((x.shape[0],), -1, dtype=torch.long)
    data_dir = config.data_dir if config.data_dir is not None else run.config.data_dir
    data = load_dataset(run.config.dataset, config.split, data_dir).subset(config.n)
    return data.images.to(config.device, dtype), data.labels


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))


#: inputs per block of the r_min calibration (block k draws from ``_gen(seed, 1 + k)``): fixed, so
#: that r does not depend on a batch size chosen for speed
CALIBRATION_BLOCK = 100


def calibration_r_min(model: torch.nn.Module, x: torch.Tensor, n_samples: int, seed: int) -> torch.Tensor:
    """r_min(x) [N] of every input, in blocks of CALIBRATION_BLOCK inputs, block k drawing from
    ``_gen(seed, 1 + k)``: the draws behind every relative radius (:func:`evaluate`, ``robvae
    margin``, ``robvae certify``), so that the same inputs, seed and draws give the same r in all
    of them, whatever their batch sizes."""
    b = CALIBRATION_BLOCK
    return torch.cat([r_min(model, x[i:i + b], n_samples, generator=_gen(seed, 1 + k))
                      for k, i in enumerate(range(0, x.shape[0], b))])


def relative_radius(r_relative: float, rmin: torch.Tensor) -> float:
    """r = r_relative x the median of r_min over the inputs (numpy's median: the mean of the two
    middle values for an even count); ValueError when that median is 0."""
    med = float(np.median(rmin.double().cpu().numpy()))
    if math.isnan(med):
        raise ValueError("the median r_min is NaN: the model's reconstructions are not finite; give an absolute r "
                         "(--r, EvalConfig.r) only once the model decodes finite images")
    r = float(r_relative * med)
    if not r > 0:
        raise ValueError("the median r_min is 0: the reconstruction does not move with the latent noise (an "
                         "encoder without noise, or a decoder that ignores z); give an absolute r (--r, EvalConfig.r)")
    return r


def load_result(out_dir: str | Path) -> EvalResult:
    """Read an evaluation folder written by :func:`evaluate`; CheckpointError naming the file when
    its per-input table is damaged (a row cut short, rows missing against the summary's n)."""
    out_dir = Path(out_dir)
    meta = read_json(out_dir / EVAL_CONFIG_FILE, "evaluation config")
    saved = read_json(out_dir / SUMMARY_FILE, "evaluation summary")
    path = out_dir / PER_INPUT_FILE
    if not path.is_file():
        raise CheckpointError(f"evaluation file {path} is missing")
    raw = read_csv(path)
    n = saved.get("n")
    if any(None in r.values() or None in r for r in raw) or (isinstance(n, int) and len(raw) != n):
        raise CheckpointError(f"evaluation file {path} is damaged ({len(raw)} rows, the summary says {n}, "
                              "or a row is cut short); rerun the command to compute it again")
    rows = [_parse_row(r) for r in raw]
    config = EvalConfig.from_dict(meta["evaluation"])
    summary = summarize(rows, config, **{k: _unjson(saved.get(k)) for k in CONTEXT})  # statistics from the rows
    return EvalResult(rows, summary, config, out_dir, loaded=True)


def _unjson(v: Any) -> Any:
    """The inverse of :func:`jsonable` for one value ("inf" / "-inf" back to floats)."""
    return float(v) if v in ("inf", "-inf") else v


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
    if not (same and (out_dir / SUMMARY_FILE).is_file() and (out_dir / PER_INPUT_FILE).is_file()):
        return False
    try:  # a damaged table is computed again, not reused
        load_result(out_dir)
    except CheckpointError:
        return False
    return True


def evaluate(run: Any, config: EvalConfig | None = None, out_dir: str | Path | None = None,
             progress: bool = True) -> EvalResult:
    """Evaluate a trained run (a :class:`robvae.training.Run` or its folder); see the module doc.

    Resumable: with ``out_dir`` holding a finished evaluation of the same config and model, the
    files are loaded instead of recomputed.
    """
    config = config or EvalConfig()
    if isinstance(config, dict):
        config = EvalConfig.from_dict(config)
    run = _resolve_run(run, config.device)
    out = Path(out_dir) if out_dir is not None else None
    ident = {"evaluation": config.identity(), "train": run.config.training_fields()}
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
    rmin = calibration_r_min(model, x_all, config.n_samples, config.seed)
    bar.update(len(batches))
    x_norm = x_all.flatten(1).norm(dim=1)
    cols: dict[str, list[Any]] = {"index": list(range(n)), "label": labels.tolist()}

    def add(**batch: torch.Tensor | list[str]) -> None:
        """Append one batch (or all inputs) of per-input columns, name=values, as Python values."""
        for name, values in batch.items():
            if isinstance(values, torch.Tensor):
                values = values.detach().cpu().reshape(-1)
                values = (values.bool() if name in FLAGS else values.double()).tolist()
            cols.setdefault(name, []).extend(values)

    add(r_min=rmin, x_norm=x_norm)
    r = float(config.r) if config.r is not None else relative_radius(config.r_relative, rmin)
    eps = config.attack_budget(x_all)

    cols.update(r=[r] * n, attack_eps=[eps] * n)
    constants, rigorous_note = _rigorous_constants(model, config)
    for i, s in enumerate(batches):
        x = x_all[s]
        # 2. certificates (Theorem 1 and variants), p, sigma, Jacobian norms
        cert = certify(model, x, r, n_samples=config.n_samples, alpha=config.alpha, mode="mean",
                       generator=_gen(config.seed, 100 + i), rigorous=constants if constants is not None else False)
        # every column of the certificate (the rigorous radii where the model has Lipschitz bounds) but its r
        add(**{k: torch.from_numpy(v) for k, v in cert.as_numpy().items() if k != "r"})
        radius = cert.radius
        with torch.inference_mode():
            add(sigma_mean=model.encode(x)[1].mean(dim=1))
        add(reconstruction_error=reconstruction_error(model, x))
        bar.update(1)
        # 3. maximum-damage attack at the fixed budget
        if config.attack:
            res = EnsembleAttack(config.attack_preset, mode="full", generator=_gen(config.seed, 200 + i))(model, x, eps)
            delta = res.delta
            add(damage=res.damage, expected_damage=res.expected_damage, attack_preset=[res.preset] * x.shape[0],
                attack_objective=list(res.objective))
            if hasattr(model, "log_likelihood"):
                add(likelihood_degradation=likelihood_degradation(model, x, delta))
            percept = perceptual_damage(model, x, delta)
            add(ssim=percept.ssim, ms_ssim=percept.ms_ssim)
        bar.update(1)
        # 4. empirical margin
        if config.margin:
            init = torch.where(torch.isfinite(radius) & (radius > 0), radius, torch.full_like(radius, r))
            m = empirical_margin(model, x, r, EnsembleAttack(config.attack_preset, mode=config.margin_mode),
                                 mode=config.margin_mode, eps_max=config.margin_eps_max, eps_init=init,
                                 tol=config.margin_tol, n_samples=config.n_samples, alpha=config.alpha,
                                 generator=_gen(config.seed, 300 + i),
                                 progress=lambda k, a: bar.set_postfix_str(f"margin: attack {k}, {a} inputs", refresh=True))
            add(margin=m.margin, margin_upper=m.upper, margin_capped=m.capped, margin_robust_clean=m.robust_clean,
                margin_not_robust_clean=m.not_robust_clean, p_clean=m.p_clean)
            # the smallest budget settled NOT robust (margin + tolerance; 0 where the clean input was);
            # NaN where none was settled (neither above the margin nor unperturbed)
            settled = m.margin + m.tolerance if m.tolerance is not None else torch.full_like(m.margin, math.nan)
            settled = torch.where(m.robust_clean | m.not_robust_clean, settled, torch.full_like(settled, math.nan))
            add(margin_refuted_at=torch.where(settled < m.eps_max, settled, torch.full_like(settled, math.nan)))
        bar.update(1)
    bar.close()
    rows = [{k: cols[k][j] if k in cols else NOT_COMPUTED.get(k, math.nan) for k in COLUMNS} for j in range(n)]

    summary = summarize(
        rows, config, dataset=run.config.dataset, run=str(run.path), r=r,
        r_from="absolute" if config.r is not None else f"{config.r_relative:g} x median r_min", attack_eps=eps,
        attack_eps_from="absolute" if config.attack_eps is not None
        else f"{config.attack_eps_relative:g} x median ||x||",
        attack_preset=config.attack_preset if config.attack else None, rigorous_note=rigorous_note,
        beta=run.config.objective.beta, objective=run.config.objective.name, tau=run.config.model.tau,
        seed=run.config.seed, test_elbo=_last_elbo(run), seconds=time.perf_counter() - t0)
    result = EvalResult(rows, summary, config, out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # the previous evaluation's marker goes first: interrupted between the files below, a rerun
        # with another config left the new table under the old marker and summary (review h77)
        (out / EVAL_CONFIG_FILE).unlink(missing_ok=True)
        write_csv(out / PER_INPUT_FILE, rows, fieldnames=list(COLUMNS))
        write_json(out / SUMMARY_FILE, jsonable(summary.to_dict()))
        # written last: its presence with a matching identity marks the evaluation finished
        write_json(out / EVAL_CONFIG_FILE, {"evaluation": config.to_dict(), "evaluation_identity": ident["evaluation"],
                                            "train": ident["train"], "run": str(run.path)})
    return result


def _rigorous_constants(model: Any, config: EvalConfig) -> tuple[VAELipschitz | None, str]:
    """(Lipschitz constants for the rigorous radii or None, a note for the summary)."""
    if not config.rigorous:
        return None, "not computed (rigorous=False)"
    try:
        check_exact_arithmetic(model)
        return vae_lipschitz(model), "Lipschitz bounds from the weights (robvae.robustness.lipschitz.vae_lipschitz)"
    except InputError as e:  # a user model without known Lipschitz bounds: NaN radii, no crash
        return None, f"not available for this model: {e}"


def _last_elbo(run: Any) -> float:
    try:
        return float(run.metrics[-1]["test_elbo"])
    except (IndexError, KeyError, TypeError, ValueError):
        return math.nan


def jsonable(o: Any) -> Any:
    """Strict JSON: NaN -> null, +-inf -> "inf" / "-inf"."""
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    return o


def measured_margins(rows: list[dict[str, Any]]) -> np.ndarray:
    """The ``margin`` column of per-input rows [B] with the unknowns as NaN: an input settled robust
    unperturbed whose search settled no budget above 0 robust (the attacked estimates stayed
    undecided) has margin 0 in the rows, but its margin lies anywhere in [0, margin_upper]; so
    does one whose clean estimate was undecided (rows with ``margin_not_robust_clean``: neither
    flag set). A margin of 0 of an input settled NOT robust unperturbed is a measurement. Capped margins (lower bounds at the search's largest budget) are kept as
    values. Every statistic of margins (tables, trends, correlations, comparisons with bounds)
    uses these (rows may be CSV rows read back: flags may be the strings "True" / "False")."""
    margin = np.array([float(r["margin"]) if r.get("margin", "") not in ("", None) else math.nan for r in rows],
                      dtype=float)
    # evaluation rows name the flags margin_robust_clean / margin_capped, robvae margin's CSV
    # robust_clean / capped
    names = next((n for n in (("margin_robust_clean", "margin_capped", "margin_not_robust_clean"),
                              ("robust_clean", "capped", "not_robust_clean")) if rows and n[0] in rows[0]), None)
    if names is None:
        return margin
    flag = lambda k: np.array([r.get(k) in (True, "True", 1) for r in rows], dtype=bool)  # noqa: E731
    unknown = flag(names[0]) & (margin == 0) & ~flag(names[1])
    # undecided unperturbed (neither settled robust nor settled not robust), per row: rows of
    # earlier versions (pooled with new ones by a resumed study) have no such flag
    has = np.array([r.get(names[2]) in (True, False, "True", "False", 1, 0) for r in rows], dtype=bool)
    unknown |= has & ~flag(names[0]) & ~flag(names[2])
    return np.where(unknown, math.nan, margin)


def rows_bound_stats(rows: list[dict[str, Any]], column: str = "radius") -> BoundStats:
    """:func:`robvae.stats.bound_stats` of one bound column against the margin, from per-input
    rows (evaluation rows, or CSV rows read back: flags may be the strings "True" / "False")."""
    col = lambda k: np.array([float(r[k]) if r.get(k, "") not in ("", None) else math.nan for r in rows],  # noqa: E731
                             dtype=float)
    flag = lambda k: np.array([r.get(k) in (True, "True", 1) for r in rows], dtype=bool)  # noqa: E731
    p_clean = col("p_clean") if rows and "p_clean" in rows[0] else None
    margin = col("margin")
    if p_clean is not None and "margin_robust_clean" in rows[0]:
        # the search could not settle "robust" even unperturbed (margin 0 = unknown, not measured):
        # not a margin to compare a bound with, counted with the inputs whose estimates disagree
        p_clean = np.where(flag("margin_robust_clean"), p_clean, 0.0)
        margin = measured_margins(rows)  # (a budget settled NOT robust below the bound still counts in n_refuted)
    refuted_at = col("margin_refuted_at") if rows and "margin_refuted_at" in rows[0] else None
    return bound_stats(col(column), margin, p_clean=p_clean, capped=flag("margin_capped"),
                       abstain=flag(ABSTAIN.get(column, "abstain")), refuted_at=refuted_at)


#: The run and setting an evaluation summary describes (EvalSummary fields, written to summary.json).
CONTEXT = ("dataset", "run", "r", "r_from", "attack_eps", "attack_eps_from", "attack_preset", "rigorous_note", "beta",
           "objective", "tau", "seed", "test_elbo", "seconds")


@dataclass
class EvalSummary:
    """The summary of an evaluation, computed once from its per-input rows by :func:`summarize`.

    columns: per numeric column, :func:`robvae.stats.describe` (n, median, q1, q3, mean, min, max,
    n_infinite); the margin's over :func:`measured_margins` (``n_margin_unknown`` inputs whose
    margin is an unknown left out). bounds: per :data:`BOUNDS` name present in the rows, its :class:`BoundStats`
    against the margin (the same function ``robvae margin`` and the studies use). The counts are
    of inputs: ``n_not_robust_clean`` those whose certificate's Monte Carlo p_r(x) is <= 1/2 (the
    point estimate, so it equals ``n_abstain``; the margin search's own settled decision per input
    is the ``margin_not_robust_clean`` column). The context fields (``dataset`` ... ``seconds``) say what was evaluated; they are
    None when the summary was made from bare rows. ``to_dict()`` is the ``summary.json`` layout;
    ``summary["key"]`` reads that layout too (the former dict interface).
    """

    n: int
    columns: dict[str, dict[str, Any]]
    bounds: dict[str, BoundStats]
    n_abstain: int
    n_abstain_sound: int
    n_infinite_radius: int
    n_margin_capped: int
    n_not_robust_clean: int
    margin_mode: str | None = None
    attack_objective: dict[str, int] | None = None
    dataset: str | None = None
    run: str | None = None
    r: float | None = None
    r_from: str | None = None
    attack_eps: float | None = None
    attack_eps_from: str | None = None
    attack_preset: str | None = None
    rigorous_note: str | None = None
    beta: float | None = None
    objective: str | None = None
    tau: float | None = None
    seed: int | None = None
    test_elbo: float | None = None
    seconds: float | None = None
    n_margin_unknown: int = 0

    def median(self, column: str) -> float:
        """The median of one numeric column (NaN values left out)."""
        return self.columns[column]["median"]

    @property
    def rigorous_vs_margin(self) -> dict[str, Any] | None:
        """The rigorous radius of the margin's setting against the margin: its column,
        n_above_margin (above the search's lower end: only a radius inside the search's last
        bracket), n_refuted (above a budget settled NOT robust: must never happen), n_compared;
        None without that column."""
        name = "rigorous_" + (self.margin_mode or "full")
        if name not in self.bounds:
            return None
        st = self.bounds[name]
        return {"column": BOUNDS[name], "n_above_margin": st.n_violations, "n_refuted": st.n_refuted,
                "n_compared": st.n_used}

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` layout: each column's description under its own name, each bound's
        statistics (``BoundStats.to_dict()`` and its column) under ``bounds``."""
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(d.pop("columns"))
        d["bounds"] = {k: {"column": BOUNDS[k], **st.to_dict()} for k, st in self.bounds.items()}
        if self.attack_objective is None:
            del d["attack_objective"]
        if self.rigorous_vs_margin is not None:
            d["rigorous_vs_margin"] = self.rigorous_vs_margin
        return d

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


def summarize(rows: list[dict[str, Any]], config: EvalConfig | None = None, **context: Any) -> EvalSummary:
    """The :class:`EvalSummary` of per-input rows: quartiles of each numeric column, abstentions,
    and for each bound :func:`rows_bound_stats`. context: its :data:`CONTEXT` fields."""
    col = lambda k: np.array([float(r[k]) for r in rows], dtype=float)  # noqa: E731
    objs = [str(r["attack_objective"]) for r in rows if r.get("attack_objective") not in ("", None)]
    has_margin = bool(rows) and "margin" in rows[0]
    measured = measured_margins(rows) if has_margin else None
    return EvalSummary(
        n=len(rows), columns={k: describe(measured if k == "margin" else col(k))
                              for k in _NUMERIC_SUMMARY if rows and k in rows[0]},
        bounds={name: rows_bound_stats(rows, c) for name, c in BOUNDS.items() if not rows or c in rows[0]},
        n_abstain=int(sum(bool(r["abstain"]) for r in rows)),
        n_abstain_sound=int(sum(bool(r["abstain_sound"]) for r in rows)),
        n_infinite_radius=int(np.isinf(col("radius")).sum()) if rows else 0,
        n_margin_capped=int(sum(bool(r["margin_capped"]) for r in rows)),
        n_margin_unknown=int(np.isnan(measured).sum() - np.isnan(col("margin")).sum()) if has_margin else 0,
        n_not_robust_clean=int((col("p") <= 0.5).sum()) if rows else 0,
        margin_mode=(config.margin_mode if config.margin else None) if config is not None else None,
        attack_objective={o: objs.count(o) for o in sorted(set(objs))}
        if rows and "attack_objective" in rows[0] else None,
        **context,
    )




# --- the bound against the margin, as one command reports it -----------------------------------

#: the per-input columns of ``robvae margin``'s CSV
MARGIN_COLUMNS = ("index", "bound", "margin", "margin_upper", "p", "p_clean", "robust_clean", "not_robust_clean",
                  "capped", "abstain",
                  "abstain_sound",
                  "radius_sound", "used", "violation", "radius_rigorous_mean", "radius_rigorous_full",
                  "rigorous_used", "rigorous_violation")
#: the evaluation column of each margin CSV column named differently (the rest have the same name)
MARGIN_SOURCE = {"bound": "radius", "robust_clean": "margin_robust_clean", "capped": "margin_capped",
                 "not_robust_clean": "margin_not_robust_clean"}


@dataclass
class MarginReport:
    """The Theorem 1 bound against the empirical margin for one run's inputs.

    result: the evaluation (attack at the fixed budget skipped). stats: its BoundStats (the same
    function the studies use, so the same inputs give the same figures). path: the CSV written."""

    result: EvalResult
    stats: BoundStats
    path: Path | None = None
    rigorous: BoundStats | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Per input: the bound, the margin, both Monte Carlo estimates, the flags, and whether the
        input is used in the statistics (``used``) and violates bound <= margin there."""
        rig_column = RIGOROUS_FOR_MODE[self.result.config.margin_mode]
        out = []
        for j, r in enumerate(self.result.rows):
            # (an evaluation without a column: robust_clean taken as True, the others NaN)
            row = {k: r.get(MARGIN_SOURCE.get(k, k), {"robust_clean": True, "not_robust_clean": ""}.get(k, math.nan))
                   for k in MARGIN_COLUMNS}
            used = bool(self.stats.mask[j])
            rig_used = self.rigorous is not None and bool(self.rigorous.mask[j])
            row.update(used=used, violation=used and r["radius"] > r["margin"], rigorous_used=rig_used,
                       rigorous_violation=rig_used and r.get(rig_column, math.nan) > r["margin"])
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        c = self.result.config
        out = {"inputs": len(self.result.rows), "r": self.result.summary.r, "mode": c.margin_mode,
               "attack_preset": c.attack_preset}
        for k, v in self.stats.to_dict().items():
            out[k] = v
            if k == "median_margin":  # the bracket's upper end: how coarse the margins are (tol, n_samples)
                used_rows = [row for row, used in zip(self.result.rows, self.stats.mask) if used]
                out["median_margin_upper"] = median([row["margin_upper"] for row in used_rows])
                # brackets the search left wider than --margin-tol (decisions it could not settle
                # within n_samples draws): their margins are coarser than the tolerance says
                tol = c.margin_tol
                out["n_wider_than_tol"] = sum(row["margin_upper"] - row["margin"] > tol * row["margin_upper"]
                                              for row in used_rows)
            if k == "n_violations" and self.rigorous is not None:  # beside Theorem 1's: must always be 0
                out["rigorous_above_margin"] = self.rigorous.n_violations
                out["rigorous_refuted"] = self.rigorous.n_refuted  # above a budget settled not robust
                out["rigorous_compared"] = self.rigorous.n_used
                out["median_rigorous"] = self.rigorous.median_bound
        out["rigorous_note"] = self.result.summary.rigorous_note
        return out


def _used(config: EvalConfig) -> dict[str, Any]:
    """``config`` as a record of what ran: r_relative null where an absolute r replaced it."""
    return {**config.to_dict(), **({"r_relative": None} if config.r is not None else {})}


def margin_report(run: Any, config: EvalConfig, out: str | Path | None = None, *, progress: bool = True,
                  meta: dict[str, Any] | None = None, check: Callable[[], None] | None = None) -> MarginReport:
    """Certify and search the empirical margin of ``config.n`` inputs (:func:`evaluate` without the
    fixed-budget attack), compare them with :func:`rows_bound_stats`, and with ``out`` write the
    per-input CSV (:data:`MARGIN_COLUMNS`) and ``out`` with suffix .json (the config, ``meta`` and
    the summary; :func:`robvae.fileio.write_results`). ``check``: called after the work and before
    any file is written, to refuse (by raising) results that should not be saved (the CLI checks
    that the run folder did not change meanwhile)."""
    config = replace(config, attack=False, margin=True)
    paths = None if out is None else result_paths(out, "margin")  # before any work
    result = evaluate(run, config, progress=progress)
    rig = result.bound_stats(RIGOROUS_FOR_MODE[config.margin_mode]) if config.rigorous else None
    rep = MarginReport(result, result.bound_stats("theorem1"), rigorous=rig)
    if paths is not None:
        if check is not None:
            check()
        used = _used(config)
        if (meta or {}).get("inputs") is not None:  # images from a file: no split, and the file's count
            used.update(split=None, n=len(result.rows))
        write_results(paths[0], rep.rows(), paths[1], jsonable({
            "command": "margin", **(meta or {}), "n": len(result.rows), "evaluation": used,
            "summary": rep.summary()}), fieldnames=list(MARGIN_COLUMNS))
        rep.path = paths[0]
    return rep


# --- the fixed-budget attack, as ``robvae attack`` reports it ----------------------------------

#: the legacy single-PGD attack's settings (``preset="legacy"``: :func:`robvae.attacks.max_damage_attack`)
LEGACY_ATTACK = {"steps": 50, "restarts": 2, "eta_samples": 4}
#: draws of eta for the expected damage of a legacy perturbation (the ensemble reports its own)
ATTACK_EVAL_DRAWS = 64
#: the per-input columns of ``robvae attack``'s CSV
ATTACK_COLUMNS = ("index", "delta_norm", "damage", "expected_damage", "preset", "objective", "likelihood_degradation",
                  "ssim", "ms_ssim")
ATTACK_CSV, ATTACK_JSON, ATTACK_PNG = "attack.csv", "attack.json", "attack.png"


@dataclass
class AttackReport:
    """The maximum-damage attack at a fixed budget on a batch of inputs.

    rows: one dict per input (keys :data:`ATTACK_COLUMNS`). summary: medians and quartiles of both
    damages, likelihood degradation and SSIM, the objectives that won. delta: the perturbations
    [n, *shape]. perceptual: the SSIM settings. out_dir: where ``attack.csv`` / ``.json`` / ``.png``
    were written (None if not)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    delta: torch.Tensor
    perceptual: PerceptualDamage
    out_dir: Path | None = None

    @property
    def paths(self) -> dict[str, Path]:
        """The files written: csv, json, png (empty when nothing was written)."""
        if self.out_dir is None:
            return {}
        paths = {"csv": self.out_dir / ATTACK_CSV, "json": self.out_dir / ATTACK_JSON}
        if (self.out_dir / ATTACK_PNG).is_file():  # written for images only
            paths["png"] = self.out_dir / ATTACK_PNG
        return paths


def attack_report(model: Any, x: torch.Tensor, eps: float, *, norm: Literal["l2", "linf"] = "l2",
                  preset: Literal["cheap", "strong", "legacy"] = "cheap", steps: int | None = None,
                  restarts: int | None = None, eta_samples: int | None = None, batch_size: int = 25, seed: int = 0,
                  out_dir: str | Path | None = None, progress: bool = True,
                  meta: dict[str, Any] | None = None, check: Callable[[], None] | None = None) -> AttackReport:
    """Attack ``x`` at budget ``eps`` (in ``norm``) batch by batch and measure the damage per input.

    ``preset`` "cheap" / "strong": :class:`robvae.attacks.EnsembleAttack` (its own expected damage);
    "legacy": one :func:`robvae.attacks.max_damage_attack` run with ``steps`` / ``restarts`` /
    ``eta_samples`` (defaults :data:`LEGACY_ATTACK`; the PGD settings apply to it only), its expected
    damage over :data:`ATTACK_EVAL_DRAWS` draws of eta on a stream of its own (seed + 1). The
    attack's generator is seeded with ``seed`` and shared across batches. Per input: the
    perturbation's size, the deterministic and expected damage (eq. 5), the likelihood degradation
    (NaN for a model without ``log_likelihood``) and the SSIM / MS-SSIM of the attacked against the
    clean reconstruction. With ``out_dir``: ``attack.csv`` (:data:`ATTACK_COLUMNS`), ``attack.png``
    (the first 10 inputs; images only) and ``attack.json`` (``meta``, the settings and the summary),
    written as one result (:func:`robvae.fileio.write_results`: the JSON last). ``check``: as for
    :func:`margin_report`."""
    pgd = {"steps": steps, "restarts": restarts, "eta_samples": eta_samples}
    if preset != "legacy" and any(v is not None for v in pgd.values()):
        raise InputError(f"{', '.join(k for k, v in pgd.items() if v is not None)} only apply to preset "
                         "'legacy' (the ensemble presets have no step settings)")
    if preset not in ("legacy", "cheap", "strong"):
        raise InputError(f"preset must be 'cheap', 'strong' or 'legacy', got {preset!r}")
    pgd = {k: LEGACY_ATTACK[k] if v is None else v for k, v in pgd.items()}
    g = torch.Generator().manual_seed(seed)
    attack = None if preset == "legacy" else EnsembleAttack(preset, norm=norm, mode="full", generator=g)
    parts, expected, objective = [], [], []
    for i in tqdm(range(0, len(x), batch_size), desc="attack", unit="batch", disable=not progress):
        xb = x[i:i + batch_size]
        if attack is None:
            d = max_damage_attack(model, xb, eps, norm=norm, generator=g, **pgd)
            objective += ["max_damage"] * len(xb)
        else:
            res = attack(model, xb, eps)
            d = res.delta
            expected.append(res.expected_damage)
            objective += res.objective
        parts.append(d)
    delta = torch.cat(parts)
    if attack is None:  # after the attack, on its own stream: the attack's draws are max_damage_attack's
        ge = torch.Generator().manual_seed(seed + 1)
        expected = [expected_damage(model, x[i:i + batch_size], delta[i:i + batch_size], ATTACK_EVAL_DRAWS,
                                    generator=ge) for i in range(0, len(x), batch_size)]
    exp_damage = torch.cat(expected)
    with torch.no_grad():
        damage = reconstruction_damage(model, x, delta)
        degr = (likelihood_degradation(model, x, delta) if callable(getattr(model, "log_likelihood", None))
                else torch.full_like(damage, float("nan")))  # a user model without log p(x|z)
        size = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
        recon, recon_adv = model.decode(model.encode(x)[0]), model.decode(model.encode(x + delta)[0])
    percept = image_similarity(recon_adv.clamp(0, 1), recon.clamp(0, 1))  # SSIM / MS-SSIM (robvae.metrics)
    rows = [{"index": i, "delta_norm": float(size[i]), "damage": float(damage[i]),
             "expected_damage": float(exp_damage[i]), "preset": preset, "objective": objective[i],
             "likelihood_degradation": float(degr[i]), "ssim": float(percept.ssim[i]),
             "ms_ssim": float(percept.ms_ssim[i])} for i in range(len(x))]
    counts = {o: objective.count(o) for o in sorted(set(objective))}
    summary = {"inputs": len(x), "eps": eps, "norm": norm, "preset": preset,
               "objective": ", ".join(f"{o} {c}" for o, c in counts.items())}
    damages = {"damage": quartiles(host_numpy(damage)), "expected damage": quartiles(host_numpy(exp_damage))}
    for i, stat in ((1, "median"), (0, "q25"), (2, "q75")):  # "damage median", "expected damage median", ...
        summary.update({f"{name} {stat}": q[i] for name, q in damages.items()})
    summary.update({"median degradation": median(host_numpy(degr)), "median ssim": median(percept.ssim.numpy()),
                    "median ms_ssim": median(percept.ms_ssim.numpy())})
    rep = AttackReport(rows, summary, delta, percept)
    if out_dir is not None:
        out = Path(out_dir)
        if check is not None:
            check()
        k = min(10, len(x))

        def picture() -> None:
            remove_stale_temporaries(out, [ATTACK_PNG])  # of a killed earlier attack into this folder (held)
            if is_image_batch(x):  # 1-D or other non-image data: no picture (it crashed after the attack)
                image_grid([x[:k], (x + delta)[:k], recon[:k], recon_adv[:k]], out / ATTACK_PNG,
                           row_titles=["x", "x + delta", "g(mu(x))", "g(mu(x+delta))"])
            else:
                (out / ATTACK_PNG).unlink(missing_ok=True)

        write_results(out / ATTACK_CSV, rows, out / ATTACK_JSON, jsonable({
            "command": "attack", **(meta or {}), "eps": eps, "norm": norm, "preset": preset,
            **(pgd if preset == "legacy" else {}), "seed": seed, "summary": summary,
            "perceptual": {"kernel_size": percept.kernel_size, "sigma": percept.sigma,
                           "ms_ssim_scales": percept.ms_ssim_scales, "note": percept.note}}),
            fieldnames=list(ATTACK_COLUMNS), then=[picture])
        rep.out_dir = out
    return rep
