"""The fast decode route: g(z) for many latent draws at once, and how many draws a decoder call takes.

Any protocol model runs ``model.decode``; robvae's own VAE (unmodified decode) takes a faster route
with the same numbers (see :func:`flat_decode`). Chunk sizes were measured in ``python -m benchmarks``
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import collections
import math
import numbers
import warnings
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _torch_module

from ..errors import InputError
from .likelihoods import BernoulliLikelihood, GaussianLikelihood
from .networks import ConvDecoder, MLPDecoder
from .vae import VAE

#: Default number of scalar entries a chunk of decoder outputs may hold (about 32 MiB in float64).
CHUNK_ELEMENTS = 1 << 22

#: Default cap on the decoder rows (inputs x draws) of one decoder call on the CPU. Measured in
#: ``python -m benchmarks`` (docs/PERFORMANCE.md): a few thousand rows keep the GEMMs efficient
#: while the layer activations stay small enough to be reused by the allocator instead of being
#: mapped (and page-faulted) afresh for every call; larger calls were slower on the CPU.
CHUNK_ROWS_CPU = 1024

#: The same cap for robvae's conv decoder on the CPU, whose layer activations per row are larger
#: (about 12 k numbers): 512 rows keep them nearer the caches (measured faster than 256 or 1024).
CHUNK_ROWS_CPU_CONV = 512

#: The same cap on accelerators, where larger calls keep the device busy.
CHUNK_ROWS_CUDA = 1 << 16

#: Without a gradient, :func:`flat_decode` decodes a multiple of this many rows (the last row
#: repeated, the extra rows dropped). Matrix-product kernels treat a remainder of rows with other
#: code: decoding 37 rows of a 1,024-row chunk again gave different last bits for some rows of the
#: MLP decoder (sizes up to 333), and torch runs a 1x1 or stride-1 convolution of fewer than 16
#: images with another kernel than of more; a multiple of 16 gave the chunk's bits for every size
#: tried with float32 decoders. Counts decided again on a subset of rows (the bfloat16 route,
#: inputs still drawing under early abstention) rely on getting the same bits as their chunk; since
#: that is a property of the kernels, not a theorem, :func:`rows_independent` checks it per model.
ROW_ALIGN = 16

#: :func:`rows_independent`'s check: subsets of these sizes (and of about half the batch) of a
#: batch of fixed latent rows as large as a decoder call (:func:`row_cap`, at most 1,024 rows).
INDEPENDENCE_SIZES = (1, 2, 3, 5, 8, 13, 16, 17, 31, 33, 64, 100, 257)


def runs_own_forward(m: torch.nn.Module, cls: type | tuple[type, ...]) -> bool:
    """``m`` is a ``cls`` that runs that class's own forward (not a subclass's or an instance's):
    an ``nn.Sequential`` subclass with a forward of its own (a residual block) is not the chain
    of its layers."""
    classes = cls if isinstance(cls, tuple) else (cls,)
    called = all(getattr(type(m), f) is getattr(torch.nn.Module, f) for f in _CALL_PATH)  # m(x) runs forward
    return (called and any(isinstance(m, c) and type(m).forward is c.forward for c in classes)
            and not {"forward", *_CALL_PATH} & vars(m).keys())


#: What ``m(x)`` goes through before ``forward``: a class or an instance replacing one of these
#: computes something else than its forward.
_CALL_PATH = ("__call__", "_call_impl", "_wrapped_call_impl")


#: The layer types robvae's own decoders are built from (exact types: a subclass may compute
#: something else); a decoder holding any other module takes the checked route of users' models.
_OWN_LAYERS = (torch.nn.Sequential, torch.nn.Linear, torch.nn.ConvTranspose2d, torch.nn.ReLU, torch.nn.ELU,
               torch.nn.Tanh, torch.nn.Softplus)


def _sigmoid_vae_decoder(model: torch.nn.Module):
    """The decoder when ``model`` is robvae's own VAE with an unmodified decode (g = sigmoid of an
    MLPDecoder or ConvDecoder made of robvae's own layer types, :data:`_OWN_LAYERS`), else None:
    only then may :func:`flat_decode` run it its own way, unchecked."""
    if type(model).decode is not VAE.decode or not isinstance(model, VAE) or _has_hooks_or_overrides(model):
        return None
    lik = getattr(model, "likelihood", None)
    if type(lik) not in (BernoulliLikelihood, GaussianLikelihood):  # (their mean is sigmoid)
        return None
    dec = model.decoder
    if type(dec) not in (MLPDecoder, ConvDecoder):
        return None
    return dec if all(type(m) in _OWN_LAYERS for m in dec.modules() if m is not dec) else None


def _has_hooks_or_overrides(model: torch.nn.Module) -> bool:
    """True when a forward hook or pre-hook is registered on the model or on any module of its
    decoder and likelihood (or globally, torch.nn.modules.module.register_module_forward_hook),
    or a decode / forward is overridden on an instance: the fast route would skip them, so
    :func:`flat_decode` then runs ``model.decode``."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        return True
    if "decode" in vars(model) or "forward" in vars(model):
        return True
    mods = [model]
    for name in ("decoder", "likelihood"):
        sub = getattr(model, name, None)
        if isinstance(sub, torch.nn.Module):
            mods.extend(sub.modules())
    return any(m._forward_hooks or m._forward_pre_hooks or {"forward", *_CALL_PATH} & vars(m).keys() for m in mods)


