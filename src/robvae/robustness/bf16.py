"""r-robustness counts with the decoder in bfloat16 and exactly the float32 answer (issue 11 item 4).

:func:`r_robustness_bf16` draws the same eta as :func:`robvae.robustness.r_robustness` (same
generator, same chunks, float32), decodes every draw in bfloat16, and carries alongside each
decoder row a rigorous bound ``e`` on how far its bfloat16 output can be from the exact one
(layer by layer, below). A draw whose bfloat16 distance ``t~`` satisfies ``|t~ - r| > e`` falls
on the same side of ``r`` as the float32 distance; only the others (typically a few per cent)
are decoded again in float32 and counted from that. So every count, p, bound and radius equals
the float32 one (the float32 decode of a subset of rows is assumed to give the same numbers as
of the whole batch; a tested property of the CPU kernels, not a guarantee of every BLAS).

The bound, per decoder row (u = 2^-8, bfloat16's unit roundoff; all norms Euclidean, operator
norms bounded from above):

- input: e0 = ||bf16(z) - z||, exactly;
- a linear map T (Linear, Conv2d, ConvTranspose2d) with weights W, computed as
  bf16(T~ h~ + b~) with float32 accumulation over K terms:
  e' = ||T~ - T|| ||h~|| + ||T|| e + ||b~ - b|| sqrt(P) + K 2^-23 || |T~| || ||h~|| + u/(1-u) ||y~||,
  where P is the number of output positions sharing one bias and the operator norms are the
  spectral norm (Linear) or, for convolutions, the sum of the kernel taps' spectral norms (a
  transposed convolution's output phases adding in squares);
- an activation with Lipschitz constant L (ReLU 1, LeakyReLU max(1,|a|), tanh 1, sigmoid 1/4, ELU
  max(1, alpha), GELU 1.13), computed in float32 and rounded: e' = L e + u/(1-u) ||h~'||;
- reshapes: e' = e; the final sigmoid (float32): e' = e / 4.

Then ``e * 1.01 + 2^-12 (||g~|| + 1)`` covers the float32 route's own rounding. The models this
works for are those :func:`robvae.models.fast_decode.decoder_plan` understands (robvae's own VAE,
and users' decoders of standard layers); any other model runs :func:`r_robustness` in float32.
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ALPHA
from ..models.fast_decode import (
    _ACTIVATIONS, _grid_for, _next_spatial, decoder_plan, default_chunk, draw_chunks, flat_decode,
)
from ..rng import randn
from ..validation import as_radius, check_delta, check_x, checked_encode
from .sampling import RobustnessEstimate, _check_mode, clopper_pearson, r_robustness

#: bfloat16's unit roundoff (8 significand bits, round to nearest).
U = 2.0 ** -8

_LIPSCHITZ = {
    torch.nn.ReLU: lambda m: 1.0, torch.nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    torch.nn.Tanh: lambda m: 1.0, torch.nn.Sigmoid: lambda m: 0.25, torch.nn.ELU: lambda m: max(1.0, m.alpha),
    torch.nn.GELU: lambda m: 1.13,
}

#: Per layer: (weights version, bf16 copy of the layer, operator-norm constants).
_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _conv_op_bound(w: torch.Tensor, layer: torch.nn.Module) -> float:
    """An upper bound on the operator norm of a convolution with kernel ``w`` (any input size,
    zero padding): a sum over kernel taps of shifted matrix products, each of norm at most the
    tap's spectral norm; for a transposed convolution the taps of one output phase (kernel index
    mod stride) write disjoint outputs from the other phases, so the phases add in squares."""
    taps = torch.linalg.matrix_norm(w.detach().double().permute(2, 3, 0, 1), ord=2) * (1 + 1e-6)  # [kh, kw]
    if isinstance(layer, torch.nn.ConvTranspose2d) and layer.groups == 1:
        sh, sw = layer.stride
        total = 0.0
        for a in range(sh):
            for b in range(sw):
                total += float(taps[a::sh, b::sw].sum()) ** 2
        return math.sqrt(total)
    return float(taps.sum()) * (layer.groups if layer.groups > 1 else 1)


def _spectral(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().double(), ord=2)) * (1 + 1e-6)


def _prepared(layer: torch.nn.Module):
    """(bf16 copy, ||T||, ||T~ - T||, || |T~| ||, ||b~ - b||, K) for a linear layer, cached."""
    w, b = layer.weight, layer.bias
    key = (w._version, w.data_ptr(), None if b is None else (b._version, b.data_ptr()))
    hit = _LAYERS.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        lb = _bf16_copy(layer)
        wb = lb.weight.detach().double()
        wd = w.detach().double()
        if isinstance(layer, torch.nn.Linear):
            op, dop, aop = _spectral(wd), _spectral(wb - wd), _spectral(wb.abs())
            fan_in = layer.in_features
        else:
            op, dop, aop = _conv_op_bound(wd, layer), _conv_op_bound(wb - wd, layer), _conv_op_bound(wb.abs(), layer)
            fan_in = (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        db = 0.0 if b is None else float((lb.bias.detach().double() - b.detach().double()).norm())
    val = (lb, op, dop, aop, db, fan_in)
    _LAYERS[layer] = (key, val)
    return val


def _bf16_copy(layer: torch.nn.Module) -> torch.nn.Module:
    lb = copy.deepcopy(layer).to(torch.bfloat16)
    lb.requires_grad_(False)
    return lb


def _rownorm(h: torch.Tensor) -> torch.Tensor:
    """Per-row Euclidean norms (accumulated in float32, rounded up by 1e-5 relative)."""
    dims = tuple(range(1, h.dim()))
    return torch.linalg.vector_norm(h, dim=dims, dtype=torch.float32).double() * (1 + 1e-5)


def decode_bf16(plan, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g~ [N, D] float32, e [N] float64): the decoder of a checked :class:`DecoderPlan` run in
    bfloat16, and a bound on ||g~ - g(z)|| per row (module docstring)."""
    layers = list(plan.layers)
    h = z.to(torch.bfloat16)
    e = torch.linalg.vector_norm((h.double() - z.double()), dim=1)
    skip_unflatten = False
    for i, layer in enumerate(layers):
        t = type(layer)
        if t in _ACTIVATIONS:
            h = _ACTIVATIONS[t](layer, h)  # h is a fresh bf16 buffer (never z itself)
            e = _LIPSCHITZ[t](layer) * e + U / (1 - U) * _rownorm(h)
        elif t is torch.nn.Identity or t is torch.nn.Dropout:
            continue
        elif t in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d):
            lb, op, dop, aop, db, fan_in = _prepared(layer)
            hn = _rownorm(h)
            if t is torch.nn.Linear:
                y = F.linear(h, lb.weight, lb.bias)
                positions = 1
                grid = _grid_for(layer, _next_spatial(layers, i))
                if grid is not None:
                    y = y.view(y.shape[0], *grid).contiguous(memory_format=torch.channels_last)
                    skip_unflatten = type(_next_spatial(layers, i)) is torch.nn.Unflatten
            else:
                y = lb(h.contiguous(memory_format=torch.channels_last))
                positions = y.shape[2] * y.shape[3]
            e = (dop * hn + op * e + db * math.sqrt(positions) + fan_in * 2.0 ** -23 * aop * hn
                 + U / (1 - U) * _rownorm(y))
            h = y
        elif t is torch.nn.Unflatten:
            if skip_unflatten:
                skip_unflatten = False
                continue
            h = h.reshape(h.shape[0], *layer.unflattened_size).contiguous(memory_format=torch.channels_last)
        elif t is torch.nn.Flatten:
            h = h.reshape(h.shape[0], -1)
        else:  # pragma: no cover - decoder_plan only passes understood layers
            raise TypeError(f"layer {t.__name__} not supported in bfloat16")
    g = h.reshape(h.shape[0], -1).float()
    if plan.sigmoid:
        g = g.sigmoid_()
        e = e / 4
    e = e * 1.01 + 2.0 ** -12 * (_rownorm(g) + 1.0)
    return g, e


