"""Encoder and decoder networks: an MLP for any image size and a convolutional pair.

Encoders map ``[B, C, H, W] -> [B, 2 d]`` (mean and pre-softplus scale); decoders map
``[N, d] -> [N, C, H, W]`` logits (or unconstrained means).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _activation(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}
    if name not in acts:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(acts)}")
    return acts[name]()


def interleave(layers: Sequence[nn.Module], activation: Callable[[], nn.Module]) -> list[nn.Module]:
    """``layers`` with a new ``activation()`` between each two consecutive ones (none after the last)."""
    return [m for i, layer in enumerate(layers) for m in ([activation(), layer] if i else [layer])]


def mlp(sizes: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with the activation between them."""
    linears = [nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    return nn.Sequential(*interleave(linears, lambda: _activation(activation)))


class MLPEncoder(nn.Module):
    """Flatten, then an MLP ``D -> hidden... -> 2 d``."""

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.net = mlp([math.prod(input_shape), *hidden, 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """An MLP ``d -> reversed(hidden)... -> D``, reshaped to the image."""

    #: Builds the network from the sizes and the last constructor argument.
    _make_net: Callable[..., nn.Module] = staticmethod(mlp)

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.net = self._make_net([latent_dim, *reversed(tuple(hidden)), math.prod(input_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.input_shape)


def _conv_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W), checked: H and W divisible by 4."""
    if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
        raise ValueError(
            f"the conv architecture needs images [C, H, W] with H and W divisible by 4, got {tuple(input_shape)}"
        )
    return tuple(input_shape)  # type: ignore[return-value]


class ConvEncoder(nn.Module):
    """Two stride-2 4x4 convolutions (C -> c1 -> c2, H -> H/4), then an MLP to ``2 d``."""

    def __init__(self, input_shape: Sequence[int], latent_dim: int, channels: Sequence[int], hidden: int, activation: str):
        super().__init__()
        c, h, w = _conv_shape(input_shape)
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1), _activation(activation),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), _activation(activation),
        )
        self.head = mlp([c2 * (h // 4) * (w // 4), hidden, 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """An MLP ``d -> hidden -> c2 * H/4 * W/4``, then two stride-2 transposed convolutions."""

    def __init__(self, input_shape: Sequence[int], latent_dim: int, channels: Sequence[int], hidden: int, activation: str):
        super().__init__()
        c, h, w = _conv_shape(input_shape)
        c1, c2 = channels
        self.grid = (c2, h // 4, w // 4)
        self.head = nn.Sequential(mlp([latent_dim, hidden, math.prod(self.grid)], activation), _activation(activation))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), _activation(activation),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.head(z).view(z.shape[0], *self.grid))