#: Derived weights (GEMM layouts of transposed convolutions, row-permuted linear layers), cached
#: per layer and recomputed when a weight or bias changes (in place or replaced).
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: For a stride-2, 4x4, padding-1 transposed convolution, output row 2m + a takes input row
#: m - 1 + p through kernel row _TAPS[a][p] (p = 1 for both phases, plus p = 0 or 2).
_TAPS = ({0: 3, 1: 1}, {1: 2, 2: 0})


def _key(layer: torch.nn.Module) -> tuple:
    w, b = layer.weight, layer.bias
    return (version(w), w.data_ptr(), w.device, w.dtype, None if b is None else (version(b), b.data_ptr()))


def version(t: torch.Tensor) -> int:
    """A tensor's version counter, or -1 for an inference tensor (made under
    ``torch.inference_mode``, which keeps none): the caches that need more check the numbers."""
    return -1 if t.is_inference() else t._version


def _cached(table: weakref.WeakKeyDictionary, owner, key: tuple, make, tensors=lambda: (), content: bool = False):
    """``make()``, kept in ``table`` for ``owner`` until ``key`` changes; None when ``owner``
    cannot be a weak key (then nothing is made). The keys hold tensors' (version, address).

    ``content``: the entry also keeps a copy of ``tensors()`` (:func:`snapshot`) and is made
    again when their numbers differ from it (:func:`unchanged`): an edit through ``.data`` (weight
    clipping, some optimisers) leaves a tensor's version alone, and a replaced tensor can reuse a
    freed address with an equal version. The check reads the tensors once per call, next to a
    decode that multiplies with them. Without it, the entry keeps the storages of ``tensors()``
    alive (:func:`keep_alive`), so at least no other tensor takes their addresses."""
    try:
        hit = table.get(owner)
    except TypeError:  # not weak-referenceable
        return None
    if hit is None or hit[0] != key or (content and not unchanged(hit[2], tensors())):
        ts = tuple(tensors())
        hit = (key, make(), snapshot(ts) if content else keep_alive(ts))
        table[owner] = hit
    return hit[1]


def keep_alive(tensors) -> tuple:
    """References to the storages of ``tensors`` (None skipped), for a cache entry keyed by addresses."""
    return tuple(t.untyped_storage() for t in tensors if t is not None)


def snapshot(tensors) -> tuple:
    """Copies of ``tensors`` (None kept) that a cache entry is checked against (:func:`unchanged`)."""
    with torch.no_grad():
        return tuple(None if t is None else t.detach().clone() for t in tensors)


def unchanged(snap: tuple, tensors) -> bool:
    """Whether ``tensors`` hold the same numbers (dtype, shape and device) as ``snap``."""
    ts = tuple(tensors)
    if len(ts) != len(snap):
        return False
    with torch.no_grad():
        return all((a is None) == (b is None) and (a is None or (
            a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and torch.equal(a, b.detach())))
            for a, b in zip(snap, ts))


def _derived(layer: torch.nn.Module, make) -> tuple:
    return _cached(_DERIVED, layer, _key(layer), torch.no_grad()(make), lambda: (layer.weight, layer.bias), content=True)


