"""Lipschitz-constrained VAE networks (docs/THEORY.md section 9; Barrett, Camuto, Willetts, Rainforth, AISTATS 2022).

Every network here is a chain of k orthonormalised linear layers, each multiplied by the scale
L^(1/k), with GroupSort (MaxMin) activations in between, so it is at most L-Lipschitz (l2) by
construction: an orthonormal matrix (orthonormal rows or columns) has spectral norm 1 and MaxMin is
a permutation on each pair of coordinates, hence 1-Lipschitz.

- encoder mean  mu(x):      an L_mu-Lipschitz MLP  D -> hidden -> d
- encoder std   sigma(x):   an L_std-Lipschitz MLP D -> hidden -> d, then (cap / sqrt(d)) * sigmoid,
                            so ||sigma(x)|| <= cap for every x and sigma is (cap / (4 sqrt d)) L_std
                            Lipschitz; log sigma is L_std-Lipschitz (log sigmoid is 1-Lipschitz).
                            Or fixed: sigma(x) = sigma_fixed on every axis (c = 0).
- decoder       h(z):       an L_dec-Lipschitz MLP d -> reversed(hidden) -> D; the reconstruction
                            g(z) = sigmoid(h(z)) is L_dec / 4 Lipschitz.

The constants are exposed as ``construction_constants`` and checked against
:func:`robvae.robustness.lipschitz.lipschitz_bound` (which measures the actual weights by SVD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .networks import MLPDecoder, interleave


class GroupSort(nn.Module):
    """MaxMin activation (GroupSort with groups of 2) on the last dimension: 1-Lipschitz in l2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"GroupSort needs an even number of features, got {x.shape[-1]}")
        pairs = x.unflatten(-1, (x.shape[-1] // 2, 2))
        return torch.stack((pairs.amax(-1), pairs.amin(-1)), dim=-1).flatten(-2)


class OrthoLinear(nn.Module):
    """y = scale * (Q x) + b with Q orthonormal: ||scale Q||_2 = scale.

    Q is the orthonormal factor of the reduced QR decomposition of a free matrix V [max, min]
    (orthonormal columns; used as Q or Q^T so that the weight is [out, in]). Gradients flow through
    the QR (much faster on CPU than torch's Householder parametrisation, same constraint).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"the layer scale must be > 0, got {scale}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.raw = nn.Parameter(torch.empty(max(in_features, out_features), min(in_features, out_features)))
        nn.init.orthogonal_(self.raw)
        bound = 1.0 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.scale = float(scale)

    def orthonormal(self) -> torch.Tensor:
        """Q [out, in] with orthonormal rows or columns (spectral norm 1)."""
        q = torch.linalg.qr(self.raw).Q
        return q if self.out_features >= self.in_features else q.T

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight scale * Q."""
        return self.scale * self.orthonormal()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class LipschitzMLP(nn.Sequential):
    """k OrthoLinear layers of scale L^(1/k) with GroupSort between them: L-Lipschitz by construction."""

    def __init__(self, sizes: Sequence[int], lipschitz: float):
        if len(sizes) < 2:
            raise ValueError("a Lipschitz MLP needs at least an input and an output size")
        if not lipschitz > 0:
            raise ValueError(f"the Lipschitz constant must be > 0, got {lipschitz}")
        for h in sizes[1:-1]:
            if h % 2:
                raise ValueError(f"GroupSort needs even hidden widths, got {tuple(sizes[1:-1])}")
        scale = float(lipschitz) ** (1.0 / (len(sizes) - 1))
        super().__init__(*interleave([OrthoLinear(a, b, scale) for a, b in zip(sizes, sizes[1:])], GroupSort))
        self.lipschitz = float(lipschitz)


@dataclass(frozen=True)
class LipschitzConstants:
    """Construction constants of a Lipschitz VAE (l2, upper bounds by construction).

    mean: mu.  sigma: the std map (0 when fixed).  log_sigma: log sigma (0 when fixed).
    decoder: the reconstruction g = sigmoid(h).  sigma_norm_max: max_x ||sigma(x)||.
    latent_dim: m.  sigma_fixed: the fixed std (None when learned).
    """

    mean: float
    sigma: float
    log_sigma: float
    decoder: float
    sigma_norm_max: float
    latent_dim: int
    sigma_fixed: float | None = None


class LipschitzEncoder(nn.Module):
    """x [B, *shape] -> (mu [B, d], sigma [B, d]), both from Lipschitz MLPs (see the module docstring)."""

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden: Sequence[int], lipschitz: float,
                 sigma_cap: float | None = 0.1, sigma_fixed: float | None = None, lipschitz_std: float | None = None):
        super().__init__()
        if (sigma_cap is None) == (sigma_fixed is None):
            raise ValueError("give exactly one of sigma_cap (learned std, ||sigma|| <= cap) and sigma_fixed")
        D = math.prod(input_shape)
        self.latent_dim = int(latent_dim)
        self.mean = LipschitzMLP([D, *hidden, latent_dim], lipschitz)
        for name, value in (("sigma_fixed", sigma_fixed), ("sigma_cap", sigma_cap)):
            setattr(self, name, None if value is None else float(value))
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.std = (LipschitzMLP([D, *hidden, latent_dim], lipschitz if lipschitz_std is None else lipschitz_std)
                    if self.sigma_fixed is None else None)

    def std_scale(self) -> float:
        """cap / sqrt(d): sigma = std_scale * sigmoid(h), so ||sigma|| <= cap."""
        assert self.sigma_cap is not None
        return self.sigma_cap / math.sqrt(self.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        mu = self.mean(flat)
        if self.std is None:
            return mu, torch.full_like(mu, self.sigma_fixed)
        # the scale shrunk by 2^-20 so that the rounded product (up to half an ulp above the exact
        # one) keeps ||sigma|| <= cap in the model's dtype too: float32's nearest cap / sqrt(d)
        # put a saturated sigma 1 ulp above the cap in half the (cap, d) pairs; the bounds use cap
        return mu, (self.std_scale() * (1 - 2.0 ** -20)) * torch.sigmoid(self.std(flat))


class LipschitzDecoder(MLPDecoder):
    """z [N, d] -> h(z) [N, *shape] (logits; the reconstruction is sigmoid(h)), L-Lipschitz: the
    MLP decoder with a :class:`LipschitzMLP` d -> reversed(hidden) -> D."""

    _make_net = LipschitzMLP

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden: Sequence[int], lipschitz: float):
        super().__init__(input_shape, latent_dim, hidden, lipschitz)


def construction_constants(encoder: LipschitzEncoder, decoder: LipschitzDecoder) -> LipschitzConstants:
    """The constants guaranteed by construction (see the module docstring)."""
    m = encoder.latent_dim
    if encoder.std is None:
        sig, logsig, smax = 0.0, 0.0, encoder.sigma_fixed * math.sqrt(m)
    else:
        sig, logsig, smax = encoder.std_scale() * encoder.std.lipschitz / 4.0, encoder.std.lipschitz, encoder.sigma_cap
    return LipschitzConstants(mean=encoder.mean.lipschitz, sigma=sig, log_sigma=logsig,
                              decoder=decoder.net.lipschitz / 4.0, sigma_norm_max=smax, latent_dim=m,
                              sigma_fixed=encoder.sigma_fixed)
