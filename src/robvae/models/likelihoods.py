"""Decoder likelihoods p(x|z): Bernoulli (logits) for grey images, Gaussian for colour.

Both take the decoder network's raw output ``h`` of shape ``[N, *input_shape]``; the mean
reconstruction is ``sigmoid(h)`` in both cases, and ``log_prob`` sums over pixels -> ``[N]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BernoulliLikelihood(nn.Module):
    """log p(x|z) = sum_j x_j log g_j + (1 - x_j) log(1 - g_j), g = sigmoid(h); x in [0, 1]."""

    name = "bernoulli"

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(h, x, reduction="none").flatten(1).sum(1)


class GaussianLikelihood(nn.Module):
    """log p(x|z) = sum_j log N(x_j; sigmoid(h_j), s^2), s fixed or learned (one scalar)."""

    name = "gaussian"

    def __init__(self, scale: float | None = 0.1):
        super().__init__()
        self.learned = scale is None
        init = math.log(0.1 if scale is None else scale)
        self.log_scale = nn.Parameter(torch.tensor(init), requires_grad=self.learned)

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        s = self.log_scale.exp()
        sq = ((x - torch.sigmoid(h)) / s).pow(2)
        per_pixel = -0.5 * sq - self.log_scale - 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(1)


def make_likelihood(name: str, scale: float | None) -> nn.Module:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(scale)
    raise ValueError(f"unknown likelihood {name!r}; choose 'bernoulli' or 'gaussian'")