def _is_thin_deconv(layer: torch.nn.Module) -> bool:
    """A ConvTranspose2d (k=4, s=2, p=1) with few output channels, where oneDNN's transposed
    convolution is slow (measured: 10x below the GEMM rate at 1 output channel): it runs as one
    GEMM to the 16 kernel taps and an overlap-add of shifted planes instead (:func:`_thin_deconv`).
    On the CPU only: on CUDA the layer runs itself, as in ``model.decode`` (cuDNN's convolutions
    use TF32 by default and a float32 GEMM does not, so the two would differ by ~5e-4 per pixel,
    and a user decoder's rewrite would fail its check against ``model.decode``)."""
    return (type(layer) is torch.nn.ConvTranspose2d and layer.weight.device.type == "cpu"
            and layer.kernel_size == (4, 4) and layer.stride == (2, 2)
            and layer.padding == (1, 1) and layer.output_padding == (0, 0) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.padding_mode == "zeros" and 4 * layer.out_channels <= layer.in_channels)


def _phase(a: int, n: int) -> tuple[int, int, slice, slice]:
    """Output phase ``a`` (rows 2 m + a) along an axis of ``n`` input rows: (centre tap, edge tap,
    output slice, input slice), the edge tap taking input m - 1 + p, p = 2 a (0 or 2)."""
    edge = (slice(1, n), slice(0, n - 1)) if a == 0 else (slice(0, n - 1), slice(1, n))
    return _TAPS[a][1], _TAPS[a][2 * a], *edge


