"""Bounds on the floating-point rounding of an encoder's outputs (docs/THEORY.md section 8, "Exact
arithmetic").

The rigorous radii bound how far the exact maps mu and log sigma move over the ball; the model
samples from the *computed* mu and sigma. Audit h83 broke float32 radii where sigma was within a
few rounding steps of the encoder's largest activation (a hidden unit of 1e4 cancelled to mu = 1
with sigma = 0.02, or sigma = 1e-7 with mu = 1): the computed mu moved by a rounding step more
than the exact map allows. This module bounds, for every input in the ball, the difference between
the computed and the exact outputs, by the standard forward error analysis (Higham, "Accuracy and
Stability of Numerical Algorithms", ch. 3): a dot product of n terms plus a bias, computed in any
order with or without fused multiply-adds, is within gamma_{n+1} (|W| |h| + |b|) of the exact one,
gamma_k = k u / (1 - k u), u the unit roundoff; an error E on a layer's input reaches its output
as at most |W| E; ReLU and clamps are exact and 1-Lipschitz; other activations add
:data:`ACTIVATION_ULPS` rounding units of their output. Magnitudes over the ball are |h(x')| <= |h(x)| + dl elementwise, dl from the
rows' norms times the l2 bound on how far the layer's input moves (its Lipschitz bound up to
there times eps), so one pass at x covers every x'.

:func:`encoder_rounding` gives the norms of the bounds on mu's error and on log sigma's error;
:func:`robvae.robustness.rigorous.rigorous_radii` counts each twice (at x and at x') in the
shift and log-sigma budgets. For trained models they are about 1e-6 of sigma and change no radius
measurably; for models like the audit's they shrink the radius or make it 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.fast_decode import runs_own_forward
from ..models.linear import LinearVAE
from ..models.lipschitz import GroupSort, LipschitzEncoder, OrthoLinear
from ..models.networks import ConvEncoder, MLPEncoder
from ..models.vae import VAE
from .lipschitz import conv_bound, spectral_norm

#: Unit roundoff of the dtypes rigorous radii are computed for (half precision is refused first).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
#: float32 on CUDA where TensorFloat-32 is allowed: products of 10-bit mantissas.
TF32_ROUNDOFF = 2.0**-11
#: Rounding units (relative to the output's magnitude) allowed for one evaluation of tanh,
#: sigmoid, softplus, elu, a scaling or an addition of tau: libm-class functions are within 1-2 ulp,
#: torch's vectorised ones within about 3.
ACTIVATION_ULPS = 8.0
_F64 = torch.float64
_EXACT = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity)  # exact in floating point and 1-Lipschitz


def _gamma(n: int, u: float) -> float:
    if n * u >= 0.5:
        return math.inf
    return n * u / (1.0 - n * u)


def _walk(m: nn.Module, h: torch.Tensor, s: torch.Tensor, dl: torch.Tensor, e: torch.Tensor, en: torch.Tensor,
          u: float, norms: dict[int, float]) -> tuple[torch.Tensor, ...]:
    """(h, s, dl, e, en) after module ``m``: h its output at x (float64); s [B] an upper bound on
    ||h(x') - h(x)||_2 over the ball; dl an elementwise one (|h(x')| <= |h(x)| + dl); e an
    elementwise bound on |fl(h(x')) - h(x')| and en [B] one on its l2 norm (an input's error E
    reaches output i as |w_i . E| <= min(|w_i| . e, ||w_i|| en): errors are not all aligned with
    every row). ``norms``: the layers' operator norms, computed once per :func:`encoder_rounding`
    call (not once per block of inputs)."""
    act = ACTIVATION_ULPS * u
    if runs_own_forward(m, nn.Sequential):
        for child in m:
            h, s, dl, e, en = _walk(child, h, s, dl, e, en, u, norms)
        return h, s, dl, e, en
    if runs_own_forward(m, (nn.Linear, OrthoLinear, nn.Conv2d)):
        w64 = m.weight.detach().to(device="cpu", dtype=_F64)
        b64 = None if m.bias is None else m.bias.detach().to(device="cpu", dtype=_F64)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise InputError(f"rounding bound: unsupported padding_mode {m.padding_mode!r}")
            op = lambda t, w, b: F.conv2d(t, w, b, m.stride, m.padding, m.dilation, m.groups)  # noqa: E731
            n = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            rows = w64.flatten(1).norm(dim=1)[None, :, None, None]  # a patch moves <= s
        else:
            op, n = F.linear, m.in_features
            rows = w64.norm(dim=1)[None, :]
        if id(m) not in norms:
            norms[id(m)] = conv_bound(m) if isinstance(m, nn.Conv2d) else spectral_norm(w64)
        norm = norms[id(m)]
        col = lambda v: v.reshape(-1, *([1] * (h.dim() - 1)))  # noqa: E731
        new = _gamma(n + 1, u) * op(h.abs() + dl + e, w64.abs(), None if b64 is None else b64.abs())
        e = torch.minimum(op(e, w64.abs(), None), rows * col(en)) + new
        en = norm * en + new.flatten(1).norm(dim=1)
        dl = torch.minimum(rows * col(s), op(dl, w64.abs(), None))
        return op(h, w64, b64), s * norm, dl, e, en
    if runs_own_forward(m, _EXACT) or (runs_own_forward(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) and not m.training):
        return m(h) if not isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)) else h, s, dl, e, en
    if runs_own_forward(m, (nn.Flatten, nn.Unflatten)):
        return m(h), s, m(dl), m(e), en
    if runs_own_forward(m, (nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus)):
        k = {nn.Tanh: 1.0, nn.Sigmoid: 0.25, nn.Softplus: 1.0}.get(type(m))
        if k is None:
            k = max(1.0, abs(float(m.negative_slope if isinstance(m, nn.LeakyReLU) else m.alpha)))
        out = m(h)
        new = act * (out.abs() + k * (dl + e))  # the function's own rounding, relative to its output
        if isinstance(m, nn.Softplus):  # threshold >= 20 (lipschitz_bound refuses lower): a jump of e^-t / beta
            new = new + math.exp(-float(m.threshold)) / float(m.beta)
        return out, k * s, k * dl, k * e + new, k * en + new.flatten(1).norm(dim=1)
    if runs_own_forward(m, GroupSort):
        pair = lambda t: t.unflatten(-1, (t.shape[-1] // 2, 2)).amax(-1, keepdim=True).expand(  # noqa: E731
            *t.shape[:-1], t.shape[-1] // 2, 2).flatten(-2)
        return m(h), s, pair(dl), pair(e), en  # a sort of pairs: 1-Lipschitz in l2
    if runs_own_forward(m, MLPEncoder):
        return _walk(m.net, h.flatten(1), s, dl.flatten(1), e.flatten(1), en, u, norms)
    if runs_own_forward(m, ConvEncoder):
        h, s, dl, e, en = _walk(m.features, h, s, dl, e, en, u, norms)
        return _walk(m.head, h.flatten(1), s, dl.flatten(1), e.flatten(1), en, u, norms)
    raise InputError(f"rounding bound: unsupported layer {type(m).__name__}")


def _tf32_allowed() -> bool:
    """Whether CUDA may compute float32 products in TensorFloat-32 (unreadable flags: assume so)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # flags set partly through the newer fp32_precision settings
        return True


def _check_full_float32(cpu_convolutions: bool) -> None:
    """Refuse float32 products that PyTorch was told it may compute in bfloat16 on the CPU
    (``torch.set_float32_matmul_precision("medium")``, oneDNN's fp32_precision), and convolutions
    without oneDNN, which may run as Winograd transforms (NNPACK) beyond the dot-product bound
    (review h85: 115-55,000x it for 3x3 stride-1 kernels)."""
    mk = torch.backends.mkldnn
    lowered = torch.get_float32_matmul_precision() != "highest" or any(
        getattr(getattr(mk, k, None), "fp32_precision", "none") not in ("none", "ieee") for k in ("matmul", "conv"))
    if lowered:
        raise InputError("rigorous radii need full float32 products; PyTorch was allowed lower precision "
                         "(torch.set_float32_matmul_precision('highest') restores it)")
    if cpu_convolutions and not (mk.is_available() and mk.enabled):
        raise InputError("rigorous radii need oneDNN (torch.backends.mkldnn) for convolutions: without it they "
                         "may run as Winograd transforms, whose rounding the bound does not cover")


def encoder_rounding(model: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper bounds ([B], float64) on ||fl(mu(x')) - mu(x')|| and ||ln fl(sigma(x')) - ln sigma(x')||
    for every x' within ``eps`` [B] of the inputs x [B, *shape] (module docstring), for robvae's
    VAEs and the linear VAE in float32 / float64. InputError for other models (whose Lipschitz
    constants the user passes: they must cover rounding too)."""
    dtype = next((t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if dtype not in UNIT_ROUNDOFF:
        raise InputError(f"rounding bound: no unit roundoff known for {dtype}")
    u = UNIT_ROUNDOFF[dtype]
    on_cuda = any(t.is_cuda for t in (*model.parameters(), *model.buffers()))
    if dtype == torch.float32:
        _check_full_float32(any(isinstance(m, nn.Conv2d) for m in model.modules()) and not on_cuda)
        if on_cuda and _tf32_allowed():
            u = TF32_ROUNDOFF  # TensorFloat-32 products (cuDNN convolutions allow them by default)
    eps = torch.as_tensor(eps, dtype=_F64).detach().cpu().nan_to_num(1e6).clamp(max=1e6).expand(x.shape[0])
    if not isinstance(model, (LinearVAE, VAE)):
        raise InputError(f"rounding bound: not one of robvae's models ({type(model).__name__})")
    norms: dict[int, float] = {}
    parts = [_block(model, x[i:i + BLOCK], eps[i:i + BLOCK], u, norms) for i in range(0, x.shape[0], BLOCK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


#: inputs per pass of :func:`encoder_rounding` (float64 activations, four tensors of them per layer)
BLOCK = 256


def _block(model: nn.Module, x: torch.Tensor, eps: torch.Tensor, u: float,
           norms: dict[int, float]) -> tuple[torch.Tensor, torch.Tensor]:
    h0 = x.detach().to(device="cpu", dtype=_F64)
    e0 = torch.zeros_like(h0)
    d0 = eps.reshape(-1, *([1] * (h0.dim() - 1))).expand_as(h0)  # |x'_i - x_i| <= ||x' - x||
    zero = torch.zeros_like(eps)
    act = ACTIVATION_ULPS * u
    with torch.no_grad():
        if isinstance(model, LinearVAE):
            a = model.A.detach().to(device="cpu", dtype=_F64)
            e = _gamma(a.shape[1], u) * ((h0.flatten(1).abs() + eps[:, None]) @ a.abs().T)
            return e.norm(dim=1), torch.zeros_like(eps)
        d = model.latent_dim
        enc = model.encoder
        if runs_own_forward(enc, LipschitzEncoder):
            e_mu = _walk(enc.mean, h0.flatten(1), eps, d0.flatten(1), e0.flatten(1), zero, u, norms)[3]
            if enc.std is None:
                return e_mu.norm(dim=1), torch.zeros_like(eps)
            e_h = _walk(enc.std, h0.flatten(1), eps, d0.flatten(1), e0.flatten(1), zero, u, norms)[3]
            # ln(scale * sigmoid(h)): slope 1 - sigmoid(h) <= 1; the sigmoid and the scaling round
            return e_mu.norm(dim=1), (e_h + 3 * act).norm(dim=1)
        e_all = _walk(enc, h0, eps, d0, e0, zero, u, norms)[3]
        tau = float(model.tau)
        # ln(softplus(s) + tau): slope <= min(1, 1/tau); softplus and + tau round relative to sigma;
        # F.softplus jumps by e^-20 at s = 20 (its threshold), where sigma >= 20 (review h85)
        slope = min(1.0, 1.0 / tau) if tau > 0 else 1.0
        return e_all[:, :d].norm(dim=1), (slope * e_all[:, d:] + 3 * act + math.exp(-20.0) / 20.0).norm(dim=1)


__all__ = ["ACTIVATION_ULPS", "TF32_ROUNDOFF", "UNIT_ROUNDOFF", "encoder_rounding"]
