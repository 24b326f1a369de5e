"""Theorem 1 certificates and their variants, side by side (SPEC 3).

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

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..models.fast_decode import batches
from ..validation import as_radius, check_x
from .jacobian import KINDS, encoder_jacobian
from .sampling import r_robustness

_PER_INPUT = ("radius", "radius_sound", "radius_spectral", "radius_whitened", "p", "p_lower", "sigma_min",
              "jac_frobenius", "jac_spectral", "jac_whitened", "abstain", "abstain_sound", "r")


@dataclass
class Certificate:
    """Per-input certificates, each a tensor of shape [B] unless said otherwise.

    radius: the paper's Theorem 1 radius (0 = abstain, +inf when p = 1).
    radius_sound: the same with p replaced by p_lower (0 when p_lower <= 1/2).
    radius_spectral / radius_whitened: the tighter first-order radii (SPEC 3, beyond the paper).
    p: the Monte Carlo estimate of p_r(x).  p_lower: its Clopper-Pearson lower bound (level 1 - alpha).
    sigma_min: min_i sigma_i(x).  jac_frobenius / jac_spectral / jac_whitened: ||J||_F, ||J||_2,
    ||diag(1/sigma) J||_2 (NaN when not requested in ``norms``).
    abstain: p <= 1/2.  abstain_sound: p_lower <= 1/2.  r: the radius r.
    reconstruction: g(mu(x)) [B, *shape], the certifiably robust reconstruction.
    mode, alpha, n_samples: the settings used.
    """

    radius: torch.Tensor
    radius_sound: torch.Tensor
    radius_spectral: torch.Tensor
    radius_whitened: torch.Tensor
    p: torch.Tensor
    p_lower: torch.Tensor
    sigma_min: torch.Tensor
    jac_frobenius: torch.Tensor
    jac_spectral: torch.Tensor
    jac_whitened: torch.Tensor
    abstain: torch.Tensor
    abstain_sound: torch.Tensor
    reconstruction: torch.Tensor
    r: torch.Tensor
    mode: str = "mean"
    alpha: float = 0.001
    n_samples: int = 1000

    def __len__(self) -> int:
        return int(self.radius.shape[0])

    def as_numpy(self) -> dict[str, np.ndarray]:
        """The per-input fields (all but ``reconstruction``) as numpy arrays of shape [B]."""
        return {k: getattr(self, k).detach().cpu().numpy() for k in _PER_INPUT}

    def to_rows(self) -> list[dict]:
        """One dict of plain Python numbers per input (CSV-ready), plus mode / alpha / n_samples."""
        cols = self.as_numpy()
        extra = {"mode": self.mode, "alpha": self.alpha, "n_samples": self.n_samples}
        return [{"index": i, **{k: v[i].item() for k, v in cols.items()}, **extra} for i in range(len(self))]

    def summary(self) -> dict:
        """Median radii, abstention and infinite-radius counts, p quantiles."""
        q = (0.05, 0.25, 0.5, 0.75, 0.95)
        p = self.p.detach().double().cpu()
        med = lambda t: float(t.detach().double().cpu().nanmedian())  # noqa: E731
        return {
            "n": len(self), "mode": self.mode, "alpha": self.alpha, "n_samples": self.n_samples,
            "median_radius": med(self.radius), "median_radius_sound": med(self.radius_sound),
            "median_radius_spectral": med(self.radius_spectral), "median_radius_whitened": med(self.radius_whitened),
            "n_abstain": int(self.abstain.sum()), "n_abstain_sound": int(self.abstain_sound.sum()),
            "n_infinite_radius": int(torch.isinf(self.radius).sum()),
            "p_quantiles": {str(k): float(v) for k, v in zip(q, torch.quantile(p, torch.tensor(q, dtype=p.dtype)))},
        }


def theorem1_radius(p: torch.Tensor, scale: torch.Tensor, jac_norm: torch.Tensor) -> torch.Tensor:
    """scale * Phi^{-1}(p) / jac_norm where p > 1/2, else 0 (all [B])."""
    val = scale * torch.special.ndtri(p) / jac_norm
    return torch.where(p > 0.5, val, torch.zeros_like(val))


def _certify_batch(model, x, r, n_samples, alpha, mode, norms, chunk_size, generator) -> dict[str, torch.Tensor]:
    est = r_robustness(model, x, r, None, n_samples, alpha=alpha, mode=mode, chunk_size=chunk_size, generator=generator)
    with torch.inference_mode():
        mu, sigma = model.encode(x)
        recon = model.decode(mu)
    nan = torch.full_like(est.p, float("nan"))
    jf = js = jw = nan
    if norms:
        J = encoder_jacobian(model, x)
        jf = J.norm(dim=(1, 2)) if "frobenius" in norms else nan
        js = torch.linalg.matrix_norm(J, ord=2) if "spectral" in norms else nan
        jw = torch.linalg.matrix_norm(J / sigma[:, :, None], ord=2) if "whitened" in norms else nan
    smin = sigma.amin(dim=1)
    one = torch.ones_like(smin)
    return {
        "radius": theorem1_radius(est.p, smin, jf), "radius_sound": theorem1_radius(est.p_lower, smin, jf),
        "radius_spectral": theorem1_radius(est.p, smin, js), "radius_whitened": theorem1_radius(est.p, one, jw),
        "p": est.p, "p_lower": est.p_lower, "sigma_min": smin, "jac_frobenius": jf, "jac_spectral": js,
        "jac_whitened": jw, "abstain": est.p <= 0.5, "abstain_sound": est.p_lower <= 0.5, "reconstruction": recon,
        "r": est.r,
    }


def certify(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    *,
    n_samples: int = 1000,
    alpha: float = 0.001,
    mode: str = "mean",
    norms: tuple[str, ...] = KINDS,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Certificate:
    """Theorem 1 certificates for every input: x [B, *shape], r a number or a [B] tensor.

    p_r(x) from ``n_samples`` draws (``mode`` as in :func:`r_robustness`; at delta = 0 both modes
    coincide), the exact Jacobian (:func:`encoder_jacobian`) for the requested ``norms``, inputs
    processed ``batch_size`` at a time (tqdm bar when ``progress``).
    """
    unknown = set(norms) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown norms {sorted(unknown)}; choose from {', '.join(KINDS)}")
    check_x(model, x)
    rt = as_radius(r, x.shape[0], x)
    parts: list[dict[str, torch.Tensor]] = []
    chunks = list(batches(x.shape[0], batch_size))
    for s in tqdm(chunks, desc="certify", disable=not progress or len(chunks) < 2):
        parts.append(_certify_batch(model, x[s], rt[s], n_samples, alpha, mode, tuple(norms), chunk_size, generator))
    cat = {k: torch.cat([pp[k] for pp in parts]) for k in parts[0]}
    return Certificate(**cat, mode=mode, alpha=float(alpha), n_samples=int(n_samples))


__all__ = ["Certificate", "certify", "theorem1_radius"]
