"""r-robustness counts with the heavy decoder layers in bfloat16 and exactly the float32 answer (issue 11 item 4).

:func:`r_robustness_bf16` draws the same eta as :func:`robvae.robustness.r_robustness` (same
generator, same chunks, float32) and decodes them with the one linear layer that holds most of
the decoder's multiply-adds (the MLP decoder's last Linear, 86%; the conv decoder's first
transposed convolution, 64%; when it holds >= :data:`HEAVY_SHARE`) in bfloat16, all other
layers in float32 as the fast route runs them. Alongside each decoder row it carries two rigorous bounds: ``e_b`` on
how far its output is from the exact g(z) (real arithmetic), and ``e_f`` on how far the float32
route's output is from it. A draw whose distance ``t~`` satisfies ``|t~ - r| > m`` (``m`` = e_b +
e_f + the rounding of both distances) falls on the same side of ``r`` as the float32 distance;
only the others are decoded again in float32 (:func:`robvae.models.fast_decode.flat_decode`) and
counted from that. So every count, p, bound and radius equals the float32 one (the float32
decode of a subset of rows must give the same numbers as of the whole batch: a property of the
kernels once :func:`robvae.models.fast_decode.flat_decode` pads to a multiple of ``ROW_ALIGN``
rows, checked per model by :func:`robvae.models.fast_decode.rows_independent`; where it fails,
the float32 route runs).

The bounds, per decoder row (u = 2^-8, bfloat16's unit roundoff, u' = u / (1 - u); v = 2^-24;
gamma_n = n v / (1 - n v); norms Euclidean; ||T|| an upper bound on the operator norm of the
linear part at the layer's input shape; K the terms one output sums, P the output positions
sharing one bias):

- a float32 linear layer y = T h + b (both routes' rounding; any summation order):
  e' = ||T|| e + gamma_{K+1} (|| |T| || ||h|| + ||b|| sqrt(P));
- a bfloat16 linear layer, h~ = bf16(h) (h_lo = h - h~, its norm measured), T~ = bf16(T),
  y = bf16(fl32(T~ h~ + b~)) (float32 accumulation):
  e' = ||T|| (e + ||h_lo||) + ||T~ - T|| ||h~|| + gamma_{K+1} (|| |T~| || ||h~|| + ||b~|| sqrt(P))
  + ||b~ - b|| sqrt(P), plus the output rounding, elementwise |y~_i - y_i| <= u' |y~_i|: after a
  ReLU it adds u' ||relu(y~)||; before the final sigmoid s, with yacc the float32 accumulator
  (||yacc - y|| <= E, the terms above) and c_i = u'|y~_i|, two legs: |s(y~_i) - s(yacc_i)| <=
  sup_{|t - y~_i| <= c_i} s'(t) c_i <= exp(c_i) s'(y~_i) c_i (|(log s')'| = |1 - 2s| <= 1) <= C0
  and |s(yacc_i) - s(y_i)| <= |yacc_i - y_i| / 4, so the output error is <= E / 4 + sqrt(D) C0,
  C0 = sup_a u'|a| exp(u'|a|) s'(a) (about 0.225 u'); elsewhere u' ||y~||;
- activations (ReLU exact in either precision; others in float32): e' = L e + 2^-20 (||h'|| +
  L ||h||) with L the Lipschitz constant; reshapes: e' = e; a final sigmoid: e' = e / 4 + 2^-20
  sqrt(D) (its output lies in [0, 1], so ||g|| <= sqrt(D): no norm pass).

Operator norms: spectral norms (Linear); for a convolution the smallest of the exact norm at its
input shape (its dense operator's Gram matrix, float64, where that is small), the norm of its
periodic extension (:func:`_conv_periodic`, per-frequency matrices: milliseconds) and a shape-free
bound (:func:`robvae.robustness.lipschitz.conv_bound` and the tap-sum bound), for T, |T| and the
weight rounding T~ - T alike; all cached per weights (version, address, and their numbers). The models this works for are those
:func:`robvae.models.fast_decode.decoder_plan` understands (robvae's own VAE, and users' decoders
of standard layers); any other model, or float64 inputs, run :func:`r_robustness` in float32.
"""

