"""The robustness benchmark's evaluation protocol, versioned: ``PROTOCOL_V1`` and ``evaluate_protocol``.

A protocol fixes everything that decides a model's numbers, so that numbers from different
models, machines and papers can be compared: the named test subsets (data set, split, how many
inputs and the seed that picks them), the radius r, the budget eps at which the certified
fraction is counted, the attack budgets, the attack (the ensemble preset, its steps and starts),
the Monte Carlo sample size S, the confidence level alpha and the seeds. It is printed with every
result (``protocol: v1``); a protocol changed in any field is labelled ``v1+custom`` and its
changed fields are listed, so it can never pass for v1.

The rule for r. r must be the SAME for every model on a subset, or a model could buy a large
certificate by being noisy (r_min, the median distance of a reconstruction from a noisy latent
draw to g(mu(x)), grows with the decoder's sensitivity to the posterior noise). v1 therefore fixes
r per subset as an absolute number (L2 distance between reconstructions, pixel units), chosen once
as about 1.5 x the median r_min of a plain VAE (latent 8, the default MLP) on that subset:
digits r_min ~ 0.72 -> r = 1.0; mnist-10k r_min ~ 0.92 -> r = 1.5; Fashion-MNIST: r = 1.5 by
analogy (not yet calibrated: the data was not installed when v1 was frozen). The certified
fraction counts inputs whose sound Theorem 1 radius is at least ``cert_eps``; the attacks run at
the fixed budgets ``attack_eps`` (about 0.1 and 0.25 of the median ||x|| of the subset).
``cert_eps`` and ``attack_eps`` are budgets in the protocol's ``attack_norm`` (v1: L2). The radii
are L2 whatever the norm: under an L-inf protocol an input counts as certified when its L2 radius
is at least ``cert_eps * sqrt(D)`` (D pixels), the L2 radius of the L-inf ball of radius cert_eps.

Per model (:class:`BenchResult`): held-out ELBO on the whole test split (None for a model without
``log_likelihood``), mean reconstruction error ||g(mu(x)) - x||, the Theorem 1 radius (median, and
the sound one with p replaced by its Clopper-Pearson lower bound), the certified fraction at
cert_eps, the rigorous radius (robvae.robustness.rigorous, sigma moving too; None where no
Lipschitz bounds are known), the empirical margin (median), the maximum damage (mean) and the
relative log-likelihood degradation (median) at each attack budget, and wall time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks import PRESETS, EnsembleAttack
from ..data import ImageDataset, load_dataset
from ..errors import InputError, RobvaeError
from ..models.protocol import model_device
from ..metrics import likelihood_degradation, reconstruction_error
from ..objectives import ObjectiveConfig, compute_objective
from ..robustness import certify, empirical_margin
from ..robustness.margin import MarginResult
from ..robustness.jacobian import first_order_check
from ..robustness.rigorous import rigorous_certify
from ..stats import median
from ..validation import check_count, check_level, check_positive, model_dtype


@dataclass(frozen=True)
class TestSubset:
    """A named test subset: ``n`` inputs of ``dataset``'s ``split``, indices drawn by ``seed``
    (a seeded permutation, sorted). ``data_dir``: where the files live, relative to the repository
    root (None: the data set needs none). r, cert_eps, attack_eps: see the module docstring."""

    name: str
    dataset: str
    n: int
    r: float
    cert_eps: float
    attack_eps: tuple[float, ...]
    data_dir: str | None = None
    split: str = "test"
    seed: int = 0

    def indices(self, available: int) -> torch.Tensor:
        """The fixed indices into the split (all of them when it holds fewer than n)."""
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(available, generator=g)[: min(self.n, available)].sort().values


@dataclass(frozen=True)
class Protocol:
    """A versioned evaluation protocol (see the module docstring).

    attack: the EnsembleAttack preset (robvae.attacks) for the damages and inside the margin search.
    attack_norm: "l2" (v1) or "linf": the norm of the budgets cert_eps and attack_eps, of the
    attacks and of the margins (the radii stay L2; the module docstring). n_samples: S, Monte Carlo draws per estimate of p (the margin's sequential
    test uses at most S per decision). alpha: Clopper-Pearson level (certificates and decisions).
    margin_tol / margin_max_iter: relative bisection tolerance and its step cap (margin mode "full").
    seed: seeds every random draw of the evaluation. elbo_seed: the ELBO's one reparameterised draw.
    """

    version: str
    subsets: tuple[TestSubset, ...]
    attack: str = "cheap"
    attack_norm: str = "l2"
    n_samples: int = 1000
    alpha: float = 0.05
    margin_tol: float = 0.05
    margin_max_iter: int = 12
    margin_mode: str = "full"
    seed: int = 0
    elbo_seed: int = 0

    def subset(self, name: str) -> TestSubset:
        for s in self.subsets:
            if s.name == name:
                return s
        raise RobvaeError(f"unknown test subset {name!r}; protocol {self.version} has {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.subsets)

    @property
    def label(self) -> str:
        """``v1`` for the registered protocol itself, ``v1+custom`` for any modification of it."""
        ref = PROTOCOLS.get(self.version)
        return self.version if ref == self else f"{self.version}+custom"

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the registered protocol of the same version."""
        ref = PROTOCOLS.get(self.version)
        if ref is None:
            return {"version": self.version}
        a, b = dataclasses.asdict(self), dataclasses.asdict(ref)
        out = {k: v for k, v in a.items() if k != "subsets" and v != b[k]}
        ref_sub = {s["name"]: s for s in b["subsets"]}
        for s in a["subsets"]:
            r = ref_sub.get(s["name"])
            diff = {k: v for k, v in s.items() if r is None or v != r[k]}
            if diff:
                out[f"subset {s['name']}"] = diff
        return out

    def with_overrides(self, subset: str | None = None, **fields: Any) -> "Protocol":
        """A modified copy: protocol fields, or fields of the subset ``subset`` (n, r, ...)."""
        if subset is None:
            return dataclasses.replace(self, **fields)
        s = self.subset(subset)
        new = dataclasses.replace(s, **fields)
        return dataclasses.replace(self, subsets=tuple(new if t.name == subset else t for t in self.subsets))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["label"] = self.label
        return d

    def describe(self, subset: str | None = None) -> str:
        """A few lines to print with every result."""
        lines = [f"protocol: {self.label}"]
        if self.label != self.version:
            lines.append(f"  changed from {self.version}: {self.changes()}")
        for s in self.subsets:
            if subset is not None and s.name != subset:
                continue
            lines.append(f"  subset {s.name}: {s.dataset} {s.split}, n={s.n} (seed {s.seed}), r={s.r:g}, "
                         f"certified fraction at eps={s.cert_eps:g}, attack budgets "
                         f"{', '.join(f'{e:g}' for e in s.attack_eps)} ({NORM_LABELS[self.attack_norm]})")
        lines.append(f"  attack: EnsembleAttack preset {self.attack!r} ({self.attack_norm}); S={self.n_samples}, "
                     f"alpha={self.alpha:g}; margin: mode {self.margin_mode}, tol {self.margin_tol:g}, "
                     f"max {self.margin_max_iter} bisection steps; seed {self.seed}")
        if self.attack_norm != "l2":
            lines.append(f"  norms: budgets, attacks and margins {NORM_LABELS[self.attack_norm]}; radii L2 (certified: "
                         "L2 radius >= eps * sqrt(D), which covers the L-inf ball of radius eps)")
        return "\n".join(lines)


