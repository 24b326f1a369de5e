"""diffusers ``AutoencoderKL`` (the latent-diffusion autoencoder) as a robvae protocol model.

``vae.encode(y).latent_dist`` is a diagonal Gaussian over spatial latents [B, C, h, w]; robvae sees
them flattened to d = C * h * w (mu = ``latent_dist.mean``, sigma = ``latent_dist.std``). diffusers
works on pixels in [-1, 1]: the adapter feeds ``2 x - 1`` to the encoder and maps the decoder's
``sample`` back with ``(s + 1) / 2`` clamped to [0, 1] (as diffusers' own image post-processing),
so robvae's inputs, reconstructions, radii r and perturbation budgets are all on the [0, 1] scale.
The latent ``scaling_factor`` used by diffusion pipelines is not applied: the certificates do not
depend on a rescaling of z (sigma and the Jacobian scale together).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from ..models.likelihoods import widened


def _config_shape(vae: nn.Module) -> tuple[int, ...] | None:
    cfg = getattr(vae, "config", None)
    size = getattr(cfg, "sample_size", None)
    chans = getattr(cfg, "in_channels", None)
    if size is None or chans is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return (int(chans), *hw)


#: diffusers autoencoders whose encode gives no Gaussian latent distribution
_NOT_GAUSSIAN = ("AutoencoderTiny", "VQModel")


class DiffusersAdapter(nn.Module):
    """A diffusers ``AutoencoderKL`` seen through robvae's protocol (pixels in [0, 1], flat latents).

    encode(x) -> (mu, sigma) [B, C * h * w]; decode(z) -> [N, *input_shape] in [0, 1];
    log_likelihood(x, z) -> [B] (a unit-variance Gaussian on the [-1, 1] pixel scale, the
    reconstruction term AutoencoderKL is trained with up to constants; a convention, since the
    autoencoder defines no likelihood of its own). ``latent_shape`` is (C, h, w).
    """

    def __init__(self, vae: nn.Module, input_shape: tuple[int, ...] | None = None):
        super().__init__()
        name = type(vae).__name__
        if not (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
            raise InputError(f"{name} is not a diffusers autoencoder (no encode / decode)")
        if name in _NOT_GAUSSIAN:  # said before anything else (its config may not give the image shape either)
            raise InputError(f"{name} is not supported: its encode() gives no Gaussian latent_dist "
                             f"(robvae needs AutoencoderKL's latent_dist.mean / .std)")
        shape = tuple(int(s) for s in input_shape) if input_shape is not None else _config_shape(vae)
        if shape is None or len(shape) != 3:
            raise InputError(f"{name}: cannot tell the image shape from its config; pass input_shape=(C, H, W)")
        cfg = getattr(vae, "config", None)
        blocks = getattr(cfg, "block_out_channels", None)
        if blocks is not None:
            factor = 2 ** (len(blocks) - 1)
            if shape[1] % factor or shape[2] % factor:
                raise InputError(f"{name}: image size {shape[1]}x{shape[2]} is not divisible by the "
                                 f"autoencoder's downsampling factor {factor}")
        chans = getattr(cfg, "in_channels", None)
        if chans is not None and int(chans) != shape[0]:
            raise InputError(f"{name}: input_shape has {shape[0]} channels, the autoencoder takes {chans}")
        if callable(getattr(vae, "set_attn_processor", None)):
            # diffusers' plain attention (same numbers): PyTorch's fused attention has no forward-mode
            # derivative on the CPU, which the matrix-free Jacobian estimators (jvp) need
            from diffusers.models.attention_processor import AttnProcessor

            vae.set_attn_processor(AttnProcessor())
        self.vae = vae.eval()
        self.input_shape = shape
        p = next(vae.parameters(), None)
        probe = torch.zeros(1, *shape, dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else None)
        try:
            with torch.no_grad():
                out = vae.encode(probe)
                dist = getattr(out, "latent_dist", None)
                mean, std = getattr(dist, "mean", None), getattr(dist, "std", None)
        except Exception as e:  # an autoencoder variant that needs more than an image batch
            raise InputError(f"{name}: unsupported autoencoder: encode(image batch) failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
            raise InputError(f"{name} is not supported: its encode() gives no Gaussian latent_dist "
                             f"(robvae needs AutoencoderKL's latent_dist.mean / .std)")
        if bool(getattr(dist, "deterministic", False)):
            raise InputError(f"{name}: the latent distribution is deterministic (std = 0); robvae needs sigma > 0")
        self.latent_shape = tuple(int(s) for s in mean.shape[1:])
        self.latent_dim = int(math.prod(self.latent_shape))
        try:  # decode too: a variant whose decode needs more than a latent batch fails here, in one line
            with torch.no_grad():
                g = self.decode(mean.flatten(1))
        except Exception as e:
            raise InputError(f"{name}: unsupported autoencoder: decode(latent batch) failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        if tuple(g.shape[1:]) != shape:
            raise InputError(f"{name}: decode gives images of shape {tuple(g.shape[1:])}, not {shape}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of the latent distribution of 2 x - 1, flattened: [B, C * h * w]."""
        dist = self.vae.encode(2.0 * x - 1.0).latent_dist
        return dist.mean.flatten(1), dist.std.flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's sample mapped to [0, 1]: z [N, d] -> [N, *input_shape]."""
        s = self.vae.decode(z.reshape(z.shape[0], *self.latent_shape)).sample
        return ((s + 1.0) / 2.0).clamp(0.0, 1.0)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """g(mu(x)) in [0, 1]."""
        return self.decode(self.encode(x)[0])

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log N(2 x - 1; 2 g(z) - 1, I) summed over pixels -> [B]; float32 for a float16 / bfloat16
        autoencoder (a sum of hundreds of nats in 8-11 bits)."""
        g = widened(self.decode(z).flatten(1))
        diff = 2.0 * (x.flatten(1).to(g.dtype) - g)
        return -0.5 * diff.pow(2).sum(1) - 0.5 * diff.shape[1] * math.log(2 * math.pi)


def from_diffusers(vae: nn.Module, input_shape: tuple[int, ...] | None = None) -> DiffusersAdapter:
    """Wrap a diffusers ``AutoencoderKL`` into the protocol.

    ``input_shape`` (C, H, W) defaults to the config's ``in_channels`` and ``sample_size``. The
    autoencoder's attention layers are switched to diffusers' plain ``AttnProcessor`` (the same
    numbers; the fused kernel has no forward-mode derivative on the CPU). Raises
    :class:`~robvae.errors.InputError` for autoencoders robvae cannot use (no Gaussian latent
    distribution, as ``AutoencoderTiny`` or ``VQModel``; an image size the downsampling does not divide).
    """
    return DiffusersAdapter(vae, input_shape)


__all__ = ["DiffusersAdapter", "from_diffusers"]
