"""The model protocol every estimator and attack in robvae relies on.

Any ``torch.nn.Module`` with

- ``encode(x) -> (mu, sigma)``: ``x`` of shape ``[B, *input_shape]``; ``mu`` and ``sigma`` of
  shape ``[B, d]`` with ``sigma > 0`` (the diagonal-Gaussian encoder q(z|x) = N(mu, diag(sigma^2)));
- ``decode(z) -> mean``: ``z`` of shape ``[N, d]``; the deterministic decoder mean g(z) of shape
  ``[N, *input_shape]``,

is a robvae model. Optionally it may expose ``input_shape`` (a tuple) so inputs can be checked,
and ``log_likelihood(x, z) -> [B]`` (log p(x|z)) for the likelihood-degradation metric. Bring
your own VAE: nothing else is required.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VAEProtocol(Protocol):
    """encode(x) -> (mu [B, d], sigma [B, d]); decode(z [N, d]) -> mean [N, *input_shape]."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
