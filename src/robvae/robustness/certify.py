"""Theorem 1 certificates and their variants, side by side (docs/THEORY.md section 3).

For r with p = p_r(x) > 1/2 (Monte Carlo from ``n_samples`` draws of eta) and J = d mu / d x:

- radius          = min_i sigma_i(x) * Phi^{-1}(p) / ||J||_F          (the paper's Theorem 1)
- radius_sound    = min_i sigma_i(x) * Phi^{-1}(p_lower) / ||J||_F    (p_lower: one-sided
                    Clopper-Pearson lower bound at level 1 - alpha; abstains when p_lower <= 1/2)
- radius_spectral = min_i sigma_i(x) * Phi^{-1}(p) / ||J||_2
- radius_whitened = Phi^{-1}(p) / ||diag(1 / sigma(x)) J||_2

All are 0 when the corresponding p is <= 1/2 (abstain). With p = 1 (every draw within r)
Phi^{-1}(p) = +inf and the paper's radius (and the spectral / whitened ones) is +inf; the sound
radius stays finite. radius <= radius_spectral <= radius_whitened always holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from ..config import ALPHA, N_SAMPLES, ConfigMixin
from ..models.fast_decode import batches
from ..stats import median
from ..errors import InputError
from ..validation import as_radius, check_count, check_level, check_size, check_x, host_numpy
from .bf16 import check_precision, r_robustness_bf16
from .jacobian import KINDS, jacobian_norms
from .lipschitz import VAELipschitz
from .rigorous import check_exact_arithmetic, rigorous_columns
from .sampling import stat_dtype

#: the per-input radii and flags derived from the stored fields (properties of Certificate)
DERIVED = ("radius", "radius_sound", "radius_spectral", "radius_whitened", "abstain", "abstain_sound")


@dataclass
class Certificate:
    """Per-input certificates: what was measured is stored (tensors of shape [B]); every radius is
    derived from it on request (properties), so no two copies can disagree.

    Stored: p (the Monte Carlo estimate of p_r(x)), p_lower (its one-sided Clopper-Pearson lower
    bound at level 1 - alpha), sigma_min (min_i sigma_i(x)), jac_frobenius / jac_spectral /
    jac_whitened (||J||_F, ||J||_2, ||diag(1/sigma) J||_2; NaN when not requested in ``norms``),
    r (the radius), n_drawn (the draws p and p_lower come from: n_samples, or fewer for an input
    that stopped early, settled p < 1/2, see :class:`CertifyConfig`), and the settings mode /
    alpha / n_samples. Optional extras (None when not
    computed) leave room for more certificates, e.g. a rigorous radius.

    Derived: radius (Theorem 1: 0 = abstain, +inf when p = 1), radius_sound (p replaced by
    p_lower), radius_spectral / radius_whitened (the tighter first-order radii, docs/THEORY.md section 3),
    abstain (p <= 1/2), abstain_sound (p_lower <= 1/2).

    The certifiably robust reconstruction g(mu(x)) is not stored: :func:`robust_reconstruction`.
    """

    p: torch.Tensor
    p_lower: torch.Tensor
    sigma_min: torch.Tensor
    jac_frobenius: torch.Tensor
    jac_spectral: torch.Tensor
    jac_whitened: torch.Tensor
    r: torch.Tensor
    n_drawn: torch.Tensor
    mode: str = "mean"
    alpha: float = ALPHA
    n_samples: int = N_SAMPLES
    #: optional per-input extras [B] (None = not computed), e.g. a rigorous radius; kept by
    #: as_numpy / to_rows / cat when present
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def radius(self) -> torch.Tensor:
        return theorem1_radius(self.p, self.sigma_min, self.jac_frobenius)

    @property
    def radius_sound(self) -> torch.Tensor:
        return theorem1_radius(self.p_lower, self.sigma_min, self.jac_frobenius)

    @property
    def radius_spectral(self) -> torch.Tensor:
        return theorem1_radius(self.p, self.sigma_min, self.jac_spectral)

    @property
    def radius_whitened(self) -> torch.Tensor:
        return theorem1_radius(self.p, torch.ones_like(self.sigma_min), self.jac_whitened)

    @property
    def abstain(self) -> torch.Tensor:
        return self.p <= 0.5

    @property
    def abstain_sound(self) -> torch.Tensor:
        return self.p_lower <= 0.5

    @property
    def reconstruction(self) -> torch.Tensor:
        raise AttributeError("Certificate.reconstruction is no longer stored; compute g(mu(x)) when needed with "
                             "robvae.robustness.robust_reconstruction(model, x)")

    def __len__(self) -> int:
        return int(self.p.shape[0])

    def __getitem__(self, index: Any) -> "Certificate":
        """The certificates of some inputs (a slice, index tensor or boolean mask)."""
        return replace(self, **{k: getattr(self, k)[index] for k in _STORED},
                       extras={k: v[index] for k, v in self.extras.items()})

    @classmethod
    def cat(cls, parts: list["Certificate"]) -> "Certificate":
        """Concatenate certificates of consecutive inputs (same settings)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return replace(parts[0], **{k: torch.cat([getattr(c, k) for c in parts]) for k in _STORED},
                       extras={k: torch.cat([c.extras[k] for c in parts]) for k in parts[0].extras})

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], *, mode: str, alpha: float, n_samples: int) -> "Certificate":
        """Rebuild from :meth:`as_numpy` (derived columns in ``arrays`` are ignored, extras kept)."""
        stored = {k: torch.from_numpy(np.require(arrays[k], requirements=("C", "W"))) for k in _STORED}
        extras = {k: torch.from_numpy(np.require(v, requirements=("C", "W"))) for k, v in arrays.items()
                  if k not in _STORED and k not in DERIVED}
        return cls(**stored, mode=mode, alpha=float(alpha), n_samples=int(n_samples), extras=extras)

    def as_numpy(self) -> dict[str, np.ndarray]:
        """Every per-input column (derived radii, stored fields, extras) as numpy arrays [B]."""
        cols = {k: getattr(self, k) for k in (*DERIVED, *_STORED)}
        cols.update(self.extras)
        return {k: host_numpy(v) for k, v in cols.items()}

    def to_rows(self) -> list[dict]:
        """One dict of plain Python numbers per input (CSV-ready), plus mode / alpha / n_samples."""
        cols = self.as_numpy()
        extra = {"mode": self.mode, "alpha": self.alpha, "n_samples": self.n_samples}
        return [{"index": i, **{k: v[i].item() for k, v in cols.items()}, **extra} for i in range(len(self))]

    def summary(self) -> dict:
        """Median radii (+inf kept as values), abstention and infinite-radius counts, p quantiles."""
        q = (0.05, 0.25, 0.5, 0.75, 0.95)
        p = self.p.detach().double().cpu()
        med = lambda t: median(t.detach().double().cpu().numpy())  # noqa: E731
        return {
            "n": len(self), "r": float(self.r.double().median()), "mode": self.mode, "alpha": self.alpha,
            "n_samples": self.n_samples,
            "median_radius": med(self.radius), "median_radius_sound": med(self.radius_sound),
            "median_radius_spectral": med(self.radius_spectral), "median_radius_whitened": med(self.radius_whitened),
            **{f"median_{k}": med(v) for k, v in self.extras.items()},
            "n_abstain": int(self.abstain.sum()), "n_abstain_sound": int(self.abstain_sound.sum()),
            "n_stopped_early": int((self.n_drawn < self.n_samples).sum()),
            "n_infinite_radius": int(torch.isinf(self.radius).sum()),
            "p_quantiles": {str(k): float(v) for k, v in zip(q, torch.quantile(p, torch.tensor(q, dtype=p.dtype)))},
        }