#: How the protocol's norms are written in its description.
NORM_LABELS = {"l2": "L2", "linf": "L-inf"}


PROTOCOL_V1 = Protocol(
    version="v1",
    subsets=(
        TestSubset("digits", "digits", n=200, r=1.0, cert_eps=0.2, attack_eps=(0.4, 1.0)),
        TestSubset("mnist-10k", "mnist", n=200, r=1.5, cert_eps=0.1, attack_eps=(1.0, 2.5),
                   data_dir="../shared/data/mnist-10k"),
        TestSubset("fashion-mnist", "fashion-mnist", n=200, r=1.5, cert_eps=0.1, attack_eps=(1.0, 2.5),
                   data_dir="/usr/share/datasets/fashion-mnist"),
    ),
)
#: Every registered protocol, by version.
PROTOCOLS: dict[str, Protocol] = {"v1": PROTOCOL_V1}


#: the share of inputs that may fail :func:`robvae.robustness.jacobian.first_order_check` (a ReLU
#: kink on a random direction) before a model's row is flagged; those inputs are never counted as
#: certified either
FIRST_ORDER_TOLERANCE = 0.02
#: the largest median finite-difference / Jacobian ratio a row may have (trained smooth models:
#: 1.00-1.15 at the protocol's budgets; a gradient scaled down by c shows as about 1/c)
FIRST_ORDER_RATIO_LIMIT = 1.5
#: a row whose mean reconstruction error reaches this share of the mean test image's is flagged:
#: it reconstructs barely better than a constant guess, and its robustness comes from ignoring
#: the input (an audit's model decoding 0.9 x the mean image + 0.1 x a VAE, at 97%, ranked first
#: with 100% certified; trained VAEs: 56-61% on Fashion-MNIST, 75% on digits, up to 83% for
#: MNIST beta-VAEs at beta = 16)
DEGENERATE_RECONSTRUCTION = 0.9


