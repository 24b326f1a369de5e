"""The VAE: diagonal-Gaussian encoder with a variance floor tau, deterministic decoder mean.

q(z|x) = N(mu(x), diag(sigma(x)^2)),  sigma(x) = softplus(s(x)) + tau   (docs/THEORY.md section 1)
g(z) = sigmoid(decoder(z)),  p(x|z) Bernoulli(g) or N(g, s^2 I).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigMixin, short_repr
from .likelihoods import make_likelihood, widened
from .lipschitz import LipschitzDecoder, LipschitzEncoder
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

#: the largest latent dimension and layer width (as --hidden on the command line): a larger one
#: asked torch for gigabytes and died with a traceback
MAX_WIDTH = 1 << 20


@dataclass
class ModelConfig(ConfigMixin):
    """Everything needed to rebuild a VAE's architecture.

    input_shape: image shape [C, H, W].  arch: "mlp" (any size) or "conv" (H, W divisible by 4).
    latent_dim: d.  hidden: MLP hidden widths (encoder order; the decoder mirrors them).
    conv_channels / conv_hidden: channels of the two conv layers and the width of the dense layer.
    activation: "relu" (default), "elu", "tanh" or "softplus".
    tau: the encoder standard-deviation floor (>= 0).  likelihood: "bernoulli" or "gaussian".
    gaussian_scale: fixed Gaussian likelihood scale, or None to learn it.
    arch "lipschitz-mlp" (docs/THEORY.md section 9, :mod:`robvae.models.lipschitz`): lipschitz: L, the construction
    constant of the encoder mean, std and decoder networks (hidden widths even); sigma_cap: the std
    is (cap / sqrt d) sigmoid(.), so ||sigma|| <= cap; or sigma_fixed: a constant std (which
    overrides sigma_cap). likelihood "cbernoulli" (continuous Bernoulli) is available for every arch.
    """

    input_shape: tuple[int, ...] = (1, 8, 8)
    arch: str = "mlp"
    latent_dim: int = 10
    hidden: tuple[int, ...] = (256, 128)
    conv_channels: tuple[int, int] = (32, 64)
    conv_hidden: int = 256
    activation: str = "relu"
    tau: float = 0.0
    likelihood: str = "bernoulli"
    gaussian_scale: float | None = 0.1
    lipschitz: float = 1.0
    sigma_cap: float | None = 0.1
    sigma_fixed: float | None = None

    _what: ClassVar[str] = "model config"

    def __post_init__(self) -> None:
        for name in ("input_shape", "hidden", "conv_channels"):  # integers only: int(8.7) was 8, silently
            vals = tuple(getattr(self, name))
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in vals):
                raise ValueError(f"{name} must be integers, got {short_repr(list(vals))}")
            setattr(self, name, tuple(int(v) for v in vals))
        for name in ("latent_dim", "conv_hidden"):  # True trained a 1-d model that load() then refused
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            setattr(self, name, int(v))
        if self.arch not in ("mlp", "conv", "lipschitz-mlp"):
            raise ValueError(f"unknown arch {self.arch!r}; choose 'mlp', 'conv' or 'lipschitz-mlp'")
        if self.arch == "lipschitz-mlp":
            if not (self.lipschitz > 0 and math.isfinite(self.lipschitz)):
                raise ValueError(f"lipschitz must be a finite number > 0, got {self.lipschitz}")
            if self.sigma_fixed is None and not (self.sigma_cap is not None and 0 < self.sigma_cap < math.inf):
                raise ValueError(f"arch 'lipschitz-mlp' needs a finite sigma_cap > 0 or sigma_fixed > 0, got "
                                 f"{self.sigma_cap}")
            if self.sigma_fixed is not None and not 0 < self.sigma_fixed < math.inf:
                raise ValueError(f"sigma_fixed must be a finite number > 0, got {self.sigma_fixed}")
            if any(h % 2 for h in self.hidden):
                raise ValueError(f"arch 'lipschitz-mlp' needs even hidden widths (GroupSort), got {short_repr(self.hidden)}")
            if self.tau != 0.0:
                raise ValueError("arch 'lipschitz-mlp' has no tau floor; use sigma_fixed or sigma_cap")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.latent_dim > MAX_WIDTH:  # 10**8 died in torch's allocator with a traceback (audit h80)
            raise ValueError(f"latent_dim must be at most {MAX_WIDTH} (1 << 20), got {self.latent_dim}")
        for name in ("hidden", "conv_channels"):  # widths < 1 made a trial fail inside torch (audit h60)
            if any(w < 1 for w in getattr(self, name)):
                raise ValueError(f"{name} widths must be >= 1, got {short_repr(list(getattr(self, name)))}")
            if any(w > MAX_WIDTH for w in getattr(self, name)):
                raise ValueError(f"{name} widths must be at most {MAX_WIDTH} (1 << 20), got "
                                 f"{short_repr(list(getattr(self, name)))}")
        if int(self.conv_hidden) < 1:
            raise ValueError(f"conv_hidden must be >= 1, got {self.conv_hidden}")
        if self.conv_hidden > MAX_WIDTH:
            raise ValueError(f"conv_hidden must be at most {MAX_WIDTH} (1 << 20), got {self.conv_hidden}")
        if not (self.tau >= 0.0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau}")
        if self.gaussian_scale is not None and not (self.gaussian_scale > 0 and math.isfinite(self.gaussian_scale)):
            raise ValueError(f"gaussian_scale must be a finite number > 0 (or null: learned), got {self.gaussian_scale}")
        if self.likelihood not in ("bernoulli", "gaussian", "cbernoulli"):
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose 'bernoulli', 'gaussian' or 'cbernoulli'")



class VAE(nn.Module):
    """A VAE following the robvae model protocol (see :mod:`robvae.models.protocol`)."""

    def __init__(self, config: ModelConfig | None = None, **overrides: Any):
        super().__init__()
        if config is None:
            config = ModelConfig(**overrides)
        elif overrides:
            config = ModelConfig(**{**config.to_dict(), **overrides})
        self.config = config
        self.input_shape = config.input_shape
        self.latent_dim = config.latent_dim
        self.tau = float(config.tau)
        c = config
        if c.arch == "lipschitz-mlp":
            self.encoder = LipschitzEncoder(c.input_shape, c.latent_dim, c.hidden, c.lipschitz,
                                            None if c.sigma_fixed is not None else c.sigma_cap, c.sigma_fixed)
            self.decoder = LipschitzDecoder(c.input_shape, c.latent_dim, c.hidden, c.lipschitz)
        elif c.arch == "mlp":
            self.encoder: nn.Module = MLPEncoder(c.input_shape, c.latent_dim, c.hidden, c.activation)
            self.decoder: nn.Module = MLPDecoder(c.input_shape, c.latent_dim, c.hidden, c.activation)
        else:
            self.encoder = ConvEncoder(c.input_shape, c.latent_dim, c.conv_channels, c.conv_hidden, c.activation)
            self.decoder = ConvDecoder(c.input_shape, c.latent_dim, c.conv_channels, c.conv_hidden, c.activation)
        self.likelihood = make_likelihood(c.likelihood, c.gaussian_scale)

    # --- the protocol ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, *input_shape] -> (mu [B, d], sigma [B, d]), sigma = softplus(s) + tau >= tau."""
        if isinstance(self.encoder, LipschitzEncoder):
            return self.encoder(x)  # (mu, sigma), sigma = (cap / sqrt d) sigmoid(.) or fixed
        mu, s = self.encoder(x).chunk(2, dim=-1)
        return mu, F.softplus(s) + self.tau

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, d] -> g(z) [N, *input_shape], the mean reconstruction in [0, 1]."""
        return self.likelihood.mean(self.decoder(z))

    # --- extras -------------------------------------------------------------------------
    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, d] -> the decoder's raw output (Bernoulli logits / pre-sigmoid Gaussian mean)."""
        return self.decoder(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels: x [B, *input_shape], z [B, d] -> [B]; float32 for a float16
        / bfloat16 model (:func:`robvae.models.likelihoods.widened`)."""
        h = widened(self.decoder(z))
        return self.likelihood.log_prob(x.to(h.dtype), h)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The maximum-likelihood reconstruction g(mu(x))."""
        return self.decode(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)