from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ALPHA, N_SAMPLES
from ..errors import InputError
from ..models.fast_decode import (
    _ACTIVATIONS, _cached, _grid_for, _hwc_linear, _is_thin_deconv, _next_spatial, _thin_deconv, decoder_plan,
    rows_independent, version,
)
from ..validation import as_radius
from .lipschitz import _out_shape, conv_operator_norm, conv_periodic_bound, kernel_bound
from .sampling import (
    RobustnessEstimate, checked_inputs, count_within, draw_distances, draw_setup, estimate_from_counts, within_float32,
)

#: bfloat16's unit roundoff (8 significand bits, round to nearest), and the rounding relative
#: to the rounded value.
U = 2.0 ** -8
UB = U / (1 - U)
#: float32's unit roundoff.
V = 2.0 ** -24
#: Relative error allowed for float32 elementwise functions (tanh, sigmoid, ELU, GELU): 16 ulp.
FUNC = 2.0 ** -20
#: The heaviest linear layer runs in bfloat16 when it holds at least this share of the decoder's
#: multiply-adds (one layer only: an error bound carried through several layers by operator norms
#: grows far beyond the actual error, and more draws would be recomputed than the bf16 layers save).
HEAVY_SHARE = 0.2
#: Convolutions whose dense operator has at most this many entries, and whose Gram matrix (the
#: smaller side) at most DENSE_GRAM_LIMIT rows, get their exact norm (else the periodic bound, a
#: few percent above it: the exact norm of the MNIST conv decoder's 64x7x7 layer, a 3,136-row
#: eigenproblem, took 6-19 s).
DENSE_NORM_LIMIT = 25_000_000
DENSE_GRAM_LIMIT = 1_500
#: Absolute slack for underflow (subnormals flushed to zero) anywhere: far below any distance.
TINY = 1e-20
#: The ``precision`` settings of :func:`robvae.certify` and ``robvae certify --precision``: every
#: one gives the same counts, so the same p, bounds and radii (module docstring); they differ in speed.
PRECISIONS = ("auto", "float32", "bfloat16")
#: ``precision="auto"`` gives the bfloat16 route up, for the rest of the call, once more than this
#: share of the draws it has decoded had to be decoded again in float32 (checked after each decoder
#: call of at least :data:`AUTO_PROBE_DRAWS` draws in all): the route is 1.18-1.25x float32 at 4% redone
#: and 0.95-0.98x at 15.5% (docs/PERFORMANCE.md, issue 11 sections 3 and 12), so it breaks even near
#: 13%. The counts are the same either way.
AUTO_MAX_REDONE = 0.10
AUTO_PROBE_DRAWS = 2048

_LIPSCHITZ = {
    torch.nn.ReLU: lambda m: 1.0, torch.nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    torch.nn.Tanh: lambda m: 1.0, torch.nn.Sigmoid: lambda m: 0.25, torch.nn.ELU: lambda m: max(1.0, abs(m.alpha)),
    torch.nn.GELU: lambda m: 1.13,
}


def _gamma(n: int) -> float:
    return n * V / (1 - n * V)


def _sigmoid_c0() -> float:
    """C0 = sup_{a >= 0} u' a exp(u' a) s'(a), on a fine grid, rounded up (the function's slope
    is below u' on the grid's step 1e-4, and beyond a = 80 it is below 1e-30)."""
    a = torch.arange(0, 80, 1e-4, dtype=torch.float64)
    s = torch.sigmoid(a)
    f = UB * a * torch.exp(UB * a) * s * (1 - s)
    return float(f.max()) * (1 + 1e-6) + UB * 1e-4


C0 = _sigmoid_c0()


# --------------------------------------------------------------------------------------------
# operator norms
# --------------------------------------------------------------------------------------------
def _spectral(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().double().cpu(), ord=2)) * (1 + 1e-9) + 1e-300


