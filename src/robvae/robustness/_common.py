"""Small helpers shared by the estimators and attacks (not public API).

Everything here follows the device and dtype of its input and takes any model following the
robvae protocol (``encode(x) -> (mu, sigma)``, ``decode(z) -> mean``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..validation import check_images, model_input_shape

#: Default number of scalar entries a chunk of decoder outputs may hold (about 32 MiB in float64).
CHUNK_ELEMENTS = 1 << 22

#: Default cap on the decoder rows (inputs x draws) of one decoder call on the CPU. Measured in
#: ``python -m benchmarks`` (docs/PERFORMANCE.md): a few thousand rows keep the GEMMs efficient
#: while the layer activations stay small enough to be reused by the allocator instead of being
#: mapped (and page-faulted) afresh for every call; larger calls were slower on the CPU.
CHUNK_ROWS_CPU = 1024

#: The same cap on accelerators, where larger calls keep the device busy.
CHUNK_ROWS_CUDA = 1 << 16


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


def _sigmoid_vae_parts(model: torch.nn.Module):
    """(decoder, kind) when ``model`` is robvae's own VAE with an unmodified decode (g = sigmoid of
    an MLPDecoder or ConvDecoder), else None: only then may :func:`flat_decode` run it its own way."""
    from ..models.likelihoods import BernoulliLikelihood, GaussianLikelihood
    from ..models.networks import ConvDecoder, MLPDecoder
    from ..models.vae import VAE

    if type(model).decode is not VAE.decode or not isinstance(model, VAE):
        return None
    lik = getattr(model, "likelihood", None)
    if type(lik) not in (BernoulliLikelihood, GaussianLikelihood) or type(lik).mean not in (
            BernoulliLikelihood.mean, GaussianLikelihood.mean):
        return None
    dec = model.decoder
    if type(dec) is MLPDecoder:
        return dec, "mlp"
    if type(dec) is ConvDecoder:
        return dec, "conv"
    return None


#: Sub-pixel kernels of transposed convolutions, cached per layer and weight version.
_SUBPIXEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: For a stride-2, 4x4, padding-1 transposed convolution, output row 2m + a takes input rows
#: m - 1 + p (p = 0, 1, 2, the position in a 3x3 window) through kernel row _TAPS[a][p].
_TAPS = ({0: 3, 1: 1}, {1: 2, 2: 0})


def _is_subpixel_layer(layer: torch.nn.Module) -> bool:
    """A ConvTranspose2d (k=4, s=2, p=1) with few output channels, where oneDNN's transposed
    convolution is slow (measured: 10x below the GEMM rate at 1 output channel): it runs as one
    3x3 convolution to 4 * Cout channels (one per output phase) and a pixel shuffle instead."""
    return (type(layer) is torch.nn.ConvTranspose2d and layer.kernel_size == (4, 4) and layer.stride == (2, 2)
            and layer.padding == (1, 1) and layer.output_padding == (0, 0) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.padding_mode == "zeros" and 4 * layer.out_channels <= layer.in_channels)


def _subpixel_kernel(layer: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = layer.weight  # [Cin, Cout, 4, 4]
    key = (w._version, w.data_ptr(), w.device, w.dtype,
           None if layer.bias is None else (layer.bias._version, layer.bias.data_ptr()))
    hit = _SUBPIXEL.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    cin, cout = w.shape[:2]
    k3 = w.new_zeros(cout, 2, 2, cin, 3, 3)
    for a in (0, 1):
        for b in (0, 1):
            for pa, ka in _TAPS[a].items():
                for pb, kb in _TAPS[b].items():
                    k3[:, a, b, :, pa, pb] = w[:, :, ka, kb].t()
    k3 = k3.reshape(cout * 4, cin, 3, 3).contiguous(memory_format=torch.channels_last)
    bias = None if layer.bias is None else layer.bias.detach().repeat_interleave(4)
    _SUBPIXEL[layer] = (key, k3, bias)
    return k3, bias


def _run(seq: torch.nn.Module, h: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Apply the layers of ``seq`` (nested Sequentials flattened); when no gradient is recorded
    (``inplace``) ReLUs work in place and thin transposed convolutions run sub-pixel."""
    for layer in seq.children() if isinstance(seq, torch.nn.Sequential) else (seq,):
        if isinstance(layer, torch.nn.Sequential):
            h = _run(layer, h, inplace)
        elif inplace and type(layer) is torch.nn.ReLU:
            h = h.relu_()
        elif inplace and _is_subpixel_layer(layer):
            k3, bias = _subpixel_kernel(layer)
            h = F.pixel_shuffle(F.conv2d(h, k3, bias, padding=1), 2)
        else:
            h = layer(h)
    return h


def flat_decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """g(z) flattened: z [N, d] -> [N, D].

    Any protocol model runs ``model.decode``. robvae's own VAE (unmodified decode) takes a faster
    route with the same numbers (to float rounding): the conv decoder's transposed convolutions run
    in channels-last memory format (oneDNN's fast kernels on the CPU), and when no gradient is
    recorded the ReLUs and the final sigmoid work in place (no extra activation buffers) and a
    thin last transposed convolution runs as a sub-pixel convolution (:func:`_is_subpixel_layer`).
    """
    parts = _sigmoid_vae_parts(model)
    if parts is None:
        return model.decode(z).flatten(1)
    dec, kind = parts
    inplace = torch.is_inference_mode_enabled() or not torch.is_grad_enabled()
    if kind == "mlp":
        h = _run(dec.net, z, inplace)
    else:
        h = _run(dec.head, z, inplace).view(z.shape[0], *dec.grid).contiguous(memory_format=torch.channels_last)
        h = _run(dec.deconv, h, inplace)
    h = h.reshape(z.shape[0], -1)
    return h.sigmoid_() if inplace else torch.sigmoid(h)


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


def default_chunk(n_samples: int, batch: int, numel: int, device: torch.device | str | None = None) -> int:
    """Draws per chunk so that ``batch * chunk * numel`` stays under :data:`CHUNK_ELEMENTS` and
    ``batch * chunk`` decoder rows under :data:`CHUNK_ROWS_CPU` (CPU) / :data:`CHUNK_ROWS_CUDA`."""
    cap = CHUNK_ROWS_CUDA if device is not None and torch.device(device).type == "cuda" else CHUNK_ROWS_CPU
    by_elements = CHUNK_ELEMENTS // max(1, batch * numel)
    by_rows = cap // max(1, batch)
    return max(1, min(n_samples, by_elements, by_rows))


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` elements."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def numel_of(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)