_STORED = tuple(f.name for f in fields(Certificate) if f.name not in ("mode", "alpha", "n_samples", "extras"))


@dataclass
class CertifyConfig(ConfigMixin):
    """The settings of :func:`certify` (its keyword defaults are these) and of ``robvae certify``.

    n_samples: Monte Carlo draws of eta per estimate of p. alpha: the sound radius holds with
    probability >= 1 - alpha. mode: "mean" (sigma(x) held, Theorem 1's setting) or "full".
    batch_size: inputs per batch. precision: the decoder's arithmetic for the draws, "float32",
    "bfloat16" (the heavy layer in bfloat16 with rigorous error bounds, undecided draws decoded
    again in float32: exactly float32's counts, robvae.robustness.bf16) or "auto" (bfloat16 where
    it is measured faster: MLP decoders, one thread, CPUs with native bfloat16; given up for float32
    once more than 10% of its draws are decoded again). The certificates
    are the same whichever is chosen. early_abstain: stop drawing for an input as soon as an
    anytime-valid sequential test (docs/THEORY.md section 11, level alpha) settles p_r(x) < 1/2: it
    abstains (radius and sound radius 0) and its p and p_lower come from the draws made
    (``n_drawn``). Every other input gets exactly the draws and certificate it gets without it; the
    sound radius keeps its guarantee (abstaining never claims anything).
    """

    n_samples: int = N_SAMPLES
    alpha: float = ALPHA
    mode: Literal["mean", "full"] = "mean"
    batch_size: int = 256
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    early_abstain: bool = True

    _what = "certify config"


