"""The linear VAE with closed-form robustness answers (docs/THEORY.md section 7).

mu(x) = A x (flattened x), sigma(x) = s on every axis, g(z) = W z with W^T W = I.
Then ||Delta(x, delta)||^2 / s^2 ~ ncx2(d, ||A delta||^2 / s^2), so
p_r(x, delta) = F_ncx2(r^2/s^2; d, ||A delta||^2/s^2), r_min = s * sqrt(chi2_d median),
the true margin R_r = s sqrt(lambda*) / sigma_max(A) with F_ncx2(r^2/s^2; d, lambda*) = 0.5,
and Theorem 1 gives s * probit(p_r(x)) / ||A||_F.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import optimize, stats
from torch import nn


class LinearVAE(nn.Module):
    """Follows the robvae protocol. ``A``: [d, D]; ``W``: [D, d] with orthonormal columns."""

    def __init__(self, A: torch.Tensor, W: torch.Tensor, s: float, input_shape: Sequence[int]):
        super().__init__()
        d, D = A.shape
        if W.shape != (D, d):
            raise ValueError(f"W must have shape {(D, d)}, got {tuple(W.shape)}")
        if math.prod(input_shape) != D:
            raise ValueError(f"input_shape {tuple(input_shape)} does not have D = {D} entries")
        self.register_buffer("A", A)
        self.register_buffer("W", W)
        self.s = float(s)
        self.input_shape = tuple(input_shape)
        self.latent_dim = d

    #: its outputs are points of R^D, not images in [0, 1] (no DecoderRangeWarning)
    decodes_images = False

    @classmethod
    def random(
        cls, d: int = 4, input_shape: Sequence[int] = (1, 4, 4), s: float = 0.1, *,
        singular_values: Sequence[float] | None = None, seed: int = 0, dtype: torch.dtype = torch.float64,
    ) -> "LinearVAE":
        """A random instance: A = U diag(sv) V^T with given singular values; W orthonormal. A float16 /
        bfloat16 instance is built in float64 (QR has no half-precision kernel), then cast."""
        g = torch.Generator().manual_seed(seed)
        D = math.prod(input_shape)
        f64 = dtype if dtype in (torch.float32, torch.float64) else torch.float64
        sv = torch.tensor(singular_values if singular_values is not None else np.linspace(3.0, 1.0, d), dtype=f64)
        U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
        V, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=f64))
        A = U @ torch.diag(sv) @ V.T
        W, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=f64))
        return cls(A.to(dtype), W.to(dtype), s, input_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = x.flatten(1).to(self.A.dtype) @ self.A.T
        return mu, torch.full_like(mu, self.s)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W.T).view(z.shape[0], *self.input_shape)

    # --- closed forms ---------------------------------------------------------------------
    def exact_p(self, r: float, delta_norm_A: float | np.ndarray = 0.0) -> np.ndarray:
        """p_r(x, delta) given ||A delta|| (0 for the clean input)."""
        nc = (np.asarray(delta_norm_A, dtype=float) / self.s) ** 2
        x = (r / self.s) ** 2
        return np.where(nc > 0, stats.ncx2.cdf(x, self.latent_dim, np.maximum(nc, 1e-300)), stats.chi2.cdf(x, self.latent_dim))

    def exact_r_min(self) -> float:
        """median ||Delta(x, 0)|| = s * sqrt(median of chi2_d)."""
        return self.s * math.sqrt(stats.chi2.median(self.latent_dim))

    def exact_margin(self, r: float) -> float:
        """R_r = s sqrt(lambda*) / sigma_max(A); 0 when p_r(x) <= 0.5."""
        x = (r / self.s) ** 2
        if stats.chi2.cdf(x, self.latent_dim) <= 0.5:
            return 0.0
        f = lambda lam: stats.ncx2.cdf(x, self.latent_dim, lam) - 0.5  # noqa: E731
        hi = 1.0
        while f(hi) > 0:
            hi *= 2
        lam = optimize.brentq(f, 1e-12, hi, xtol=1e-12)
        smax = float(torch.linalg.matrix_norm(self.A.double(), ord=2))
        return self.s * math.sqrt(lam) / smax

    def exact_bound(self, r: float) -> float:
        """Theorem 1: s * probit(p_r(x)) / ||A||_F (0 when p_r(x) <= 0.5)."""
        p = float(self.exact_p(r))
        if p <= 0.5:
            return 0.0
        return self.s * float(stats.norm.ppf(p)) / float(torch.linalg.matrix_norm(self.A.double()))
