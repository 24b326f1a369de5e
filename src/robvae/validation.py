"""Checks on user-supplied inputs (images, perturbations, radii), shared by every estimator and attack."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import InputError


def check_images(
    x: torch.Tensor,
    shape: Sequence[int] | None = None,
    *,
    name: str = "x",
    check_range: bool = True,
) -> torch.Tensor:
    """Validate a batch of images ``x`` of shape ``[B, *shape]``.

    Raises :class:`InputError` naming the problem when ``x`` is not a floating tensor, does not
    have the model's image shape, holds NaN or inf, or (with ``check_range``) leaves [0, 1].
    Returns ``x`` unchanged.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InputError(
                f"{name} has shape {tuple(x.shape)}, expected a batch of images [B, {', '.join(map(str, shape))}]"
            )
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name} holds NaN or inf values (in {bad} of {x.shape[0]} inputs)")
    if check_range:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{name} has values outside [0, 1] (min {lo:.4g}, max {hi:.4g})")
    return x


def model_input_shape(model: torch.nn.Module) -> tuple[int, ...] | None:
    """The image shape a model expects, if it declares one (``model.input_shape``)."""
    shape = getattr(model, "input_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


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
