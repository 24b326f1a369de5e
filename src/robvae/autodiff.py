"""Jacobian-vector products that work for every model: forward mode where it is implemented,
else the transpose of a reverse-mode product (a second reverse pass)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp, vjp


def jv_function(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                vjp_fn: Callable | None = None, out: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> J v for J = df/dx at ``x``: forward mode (``torch.func.jvp``), or, for layers without
    a working forward-mode derivative (fused attention on the CPU; a group norm fed a
    non-contiguous attention output, as in diffusers' AutoencoderKL), the transpose of the vjp:
    J v = d/du <J^T u, v>, one more reverse pass. ``vjp_fn`` / ``out``: f's pullback at ``x`` and
    f(x) when the caller already has them. Works under ``vmap``."""
    try:
        jvp(f, (x,), (torch.zeros_like(x),))
        return lambda v: jvp(f, (x,), (v,))[1]
    except (NotImplementedError, RuntimeError):
        if vjp_fn is None or out is None:
            out, vjp_fn = vjp(f, x)
        return reverse_jv(vjp_fn, out)


def reverse_jv(vjp_fn: Callable, out: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> J v from reverse mode only, given f's pullback ``vjp_fn`` at x and ``out`` = f(x):
    u -> J^T u is linear, so its vjp at any u (here 0), applied to v, is J v. It reads the same
    Jacobian as every gradient (what a model that masks only reverse mode shows)."""
    _, vjp2 = vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(out))
    return lambda v: vjp2(v)[0]