def robust_reconstruction(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """g(mu(x)) [B, *shape]: the certifiably robust reconstruction (the paper's notion), computed
    when asked for."""
    check_x(model, x)
    with torch.inference_mode():
        return model.decode(model.encode(x)[0])


def theorem1_radius(p: torch.Tensor, scale: torch.Tensor, jac_norm: torch.Tensor) -> torch.Tensor:
    """scale * Phi^{-1}(p) / jac_norm where p > 1/2, else 0 (all [B])."""
    val = scale * torch.special.ndtri(p.to(stat_dtype(p.dtype))) / jac_norm  # no half-precision ndtri
    return torch.where(p > 0.5, val, torch.zeros_like(val))


def _certify_batch(model, x, r, n_samples, alpha, mode, norms, chunk_size, generator,
                   precision, early_abstain) -> dict[str, torch.Tensor]:
    """The stored fields of one batch's certificates."""
    est = r_robustness_bf16(model, x, r, None, n_samples, alpha=alpha, mode=mode, chunk_size=chunk_size,
                            generator=generator, precision=precision, abstain_alpha=alpha if early_abstain else None)
    with torch.inference_mode():
        sigma = model.encode(x)[1]
    nan = torch.full_like(est.p, float("nan"))
    jf = js = jw = nan
    if norms:  # exact J, or matrix-free estimates (with a JacobianSizeWarning) when J would be too large
        jn = jacobian_norms(model, x, norms, sigma=sigma, generator=generator)
        jf, js, jw = jn.frobenius, jn.spectral, jn.whitened
    return {"p": est.p, "p_lower": est.p_lower, "sigma_min": sigma.amin(dim=1), "jac_frobenius": jf,
            "jac_spectral": js, "jac_whitened": jw, "r": est.r, "n_drawn": est.n_samples}


def certify(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    *,
    n_samples: int = CertifyConfig.n_samples,
    alpha: float = CertifyConfig.alpha,
    mode: str = CertifyConfig.mode,
    norms: tuple[str, ...] = KINDS,
    generator: torch.Generator | None = None,
    batch_size: int = CertifyConfig.batch_size,
    chunk_size: int | None = None,
    progress: bool = False,
    rigorous: bool | VAELipschitz = False,
    precision: str = CertifyConfig.precision,
    early_abstain: bool = CertifyConfig.early_abstain,
) -> Certificate:
    """Theorem 1 certificates for every input: x [B, *shape], r a number or a [B] tensor.

    p_r(x) from ``n_samples`` draws (``mode`` as in :func:`r_robustness`; at delta = 0 both modes
    coincide), the exact Jacobian (:func:`robvae.robustness.jacobian.encoder_jacobian`) for the
    requested ``norms`` (matrix-free estimates with a JacobianSizeWarning when it would be too large,
    see :func:`jacobian_norms`), inputs processed ``batch_size`` at a time (tqdm bar when ``progress``).
    rigorous: also the rigorous radii (robvae.robustness.rigorous, docs/THEORY.md section 8) as extras
    "radius_rigorous_mean" / "radius_rigorous_full"; True uses vae_lipschitz(model), or pass the
    Lipschitz constants (a VAELipschitz of rigorous upper bounds) for other models.
    precision: "auto", "float32" or "bfloat16" (see :class:`CertifyConfig`): the same certificates.
    early_abstain: stop drawing for inputs settled p < 1/2 (see :class:`CertifyConfig`).
    """
    if isinstance(norms, str):  # set("frobenius") is its letters
        raise InputError(f"norms: a tuple of names, e.g. ({norms!r},); got the string {norms!r}")
    unknown = set(norms) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown norms {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if not isinstance(rigorous, (bool, VAELipschitz)):
        raise InputError(f"rigorous: True, False or a VAELipschitz of the model's constants, got {rigorous!r}")
    if not isinstance(early_abstain, (bool, np.bool_)):  # "no" would count as True
        raise InputError(f"early_abstain must be True or False, got {early_abstain!r}")
    early_abstain = bool(early_abstain)
    check_count(batch_size, 1, "batch_size")
    check_size(chunk_size, "chunk_size")
    check_level(alpha, "alpha")
    check_precision(precision)
    check_x(model, x)
    if rigorous is not False:  # before the draws
        check_exact_arithmetic(model, x)
    rt = as_radius(r, x.shape[0], x)
    chunks = list(batches(x.shape[0], batch_size))
    parts = [_certify_batch(model, x[s], rt[s], n_samples, alpha, mode, tuple(norms), chunk_size, generator,
                          precision, early_abstain)
             for s in tqdm(chunks, desc="certify", disable=not progress or len(chunks) < 2)]
    cat = {k: torch.cat([pp[k] for pp in parts]) for k in parts[0]}
    extras = {} if rigorous is False else rigorous_columns(
        model, x, cat["p_lower"], cat["sigma_min"], None if rigorous is True else rigorous)
    return Certificate(**cat, mode=mode, alpha=float(alpha), n_samples=int(n_samples), extras=extras)


__all__ = ["Certificate", "CertifyConfig", "certify", "robust_reconstruction", "theorem1_radius"]