def _thin_deconv(layer: torch.nn.ConvTranspose2d, h: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """A thin k4 s2 p1 transposed convolution of ``h`` [N, Cin, H, W] (any memory format), then
    sigmoid when ``sigmoid``: one GEMM gives every input pixel's 16 taps per output channel as
    planes [Cout, 4, 4, N, H, W]; each of the 4 output phases is then bias + its centre tap + 3
    shifted taps (exactly the terms the transposed convolution sums), interleaved into NCHW by
    the last copy (the sigmoid fused into it). Only where no gradient is recorded."""
    wt, bias = _derived(layer, lambda: (
        layer.weight.detach().reshape(layer.in_channels, -1).t().contiguous(),  # [Cout*16, Cin]
        None if layer.bias is None else layer.bias.detach().view(-1, 1, 1, 1).clone()))
    N, C, H, W = h.shape
    cout = layer.out_channels
    rows = h.permute(0, 2, 3, 1).reshape(N * H * W, C)  # a view when h is channels-last
    y = torch.mm(wt, rows.t()).view(cout, 4, 4, N, H, W)
    ph = torch.empty((2, 2, cout, N, H, W), dtype=h.dtype, device=h.device)
    for a in (0, 1):
        ka, kea, om, im = _phase(a, H)  # centre tap, edge tap, edge output / input rows
        for b in (0, 1):
            kb, keb, on, in_ = _phase(b, W)
            o = ph[a, b]
            if bias is None:
                o.copy_(y[:, ka, kb])
            else:
                torch.add(y[:, ka, kb], bias, out=o)
            o[:, :, om, :] += y[:, kea, kb, :, im, :]
            o[:, :, :, on] += y[:, ka, keb, :, :, in_]
            o[:, :, om, on] += y[:, kea, keb, :, im, in_]
    out = torch.empty((N, cout, H, 2, W, 2), dtype=h.dtype, device=h.device)
    src = ph.permute(3, 2, 4, 0, 5, 1)
    if sigmoid:
        torch.sigmoid(src, out=out)
    else:
        out.copy_(src)
    return out.view(N, cout, 2 * H, 2 * W)


def _layers(seq: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of ``seq`` with nested plain Sequentials flattened (:func:`runs_own_forward`: a
    subclass with its own forward stays one layer); a module placed twice (one shared
    activation) runs twice, as in ``seq(h)`` (``children()`` would list it once)."""
    if not runs_own_forward(seq, torch.nn.Sequential):
        return [seq]
    return [leaf for layer in seq for leaf in _layers(layer)]


def _run(layers: list[torch.nn.Module], h: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Apply ``layers``; when no gradient is recorded (``inplace``) ReLUs work in place and thin
    transposed convolutions run as a GEMM and an overlap-add."""
    for layer in layers:
        if inplace and type(layer) is torch.nn.ReLU:
            h = h.relu_()
        elif inplace and _is_thin_deconv(layer):
            h = _thin_deconv(layer, h, sigmoid=False)
        else:
            h = layer(h)
    return h


def _hwc_linear(layer: torch.nn.Linear, h: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """``layer(h)`` viewed as [N, C, H, W] in channels-last memory: the weight rows are permuted
    (cached) so the GEMM writes (H, W, C) order directly and no layout copy is needed."""
    c, hh, ww = grid
    wp, bp = _derived(layer, lambda: (
        layer.weight.detach().view(c, hh, ww, -1).permute(1, 2, 0, 3).reshape(c * hh * ww, -1).contiguous(),
        None if layer.bias is None else layer.bias.detach().view(c, hh, ww).permute(1, 2, 0).reshape(-1).contiguous()))
    return F.linear(h, wp, bp).view(h.shape[0], hh, ww, c).permute(0, 3, 1, 2)


def flat_decode(model: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """g(z) flattened: z [N, d] -> [N, D].

    Any protocol model runs ``model.decode``. robvae's own VAE (unmodified decode) takes a faster
    route with the same numbers (to float rounding): the conv decoder's transposed convolutions run
    in channels-last memory format (oneDNN's fast kernels on the CPU), and when no gradient is
    recorded the ReLUs and the final sigmoid work in place (no extra activation buffers), the
    linear layer feeding the convolutions writes channels-last directly (permuted weight rows), and
    a thin transposed convolution runs as one GEMM and an overlap-add (:func:`_thin_deconv`),
    the last one with the sigmoid fused. Without a gradient, in eval mode, a row gets the same bits
    in any batch: the rows are padded to a multiple of :data:`ROW_ALIGN`.
    """
    inplace = torch.is_inference_mode_enabled() or not torch.is_grad_enabled()
    n = z.shape[0]
    # the same bits as in any aligned batch (ROW_ALIGN); not in training mode, where a batch norm's
    # statistics would see the extra rows
    if inplace and z.dim() == 2 and n % ROW_ALIGN and not getattr(model, "training", False):
        return _flat_decode(model, torch.cat([z, z[-1:].expand(ROW_ALIGN - n % ROW_ALIGN, -1)]), inplace)[:n]
    return _flat_decode(model, z, inplace)


def _flat_decode(model: torch.nn.Module, z: torch.Tensor, inplace: bool) -> torch.Tensor:
    dec = _sigmoid_vae_decoder(model)
    if dec is None:
        plan = _user_plan(model, z) if inplace else None
        if plan is None:
            return _own_output(model, model.decode(z), inplace)
        out = plan(z)
        if plan.spot_check(model, z, out):
            return out
        _PLANS[model] = (_plan_key(model, z), None, ())  # not this model's function: decode from now on
        warnings.warn(f"robvae: the fast decode route of {type(model).__name__} disagreed with model.decode on a "
                      "latent row the first check had not covered; model.decode is used from now on (earlier "
                      "results of this process may be affected: rerun them)", RuntimeWarning, stacklevel=3)
        return _own_output(model, model.decode(z), inplace)
    N = z.shape[0]
    if type(dec) is MLPDecoder:
        h = _run(_layers(dec.net), z, inplace)
    else:
        head, deconv = _layers(dec.head), _layers(dec.deconv)
        k = max((i for i, layer in enumerate(head) if type(layer) is torch.nn.Linear), default=None)
        if inplace and k is not None and head[k].out_features == math.prod(dec.grid):
            h = _hwc_linear(head[k], _run(head[:k], z, inplace), dec.grid)
            h = _run(head[k + 1:], h, inplace)  # elementwise activations keep the layout
        else:
            h = _run(head, z, inplace).view(N, *dec.grid).contiguous(memory_format=torch.channels_last)
        if inplace and _is_thin_deconv(deconv[-1]):
            return _thin_deconv(deconv[-1], _run(deconv[:-1], h, inplace), sigmoid=True).reshape(N, -1)
        h = _run(deconv, h, inplace)
    h = h.reshape(N, -1)
    return h.sigmoid_() if inplace else torch.sigmoid(h)


# --------------------------------------------------------------------------------------------
# The same route for users' own models: their decoder rewritten from standard layers
# --------------------------------------------------------------------------------------------

#: Elementwise activations the rewritten route understands, applied in place on fresh buffers.
_ACTIVATIONS = {
    torch.nn.ReLU: lambda m, h: h.relu_(),
    torch.nn.LeakyReLU: lambda m, h: F.leaky_relu_(h, m.negative_slope),
    torch.nn.Tanh: lambda m, h: h.tanh_(),
    torch.nn.Sigmoid: lambda m, h: h.sigmoid_(),
    torch.nn.ELU: lambda m, h: F.elu_(h, m.alpha),
    torch.nn.GELU: lambda m, h: F.gelu(h, approximate=m.approximate),
}

#: Per model: (key, plan or None). The key is the weights' versions, dtype, device and mode: any
#: change rebuilds the plan and checks it again against ``model.decode``.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat_layers(module: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The leaf layers of ``module`` in registration order (nested containers flattened), or None
    when a container is not a plain chain (a ModuleList/Dict, or a module with its own forward
    whose children are not simply applied in order: that is left to the numerical check)."""
    kids = list(module) if isinstance(module, torch.nn.Sequential) else list(module.children())  # repeats kept
    if not kids:
        return [module]
    if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        return None
    subs = [_flat_layers(k) for k in kids]
    return None if None in subs else [leaf for sub in subs for leaf in sub]


def _next_spatial(layers: list[torch.nn.Module], i: int) -> torch.nn.Module | None:
    """The first layer after ``i`` that is not an elementwise activation."""
    for layer in layers[i + 1:]:
        if type(layer) not in _ACTIVATIONS:
            return layer
    return None


def _grid_for(layer: torch.nn.Linear, nxt: torch.nn.Module | None) -> tuple[int, int, int] | None:
    """The image grid (C, H, W) a linear layer's output is reshaped to before a convolution:
    from an Unflatten, or (an implicit reshape in the decoder's forward) square with the
    convolution's input channels. The numerical check decides whether the guess was right."""
    if type(nxt) is torch.nn.Unflatten and nxt.dim in (1, -1) and len(nxt.unflattened_size) == 3:
        grid = tuple(int(v) for v in nxt.unflattened_size)
        return grid if math.prod(grid) == layer.out_features else None
    if type(nxt) in (torch.nn.ConvTranspose2d, torch.nn.Conv2d):
        c = nxt.in_channels
        hw = layer.out_features // c
        side = math.isqrt(hw)
        if c * side * side == layer.out_features:
            return (c, side, side)
    return None


def _compile(layers: list[torch.nn.Module], training: bool):
    """A function z [N, d] -> decoder output [N, D] (flat) built from ``layers``, or None when a
    layer is not understood. Linear layers feeding a convolution write channels-last directly
    (permuted weights, cached), convolutions run channels-last (oneDNN), thin k4 s2 p1 transposed
    convolutions as a GEMM and an overlap-add, activations in place (never on the caller's z)."""
    steps = []
    image = False  # is h [N, C, H, W] (channels-last) rather than [N, F]?
    skip_next_unflatten = False
    for i, layer in enumerate(layers):
        t = type(layer)
        if t in _ACTIVATIONS:
            act = _ACTIVATIONS[t]
            steps.append(lambda h, fresh, act=act, m=layer: (act(m, h) if fresh else act(m, h.clone()), True))
        elif t is torch.nn.Identity or (t is torch.nn.Dropout and not training):
            continue
        elif t is torch.nn.Linear:
            if image:
                return None
            grid = _grid_for(layer, _next_spatial(layers, i))
            if grid is not None:
                steps.append(lambda h, fresh, m=layer, grid=grid: (_hwc_linear(m, h, grid), True))
                image, skip_next_unflatten = True, type(_next_spatial(layers, i)) is torch.nn.Unflatten
            else:
                steps.append(lambda h, fresh, m=layer: (F.linear(h, m.weight, m.bias), True))
        elif t is torch.nn.Unflatten:
            if skip_next_unflatten:
                skip_next_unflatten = False
                continue
            if image or layer.dim not in (1, -1) or len(layer.unflattened_size) != 3:
                return None
            shape = tuple(int(v) for v in layer.unflattened_size)
            # a view of its input where the layout already matches (one channel): as fresh as its input
            steps.append(lambda h, fresh, shape=shape: (
                h.reshape(h.shape[0], *shape).contiguous(memory_format=torch.channels_last), fresh))
            image = True
        elif t is torch.nn.Flatten:
            if layer.start_dim != 1 or layer.end_dim != -1:
                return None
            steps.append(lambda h, fresh: (h.reshape(h.shape[0], -1), fresh))  # may be a view: as fresh as its input
            image = False
        elif t in (torch.nn.ConvTranspose2d, torch.nn.Conv2d):
            if not image:
                return None
            if _is_thin_deconv(layer):
                steps.append(lambda h, fresh, m=layer: (_thin_deconv(m, h, sigmoid=False), True))
            else:
                steps.append(lambda h, fresh, m=layer: (m(h.contiguous(memory_format=torch.channels_last)), True))
        else:
            return None

    def run(z: torch.Tensor) -> torch.Tensor:
        h, fresh = z, False
        for step in steps:
            h, fresh = step(h, fresh)
        return h.reshape(h.shape[0], -1) if fresh else h.reshape(h.shape[0], -1).clone()
    return run


def _own_output(model: torch.nn.Module, out: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``model.decode``'s output flattened, as a tensor the caller may overwrite (the distances
    are computed in place): a copy when it is a view (``expand`` of one image: one memory
    location for many elements), not contiguous, or shares memory with the model's own tensors
    (a decode returning a buffer would have been overwritten)."""
    if not inplace:
        return out.flatten(1)
    shared = out._base is not None or not out.is_contiguous()
    if not shared:
        ptr = out.untyped_storage().data_ptr()
        shared = any(t.untyped_storage().data_ptr() == ptr for t in (*model.parameters(), *model.buffers())) \
            if isinstance(model, torch.nn.Module) else True
    return (out.clone() if shared else out).flatten(1)


def _find_decoder(model: torch.nn.Module) -> torch.nn.Module | None:
    dec = getattr(model, "decoder", None)
    return dec if isinstance(dec, torch.nn.Module) else None


#: plain values a module's settings are made of (see :func:`structure_key`)
SIMPLE_SETTINGS = (bool, int, float, str, type(None))
_SIMPLE_TYPES = frozenset(SIMPLE_SETTINGS)
_CONTAINERS = frozenset((dict, set, list, collections.OrderedDict))  # a module's bookkeeping (hooks, ...)


def _simple(v) -> bool:
    return type(v) in _SIMPLE_TYPES or isinstance(v, SIMPLE_SETTINGS)


def structure_key(model: torch.nn.Module) -> tuple:
    """Every module's name, class and plain settings (numbers, strings, flags and tuples of them:
    an ELU's alpha, a convolution's stride, a flag the model's own ``decode`` reads), as one
    comparable tuple (tens of microseconds: it is compared on every decode call): a cache built
    from a model is stale when this changes even if no tensor did (a layer replaced or appended,
    an activation's setting, a model attribute)."""
    simple, plain = _SIMPLE_TYPES, SIMPLE_SETTINGS
    return tuple((name, type(m), tuple(
        (k, v) for k, v in m.__dict__.items()
        if type(v) in simple or (type(v) is tuple and all(_simple(e) for e in v)) or (
            type(v) not in _CONTAINERS and isinstance(v, plain))))
        for name, m in model.named_modules())


def _plan_key(model: torch.nn.Module, z: torch.Tensor) -> tuple:
    ts = [*model.parameters(), *model.buffers()]
    return (tuple((version(t), t.data_ptr()) for t in ts), z.dtype, z.device, model.training, z.shape[1],
            structure_key(model))


#: dtypes a user's decoder is rewritten for: in half / bfloat16 the rewrite's rounding differs
#: from ``model.decode``'s by more than the check could tell apart from a different function
PLAN_DTYPES = (torch.float32, torch.float64)


def _check_rows(z: torch.Tensor) -> torch.Tensor:
    """The rows a rewrite is checked on: 16 fixed latents at scale 2, 16 at scale 8, the latents
    of ``z`` (the first call's) with the largest and smallest value of each coordinate (at most
    32), so that what the decoder does far out (a clamp, a saturation) is seen, and 16 of its rows
    at random, where the data's latents are."""
    g = torch.Generator(device="cpu").manual_seed(20261129)
    fixed = torch.randn(32, z.shape[1], generator=g, dtype=torch.float64)
    fixed[:16] *= 2.0
    fixed[16:] *= 8.0
    zz = z.detach()
    extreme = torch.cat([zz.argmax(0), zz.argmin(0)]).unique()[:32] if zz.shape[0] else zz.new_zeros(0, dtype=torch.long)
    typical = torch.randperm(zz.shape[0], generator=g)[:16].to(zz.device)  # where the data's latents are
    return torch.cat([fixed.to(dtype=z.dtype, device=z.device), zz[extreme], zz[typical]])


def _matches(a: torch.Tensor, b: torch.Tensor, nonfinite: bool = False) -> bool:
    """Whether the rewrite's rows ``a`` equal ``model.decode``'s ``b`` (float32: 2e-5 relative to
    b's largest entry). A non-finite entry of b is a mismatch, except with ``nonfinite`` (the spot
    checks), where a has the same NaN / inf there: the caller's finiteness check then names the
    model's output, rather than a warning blaming the rewrite."""
    if a.shape != b.shape:
        return False
    finite = torch.isfinite(b)
    if not bool(finite.all()):
        same = torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[torch.isinf(b)], b[torch.isinf(b)])
        if not (nonfinite and same):
            return False
        a, b = a[finite], b[finite]
        if b.numel() == 0:
            return True
    tol = {torch.float64: 1e-10, torch.float32: 2e-5}[a.dtype]  # PLAN_DTYPES only
    scale = max(1.0, float(b.abs().max()))
    return bool(((a - b).abs() <= tol * scale).all())


def _build_plan(model: torch.nn.Module, z: torch.Tensor):
    """The rewritten decoder of a user's model, or None: the decoder's layers compiled by
    :func:`_compile`, then checked numerically against ``model.decode`` (as decoder(z), or
    sigmoid(decoder(z))) on the rows of :func:`_check_rows`: 32 fixed latent rows at two scales,
    z's most extreme rows per coordinate (at most 32) and 16 of its rows at random."""
    dec = _find_decoder(model)
    if dec is None or z.dim() != 2 or z.dtype not in PLAN_DTYPES:
        return None
    layers = _flat_layers(dec)
    run = None if layers is None else _compile(layers, model.training)
    if run is None:
        return None
    zc = _check_rows(z)
    try:
        arg = zc.clone()
        ref = model.decode(arg).flatten(1)
        if not torch.equal(arg, zc):  # decode edits its argument: the rewrite would not
            return None
        raw = run(zc)
    except Exception:  # a layer chain that does not fit (shapes): not understood
        return None
    for sigmoid in (False, True):
        if _matches(torch.sigmoid(raw) if sigmoid else raw, ref):
            return DecoderPlan(run, tuple(layers), sigmoid, reach=float(zc.abs().max()))
    return None


class DecoderPlan:
    """A user's decoder rewritten (:func:`_compile`) and checked against ``model.decode``:
    calling it gives g(z) flattened; ``layers`` is the checked chain of standard layers and
    ``sigmoid`` whether decode(z) = sigmoid(decoder(z)) (else decode(z) = decoder(z))."""

    def __init__(self, run, layers: tuple[torch.nn.Module, ...], sigmoid: bool, reach: float = 0.0):
        self.run, self.layers, self.sigmoid = run, layers, sigmoid
        self.reach = reach  # the largest |z_j| of a row checked against model.decode so far
        self.calls = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = self.run(z)
        return out.sigmoid_() if self.sigmoid else out

    def spot_check(self, model: torch.nn.Module, z: torch.Tensor, out: torch.Tensor) -> bool:
        """Whether ``out`` = this plan's g(z) agrees with ``model.decode`` on one row of ``z``, on
        every call: the row farthest out (largest |z_j|) when it reaches beyond every row checked
        so far (what a decoder does only far out: a clamp, a saturation), else a row that moves
        through the batch from call to call (what changed since the plan was built without
        touching a layer: a tensor attribute, a global, a branch on the data or the batch size).
        One ``model.decode`` row per call: about 4% of a call."""
        n = z.shape[0]
        if n == 0:
            return True
        far = z.detach().abs().amax(1)
        i = int(far.argmax())
        if float(far[i]) <= self.reach:
            i = (self.calls * 2654435761) % n  # a fixed, well-spread sequence of rows
        self.calls += 1
        if not _matches(out[i : i + 1], model.decode(z[i : i + 1].clone()).flatten(1), nonfinite=True):
            return False
        self.reach = max(self.reach, float(far[i]))
        return True


def decoder_plan(model: torch.nn.Module, z: torch.Tensor) -> DecoderPlan | None:
    """The checked layer chain of ``model``'s decoder for latents like ``z`` (robvae's own VAE or
    a user's model), or None when it is not understood, fails the check, or hooks are present."""
    with torch.inference_mode():
        return _user_plan(model, z)


def _user_plan(model: torch.nn.Module, z: torch.Tensor):
    """The checked, rewritten decode of a model that is not robvae's own VAE (cached per model
    and weights version), or None: then :func:`flat_decode` runs ``model.decode``. None also
    when hooks or instance overrides are present (the rewrite would skip them)."""
    if _has_hooks_or_overrides(model) or _find_decoder(model) is None:
        return None
    return _cached(_PLANS, model, _plan_key(model, z), lambda: _build_plan(model, z),
                   lambda: (*model.parameters(), *model.buffers()))


#: Per model: (key, whether :func:`flat_decode` gives a row the same bits in any subset of a batch).
_INDEPENDENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def rows_independent(model: torch.nn.Module, z: torch.Tensor) -> bool:
    """Whether :func:`flat_decode` gives each row the same bits whatever rows share its call, for
    latents like ``z`` at this process's thread count: checked once per model, weights, dtype,
    device, mode and thread count by decoding one call's worth of fixed latent rows (:func:`row_cap`,
    at most 1,024) at once and subsets of each size in :data:`INDEPENDENCE_SIZES` and of half the
    batch, bit for bit: a check, not a proof (a kernel may change path at a batch size not tried).
    The bfloat16 route's float32 redo and early abstention's decodes of the inputs still drawing
    rely on it; where it fails (float64 convolutions, some kernels at some thread counts) they keep
    every call's rows as without them (same counts, less speed). False on every device but the
    CPU: GPU libraries choose kernels by batch size up to the 65,536-row calls made there, far
    beyond any size a quick check could try."""
    if z.device.type != "cpu":
        return False
    key = (*_plan_key(model, z), torch.get_num_threads())
    got = _cached(_INDEPENDENT, model, key, lambda: _check_independence(model, z),
                  lambda: (*model.parameters(), *model.buffers()))
    return _check_independence(model, z) if got is None else got


def _check_independence(model: torch.nn.Module, z: torch.Tensor) -> bool:
    if z.dim() != 2:
        return False
    g = torch.Generator(device="cpu").manual_seed(20261130)
    rows = min(row_cap(z.device, model), 1024)
    zc = (2.0 * torch.randn(rows, z.shape[1], generator=g, dtype=torch.float64)).to(dtype=z.dtype, device=z.device)
    with torch.inference_mode():
        full = flat_decode(model, zc)
        for n in (*(m for m in INDEPENDENCE_SIZES if m < rows), rows // 2 + 3):
            idx = torch.randperm(rows, generator=g)[:n].to(z.device)
            if not torch.equal(flat_decode(model, zc[idx]), full[idx]):
                return False
    return True


def has_fast_route(model: torch.nn.Module, z: torch.Tensor) -> bool:
    """Whether :func:`flat_decode` runs ``model`` its own way for latents like ``z`` (robvae's VAE,
    or a user's decoder rewritten and checked), rather than calling ``model.decode``."""
    with torch.inference_mode():
        return _sigmoid_vae_decoder(model) is not None or _user_plan(model, z) is not None


#: The most Monte Carlo draws per estimate (2^40, about 1.1e12: weeks of decoding, and counts far
#: inside int64 with p = k / n exact in float64); 1e23 was taken and never ended (audit h80).
MAX_SAMPLES = 2**40


def draw_chunks(n_samples: int, chunk_size: int) -> Iterator[int]:
    """Sizes of the successive chunks of ``n_samples`` draws (each <= ``chunk_size``)."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or not 1 <= n_samples <= MAX_SAMPLES:
        raise InputError(f"n_samples must be an integer >= 1 and <= 2^40 (MAX_SAMPLES), got {n_samples!r}")
    n_samples = int(n_samples)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise InputError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")  # range() would yield nothing
    for start in range(0, n_samples, chunk_size):
        yield min(chunk_size, n_samples - start)


def row_cap(device: torch.device | str | None = None, model: torch.nn.Module | None = None) -> int:
    """Decoder rows per call: :data:`CHUNK_ROWS_CUDA` on CUDA, else :data:`CHUNK_ROWS_CPU_CONV` when
    ``model``'s decoder has convolutions, else :data:`CHUNK_ROWS_CPU`."""
    if device is not None and torch.device(device).type == "cuda":
        return CHUNK_ROWS_CUDA
    dec = None if model is None else _find_decoder(model)
    conv = dec is not None and any(isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)) for m in dec.modules())
    return CHUNK_ROWS_CPU_CONV if conv else CHUNK_ROWS_CPU


def default_chunk(n_samples: int, batch: int, numel: int, device: torch.device | str | None = None,
                  model: torch.nn.Module | None = None) -> int:
    """Draws per chunk so that ``batch * chunk * numel`` stays under :data:`CHUNK_ELEMENTS` and
    ``batch * chunk`` decoder rows under :func:`row_cap` (at least one draw: a batch of more inputs
    than that is decoded in groups of inputs, :func:`robvae.robustness.sampling.draw_distances`)."""
    by_elements = CHUNK_ELEMENTS // max(1, batch * numel)
    by_rows = row_cap(device, model) // max(1, batch)
    return max(1, min(n_samples, by_elements, by_rows))


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` elements."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