@dataclass
class Bf16Stats:
    """How much float32 work the bfloat16 route still did: ``recomputed`` of ``draws`` draws."""

    draws: int
    recomputed: int

    @property
    def fraction(self) -> float:
        return self.recomputed / max(1, self.draws)


def r_robustness_bf16(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    delta: torch.Tensor | None = None,
    n_samples: int = 1000,
    *,
    alpha: float = ALPHA,
    mode: str = "mean",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    stats: list | None = None,
) -> RobustnessEstimate:
    """:func:`robvae.robustness.r_robustness` with the decoder in bfloat16: the same draws and
    exactly the same counts (module docstring), faster where bfloat16 matrix products are
    (avx512_bf16 / AMX CPUs, CUDA). Models whose decoder is not understood, or float64 inputs,
    run :func:`r_robustness` itself. ``stats``: a list that receives a :class:`Bf16Stats`."""
    _check_mode(mode)
    check_x(model, x)
    delta = check_delta(x, delta)
    rt = as_radius(r, x.shape[0], x)
    B = x.shape[0]
    with torch.inference_mode():
        mu0, sigma0 = model.encode(x)
        plan = decoder_plan(model, mu0) if x.dtype == torch.float32 else None
    if plan is None:
        return r_robustness(model, x, r, delta, n_samples, alpha=alpha, mode=mode, chunk_size=chunk_size,
                            generator=generator)
    n_re = 0
    with torch.inference_mode():
        ref = flat_decode(model, mu0)
        if delta is None:
            mu, sigma = mu0, sigma0
        else:
            mu, sigma_d = checked_encode(model, x + delta)
            sigma = sigma_d if mode == "full" else sigma0
        d, D = mu.shape[1], ref.shape[1]
        chunk = chunk_size or default_chunk(n_samples, B, D, x.device, model)
        k = torch.zeros(B, dtype=torch.long, device=x.device)
        rr = rt.to(torch.float64)
        for c in draw_chunks(n_samples, chunk):
            eta = randn((B, c, d), mu, generator)
            z = (mu[:, None, :] + eta * sigma[:, None, :]).reshape(B * c, d)
            g, e = decode_bf16(plan, z)
            t = torch.linalg.vector_norm(g.view(B, c, D).sub_(ref[:, None, :]), dim=-1).double()  # [B, c]
            e = e.view(B, c)
            gap = t - rr[:, None]
            sure_in = gap < -e
            unsure = gap.abs() <= e
            k += sure_in.sum(dim=1)
            idx = unsure.reshape(-1).nonzero().squeeze(1)
            if idx.numel():
                n_re += int(idx.numel())
                exact = torch.linalg.vector_norm(flat_decode(model, z[idx]) - ref[idx // c], dim=-1)
                within = (exact <= rt.to(exact.dtype)[idx // c]).long()
                k.index_add_(0, idx // c, within)
    if stats is not None:
        stats.append(Bf16Stats(draws=B * n_samples, recomputed=n_re))
    n = torch.full_like(k, n_samples)
    lo, hi = clopper_pearson(k, n, alpha)
    p = k.to(x.dtype) / n_samples
    return RobustnessEstimate(p=p, p_lower=lo.to(x.dtype), p_upper=hi.to(x.dtype), n_within=k, n_samples=n,
                              r=rt, alpha=float(alpha), mode=mode)


__all__ = ["Bf16Stats", "decode_bf16", "r_robustness_bf16"]
