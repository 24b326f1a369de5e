"""Certified robustness: verification of an upfront margin, and the certified-robustness study.

- :func:`verify_margin`: for a Lipschitz VAE trained for Barrett's margin eps at r, the margin
  recomputed from the measured Lipschitz constants (rigorous, every input), the rigorous radii of
  docs/THEORY.md section 8 (Camuto's notion) and a maximum-damage attack at budget eps, after which Barrett's
  probability P(||g(z') - g(z)|| <= r) (two independent draws, z ~ q(.|x), z' ~ q(.|x + delta)) is
  estimated: it must stay above 1/2 on every input.
- :func:`certified_study`: standard VAE, beta-VAE and Lipschitz VAEs at a few constants, on one data
  set: held-out ELBO, median rigorous radii (mean-only and full), median Theorem 1 radius, median
  empirical margin (full encoder), attack damage at a fixed budget, the fraction certified at a fixed
  eps, and the count of inputs whose rigorous radius is above the empirical margin (must be 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..attacks import EnsembleAttack, max_damage_attack
from ..attacks.pgd import pgd
from ..config import ALPHA, MARGIN_TOL, N_SAMPLES, R_RELATIVE
from ..data import load_dataset
from ..evaluation import measured_margins
from ..fileio import atomic_write_text, write_csv, write_json
from ..metrics import reconstruction_damage
from ..models import ModelConfig
from ..models.fast_decode import flat_decode
from ..objectives import ObjectiveConfig
from ..robustness import certify, empirical_margin, r_min
from ..robustness.lipschitz import vae_lipschitz
from ..robustness.rigorous import barrett_margin, rigorous_certify
from ..rng import randn
from ..stats import median
from ..report.html import write_study_meta
from ..training import CONFIG_FILE, TrainConfig, check_same_config, train
from .experiments import fmt_list


def barrett_probability(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor, r: float, n_samples: int = N_SAMPLES,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """P(||g(z') - g(z)|| <= r), z ~ q(.|x), z' ~ q(.|x + delta) independent, by ``n_samples`` draws: -> [B]."""
    with torch.inference_mode():
        mu, sigma = model.encode(x)
        mu2, sigma2 = model.encode(x + delta)
        B, d = mu.shape
        eta = randn((2, B, n_samples, d), mu, generator)
        z = (mu[:, None] + eta[0] * sigma[:, None]).reshape(B * n_samples, d)
        z2 = (mu2[:, None] + eta[1] * sigma2[:, None]).reshape(B * n_samples, d)
        dist = (flat_decode(model, z2) - flat_decode(model, z)).norm(dim=1).view(B, n_samples)
        return (dist <= r).to(torch.float64).mean(dim=1)


def _barrett_objective(model: torch.nn.Module, x: torch.Tensor, r: float, n_draws: int = 32,
                       generator: torch.Generator | None = None):
    """For :func:`robvae.attacks.pgd.pgd`: x + delta [R, B, *shape] -> [R, B], the mean over
    ``n_draws`` fixed pairs of draws (common random numbers) of sigmoid((||g(z') - g(z)|| - r) /
    (0.05 r)), z from the clean input, z' from the perturbed one: a smooth stand-in for Barrett's
    1 - P(||g(z') - g(z)|| <= r), maximised by the attack."""
    B, shape = x.shape[0], tuple(x.shape[1:])
    with torch.no_grad():
        mu, sigma = model.encode(x)
        d = mu.shape[1]
        eta = randn((2, B, n_draws, d), mu, generator)
        clean = model.decode((mu[:, None] + eta[0] * sigma[:, None]).reshape(B * n_draws, d)).reshape(B, n_draws, -1)

    def objective(xp: torch.Tensor) -> torch.Tensor:
        R = xp.shape[0]
        mu2, sigma2 = model.encode(xp.reshape(R * B, *shape))
        z2 = mu2.view(R, B, 1, d) + eta[1][None] * sigma2.view(R, B, 1, d)
        out = model.decode(z2.reshape(-1, d)).reshape(R, B, n_draws, -1)
        dist = (out - clean[None]).norm(dim=-1)
        return torch.sigmoid((dist - r) / (0.05 * r)).mean(-1)

    return objective


@dataclass
class MarginVerification:
    """The checks of an upfront margin eps at r on n test inputs (Barrett's notion unless said).

    barrett_margin: from the measured constants (rigorous, every input).  constants: (a, b, c, s).
    p_clean_min / p_attack_min: the smallest Monte Carlo P(||g(z') - g(z)|| <= r) over the inputs,
    unperturbed and under attack at budget eps (per input the worse of the maximum-damage attack
    and a PGD on Barrett's probability itself).  n_robust_attack: inputs with
    p_attack > 1/2.  radius_mean_median / radius_full_median: median rigorous radii (Camuto's
    notion, docs/THEORY.md section 8).  damage_median: median ||g(mu(x + delta)) - g(mu(x))|| of the attack.
    """

    eps: float
    r: float
    n: int
    barrett_margin: float
    constants: tuple[float, float, float, float]
    p_clean_min: float
    p_attack_min: float
    n_robust_attack: int
    radius_mean_median: float
    radius_full_median: float
    damage_median: float

    @property
    def contradicted(self) -> bool:
        """The margin is certified (>= eps) but the Monte Carlo checks found an input that is not
        robust, clean or under the attack at eps: a bug, or a Monte Carlo error of these checks."""
        return self.barrett_margin >= self.eps and (self.n_robust_attack < self.n or self.p_clean_min <= 0.5)

    @property
    def verdict(self) -> str:
        if self.barrett_margin < self.eps:
            return "BELOW eps"
        if self.contradicted:
            return f"CONTRADICTED: {self.n - self.n_robust_attack}/{self.n} inputs not robust under the attack"
        return "holds"

    def table(self) -> str:
        a, b, c, s = self.constants
        rows = [
            ("requested margin eps (r)", f"{self.eps:.4g} (r={self.r:.4g})"),
            ("Barrett margin, measured constants", f"{self.barrett_margin:.4g}  ({self.verdict})"),
            ("constants a, b, c, s", f"{a:.4g}, {b:.4g}, {c:.4g}, {s:.4g}"),
            ("min P(||g(z')-g(z)||<=r), clean", f"{self.p_clean_min:.4f}"),
            ("min P(...) under attack at eps", f"{self.p_attack_min:.4f}"),
            ("inputs robust under attack", f"{self.n_robust_attack}/{self.n}"),
            ("median attack damage", f"{self.damage_median:.4g}"),
            ("median rigorous radius (mean / full)", f"{self.radius_mean_median:.4g} / {self.radius_full_median:.4g}"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def verify_margin(model: torch.nn.Module, x: torch.Tensor, eps: float, r: float, *, n_samples: int = 2000,
                  attack_steps: int = 40, attack_restarts: int = 2, alpha: float = ALPHA, seed: int = 0) -> MarginVerification:
    """Verify Barrett's margin eps at r on inputs x of a lipschitz-mlp VAE (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    L = vae_lipschitz(model)
    enc = model.encoder
    m = model.latent_dim
    if L.sigma_constant:
        s = float(enc.sigma_fixed) * math.sqrt(m)
        margin = barrett_margin(L.decoder, L.mean, 0.0, s, r, m, gamma=float(enc.sigma_fixed))
        consts = (L.decoder, L.mean, 0.0, s)
    else:
        s = float(enc.sigma_cap)
        consts = (L.decoder, L.mean, L.sigma, s)
        margin = barrett_margin(*consts, r, m)
    p_clean = barrett_probability(model, x, torch.zeros_like(x), r, n_samples, g)
    # two attacks, the worse p per input: the maximum-damage attack (the distance to g(mu(x))) and
    # a PGD on Barrett's own probability (a smoothed P(||g(z') - g(z)|| > r) over fixed draws)
    delta = max_damage_attack(model, x, eps, steps=attack_steps, restarts=attack_restarts, eta_samples=4, generator=g)
    p_dmg = barrett_probability(model, x, delta, r, n_samples, g)
    direct = pgd(_barrett_objective(model, x, r, generator=g), x, eps, norm="l2", steps=attack_steps,
                 restarts=attack_restarts, generator=g).delta
    p_direct = barrett_probability(model, x, direct, r, n_samples, g)
    p_att = torch.minimum(p_dmg, p_direct)
    cert = rigorous_certify(model, x, r, n_samples=n_samples, alpha=alpha, generator=g)
    dmg = reconstruction_damage(model, x, delta)
    return MarginVerification(
        eps=float(eps), r=float(r), n=len(x), barrett_margin=float(margin), constants=tuple(float(v) for v in consts),
        p_clean_min=float(p_clean.min()), p_attack_min=float(p_att.min()), n_robust_attack=int((p_att > 0.5).sum()),
        radius_mean_median=float(cert.radius_mean.median()), radius_full_median=float(cert.radius_full.median()),
        damage_median=float(dmg.median()),
    )


# --- the study ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyModel:
    """One model of the study: name, objective, beta and (for Lipschitz VAEs) L and the std cap."""

    name: str
    objective: str = "elbo"
    beta: float = 1.0
    lipschitz: float | None = None
    sigma_cap: float = 0.5


def default_models(lipschitz: tuple[float, ...] = (2.0, 8.0, 32.0), beta: float = 4.0, sigma_cap: float = 0.5) -> list[StudyModel]:
    return [StudyModel("vae"), StudyModel(f"beta-vae (beta={beta:g})", "beta-vae", beta),
            *[StudyModel(f"lipschitz-vae (L={L:g})", lipschitz=L, sigma_cap=sigma_cap) for L in lipschitz]]


@dataclass
class StudyRow:
    """One model's results (medians over the evaluated inputs)."""

    model: str
    test_elbo: float
    radius_mean: float
    radius_full: float
    theorem1: float
    margin: float
    damage: float
    certified_fraction: float
    n_violations: int
    n: int
    lip_mean: float
    lip_log_sigma: float
    lip_decoder: float
    n_unresolved: int = 0


@dataclass
class CertifiedStudy:
    dataset: str
    r: float
    attack_eps: float
    cert_eps: float
    epochs: int
    rows: list[StudyRow] = field(default_factory=list)

    def markdown(self) -> str:
        head = ("| model | held-out ELBO | rigorous radius (mean) | rigorous radius (full) | Theorem 1 radius | "
                f"empirical margin (full) | attack damage (eps={self.attack_eps:.3g}) | certified at eps={self.cert_eps:.3g} "
                "| rigorous > margin (refuted / unresolved) |")
        lines = [head, "|" + "---|" * 9]
        for w in self.rows:
            lines.append(f"| {w.model} | {w.test_elbo:.2f} | {w.radius_mean:.3g} | {w.radius_full:.3g} | {w.theorem1:.3g} "
                         f"| {w.margin:.3g} | {w.damage:.3g} | {w.certified_fraction:.2f} | {w.n_violations}/{w.n} ({w.n_unresolved} unresolved) |")
        return "\n".join(lines)


def _median(t: torch.Tensor) -> float:
    """The median with NaNs (unknowns) left out (robvae.stats.median)."""
    return median(t.detach().double().cpu().numpy())


def certified_study(
    out: str | Path, *, dataset: str = "digits", data_dir: str | None = None, models: list[StudyModel] | None = None,
    epochs: int = 20, latent_dim: int = 8, hidden: tuple[int, ...] = (256, 128), n_train: int | None = None,
    n: int = 20, n_samples: int = 2000, r: float | None = None, r_relative: float = R_RELATIVE, attack_eps: float = 1.0,
    cert_eps: float = 0.05, margin_tol: float = MARGIN_TOL, likelihood: str = "bernoulli", seed: int = 0,
    progress: bool = False, echo=None,
) -> CertifiedStudy:
    """Train (or resume) each model into ``out/<i>``, evaluate on the first n test inputs, write
    ``out/certified.csv`` / ``certified.json`` / ``certified.md``. r: absolute radius, or
    r_relative x median r_min of the first model on the evaluated inputs (one r for every model).
    likelihood: the same for every model, so held-out ELBOs compare ("cbernoulli" ELBOs are densities
    on [0, 1] and do not compare with Bernoulli ones).

    Every model folder that holds a config is compared with the model's config before any model
    trains or is evaluated (CheckpointError naming the folder and the fields that differ).

    The relative r's r_min draws come from the study's own generator (seeded by ``seed``, the one
    the first model's certificates then draw from), not from
    :func:`robvae.evaluation.calibration_r_min` as in the evaluation and the beta / tau studies:
    this study writes no r_min column that r must recompute from, and other draws would change
    every number it has published (docs/RESULTS.md section 5); r is recorded in certified.json."""
    out = Path(out)
    models = models or default_models()
    train_set = load_dataset(dataset, "train", data_dir)
    test_set = load_dataset(dataset, "test", data_dir)
    if n_train is not None:
        train_set = train_set.subset(n_train)
    x = test_set.images[:n]
    study = CertifiedStudy(dataset=dataset, r=float("nan"), attack_eps=float(attack_eps), cert_eps=float(cert_eps),
                           epochs=int(epochs))
    # data_dir as training stores it (absolute), so a folder's config compares as training compares it
    stored_dir = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    cfgs = []
    for spec in models:
        lip = {} if spec.lipschitz is None else {"arch": "lipschitz-mlp", "lipschitz": spec.lipschitz,
                                                 "sigma_cap": spec.sigma_cap}
        mc = ModelConfig(input_shape=tuple(train_set.shape), latent_dim=latent_dim, hidden=hidden, likelihood=likelihood,
                         **lip)
        cfgs.append(TrainConfig(dataset=dataset, data_dir=stored_dir, n_train=n_train, model=mc,
                                objective=ObjectiveConfig(spec.objective, spec.beta), epochs=epochs, seed=seed))
    for i, cfg in enumerate(cfgs):  # a changed setting is refused before any work, not at the model it changes
        if (out / f"model{i}" / CONFIG_FILE).exists():
            check_same_config(out / f"model{i}", cfg)
    for i, (spec, cfg) in enumerate(zip(models, cfgs)):
        run = train(cfg, out / f"model{i}", progress=progress, data=(train_set, test_set))
        model = run.model.eval()
        g = torch.Generator().manual_seed(seed)
        if i == 0:
            study.r = float(r) if r is not None else r_relative * _median(r_min(model, x, n_samples, generator=g))
        rr = study.r
        cert = rigorous_certify(model, x, rr, n_samples=n_samples, generator=g)
        t1 = certify(model, x, rr, n_samples=n_samples, generator=g, norms=("frobenius",))
        eps_init = torch.where(cert.radius_full > 0, cert.radius_full.to(x.dtype), torch.full((len(x),), 0.1, dtype=x.dtype))
        res = empirical_margin(model, x, rr, mode="full", eps_init=eps_init, tol=margin_tol, n_samples=n_samples,
                               generator=g)
        dmg = EnsembleAttack("cheap", target="damage", generator=g)(model, x, attack_eps).damage  # deterministic damage
        # A certificate is refuted only where the search settled "not robust" at a budget below it
        # (margin + tolerance: the smallest budget decided NOT robust). Where the radius lies inside
        # the search's bracket, or the clean input is not settled robust (margin 0 = unknown), the
        # comparison is unresolved, counted apart and never as a violation.
        radius, lo = cert.radius_full, res.margin.double()
        known = res.robust_clean.bool()
        not_robust_at = lo + (res.tolerance.double() if res.tolerance is not None else torch.zeros_like(lo))
        refuted = known & ~res.capped.bool() & (radius > not_robust_at)
        viol = int(refuted.sum())
        inside = (radius > lo) & ~refuted
        unresolved = int(inside.sum())
        rows = [{"index": j, "radius_rigorous_mean": float(cert.radius_mean[j]), "radius_rigorous_full": float(radius[j]),
                 "p_lower": float(cert.p_lower[j]), "theorem1": float(t1.radius[j]), "margin": float(lo[j]),
                 "margin_lower": float(lo[j]), "not_robust_at": float(not_robust_at[j]), "robust_clean": bool(known[j]),
                 "not_robust_clean": bool(res.not_robust_clean[j]), "capped": bool(res.capped[j]),
                 "refuted": bool(refuted[j]), "unresolved": bool(inside[j]), "damage": float(dmg[j])}
                for j in range(len(x))]
        # unknown margins (robust unperturbed with no budget settled robust, or undecided unperturbed)
        # by the rule every margin statistic uses
        measured = measured_margins(rows)
        for row_j, m_j in zip(rows, measured):
            row_j["margin"] = float(m_j)
        write_csv(out / f"model{i}" / "per_input.csv", rows)  # every number the row's medians and counts come from
        L = cert.constants
        row = StudyRow(model=spec.name, test_elbo=float(run.metrics[-1]["test_elbo"]), radius_mean=_median(cert.radius_mean),
                       radius_full=_median(cert.radius_full), theorem1=_median(t1.radius), margin=median(measured),
                       damage=_median(dmg), certified_fraction=float((cert.radius_full >= cert_eps).double().mean()),
                       n_violations=viol, n=len(x), n_unresolved=unresolved, lip_mean=L.mean, lip_log_sigma=L.log_sigma, lip_decoder=L.decoder)
        study.rows.append(row)
        if echo is not None:
            echo(f"{spec.name}: ELBO {row.test_elbo:.2f}, rigorous {row.radius_mean:.3g}/{row.radius_full:.3g}, "
                 f"Theorem 1 {row.theorem1:.3g}, margin {row.margin:.3g}, violations {viol}/{len(x)}")
    write_csv(out / "certified.csv", [asdict(w) for w in study.rows])
    write_json(out / "certified.json", asdict(study))  # the rows as dicts too
    atomic_write_text(out / "certified.md", study.markdown() + "\n")
    config = dict(dataset=dataset, data_dir=data_dir, models=[asdict(m) for m in models], epochs=epochs,
                  latent_dim=latent_dim, hidden=list(hidden), n_train=n_train, n=n, n_samples=n_samples, r=study.r,
                  r_relative=None if r is not None else r_relative, attack_eps=attack_eps, cert_eps=cert_eps,
                  margin_tol=margin_tol, likelihood=likelihood, seed=seed)
    write_study_meta(out, "certified", _command(out, models, config), config,
                     tables=["certified.csv", *(f"model{i}/per_input.csv" for i in range(len(models)))])
    return study


def _command(out: Path, models: list[StudyModel], c: dict) -> str:
    """The ``robvae study certified`` line that reproduces the folder (the Python call when the
    models are not the command's: a VAE, a beta-VAE and Lipschitz VAEs of one std cap)."""
    lips = [m.lipschitz for m in models if m.lipschitz is not None]
    betas = [m.beta for m in models if m.objective == "beta-vae"]
    cap = next((m.sigma_cap for m in models if m.lipschitz is not None), 0.5)
    if not lips or len(betas) != 1 or models != default_models(tuple(lips), betas[0], cap) or c["margin_tol"] != MARGIN_TOL \
            or c["likelihood"] != "bernoulli":
        return "robvae.studies.certified_study(...) (Python: models or settings the command does not offer)"
    parts = [f"robvae study certified --dataset {c['dataset']}"]
    if c["data_dir"] is not None:
        parts.append(f"--data-dir {c['data_dir']}")
    parts.append(f"--out {out} --lipschitz {fmt_list(lips)} --sigma-cap {cap:g} --beta {betas[0]:g} "
                 f"--epochs {c['epochs']} --latent-dim {c['latent_dim']} --hidden {fmt_list(c['hidden'])}")
    if c["n_train"] is not None:
        parts.append(f"--n-train {c['n_train']}")
    parts.append(f"--n {c['n']} --n-samples {c['n_samples']}")
    parts.append(f"--r-relative {c['r_relative']:g}" if c["r_relative"] is not None else f"--r {c['r']:g}")
    parts.append(f"--attack-eps {c['attack_eps']:g} --cert-eps {c['cert_eps']:g} --seed {c['seed']}")
    return " ".join(parts)