def _choice(*allowed: str):
    def check(v: Any) -> str:
        if v not in allowed:
            raise InputError(f"must be one of {', '.join(allowed)}, got {v!r}")
        return v
    return check


def _budgets(v: Any) -> tuple[float, ...]:
    vals = v if isinstance(v, (list, tuple)) else [v]
    if not vals:
        raise InputError("must list at least one budget")
    return tuple(check_positive(e) for e in vals)


#: how each field a zoo may override is checked (and normalised), before anything is trained
PROTOCOL_FIELD_CHECKS = {
    "attack": _choice(*PRESETS), "attack_norm": _choice("l2", "linf"), "n_samples": check_count,
    "alpha": check_level, "margin_tol": check_positive, "margin_max_iter": check_count,
    "margin_mode": _choice("full", "mean"), "seed": lambda v: check_count(v, 0),
    "elbo_seed": lambda v: check_count(v, 0),
}
SUBSET_FIELD_CHECKS = {
    "n": check_count, "r": check_positive, "cert_eps": check_positive, "attack_eps": _budgets,
    "seed": lambda v: check_count(v, 0),
}


def get_protocol(version: str) -> Protocol:
    if version not in PROTOCOLS:
        raise RobvaeError(f"unknown protocol {version!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[version]


@dataclass
class BenchResult:
    """One model's numbers under a protocol (see the module docstring). ``damage`` and
    ``degradation`` map each attack budget to the mean damage / median degradation (None when the
    model has no log_likelihood); ``elbo`` and ``rigorous_radius`` are None where not available.
    Medians are :func:`robvae.stats.median`'s; ``median_margin`` is over the inputs whose margin was
    measured (:func:`known_margins`; NaN when none was), ``margin_unknown_fraction`` the others'
    share (None in results written before it was recorded)."""

    name: str
    protocol: str
    subset: str
    n: int
    r: float
    cert_eps: float
    elbo: float | None
    reconstruction_error: float
    median_radius: float
    median_radius_sound: float
    certified_fraction: float
    rigorous_radius: float | None
    median_margin: float
    margin_capped_fraction: float
    damage: dict[str, float]
    degradation: dict[str, float] | None
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    mean_image_error: float | None = None
    first_order_inconsistent: float | None = None
    first_order_ratio: float | None = None
    margin_unknown_fraction: float | None = None

    @property
    def flags(self) -> list[str]:
        """Why this model's robustness numbers cannot be ranked with the others (empty: they can)."""
        return list(self.flag_items.values())

    @property
    def flag_items(self) -> dict[str, str]:
        """:attr:`flags` by kind ("masking", "inflated", "degenerate"), so seeds' flags of one kind
        with different numbers are told once (:func:`robvae.bench.run.aggregate`)."""
        out = {}
        if self.first_order_inconsistent is not None and self.first_order_inconsistent > FIRST_ORDER_TOLERANCE:
            out["masking"] = (f"gradients do not describe the encoder on {self.first_order_inconsistent:.0%} of the "
                              "inputs (gradient masking?): its certificates and attacks are not valid")
        elif self.first_order_ratio is not None and self.first_order_ratio > FIRST_ORDER_RATIO_LIMIT:
            out["inflated"] = (f"the encoder moves {self.first_order_ratio:.3g}x as far as its gradients say (median, "
                               "at the certification budget; gradients scaled down?): its certificates are inflated")
        if self.mean_image_error is not None and \
                self.reconstruction_error >= DEGENERATE_RECONSTRUCTION * self.mean_image_error:
            share = self.reconstruction_error / self.mean_image_error if self.mean_image_error > 0 else math.inf
            how = "barely better than" if share < 1 else "no better than"  # 163% read "barely better"
            out["degenerate"] = (f"reconstructs {how} the mean image (error "
                                 f"{self.reconstruction_error:.3g}, {share:.0%} of the mean image's "
                                 f"{self.mean_image_error:.3g}): its robustness may come from ignoring the input")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def row(self) -> dict[str, Any]:
        """A flat table row: damage@eps and degradation@eps as columns, and the flags."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("damage", "degradation", "extra")}
        d["flags"] = "; ".join(self.flags)
        for what in ("damage", "degradation"):
            d.update({f"{what}@{eps}": v for eps, v in (getattr(self, what) or {}).items()})
        return d


def _generator(seed: int, salt: int) -> torch.Generator:
    """A CPU generator (robvae.rng moves its draws to the device): the same stream on every device
    (the counts depend on the chunks it is drawn in too, and a GPU's default chunk is larger)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))


def heldout_elbo(model: torch.nn.Module, data: ImageDataset, seed: int = 0, batch_size: int = 500) -> float | None:
    """Mean ELBO (analytic KL to N(0, I), one reparameterised draw, fixed seed) over ``data``,
    nats per image; None when the model has no ``log_likelihood`` or says its prior is another
    (``prior_is_standard_normal = False``, e.g. a pythae VAMP: that KL would misstate its ELBO)."""
    if not callable(getattr(model, "log_likelihood", None)) or not getattr(model, "prior_is_standard_normal", True):
        return None
    device, dtype = model_device(model), model_dtype(model)
    g = _generator(seed, 99)
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            x = data.images[i: i + batch_size].to(device=device, dtype=dtype or data.images.dtype)
            total += float(compute_objective(model, x, ObjectiveConfig(), len(data), generator=g)["elbo"]) * x.shape[0]
    return total / len(data)


def _median(t: torch.Tensor) -> float:
    """The median of robvae's statistics (:func:`robvae.stats.median`: the mean of the two middle
    values of an even count, NaNs dropped); torch's ``median`` is the lower of the two."""
    return median(t.detach().double().cpu().numpy())


def known_margins(margin: MarginResult) -> torch.Tensor:
    """The margins [B] with the unknowns as NaN (as :func:`robvae.evaluation.measured_margins`):
    an input settled robust unperturbed whose search settled no budget robust (margin 0, not
    capped), and one whose clean estimate was undecided (neither settled robust nor settled not
    robust); its margin lies anywhere in [0, upper], so a median must leave it out."""
    m = margin.margin.detach().double().cpu()
    robust, capped = margin.robust_clean.cpu().bool(), margin.capped.cpu().bool()
    unknown = robust & (m == 0) & ~capped
    if margin.not_robust_clean is not None:
        unknown |= ~robust & ~margin.not_robust_clean.cpu().bool()
    return torch.where(unknown, torch.full_like(m, float("nan")), m)


def evaluate_protocol(
    model: torch.nn.Module, data: ImageDataset, protocol: Protocol = PROTOCOL_V1, subset: str = "digits", *,
    name: str = "model",
) -> BenchResult:
    """Run the protocol's evaluation of ``model`` on its named test subset ``subset``.

    ``data``: the subset's test split (the protocol picks its n inputs by seed; the ELBO uses all).
    """
    t0 = time.perf_counter()
    s = protocol.subset(subset)
    if len(data) < 1:
        raise InputError("the test split is empty")
    was_training = model.training
    model.eval()
    device = model_device(model)
    x = data.images[s.indices(len(data))].to(device=device, dtype=model_dtype(model) or data.images.dtype)
    seed = protocol.seed
    elbo = heldout_elbo(model, data, protocol.elbo_seed)
    rec = float(reconstruction_error(model, x).double().mean())
    # the two sanity checks behind BenchResult.flags: a constant guess, and gradient masking
    mean_image = data.images.to(device=device, dtype=x.dtype).mean(0, keepdim=True)
    mean_err = float((x - mean_image).flatten(1).norm(dim=1).double().mean())
    # the L2 radius that certifies the budget cert_eps in the protocol's norm (module docstring)
    cert_l2 = s.cert_eps * (1.0 if protocol.attack_norm == "l2" else math.sqrt(x[0].numel()))
    first_order = first_order_check(model, x, cert_l2, generator=_generator(seed, 5))

    cert = certify(model, x, s.r, n_samples=protocol.n_samples, alpha=protocol.alpha, norms=("frobenius",),
                   generator=_generator(seed, 1))
    # an input whose gradients do not describe its encoder is never counted as certified
    certified = float(((cert.radius_sound.cpu() >= cert_l2) & first_order.consistent).double().mean())
    try:
        rig = rigorous_certify(model, x, s.r, n_samples=protocol.n_samples, alpha=protocol.alpha,
                               generator=_generator(seed, 2))
        rigorous: float | None = _median(rig.radius_full)
    except RobvaeError:  # no Lipschitz bounds known for this model
        rigorous = None

    margin = empirical_margin(model, x, s.r, EnsembleAttack(protocol.attack, norm=protocol.attack_norm,
                                                            generator=_generator(seed, 3)),
                              mode=protocol.margin_mode, tol=protocol.margin_tol, max_iter=protocol.margin_max_iter,
                              n_samples=protocol.n_samples, alpha=protocol.alpha, norm=protocol.attack_norm,
                              generator=_generator(seed, 4))
    margins = known_margins(margin)
    damage: dict[str, float] = {}
    degradation: dict[str, float] | None = {} if callable(getattr(model, "log_likelihood", None)) else None
    for k, eps in enumerate(s.attack_eps):
        attack = EnsembleAttack(protocol.attack, norm=protocol.attack_norm, target="damage",
                                generator=_generator(seed, 10 + k))
        res = attack(model, x, eps)
        damage[f"{eps:g}"] = float(res.damage.double().mean())
        if degradation is not None:
            degradation[f"{eps:g}"] = _median(likelihood_degradation(model, x, res.delta))
    model.train(was_training)
    return BenchResult(
        name=name, protocol=protocol.label, subset=s.name, n=int(x.shape[0]), r=float(s.r), cert_eps=float(s.cert_eps),
        elbo=elbo, reconstruction_error=rec, median_radius=_median(cert.radius),
        median_radius_sound=_median(cert.radius_sound), certified_fraction=certified, rigorous_radius=rigorous,
        median_margin=_median(margins), margin_capped_fraction=float(margin.capped.double().mean()),
        margin_unknown_fraction=float(margins.isnan().double().mean()),
        damage=damage, degradation=degradation, wall_s=time.perf_counter() - t0, mean_image_error=mean_err,
        first_order_inconsistent=first_order.fraction_inconsistent, first_order_ratio=first_order.typical_ratio,
    )


#: The folder the protocols' relative data folders are written against: the repository root (of a
#: source checkout; where robvae is installed from a wheel, its folders are taken as they are).
PROTOCOL_ROOT = Path(__file__).resolve().parents[3]


def subset_data_dir(protocol: Protocol, subset: str) -> str | None:
    """The folder of the subset's files as the protocol names it. Its folders are relative to the
    repository root (:data:`PROTOCOL_ROOT`): from another working folder, where the folder is not
    found relative to it, the one under the repository root (an absolute path) is returned."""
    data_dir = protocol.subset(subset).data_dir
    if (data_dir is not None and not Path(data_dir).is_absolute() and not Path(data_dir).exists()
            and (PROTOCOL_ROOT / "pyproject.toml").is_file()):
        data_dir = str((PROTOCOL_ROOT / data_dir).resolve())
    return data_dir


def load_subset_data(protocol: Protocol, subset: str, data_dir: str | None = None) -> ImageDataset:
    """The test split of the subset's data set (``data_dir`` overrides the protocol's folder,
    :func:`subset_data_dir`)."""
    s = protocol.subset(subset)
    return load_dataset(s.dataset, s.split, data_dir if data_dir is not None else subset_data_dir(protocol, subset))
