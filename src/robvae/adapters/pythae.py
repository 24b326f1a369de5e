"""pythae models (https://pythae.readthedocs.io) as robvae protocol models.

A pythae VAE-family model has ``model.encoder(x)`` returning a ``ModelOutput`` with ``embedding``
(the mean mu) and ``log_covariance`` (the log of the diagonal variance, so sigma =
exp(log_covariance / 2)), and ``model.decoder(z)`` returning ``reconstruction`` (the decoder mean).
The likelihood follows the model's ``reconstruction_loss``: ``"bce"`` is Bernoulli (pythae's binary
cross-entropy), ``"mse"`` a unit-variance Gaussian (pythae's loss 0.5 ||x - g(z)||^2 plus the
normalising constant).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError
from ..models.likelihoods import widened

#: pythae models whose q(z|x) is N(embedding, diag exp(log_covariance)), whose reconstruction is
#: decoder(z) and whose likelihood is the 'bce' / 'mse' robvae reads: the ones wrapped (users'
#: subclasses of them too). VAMP's prior is its VampPrior, not N(0, I): robvae reads its
#: posterior and likelihood but reports no ELBO for it (``prior_is_standard_normal`` False).
SUPPORTED = ("VAE", "BetaVAE", "DisentangledBetaVAE", "FactorVAE", "BetaTCVAE", "IWAE", "MIWAE", "PIWAE", "CIWAE",
             "INFOVAE_MMD", "VAMP")

#: pythae models robvae would misread, and why (refused with that reason)
_MISREAD = {
    "HVAE": "its posterior std is softplus(log_covariance) and Hamiltonian steps move z after the encoder",
    "RHVAE": "Riemannian Hamiltonian steps move z after the encoder (q(z|x) is not the encoder's Gaussian)",
    "VAE_IAF": "an inverse autoregressive flow transforms z after the encoder (q(z|x) is not Gaussian)",
    "VAE_LinNF": "linear normalising flows transform z after the encoder (q(z|x) is not Gaussian)",
    "PoincareVAE": "its latent space is hyperbolic (a wrapped normal on the Poincare ball, not a Euclidean Gaussian)",
    "Adversarial_AE": "its posterior may be deterministic (model_config.deterministic_posterior)",
    "VAEGAN": "it is trained with a discriminator-feature reconstruction loss, not 'bce' or 'mse'",
    "MSSSIM_VAE": "it is trained with an MS-SSIM reconstruction loss, not 'bce' or 'mse'",
}


def _pythae_base(model: nn.Module) -> str | None:
    """The name of the first pythae model class in ``type(model)``'s MRO (None if there is none)."""
    for c in type(model).__mro__:
        if c.__module__.startswith("pythae.models.") and c.__name__ in (*SUPPORTED, *_MISREAD):
            return c.__name__
    return None


class PythaeAdapter(nn.Module):
    """A pythae VAE-family model seen through robvae's protocol.

    encode(x) -> (mu, sigma) [B, d]; decode(z) -> g(z) [N, *input_shape]; log_likelihood(x, z) -> [B].
    The wrapped model is kept (``.model``) and put in eval mode; its weights are not copied.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...] | None = None):
        super().__init__()
        config = getattr(model, "model_config", None)
        if not (callable(getattr(model, "encoder", None)) and callable(getattr(model, "decoder", None))):
            raise InputError(f"{type(model).__name__} is not a pythae model (no encoder / decoder networks)")
        base = _pythae_base(model)
        if base in _MISREAD:
            raise InputError(f"{type(model).__name__}: robvae cannot wrap a pythae {base}: {_MISREAD[base]}; "
                             f"supported: {', '.join(SUPPORTED)}")
        #: False for VAMP (a VampPrior): the benchmark's ELBO, which uses a N(0, I) prior, is not reported
        self.prior_is_standard_normal = base != "VAMP"
        shape = input_shape if input_shape is not None else getattr(config, "input_dim", None)
        if shape is None:
            raise InputError(f"{type(model).__name__}: model_config.input_dim is not set; pass input_shape=(C, H, W)")
        self.model = model.eval()
        self.input_shape = tuple(int(s) for s in shape)
        self.reconstruction_loss = str(getattr(config, "reconstruction_loss", "mse"))
        if self.reconstruction_loss not in ("bce", "mse"):
            raise InputError(f"{type(model).__name__}: unsupported reconstruction_loss "
                             f"{self.reconstruction_loss!r} (robvae knows 'bce' and 'mse')")
        p = next(model.parameters(), None)
        probe = torch.zeros(1, *self.input_shape, dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else None)
        with torch.no_grad():
            out = model.encoder(probe)
        keys = set(out.keys()) if hasattr(out, "keys") else set()
        if not {"embedding", "log_covariance"} <= keys:
            raise InputError(
                f"{type(model).__name__} is not a Gaussian VAE-family pythae model: its encoder returns "
                f"{sorted(keys) or type(out).__name__}, robvae needs 'embedding' and 'log_covariance'"
            )
        if base is None and any(c.__module__.startswith("pythae.") for c in type(model).__mro__):
            raise InputError(f"{type(model).__name__}: a pythae model robvae has not checked (its q(z|x) may not "
                             f"be the encoder's Gaussian); supported: {', '.join(SUPPORTED)}")
        self.latent_dim = int(out["embedding"].reshape(1, -1).shape[1])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) of q(z|x): the encoder's ``embedding`` and exp(``log_covariance`` / 2), [B, d]."""
        out = self.model.encoder(x)
        mu = out["embedding"].reshape(x.shape[0], -1)
        sigma = torch.exp(0.5 * out["log_covariance"].reshape(x.shape[0], -1))
        return mu, sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder mean ``reconstruction``: z [N, d] -> [N, *input_shape]."""
        return self.model.decoder(z)["reconstruction"].reshape(z.shape[0], *self.input_shape)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """g(mu(x))."""
        return self.decode(self.encode(x)[0])

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels -> [B], the likelihood the pythae model was trained with;
        float32 for a float16 / bfloat16 model (a sum of hundreds of nats in 8-11 bits)."""
        g = widened(self.decode(z).flatten(1))
        xf = x.flatten(1).to(g.dtype)
        if self.reconstruction_loss == "bce":
            # as torch's binary_cross_entropy (which pythae uses): log terms clamped at -100
            return (xf * g.log().clamp_min(-100) + (1 - xf) * (1 - g).log().clamp_min(-100)).sum(1)
        return -0.5 * (xf - g).pow(2).sum(1) - 0.5 * xf.shape[1] * math.log(2 * math.pi)


def from_pythae(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> PythaeAdapter:
    """Wrap a pythae VAE-family model (:data:`SUPPORTED`: VAE, BetaVAE, BetaTCVAE, IWAE, VAMP, ...)
    into the protocol.

    ``input_shape`` defaults to the model's ``model_config.input_dim``. Raises
    :class:`~robvae.errors.InputError` for models without a Gaussian encoder (AE, RAE, WAE, VQ-VAE,
    SVAE, ...) and for those robvae would misread (HVAE, RHVAE, VAE_IAF, VAE_LinNF, PoincareVAE,
    Adversarial_AE, VAEGAN, MSSSIM_VAE: the reason is in the message).
    """
    return PythaeAdapter(model, input_shape)


__all__ = ["PythaeAdapter", "from_pythae"]
