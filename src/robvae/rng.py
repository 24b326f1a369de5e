"""Random numbers that follow a tensor's device and dtype, and seeds for common random numbers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import InputError


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` if it is None or a torch.Generator; an InputError naming what it is otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                         f"got {type(generator).__name__} {generator!r}")
    return generator


def randn(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws of ``shape`` with ``like``'s device and dtype.

    A generator on another device (e.g. a CPU generator for CUDA inputs) draws on its own
    device and the draws are moved, so a seed gives the same numbers on every device.
    """
    if check_generator(generator) is None or generator.device == like.device:
        return torch.randn(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def rand(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` with ``like``'s device and dtype (see :func:`randn`)."""
    if check_generator(generator) is None or generator.device == like.device:
        return torch.rand(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)
    return torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def child_seed(generator: torch.Generator | None) -> int:
    """A seed drawn from ``generator`` (or the global RNG): for common random numbers."""
    check_generator(generator)
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