def _conv_shape_free(w: torch.Tensor, layer: torch.nn.Module) -> float:
    """An upper bound on the norm of a convolution with kernel ``w`` (any input size, zero
    padding): the smaller of sqrt(N) ||W_mat|| (:func:`robvae.robustness.lipschitz.conv_bound`)
    and a sum over kernel taps of their spectral norms (a transposed convolution's output phases,
    kernel index mod stride, write disjoint outputs, so they add in squares)."""
    w = w.detach().double().cpu()
    transposed = isinstance(layer, torch.nn.ConvTranspose2d)
    mat = kernel_bound(w, layer)
    if layer.groups != 1:
        return mat
    taps = torch.linalg.matrix_norm(w.permute(2, 3, 0, 1), ord=2) * (1 + 1e-9)  # [kh, kw]
    if transposed and layer.dilation == (1, 1):
        sh, sw = layer.stride
        tot = sum(float(taps[a::sh, b::sw].sum()) ** 2 for a in range(sh) for b in range(sw))
        return min(mat, math.sqrt(tot))
    return min(mat, float(taps.sum()))


def _conv_exact(layer: torch.nn.Module, shape: tuple[int, ...]) -> float | None:
    """The conv's norm on inputs of ``shape`` (:func:`robvae.robustness.lipschitz.conv_operator_norm`);
    None when the operator is too large."""
    if min(math.prod(shape), math.prod(_out_shape(layer, shape))) > DENSE_GRAM_LIMIT:
        return None
    return conv_operator_norm(layer, shape, DENSE_NORM_LIMIT)


@dataclass
class _Lin:
    """Constants of one linear layer (Linear, Conv2d, ConvTranspose2d) at its input shape."""

    layer: torch.nn.Module
    bf16: bool
    grid: tuple[int, int, int] | None  # a Linear feeding convolutions: its output grid (C, H, W)
    op: float  # ||T||
    abs_op: float  # || |T| ||
    terms: int  # K + 1 (products per output, plus the bias)
    b_norm: float  # ||b|| sqrt(P)
    lo_op: float = 0.0  # ||T~ - T|| (bf16 layers)
    abs_hi_op: float = 0.0  # || |T~| ||
    b_hi_norm: float = 0.0  # ||b~|| sqrt(P)
    b_lo: float = 0.0  # ||b~ - b|| sqrt(P)
    w_hi: torch.Tensor | None = None  # bf16 weights (a Linear's rows permuted to (H, W, C) when grid)
    b_hi: torch.Tensor | None = None
    module_hi: torch.nn.Module | None = None  # a bf16 copy of a convolution


def _lin(layer: torch.nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], bf16: bool,
         grid) -> _Lin:
    w, b = layer.weight.detach(), layer.bias
    if isinstance(layer, torch.nn.Linear):
        norm = _spectral
        op = _spectral(w)
        terms = layer.in_features + 1
        positions = 1
    else:
        def norm(m):
            periodic = conv_periodic_bound(m, layer, in_shape)
            free = _conv_shape_free(m, layer)
            return free if periodic is None else min(free, periodic)
        exact = _conv_exact(layer, in_shape)
        op = norm(w) if exact is None else min(exact, norm(w))
        # products per output: a transposed convolution's output takes ceil(k / s) taps per axis
        # (any zeros an implementation inserts add exactly, without rounding)
        taps = math.prod(layer.kernel_size) if isinstance(layer, torch.nn.Conv2d) else math.prod(
            math.ceil(k / s) for k, s in zip(layer.kernel_size, layer.stride))
        terms = (layer.in_channels // layer.groups) * taps + 1
        positions = out_shape[1] * out_shape[2]
    bn = 0.0 if b is None else float(b.detach().double().norm()) * math.sqrt(positions)
    info = _Lin(layer, bf16, grid, op, norm(w.abs()), terms, bn)
    if not bf16:
        return info
    wh = w.to(torch.bfloat16)
    info.lo_op = norm(wh.double() - w.double())
    info.abs_hi_op = norm(wh.double().abs())
    if b is not None:
        bh = b.detach().to(torch.bfloat16)
        info.b_hi_norm = float(bh.double().norm()) * math.sqrt(positions)
        info.b_lo = float((bh.double() - b.detach().double()).norm()) * math.sqrt(positions)
    if isinstance(layer, torch.nn.Linear):
        if grid is not None:
            c, hh, ww = grid
            wh = wh.view(c, hh, ww, -1).permute(1, 2, 0, 3).reshape(c * hh * ww, -1)
            bh = None if b is None else bh.view(c, hh, ww).permute(1, 2, 0).reshape(-1)
        info.w_hi = wh.contiguous()
        info.b_hi = None if b is None else bh.contiguous()
    else:
        mod = copy.deepcopy(layer).to(torch.bfloat16)
        mod.requires_grad_(False)
        info.module_hi = mod
    return info


# --------------------------------------------------------------------------------------------
# the analysed decoder: which layers run in bf16, and their constants
# --------------------------------------------------------------------------------------------
_LINEAR = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)

