"""Models: the protocol, the VAE and its networks and likelihoods, and the exact linear VAE."""

from .linear import LinearVAE
from .protocol import VAEProtocol
from .vae import VAE, ModelConfig

__all__ = ["VAE", "ModelConfig", "VAEProtocol", "LinearVAE"]
