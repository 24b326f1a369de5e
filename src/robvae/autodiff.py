"""Jacobian-vector products that work for every model: forward mode where it is implemented,
else the transpose of a reverse-mode product (a second reverse pass)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.func import jvp, vjp

from .errors import InputError

#: torch's messages for the two ways a model's own code defeats robvae's derivatives
_NO_FUNCTORCH = "autograd.Function with functorch transforms"
_IN_PLACE_LEAF = "leaf Variable that requires grad is being used in an in-place operation"


@contextlib.contextmanager
def model_derivatives(what: str) -> Iterator[None]:
    """Turn torch's errors for model code robvae cannot differentiate into one-line InputErrors
    naming ``what`` (e.g. "model.encode") and the fix: a ``torch.autograd.Function`` without
    torch.func support, and an in-place edit of the input being differentiated."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e)
        if _NO_FUNCTORCH in msg:
            raise InputError(f"{what} uses a torch.autograd.Function without torch.func support (it needs a "
                             "setup_context staticmethod; see torch.func's 'Extending torch.func with "
                             "autograd.Function'): robvae's Jacobians and attacks differentiate the model with "
                             "torch.func") from None
        if _IN_PLACE_LEAF in msg:
            raise InputError(f"{what} modifies its input in place (e.g. x.clamp_()): robvae differentiates with "
                             "respect to that input; use the out-of-place form (x = x.clamp(...))") from None
        raise


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