#: Per plan: (weights key, [per-layer _Lin or None], a copy of the weights).
_ANALYSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _macs(layer: torch.nn.Module, in_shape, out_shape) -> int:
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features * layer.out_features
    per = (layer.in_channels // layer.groups) * math.prod(layer.kernel_size) * layer.out_channels
    if isinstance(layer, torch.nn.ConvTranspose2d):
        return per * in_shape[1] * in_shape[2]
    return per * out_shape[1] * out_shape[2]


def _weights_key(layers) -> tuple:
    return tuple((version(p), p.data_ptr()) for m in layers for p in m.parameters(recurse=False))


def _analyse(plan, z: torch.Tensor) -> list:
    """Per layer of ``plan``: a :class:`_Lin` for linear layers (bf16 or not), else None."""
    layers = list(plan.layers)
    key = (_weights_key(layers), z.device, z.shape[1])
    params = lambda: [p for m in layers for p in m.parameters(recurse=False)]  # noqa: E731
    # cached as fast_decode's derived weights: per weights version and address, checked against their numbers
    return _cached(_ANALYSED, plan, key, lambda: _analysed(layers, z), params, content=True)


def _analysed(layers: list, z: torch.Tensor) -> list:
    with torch.inference_mode():
        h = torch.zeros(1, z.shape[1], dtype=torch.float32, device=z.device)
        shapes = []
        for layer in layers:
            ins = tuple(h.shape[1:])
            if type(layer) is torch.nn.Linear and h.dim() != 2:
                h = h.reshape(1, -1)
            if type(layer) in (torch.nn.Conv2d, torch.nn.ConvTranspose2d) and h.dim() == 2:
                h = h.view(1, layer.in_channels, *[math.isqrt(h.shape[1] // layer.in_channels)] * 2)
                ins = tuple(h.shape[1:])
            h = layer(h)
            shapes.append((ins, tuple(h.shape[1:])))
    macs = [_macs(m, *shapes[i]) if type(m) in _LINEAR else 0 for i, m in enumerate(layers)]
    total = max(1, sum(macs))
    top = max(range(len(layers)), key=lambda i: macs[i])  # the one layer run in bf16 (module docstring)
    infos = []
    with torch.no_grad():
        for i, m in enumerate(layers):
            if type(m) not in _LINEAR:
                infos.append(None)
                continue
            heavy = i == top and macs[i] >= HEAVY_SHARE * total and not _is_thin_deconv(m)
            grid = _grid_for(m, _next_spatial(layers, i)) if type(m) is torch.nn.Linear else None
            infos.append(_lin(m, shapes[i][0], shapes[i][1], heavy, grid))
    return infos


def _rownorm(h: torch.Tensor) -> torch.Tensor:
    """Per-row Euclidean norms, accumulated in float32 and rounded up (float64 [N])."""
    n = h[0].numel() if h.shape[0] else 1
    dims = tuple(range(1, h.dim()))
    return torch.linalg.vector_norm(h, dim=dims, dtype=torch.float32).double() * (1 + (n + 4) * V)


def decode_bf16(plan, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g~ [N, D] float32, e_b [N], e_f [N] float64): the decoder of a checked
    :class:`~robvae.models.fast_decode.DecoderPlan` with its heavy layers in bfloat16; bounds on
    ||g~ - g(z)|| and on the float32 route's ||g32 - g(z)|| per row (module docstring)."""
    layers = list(plan.layers)
    infos = _analyse(plan, z)
    N = z.shape[0]
    h = z
    fresh = False  # may h be changed in place?
    zero = torch.zeros(N, dtype=torch.float64, device=z.device)
    eb, ef = zero, zero.clone()
    pending = False  # h is a bf16 layer's output whose rounding is not yet in eb
    skip_unflatten = False
    known = [None, None]  # (tensor, its row norms) after a ReLU that settled a bf16 output: reused next

    def settle(h, eb):
        n = _rownorm(h)
        if t is torch.nn.ReLU:
            known[:] = [h, n]
        return eb + UB * n

    last = max((i for i, m in enumerate(layers) if type(m) in _LINEAR), default=-1)
    for i, layer in enumerate(layers):
        t = type(layer)
        prev, known[:] = known[:], [None, None]  # norms known only from the layer just before
        if t in _ACTIVATIONS:
            L = _LIPSCHITZ[t](layer)
            if t is torch.nn.ReLU:  # exact in either precision; bf16 rounding keeps the sign
                h = h.relu_() if fresh else h.relu()
                fresh = True
                if pending:
                    eb, pending = settle(h, eb), False
                continue
            if pending:
                eb, pending = settle(h, eb), False
            hin = _rownorm(h)
            h = _ACTIVATIONS[t](layer, h.float() if h.dtype != torch.float32 or not fresh else h)
            fresh = True
            hn = _rownorm(h)
            ef = L * ef + FUNC * 1.01 * (hn + eb + L * (hin + 2 * eb + 2 * ef))  # the float32 route's norms
            eb = L * eb + FUNC * (hn + L * hin)
        elif t is torch.nn.Identity or t is torch.nn.Dropout:
            continue
        elif t in _LINEAR:
            info = infos[i]
            if pending:
                eb, pending = settle(h, eb), False
            ein_b, ein_f = eb, ef
            if info.bf16:
                if h.dtype == torch.bfloat16:
                    hb, lo = h, 0.0
                else:
                    hb = h.to(torch.bfloat16)
                    lo = _rownorm(torch.sub(h, hb))  # h - bf16(h), exact in float32
                hn = _rownorm(hb)
                if t is torch.nn.Linear:
                    y = F.linear(hb.reshape(N, -1), info.w_hi, info.b_hi)
                else:
                    y = info.module_hi(hb.contiguous(memory_format=torch.channels_last))
                eb = (info.op * (eb + lo) + info.lo_op * hn
                      + _gamma(info.terms) * (info.abs_hi_op * hn + info.b_hi_norm) + info.b_lo)
                hn_in = hn + lo
                pending = True
            else:
                hn = prev[1] if prev[0] is h else None  # the ReLU's norms (the float conversion is exact)
                if h.dtype != torch.float32:
                    h = h.float()
                if hn is None:
                    hn = _rownorm(h)
                if t is torch.nn.Linear:
                    h2 = h.reshape(N, -1)
                    y = F.linear(h2, layer.weight, layer.bias) if info.grid is None else _hwc_linear(layer, h2, info.grid)
                elif _is_thin_deconv(layer):
                    y = _thin_deconv(layer, h, sigmoid=False)
                else:
                    y = layer(h.contiguous(memory_format=torch.channels_last))
                eb = info.op * eb + _gamma(info.terms) * (info.abs_op * hn + info.b_norm)
                hn_in = hn
            ef = info.op * ef + _gamma(info.terms) * (info.abs_op * (hn_in + ein_b + ein_f) + info.b_norm)
            if t is torch.nn.Linear and info.grid is not None:
                nxt = _next_spatial(layers, i)
                skip_unflatten = type(nxt) is torch.nn.Unflatten
                if info.bf16:
                    c, hh, ww = info.grid
                    y = y.view(N, hh, ww, c).permute(0, 3, 1, 2)
            h, fresh = y, True
            if pending and i == last and plan.sigmoid and all(
                    type(m) in (torch.nn.Identity, torch.nn.Dropout, torch.nn.Flatten, torch.nn.Unflatten)
                    for m in layers[i + 1:]):
                # the final sigmoid, elementwise (module docstring)
                root_d = math.sqrt(y[0].numel())  # ||s(.)|| <= sqrt(D): no norm pass
                eb = eb / 4 + root_d * (C0 + FUNC)
                h = h.float().sigmoid_().reshape(N, -1)
                ef = ef / 4 + FUNC * 1.01 * root_d
                return h, eb + TINY, ef + TINY
        elif t is torch.nn.Unflatten:
            if skip_unflatten:
                skip_unflatten = False
                continue
            h = h.reshape(N, *layer.unflattened_size).contiguous(memory_format=torch.channels_last)
            fresh = True
        elif t is torch.nn.Flatten:
            h = h.reshape(N, -1)
        else:  # pragma: no cover - decoder_plan only passes understood layers
            raise TypeError(f"layer {t.__name__} not supported in bfloat16")
    if pending:
        eb = settle(h, eb)
    g = h.float().reshape(N, -1)
    if not fresh or g.data_ptr() == z.data_ptr():
        g = g.clone()
    if plan.sigmoid:
        g = g.sigmoid_()
        root_d = math.sqrt(g.shape[1])  # ||s(.)|| <= sqrt(D): no norm pass
        ef = ef / 4 + FUNC * 1.01 * root_d
        eb = eb / 4 + FUNC * root_d
    return g, eb + TINY, ef + TINY


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products run natively on ``device``'s CPU (avx512_bf16 or AMX);
    False for other devices."""
    if torch.device(device).type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's probes (private)
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def bf16_pays(plan, z: torch.Tensor) -> bool:
    """Whether ``precision="auto"`` takes the bfloat16 route: measured faster than float32 only for
    a decoder whose bfloat16 layer is a plain Linear (an MLP decoder: 1.18-1.25x) on a CPU with
    native bfloat16 products, in a process running one thread (certify's worker processes). Not
    for convolutions (0.87-0.97x: a quarter of the draws are decoded again), nor at two threads
    (0.91x: the float32 route's products use both cores better), nor on CUDA (not measured).
    docs/PERFORMANCE.md, issue 11 section 3."""
    if not native_bf16(z.device) or torch.get_num_threads() != 1:
        return False
    heavy = [info for info in _analyse(plan, z) if info is not None and info.bf16]
    return bool(heavy) and all(type(info.layer) is torch.nn.Linear and info.grid is None for info in heavy)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass
class Bf16Stats:
    """How much float32 work the bfloat16 route still did: ``recomputed`` of the ``draws`` draws it
    decoded; ``float32_draws`` drawn after ``precision="auto"`` gave the route up (too many
    recomputed: :data:`AUTO_MAX_REDONE`), counted by the float32 route alone."""

    draws: int
    recomputed: int
    float32_draws: int = 0

    @property
    def gave_up(self) -> bool:
        """Whether ``precision="auto"`` went over to float32 part way (after the first draws)."""
        return self.float32_draws > 0

    @property
    def fraction(self) -> float:
        return self.recomputed / max(1, self.draws)


def r_robustness_bf16(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    delta: torch.Tensor | None = None,
    n_samples: int = N_SAMPLES,
    *,
    alpha: float = ALPHA,
    mode: str = "mean",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    stats: list | None = None,
    precision: str = "bfloat16",
    abstain_alpha: float | None = None,
) -> RobustnessEstimate:
    """:func:`robvae.robustness.r_robustness` with the decoder's heavy layers in bfloat16: the
    same draws and exactly the same counts (module docstring), faster where bfloat16 matrix
    products are (avx512_bf16 / AMX CPUs). Models whose decoder is not understood, float64
    inputs, and inputs on any device but the CPU (whose kernels' row independence cannot be
    checked, :func:`robvae.models.fast_decode.rows_independent`, and whose bfloat16 products may
    accumulate in reduced precision) run :func:`r_robustness` itself. ``stats``: a list that receives a
    :class:`Bf16Stats` (when the bfloat16 route ran). ``precision``: "bfloat16" (this route
    wherever the decoder is understood), "auto" (only where it is measured faster,
    :func:`bf16_pays`, and only while it recomputes at most :data:`AUTO_MAX_REDONE` of its draws:
    past that the rest of the call runs in float32) or "float32" (:func:`r_robustness`): the
    answer is the same.
    ``abstain_alpha``: as in :func:`r_robustness` (early stopping of inputs settled p < 1/2)."""
    check_precision(precision)
    delta = checked_inputs(model, x, delta, mode)
    rt = as_radius(r, x.shape[0], x)
    with torch.inference_mode():
        mu, sigma, ref, chunk = draw_setup(model, x, delta, n_samples, mode, chunk_size)
        plan = decoder_plan(model, mu) if x.dtype == torch.float32 and precision != "float32" else None
        if plan is not None and precision == "auto" and not bf16_pays(plan, mu):
            plan = None
        if plan is not None and not rows_independent(model, mu):  # the float32 redo of a subset needs it
            plan = None
        counted = Bf16Stats(draws=0, recomputed=0)
        within = None if plan is None else _BfWithin(plan, counted, adaptive=precision == "auto")
        k, n = count_within(model, mu, sigma, ref, rt, n_samples, chunk, generator, abstain_alpha=abstain_alpha,
                            within=within)
    if stats is not None and plan is not None:
        stats.append(counted)
    return estimate_from_counts(k, n, n_samples, rt, alpha, mode, x.dtype)


class _BfWithin:
    """The per-call count of :func:`count_within` by the bfloat16 route (:func:`_within_bf16`); with
    ``adaptive`` (``precision="auto"``) it goes over to :func:`within_float32` for the rest of the
    call once the route has decoded :data:`AUTO_PROBE_DRAWS` draws and recomputed more than
    :data:`AUTO_MAX_REDONE` of them (r in the bulk of the distances: the route is then slower)."""

    def __init__(self, plan, counted: Bf16Stats, adaptive: bool):
        self.plan, self.counted, self.adaptive = plan, counted, adaptive

    def __call__(self, model: torch.nn.Module, z: torch.Tensor, ref: torch.Tensor, rt: torch.Tensor) -> torch.Tensor:
        c = self.counted
        if self.adaptive and c.draws >= AUTO_PROBE_DRAWS and c.fraction > AUTO_MAX_REDONE:
            c.float32_draws += z.shape[0]
            return within_float32(model, z, ref, rt)
        return _within_bf16(self.plan, model, z, ref, rt, c)


def _within_bf16(plan, model: torch.nn.Module, z: torch.Tensor, ref: torch.Tensor, rt: torch.Tensor,
                 counted: Bf16Stats) -> torch.Tensor:
    """:func:`robvae.robustness.sampling.within_float32`'s count by the bfloat16 route: draws
    decided by the bounds, the others decoded again in float32 (module docstring)."""
    L, D = ref.shape
    g, eb, ef = decode_bf16(plan, z)
    c = g.shape[0] // L
    t = torch.linalg.vector_norm(g.view(L, c, D).sub_(ref[:, None, :]), dim=-1).double()  # [L, c]
    # |t~ - t32| <= ||g~ - g32|| + both norms' rounding (D squares summed in float32, the
    # subtraction, the square root)
    em = (eb + ef).view(L, c)
    m = em + 2 * (D + 4) * V * (t + em)
    gap = t - rt.to(torch.float64)[:, None]
    unsure = ~(gap.abs() > m)  # NaN / inf: decide in float32
    k = (gap < -m).sum(dim=1)
    idx = unsure.reshape(-1).nonzero().squeeze(1)
    counted.draws += L * c
    if idx.numel():
        counted.recomputed += int(idx.numel())
        exact = draw_distances(model, z[idx], ref[idx // c])[:, 0]  # one draw per row: float32, NaN refused
        k.index_add_(0, idx // c, (exact <= rt.to(exact.dtype)[idx // c]).long())
    return k


__all__ = ["AUTO_MAX_REDONE", "AUTO_PROBE_DRAWS", "PRECISIONS", "Bf16Stats", "bf16_pays", "check_precision", "decode_bf16", "native_bf16",
           "r_robustness_bf16"]
