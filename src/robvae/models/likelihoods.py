"""Decoder likelihoods p(x|z): Bernoulli (logits) for grey images, Gaussian for colour, continuous Bernoulli.

Both take the decoder network's raw output ``h`` of shape ``[N, *input_shape]``; the mean
reconstruction is ``sigmoid(h)`` in both cases, and ``log_prob`` sums over pixels -> ``[N]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def widened(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 / bfloat16, else as it is: the dtype a log-likelihood is
    summed in (hundreds of nats in 8-11 bits step by 0.03-0.25 nats, and the likelihood degradation,
    a relative difference of two such sums, came out 0 or 6-45x off)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _SigmoidMean(nn.Module):
    """The mean reconstruction g = sigmoid(h) that every likelihood here shares."""

    def mean(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h)


class BernoulliLikelihood(_SigmoidMean):
    """log p(x|z) = sum_j x_j log g_j + (1 - x_j) log(1 - g_j), g = sigmoid(h); x in [0, 1]."""

    name = "bernoulli"

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(h, x, reduction="none").flatten(1).sum(1)


class GaussianLikelihood(_SigmoidMean):
    """log p(x|z) = sum_j log N(x_j; sigmoid(h_j), s^2), s fixed or learned (one scalar)."""

    name = "gaussian"

    def __init__(self, scale: float | None = 0.1):
        super().__init__()
        self.learned = scale is None
        init = math.log(0.1 if scale is None else scale)
        self.log_scale = nn.Parameter(torch.tensor(init), requires_grad=self.learned)

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        s = self.log_scale.exp()
        sq = ((x - torch.sigmoid(h)) / s).pow(2)
        per_pixel = -0.5 * sq - self.log_scale - 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(1)


CB_TAYLOR = 1e-2  # |h| below this: log C from its Taylor series (error O(h^6) < 1e-12)


def cb_log_norm(h: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli with lambda = sigmoid(h), elementwise.

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda); with lambda = sigmoid(h), 1 - 2 lambda =
    -tanh(h / 2) and artanh(1 - 2 lambda) = -h / 2, so C = h / tanh(h / 2) (= 2 at h = 0). Near 0 the
    ratio is 0 / 0, so log C = log 2 + h^2 / 12 - 7 h^4 / 1440 + O(h^6) there.
    """
    small = h.abs() < CB_TAYLOR
    safe = torch.where(small, torch.ones_like(h), h)  # no 0/0 in either branch (nor in its gradient)
    exact = torch.log(safe / torch.tanh(safe / 2))
    h2 = h.square()
    taylor = math.log(2.0) + h2 / 12 - 7 * h2.square() / 1440
    return torch.where(small, taylor, exact)


class ContinuousBernoulliLikelihood(_SigmoidMean):
    """log p(x|z) = sum_j [x_j log lambda_j + (1 - x_j) log(1 - lambda_j) + log C(lambda_j)], lambda = sigmoid(h)
    (Loaiza-Ganem and Cunningham 2019), a proper density on [0, 1]. The reconstruction g = sigmoid(h)
    is lambda, as for the other likelihoods (the continuous Bernoulli's expectation is a monotone
    function of lambda, not lambda itself)."""

    name = "cbernoulli"

    def log_prob(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        per_pixel = -F.binary_cross_entropy_with_logits(h, x, reduction="none") + cb_log_norm(h)
        return per_pixel.flatten(1).sum(1)


def make_likelihood(name: str, scale: float | None) -> nn.Module:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(scale)
    if name == "cbernoulli":
        return ContinuousBernoulliLikelihood()
    raise ValueError(f"unknown likelihood {name!r}; choose 'bernoulli', 'gaussian' or 'cbernoulli'")
