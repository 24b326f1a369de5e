"""Small helpers shared by the estimators and attacks (not public API).

Everything here follows the device and dtype of its input and takes any model following the
robvae protocol (``encode(x) -> (mu, sigma)``, ``decode(z) -> mean``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from ..errors import InputError
from ..validation import check_images, model_input_shape

#: Default number of scalar entries a chunk of decoder outputs may hold (about 32 MiB in float64).
CHUNK_ELEMENTS = 1 << 22


def randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws of ``shape`` with ``like``'s device and dtype.

    A generator on another device (e.g. a CPU generator for CUDA inputs) draws on its own
    device and the draws are moved, so a seed gives the same numbers on every device.
    """
    if generator is None or generator.device == like.device:
        return torch.randn(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def rand(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` with ``like``'s device and dtype (see :func:`randn`)."""
    if generator is None or generator.device == like.device:
        return torch.rand(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)
    return torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def child_seed(generator: torch.Generator | None) -> int:
    """A seed drawn from ``generator`` (or the global RNG): for common random numbers."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))


def flat_decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """g(z) flattened: z [N, d] -> [N, D]."""
    return model.decode(z).flatten(1)


def check_x(model: torch.nn.Module, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate a batch of images against the model's declared input shape (InputError)."""
    return check_images(x, model_input_shape(model), name=name)


def check_delta(x: torch.Tensor, delta: torch.Tensor | None, *, tol: float = 1e-6) -> torch.Tensor | None:
    """Validate a perturbation: same shape as ``x``, finite, and ``x + delta`` in [0, 1].

    A slack of ``tol`` absorbs the rounding of ``(x + delta) - x``; returns ``delta`` adjusted so
    that ``x + delta`` lies exactly in the box (a change of at most ``tol`` per pixel).
    """
    if delta is None:
        return None
    check_images(delta, tuple(x.shape[1:]), name="delta", check_range=False)
    if delta.shape[0] != x.shape[0]:
        raise InputError(f"delta has batch size {delta.shape[0]}, x has {x.shape[0]}")
    xd = x + delta.to(x)
    lo, hi = float(xd.min()), float(xd.max())
    if lo < -tol or hi > 1.0 + tol:
        raise InputError(f"x + delta has values outside [0, 1] (min {lo:.4g}, max {hi:.4g})")
    return xd.clamp(0.0, 1.0) - x


def as_radius(r: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A radius r (a number or a [B] tensor) as a [B] tensor of ``like``'s device/dtype; r > 0."""
    rt = torch.as_tensor(r, device=like.device, dtype=like.dtype)
    if rt.dim() == 0:
        rt = rt.expand(batch)
    if rt.shape != (batch,):
        raise InputError(f"r must be a number or a tensor of shape [{batch}], got shape {tuple(rt.shape)}")
    if not torch.isfinite(rt).all() or (rt <= 0).any():
        raise InputError("r must be finite and > 0")
    return rt.clone()


def draw_chunks(n_samples: int, chunk_size: int) -> Iterator[int]:
    """Sizes of the successive chunks of ``n_samples`` draws (each <= ``chunk_size``)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    for start in range(0, n_samples, chunk_size):
        yield min(chunk_size, n_samples - start)


def default_chunk(n_samples: int, batch: int, numel: int) -> int:
    """Draws per chunk so that ``batch * chunk * numel`` stays under :data:`CHUNK_ELEMENTS`."""
    return max(1, min(n_samples, CHUNK_ELEMENTS // max(1, batch * numel)))


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` elements."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def numel_of(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)
