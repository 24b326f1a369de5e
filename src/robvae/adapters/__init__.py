"""Adapters: wrap VAEs trained elsewhere into robvae's model protocol (:mod:`robvae.models.protocol`).

- :func:`from_pythae`: any pythae VAE-family model (``pip install "robvae[pythae]"``);
- :func:`from_diffusers`: a diffusers ``AutoencoderKL`` (``pip install "robvae[diffusers]"``).

Neither library is imported by robvae itself: the adapters read the wrapped model's outputs, so
importing this package costs nothing when the extras are missing.
"""

from .diffusers import DiffusersAdapter, from_diffusers
from .pythae import PythaeAdapter, from_pythae

__all__ = ["PythaeAdapter", "from_pythae", "DiffusersAdapter", "from_diffusers"]
