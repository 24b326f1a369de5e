"""Rigorous upper bounds on l2 Lipschitz constants (docs/THEORY.md section 8).

``lipschitz_bound(module)`` walks a network of Linear / Conv2d / ConvTranspose2d layers (nested
Sequentials and robvae's own network classes) and known-Lipschitz activations, and returns the
product of per-layer bounds. Every factor is a true UPPER bound (never a power-iteration estimate,
which approaches the spectral norm from below):

- Linear: the exact spectral norm sigma_max(W) (SVD in float64), times (1 + 1e-9) for rounding.
- Conv2d (zero padding, any stride, groups): y = W_mat . im2col(x) per output position, so
  ||y||^2 = sum_p ||W_mat x_p||^2 <= ||W_mat||^2 sum_p ||x_p||^2 <= ||W_mat||^2 N ||x||^2, with
  W_mat the [C_out, C_in k_h k_w] kernel matrix (block-diagonal over groups) and N the largest
  number of patches one input pixel lies in: N <= ceil(k_h / s_h) ceil(k_w / s_w) (k_h k_w when
  dilated). Bound: sqrt(N) ||W_mat||_2.
- ConvTranspose2d: the adjoint structure: every output pixel sums at most N patch contributions,
  so by Cauchy-Schwarz ||y||^2 <= N sum_i ||W_mat^T x_i||^2 <= N ||W_mat||^2 ||x||^2 (cropping by
  padding only removes outputs), with W_mat the [C_in, C_out k_h k_w] matrix of the weight array
  as stored (the Conv2d it is the adjoint of; at stride 1 also the flipped, channel-swapped view).
- With ``input_shape`` given, a convolution also gets the norm of its periodic extension at that
  shape (:func:`conv_periodic_bound`, milliseconds, within ~1% of exact at CIFAR size) and, when
  its operator is small (<= 2e7 entries as a dense matrix), its exact norm (:func:`dense_norm` of
  the operator, placed sparse from the kernel); the smallest bound is used, and the result then
  holds for inputs of that shape only.
- Activations (elementwise, so their l2 constant is the sup of |f'|): ReLU, Identity, Tanh,
  Softplus (threshold >= 20: below, its switch to the identity is a jump), GroupSort (a permutation per pair): 1; LeakyReLU: max(1, |slope|); ELU: max(1, alpha);
  Sigmoid: 1/4; Flatten / Unflatten: 1; Dropout: 1 in eval mode, 1/(1 - p) in training mode.
Anything else raises :class:`robvae.errors.InputError` naming the layer, and so does a layer whose
``forward`` is overridden (a subclass or an instance attribute; so is its ``__call__``) or a module with a forward hook
(the bound covers the standard layer alone).

For robvae's VAEs, :func:`vae_lipschitz` gives bounds for the encoder mean, the log standard
deviation, the standard deviation and the decoder (see its docstring for the derivations).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import scipy.linalg
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _torch_module

from ..errors import InputError
from ..fileio import hash_arrays
from ..models.fast_decode import runs_own_forward, structure_key
from ..models.likelihoods import _SigmoidMean
from ..models.linear import LinearVAE
from ..models.lipschitz import GroupSort, LipschitzDecoder, LipschitzEncoder, OrthoLinear
from ..models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from ..models.vae import VAE

ROUNDING = 1.0 + 1e-9  # float64 SVD is backward stable to ~1e-15 relative; this keeps the bound above
DENSE_LIMIT = 20_000_000  # entries of a dense conv operator measured exactly when input_shape is given
#: ``nn.Softplus`` switches to the identity where beta x > threshold and jumps there by
#: (log(1 + e^t) - t) / beta: at torch's default t = 20 that is about 2e-9 / beta, far below float32's
#: resolution at the switch point (t / beta, relative 1e-10); at a low threshold the layer is not
#: Lipschitz at all (t = 1: a jump of 0.31 / beta), so such a Softplus is refused.
SOFTPLUS_MIN_THRESHOLD = 20.0

_ONE = (nn.ReLU, nn.Identity, nn.Tanh, GroupSort, nn.Flatten, nn.Unflatten, nn.ReLU6, nn.Hardtanh)


def spectral_norm(matrix: torch.Tensor) -> float:
    """The exact largest singular value of a 2-D matrix (float64 SVD), rounded up."""
    if matrix.numel() == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(matrix.detach().to(torch.float64).cpu(), ord=2)) * ROUNDING


def _kernel_matrix(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The dense kernel matrix of a weight array, block-diagonal over groups: a Conv2d's
    [C_out, C_in * kh * kw]; for a ConvTranspose2d's weight [C_in, C_out / g, kh, kw] the
    [C_in, C_out * kh * kw] matrix of the Conv2d it is the adjoint of (same stride and padding),
    whatever the stride."""
    w = weight.detach().to(torch.float64).cpu()
    return torch.block_diag(*w.reshape(w.shape[0], -1).split(w.shape[0] // groups))


def patch_overlap(layer: nn.Conv2d | nn.ConvTranspose2d) -> int:
    """N: the most patches one input pixel lies in, ceil(k / s) per axis (k when dilated)."""
    return math.prod(k if d != 1 else math.ceil(k / s) for k, s, d in zip(layer.kernel_size, layer.stride, layer.dilation))


def kernel_bound(weight: torch.Tensor, layer: nn.Conv2d | nn.ConvTranspose2d) -> float:
    """sqrt(N) ||W_mat||_2 for the convolution ``layer`` with kernel ``weight`` (any input size).

    A Conv2d stacks its patches (each pixel in at most N of them) and applies W_mat to each; a
    ConvTranspose2d is the adjoint of the Conv2d with the same weight array, stride and padding,
    so it has that Conv2d's norm (:func:`_kernel_matrix`). At stride 1 a ConvTranspose2d is also
    the stride-1 convolution with the flipped kernel and the channel axes swapped: the smaller of
    the two bounds is taken."""
    w = weight.detach().to(torch.float64).cpu()
    mats = [_kernel_matrix(w, layer.groups)]
    if isinstance(layer, nn.ConvTranspose2d) and all(st == 1 for st in layer.stride):
        cin, cout_g, kh, kw = w.shape
        g = layer.groups
        swapped = w.view(g, cin // g, cout_g, kh, kw).transpose(1, 2).reshape(g * cout_g, cin // g, kh, kw)
        mats.append(_kernel_matrix(swapped, g))
    return math.sqrt(patch_overlap(layer)) * min(spectral_norm(m) for m in mats)


def conv_bound(layer: nn.Conv2d | nn.ConvTranspose2d) -> float:
    """sqrt(N) ||W_mat||_2, a shape-free upper bound on a (transposed) convolution's spectral norm
    (:func:`kernel_bound`)."""
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        raise InputError(f"lipschitz_bound: {layer} uses padding_mode={layer.padding_mode!r}; only zero padding is supported")
    return kernel_bound(layer.weight, layer)


def _dense_operator(layer: nn.Module, shape: Sequence[int], block: int = 512) -> torch.Tensor:
    """The layer's linear part as a dense matrix [out, in] (bias removed) on inputs of ``shape``,
    float64, built ``block`` basis vectors at a time (memory: the matrix and one block)."""
    n = math.prod(shape)
    w = layer.weight.detach().to(torch.float64).cpu()
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    rows = None
    for s in range(0, n, block):
        b = min(block, n - s)
        eye = torch.zeros(b, n, dtype=torch.float64)
        eye[torch.arange(b), torch.arange(s, s + b)] = 1.0
        eye = eye.view(b, *shape)
        if isinstance(layer, nn.ConvTranspose2d):
            out = nn.functional.conv_transpose2d(eye, w, output_padding=layer.output_padding, **kw)
        else:
            out = nn.functional.conv2d(eye, w, **kw)
        if rows is None:
            rows = torch.empty(n, out[0].numel(), dtype=torch.float64)
        rows[s:s + b] = out.reshape(b, -1)
    return rows.T


def _sparse_operator(layer: nn.Module, shape: Sequence[int],
                     out: Sequence[int]) -> scipy.sparse.csr_matrix | None:
    """The layer's linear part as a sparse float64 matrix [out, in] on inputs of ``shape``, its
    entries placed from the kernel by index arithmetic (each is one weight: an input pixel reaches
    an output through at most one tap; ``out`` the output shape), or None for a layout it does not
    cover (string padding, other padding modes): :func:`_dense_operator` then builds it.

    Both layers are placed as a transposed convolution from a small grid to a large one: small
    position i, tap u -> large position s i - p + d u, small channel c -> the large channels of its
    group. A ConvTranspose2d is that map from its input; a Conv2d is its adjoint (the same weight
    array, small grid = its output), so its matrix is the transpose."""
    if getattr(layer, "padding_mode", "zeros") != "zeros" or any(not isinstance(q, int) for q in layer.padding):
        return None
    w = layer.weight.detach().to(torch.float64).cpu()  # [C_small, C_large / groups, kh, kw] for both
    small, large = (shape, out) if isinstance(layer, nn.ConvTranspose2d) else (out, shape)
    (cs, hs, ws), (cl, hl, wl) = (tuple(int(v) for v in t) for t in (small, large))
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    c_group, kh, kw = w.shape[1:]
    c = torch.arange(cs).view(-1, 1, 1, 1, 1, 1)
    o = (c // (cs // layer.groups)) * c_group + torch.arange(c_group).view(1, -1, 1, 1, 1, 1)
    i = torch.arange(hs).view(1, 1, -1, 1, 1, 1)
    j = torch.arange(ws).view(1, 1, 1, -1, 1, 1)
    y = sh * i - ph + dh * torch.arange(kh).view(1, 1, 1, 1, -1, 1)
    x = sw * j - pw + dw * torch.arange(kw).view(1, 1, 1, 1, 1, -1)
    c, o, i, j, y, x, vals = torch.broadcast_tensors(c, o, i, j, y, x, w.view(cs, c_group, 1, 1, kh, kw))
    ok = (y >= 0) & (y < hl) & (x >= 0) & (x < wl) & (vals != 0)
    rows = ((o * hl + y) * wl + x)[ok].numpy()
    cols = ((c * hs + i) * ws + j)[ok].numpy()
    placed = scipy.sparse.csr_matrix((vals[ok].numpy(), (rows, cols)), shape=(cl * hl * wl, cs * hs * ws))
    return placed if isinstance(layer, nn.ConvTranspose2d) else placed.T.tocsr()


def dense_norm(a: torch.Tensor | scipy.sparse.spmatrix) -> float:
    """The spectral norm of a matrix (dense, or a scipy sparse one), rounded up to a true upper
    bound: the square root of the largest eigenvalue of its smaller Gram matrix, in float64. The
    Gram matrix is a sparse product (a convolution's operator is mostly zeros) and only the top
    eigenvalue is computed (LAPACK dsyevr): the conv VAE's 6,272 x 3,136 operators take ~2 s each,
    against 11 s for an SVD of the rectangle.

    Rounding: each computed Gram entry sums at most m products, so it is within gamma_m of
    |a|^T |a| elementwise, a matrix of norm <= gamma_m ||a||_F^2; the eigenvalue solver is backward
    stable (exact for a matrix within p(n) 2^-53 ||G|| of the computed Gram matrix, n its order).
    The slack 8 (m + n) 2^-53 ||a||_F^2 covers both, and a relative 1e-9 the rest.

    The matrix is first scaled by a power of two (exact) so that its largest entry lies in
    [1/2, 1): the Gram matrix of tiny weights would otherwise underflow to zero (a norm of 1e-300
    for weights of 1e-170), and of huge ones overflow. Entries the scaling pushes below the
    smallest subnormal add at most sqrt(nnz) 2^-1074 to the norm, which is added."""
    if isinstance(a, torch.Tensor):
        a = scipy.sparse.csr_matrix(a.detach().to(torch.float64).cpu().numpy())
    a = scipy.sparse.csr_matrix(a, dtype="float64")
    if a.shape[0] == 0 or a.shape[1] == 0 or a.nnz == 0:
        return 0.0
    top = float(abs(a).max())
    if top == 0.0:
        return 0.0
    if not math.isfinite(top):
        return math.inf
    e = math.frexp(top)[1]  # top = f 2^e with f in [1/2, 1)
    a = a * math.ldexp(1.0, -e)
    m, n = max(a.shape), min(a.shape)
    g = (a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T).toarray()
    lam = float(scipy.linalg.eigh(g, eigvals_only=True, subset_by_index=[n - 1, n - 1], driver="evr")[0])
    slack = (m + n) * 2.0 ** -50 * float((a.data * a.data).sum())
    scaled = math.sqrt(max(lam, 0.0) * (1 + 1e-9) + slack) + math.sqrt(a.nnz) * 2.0 ** -1074
    return math.ldexp(scaled, e) + 1e-300


def conv_operator_norm(layer: nn.Conv2d | nn.ConvTranspose2d, shape: Sequence[int],
                       limit: int = 20_000_000) -> float | None:
    """The exact norm of a convolution's linear part on inputs of ``shape`` (:func:`dense_norm`
    of its operator, built sparse from the kernel), or None when the operator has more than
    ``limit`` entries (as a dense matrix: its Gram matrix and the eigenproblem grow with it)."""
    out = _out_shape(layer, shape)
    if math.prod(shape) * math.prod(out) > limit:
        return None
    op = _sparse_operator(layer, shape, out)
    return dense_norm(_dense_operator(layer, shape) if op is None else op)


def conv_periodic_bound(w: torch.Tensor, layer: torch.nn.Module, in_shape: tuple[int, ...]) -> float | None:
    """An upper bound on the norm of the convolution with kernel ``w`` at input shape ``in_shape``
    (groups 1, dilation 1, zero padding; else None): the exact norm of its periodic extension.

    View the layer as a transposed convolution from the small grid (a ConvTranspose2d's input, a
    Conv2d's output: a Conv2d is the adjoint of the transposed convolution with the same weight
    array, so it has the same norm) of size h per axis to the large one, output index m = s i + k
    before padding crops it. Those outputs lie in a window of s (h - 1) + k' positions (k' = k
    rounded up to a multiple of s, zero taps added); on a torus of n >= h - 1 + k'/s small-grid
    positions no two of them wrap onto each other, so the layer (a crop of that window, or for a
    Conv2d the adjoint of one after an isometric zero padding) is a compression of the torus
    operator C_n and ||T|| <= ||C_n||. C_n is block-diagonalised by the discrete Fourier
    transform: ||C_n|| = max over the n x n frequencies of the spectral norm of the [C_large s^2,
    C_small] matrix of the output phases' tap sums. Rounded up for float64's rounding."""
    if layer.groups != 1 or layer.dilation != (1, 1) or getattr(layer, "padding_mode", "zeros") != "zeros" or any(
            not isinstance(p, int) for p in layer.padding):
        return None
    w = w.detach().double().cpu()
    c_small, c_large = w.shape[0], w.shape[1]
    s, k = layer.stride, tuple(w.shape[2:])
    kp = [math.ceil(kk / ss) * ss for kk, ss in zip(k, s)]
    w = F.pad(w, (0, kp[1] - k[1], 0, kp[0] - k[0]))
    if isinstance(layer, torch.nn.ConvTranspose2d):
        small = in_shape[1:]
    else:
        small = [(h + 2 * p - kk) // ss + 1 for h, p, kk, ss in zip(in_shape[1:], layer.padding, k, s)]
    taps = [kk // ss for kk, ss in zip(kp, s)]
    n = [h + t + 1 for h, t in zip(small, taps)]
    phase = [torch.exp(1j * torch.outer(torch.arange(nn, dtype=torch.float64) * (2 * math.pi / nn),
                                         torch.arange(t, dtype=torch.float64))) for nn, t in zip(n, taps)]
    polyphase = w.reshape(c_small, c_large, taps[0], s[0], taps[1], s[1]).to(torch.complex128)
    a = torch.einsum("iopaqb,fp,gq->fgoabi", polyphase, phase[0], phase[1]).reshape(n[0] * n[1], -1, c_small)
    top = float(torch.linalg.matrix_norm(a, ord=2).max())
    return top * (1 + 1e-9) + 1e-12 * float(w.norm()) + 1e-300


def _out_shape(layer: nn.Module, shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    p = next(iter(layer.parameters()), None)
    with torch.no_grad():
        x = torch.zeros(1, *shape, dtype=p.dtype if p is not None else torch.float32,
                        device=p.device if p is not None else "cpu")
        return tuple(layer(x).shape[1:])


_is = runs_own_forward


def _check_unhooked(module: nn.Module, what: str) -> None:
    """Refuse a module with forward hooks (its own, its children's, or global ones): a bound of its
    layers would not cover what a hook does to their outputs."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        raise InputError(f"{what}: a global forward hook is registered; the bound covers the layers alone")
    for name, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            raise InputError(f"{what}: module {name or type(module).__name__!r} has a forward hook; "
                             "the bound covers the layers alone")


def _bound(module: nn.Module, shape: tuple[int, ...] | None) -> tuple[float, tuple[int, ...] | None]:
    """(bound, output shape) of one module on inputs of ``shape`` (None when unknown). Every branch
    checks that the module runs its class's own forward (:func:`_is`)."""
    m = module
    if _is(m, nn.Sequential):  # includes LipschitzMLP
        total = 1.0
        for child in m:
            b, shape = _bound(child, shape)
            total *= b
        return total, shape
    if _is(m, (nn.Linear, OrthoLinear)):
        return spectral_norm(m.weight), (*shape[:-1], m.out_features) if shape is not None else None
    if _is(m, (nn.Conv2d, nn.ConvTranspose2d)):
        b = conv_bound(m)
        if shape is not None:  # at a known input shape: the torus bound (milliseconds), exact when small
            bounds = (conv_periodic_bound(m.weight, m, shape), conv_operator_norm(m, shape, DENSE_LIMIT))
            b = min([b, *(v for v in bounds if v is not None)])
        return b, _out_shape(m, shape)
    if _is(m, _ONE):
        return 1.0, _out_shape(m, shape) if isinstance(m, (nn.Flatten, nn.Unflatten)) else shape
    if _is(m, nn.Softplus):
        if not float(m.threshold) >= SOFTPLUS_MIN_THRESHOLD:
            raise InputError(f"lipschitz_bound: {m!r} jumps by (log(1 + e^t) - t) / beta = "
                             f"{(math.log1p(math.exp(min(float(m.threshold), 700.0))) - float(m.threshold)) / float(m.beta):.3g} "
                             f"where beta x passes its threshold t, so it has no Lipschitz constant; "
                             f"use threshold >= {SOFTPLUS_MIN_THRESHOLD:g} (torch's default)")
        return 1.0, shape
    if _is(m, nn.LeakyReLU):
        return max(1.0, abs(float(m.negative_slope))), shape
    if _is(m, nn.ELU):
        return max(1.0, abs(float(m.alpha))), shape
    if _is(m, nn.Sigmoid):
        return 0.25, shape
    if _is(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d)):
        return (1.0 / (1.0 - m.p) if m.training and m.p < 1 else 1.0), shape
    if _is(m, MLPEncoder):
        return _bound(m.net, None if shape is None else (math.prod(shape),))
    if _is(m, (MLPDecoder, LipschitzDecoder)):
        b, _ = _bound(m.net, shape)
        return b, (*m.input_shape,)
    if _is(m, ConvEncoder):
        b1, s1 = _bound(m.features, shape)
        b2, s2 = _bound(m.head, None if s1 is None else (math.prod(s1),))
        return b1 * b2, s2
    if _is(m, ConvDecoder):
        b1, _ = _bound(m.head, shape)
        b2, s2 = _bound(m.deconv, tuple(m.grid))
        return b1 * b2, s2
    raise InputError(f"lipschitz_bound: unsupported layer {type(m).__name__} ({m!r:.80}); "
                     "supported: Linear, Conv2d, ConvTranspose2d, Sequential and known-Lipschitz activations, "
                     "each with its own forward")


def lipschitz_bound(module: nn.Module, input_shape: Sequence[int] | None = None) -> float:
    """A rigorous upper bound on the l2 Lipschitz constant of ``module`` (see the module docstring).

    ``input_shape`` (without the batch dimension) lets convolutions be measured exactly on that
    shape; the bound then holds for inputs of that shape.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"lipschitz_bound needs a torch.nn.Module, got {type(module).__name__}")
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    _check_unhooked(module, "lipschitz_bound")
    return float(_bound(module, shape)[0])


@dataclass(frozen=True)
class VAELipschitz:
    """Rigorous l2 Lipschitz upper bounds of a VAE's maps (all over the whole input space).

    mean: x -> mu(x).  log_sigma: x -> log sigma(x) (so |ln rho_i| <= ||ln rho|| <= log_sigma ||delta||).
    sigma: x -> sigma(x).  decoder: z -> g(z) (the reconstruction, incl. its final sigmoid).
    sigma_constant: True when sigma(x) does not depend on x.
    """

    mean: float
    log_sigma: float
    sigma: float
    decoder: float
    sigma_constant: bool = False


def _split_last(seq: nn.Sequential) -> tuple[float, nn.Linear]:
    """(bound of everything before the last Linear, the last Linear). ``seq`` must run
    ``nn.Sequential``'s own forward: a subclass with its own (a residual block) is not the chain of
    its layers, and rebuilding it as one would bound another function."""
    if not _is(seq, nn.Sequential):
        raise InputError(f"vae_lipschitz: the encoder's {type(seq).__name__} has its own forward (not a plain "
                         "chain of its layers); no Lipschitz bounds for it: pass the constants yourself")
    *head, last = list(seq)
    if not _is(last, nn.Linear):
        raise InputError(f"vae_lipschitz: expected the encoder to end in a Linear layer, got {type(last).__name__}")
    return lipschitz_bound(nn.Sequential(*head)), last


#: Per model: (its parameters' and buffers' content hash, modes, tau, shape; the constants).
_VAE_LIPSCHITZ: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> str:
    """A hash of every parameter's and buffer's name, dtype, shape and bytes, and of every module's
    class and plain settings (numbers, strings, flags and tuples of them: an OrthoLinear's scale,
    an ELU's alpha, a mode), in milliseconds for a conv VAE. Content, not tensor versions and
    addresses: a stale constant would make a rigorous radius too large, an edit through ``.data``
    leaves the version alone, and a replaced tensor can reuse a freed address with its version."""
    h = hash_arrays(hashlib.blake2b(digest_size=20), (*model.named_parameters(), *model.named_buffers()))
    h.update(repr(structure_key(model)).encode())
    return h.hexdigest()


def latent_width(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """The latent dimension d that ``model.encode`` really gives (one zero input of the model's
    input shape, no gradient), checked against ``model.latent_dim`` where the model states one: a
    model whose layers were replaced for another latent size but whose attribute was not updated
    would otherwise get its bounds split at the wrong row, and a rigorous radius too large."""
    shape = tuple(input_shape) if input_shape is not None else tuple(getattr(model, "input_shape", ()) or ())
    if not shape:
        raise InputError(f"{type(model).__name__} has no input_shape: the latent dimension cannot be checked")
    p = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    x = torch.zeros((1, *shape), dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    with torch.no_grad():
        mu = model.encode(x)[0]
    d = int(mu.shape[-1])
    stated = getattr(model, "latent_dim", None)
    if stated is not None and int(stated) != d:
        raise InputError(f"{type(model).__name__}.latent_dim is {stated} but its encoder gives {d} latent "
                         f"dimensions (layers replaced?): set model.latent_dim = {d}")
    return d


def vae_lipschitz(model: nn.Module, input_shape: Sequence[int] | None = None) -> VAELipschitz:
    """Lipschitz bounds for the encoder mean, log sigma, sigma and the decoder of a robvae model.

    robvae's VAE (mlp / conv): the encoder is one network ending in a Linear layer whose first d
    rows give mu and last d rows give s, so L_mu <= L(body) ||W[:d]||_2 and L_s <= L(body) ||W[d:]||_2.
    sigma = softplus(s) + tau elementwise, and d/ds log(softplus(s) + tau) = sigmoid(s) / (softplus(s)
    + tau) <= min(1, 1/tau) because log(1 + u) >= u / (1 + u) (u = e^s) gives softplus >= sigmoid;
    so L_logsigma <= min(1, 1/tau) L_s, and L_sigma <= L_s (softplus is 1-Lipschitz).
    The decoder is sigmoid(h(z)), L_g <= L(h) / 4.
    Lipschitz VAE (arch "lipschitz-mlp"): sigma = (cap / sqrt d) sigmoid(h_std), log sigmoid is
    1-Lipschitz, so L_logsigma <= L(h_std), L_sigma <= (cap / sqrt d) L(h_std) / 4 (0 when fixed).
    LinearVAE (docs/THEORY.md section 7): sigma_max(A), 0, 0, sigma_max(W).

    Computed once per model and weights (seconds for a conv VAE: its convolutions' exact norms):
    later calls return the same object while the parameters' and buffers' contents (a hash), the
    modes and tau are unchanged.
    """
    shape = tuple(input_shape) if input_shape is not None else tuple(getattr(model, "input_shape", ()) or ()) or None
    if not isinstance(model, (LinearVAE, VAE)):  # before hashing: adapters wrap models of ~100 M weights
        raise InputError(f"vae_lipschitz: no Lipschitz bounds for {type(model).__name__}; pass the constants yourself")
    base = LinearVAE if isinstance(model, LinearVAE) else VAE
    changed = [f for f in ("encode", "decode", "forward") if getattr(type(model), f) is not getattr(base, f) or f in vars(model)]
    if changed:
        raise InputError(f"vae_lipschitz: {type(model).__name__} overrides {', '.join(changed)} of robvae's "
                         f"{base.__name__}; its bounds cover robvae's own maps only (pass the constants yourself)")
    _check_unhooked(model, "vae_lipschitz")
    latent_width(model, shape)  # the bounds split the encoder's output at model.latent_dim
    key = (_fingerprint(model), tuple(m.training for m in model.modules()), float(getattr(model, "tau", 0.0)), shape)
    hit = _VAE_LIPSCHITZ.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    constants = _vae_lipschitz(model, shape)
    _VAE_LIPSCHITZ[model] = (key, constants)
    return constants


def _vae_lipschitz(model: nn.Module, shape: tuple[int, ...] | None) -> VAELipschitz:
    if isinstance(model, LinearVAE):
        return VAELipschitz(spectral_norm(model.A), 0.0, 0.0, spectral_norm(model.W), sigma_constant=True)
    if not isinstance(model, VAE):
        raise InputError(f"vae_lipschitz: no Lipschitz bounds for {type(model).__name__}; pass the constants yourself")
    enc, dec = model.encoder, model.decoder
    d = model.latent_dim
    if type(model.likelihood).mean is not _SigmoidMean.mean:
        raise InputError(f"vae_lipschitz: likelihood {type(model.likelihood).__name__} has its own mean; the "
                         "decoder's bound assumes g = sigmoid(h)")
    decoder = lipschitz_bound(dec, (d,)) / 4.0  # the mean reconstruction is sigmoid(h)
    if _is(enc, LipschitzEncoder):
        mean = lipschitz_bound(enc.mean)
        if enc.std is None:
            return VAELipschitz(mean, 0.0, 0.0, decoder, sigma_constant=True)
        ls = lipschitz_bound(enc.std)
        return VAELipschitz(mean, ls, enc.std_scale() * ls / 4.0, decoder)
    if _is(enc, MLPEncoder):
        body, last = _split_last(enc.net)
    elif _is(enc, ConvEncoder):
        feat = lipschitz_bound(enc.features, shape)
        head, last = _split_last(enc.head)
        body = feat * head
    else:
        raise InputError(f"vae_lipschitz: unsupported encoder {type(enc).__name__} (robvae's encoders, each with its own forward)")
    mean = body * spectral_norm(last.weight[:d])
    ls = body * spectral_norm(last.weight[d:])
    tau = float(model.tau)
    if not tau >= 0:  # ModelConfig refuses it; a tau set on the model itself is caught here
        raise InputError(f"vae_lipschitz: tau = {tau:g} < 0: d log sigma / ds = sigmoid(s) / (softplus(s) + tau) "
                         "has no bound; the encoder-variance floor tau must be >= 0")
    return VAELipschitz(mean, min(1.0, 1.0 / tau if tau > 0 else 1.0) * ls, ls, decoder)
