"""Checks on user-supplied inputs (images, perturbations, radii), shared by every estimator and attack."""

from __future__ import annotations

import math
import numbers
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
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
    if check_range:  # (detached: reading a tensor that requires grad as a number warns)
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{name} has values outside [0, 1] (min {lo:.4g}, max {hi:.4g})")
    return x


def _named(name: str) -> str:
    return f"{name} " if name else ""


def check_count(v, lo: int = 1, name: str = "") -> int:
    """``v`` as an int when it is an integer >= ``lo`` (numpy integers too, not a bool); else an
    InputError "NAME must be an integer >= LO, got V"."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise InputError(f"{_named(name)}must be an integer >= {lo}, got {v!r}")
    return int(v)


def check_size(v, name: str) -> int | None:
    """A chunk or batch size: None (the default, chosen by robvae) or an integer >= 1 (0, negative
    and fractional sizes were read as the default, as 1 or as no chunk at all)."""
    return None if v is None else check_count(v, 1, name)


def check_positive(v, name: str = "") -> float:
    """``v`` as a float when it is a finite number > 0 (not a bool); else an InputError."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
        raise InputError(f"{_named(name)}must be a finite number > 0, got {v!r}")
    return float(v)


#: the largest level alpha accepted (open): at alpha >= 1/2 a one-sided bound at confidence 1 - alpha
#: is no bound (Clopper-Pearson's lower end passed its upper end, the sound radius exceeded Theorem 1's)
MAX_LEVEL = 0.5


def check_level(v, name: str = "") -> float:
    """``v`` as a float when it is a level alpha in (0, 1/2) (confidence 1 - alpha above one half);
    else an InputError."""
    if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0 and v.dtype not in (torch.bool, np.bool_):
        v = v.item()  # a 0-d tensor or array, as numbers were taken before
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < MAX_LEVEL:
        raise InputError(f"{_named(name)}must be a level in (0, 0.5) (confidence 1 - alpha above one half), got {v!r}")
    return float(v)


def model_input_shape(model: torch.nn.Module) -> tuple[int, ...] | None:
    """The image shape a model expects, if it declares one (``model.input_shape``)."""
    shape = getattr(model, "input_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def check_x(model: torch.nn.Module, x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Validate a batch of images against the model (InputError): the images themselves (shape
    against ``model.input_shape``, finite, in [0, 1]), their dtype against the model's, and one
    encode / decode of them (:func:`check_model_outputs`), so that a model whose outputs break
    the protocol is refused before any estimate or attack is computed from them."""
    check_images(x, model_input_shape(model), name=name)
    check_model_outputs(model, x)
    return x


# --------------------------------------------------------------------------------------------
# Checks of a model's outputs against the protocol (robvae.models.protocol)
# --------------------------------------------------------------------------------------------

_SIGMA_HINT = " (is it a log-variance? encode must return the standard deviation, e.g. exp(0.5 * logvar))"


def _model_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """The floating dtypes of a module's parameters and buffers (empty for a plain object)."""
    tensors = []
    if isinstance(model, torch.nn.Module):
        tensors = [*model.parameters(), *model.buffers()]
    return {t.dtype for t in tensors if t.is_floating_point()}


def model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The model's floating dtype when its parameters and buffers have exactly one, else None."""
    dtypes = _model_dtypes(model)
    return next(iter(dtypes)) if len(dtypes) == 1 else None


def check_dtype(model: torch.nn.Module, x: torch.Tensor, name: str = "x") -> None:
    """InputError when ``x``'s dtype is none of the model's floating parameter / buffer dtypes."""
    dtypes = _model_dtypes(model)
    if dtypes and x.dtype not in dtypes:
        want = sorted(str(d).replace("torch.", "") for d in dtypes)[0]
        raise InputError(
            f"{name} has dtype {str(x.dtype).replace('torch.', '')} but the model's weights are {want}: "
            f"convert the input ({name}.to(torch.{want})) or the model (model.to({name}.dtype))"
        )


def _tensor_problems(t: object, what: str, rows: int, dtype: torch.dtype, shape: tuple[int, ...] | None,
                     device: torch.device) -> list[str]:
    """Problems of one returned tensor: type, device (the input's), shape (rows, or the exact
    ``shape``), dtype, NaN/inf."""
    if not isinstance(t, torch.Tensor):
        return [f"{what} as a {type(t).__name__}, not a torch.Tensor"]
    if t.device != device:  # before any value is read (a meta tensor has none; CUDA for CPU inputs)
        return [f"{what} on device {t.device}, but the input is on {device}"]
    out = []
    if shape is not None and tuple(t.shape) != shape:
        out.append(f"{what} of shape {tuple(t.shape)}, expected {shape}")
    elif shape is None and (t.dim() != 2 or t.shape[0] != rows):
        out.append(f"{what} of shape {tuple(t.shape)}, expected [{rows}, d] (one row per input)")
    if not t.is_floating_point():
        out.append(f"{what} of dtype {t.dtype}, expected a floating dtype")
    elif t.dtype != dtype:
        out.append(f"{what} of dtype {t.dtype}, but the input is {dtype}")
    elif not torch.isfinite(t).all():
        out.append(f"{what} with {int((~torch.isfinite(t)).sum())} NaN or inf values")
    return out


def _encode_problems(model: torch.nn.Module, x: torch.Tensor, out: object) -> list[str]:
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"a {type(out).__name__}" if not isinstance(out, (tuple, list)) else f"{len(out)} values"
        return [f"model.encode returned {got}; it must return the pair (mu, sigma) of shape [B, d] each"]
    mu, sigma = out
    problems = _tensor_problems(mu, "model.encode returned mu", x.shape[0], x.dtype, None, x.device)
    shape = tuple(mu.shape) if isinstance(mu, torch.Tensor) else None
    problems += _tensor_problems(sigma, "model.encode returned sigma", x.shape[0], x.dtype, shape, x.device)
    if not problems:
        bad = int((~(sigma > 0)).sum())
        if bad:
            problems.append(f"model.encode returned sigma with {bad} values <= 0{_SIGMA_HINT}")
    return problems


def checked_encode(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.encode(x)``, refused with an InputError naming the problem unless it returns
    (mu, sigma) of shape [B, d] each, of x's dtype, finite, with sigma > 0."""
    out = model.encode(x)
    problems = _encode_problems(model, x, out)
    if problems:
        raise InputError(problems[0])
    return out[0], out[1]


def checked_decode(model: torch.nn.Module, z: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``model.decode(z)``, refused with an InputError unless it returns [N, *shape] of z's dtype, finite."""
    out = model.decode(z)
    problems = _tensor_problems(out, "model.decode returned g(z)", z.shape[0], z.dtype,
                                (z.shape[0], *(int(s) for s in shape)), z.device)
    if problems:
        raise InputError(problems[0])
    return out


@dataclass
class ModelCheck:
    """What :func:`check_model` found: the shapes and dtypes of the model's outputs for ``x``, and
    every problem (an empty ``problems`` list means the model follows the protocol on ``x``).

    input_shape: x's image shape.  dtype: x's dtype.  model_dtypes: the model's floating dtypes.
    latent_dim: d (None if encode failed).  mu_shape / sigma_shape / decode_shape: what came back.
    sigma_min: the smallest sigma.  n_sigma_nonpositive: sigma values <= 0.  encode_finite /
    decode_finite: no NaN / inf in encode's / decode's outputs.
    """

    input_shape: tuple[int, ...]
    dtype: torch.dtype
    model_dtypes: tuple[torch.dtype, ...] = ()
    latent_dim: int | None = None
    mu_shape: tuple[int, ...] | None = None
    sigma_shape: tuple[int, ...] | None = None
    decode_shape: tuple[int, ...] | None = None
    sigma_min: float | None = None
    n_sigma_nonpositive: int | None = None
    encode_finite: bool | None = None
    decode_finite: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        """InputError with the first problem (and how many more there are)."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise InputError(self.problems[0] + more)

    def __str__(self) -> str:
        lines = [f"input: {tuple(self.input_shape)} {self.dtype}; model weights: "
                 f"{', '.join(str(d) for d in self.model_dtypes) or '-'}",
                 f"encode: mu {self.mu_shape}, sigma {self.sigma_shape}, sigma_min {self.sigma_min}, "
                 f"finite {self.encode_finite}",
                 f"decode(mu): {self.decode_shape}, finite {self.decode_finite}",
                 "ok" if self.ok else "problems:\n" + "\n".join(f"  - {p}" for p in self.problems)]
        return "\n".join(lines)


def check_model(model: torch.nn.Module, x: torch.Tensor) -> ModelCheck:
    """Run the model on the images ``x`` and report (a :class:`ModelCheck`) whether its outputs
    follow the protocol: encode(x) -> (mu, sigma) of shape [B, d] each, x's dtype, finite,
    sigma > 0; decode(mu) of x's shape and dtype, finite; x's dtype one of the model's; no batch
    norm or dropout in training mode; neither method edits its argument in place; both give the
    same outputs when called again (what every estimator checks before it runs).

    Bad images (not a float tensor, NaN, outside [0, 1]) raise InputError; problems of the model
    are collected in the report (``report.raise_if_failed()`` turns them into an InputError).
    """
    check_images(x, model_input_shape(model))
    rep = ModelCheck(input_shape=tuple(x.shape[1:]), dtype=x.dtype,
                     model_dtypes=tuple(sorted(_model_dtypes(model), key=str)))
    try:
        check_dtype(model, x)
    except InputError as e:
        rep.problems.append(str(e))
        return rep
    try:
        check_mode(model)
    except InputError as e:  # reported, and the outputs still looked at
        rep.problems.append(str(e))
    x_arg, x_base = fresh_copy(x)
    with torch.no_grad():
        try:
            out = model.encode(x_arg)
        except Exception as e:  # noqa: BLE001 - reported, with the model method named
            rep.problems.append(f"model.encode raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return rep
        if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
            mu, sigma = out
            rep.mu_shape, rep.sigma_shape = tuple(mu.shape), tuple(sigma.shape)
            rep.latent_dim = int(mu.shape[-1]) if mu.dim() else None
        if (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
                and mu.device == sigma.device == x.device):  # values are read on the input's device only
            rep.encode_finite = bool(torch.isfinite(mu).all() and torch.isfinite(sigma).all())
            if sigma.numel():
                rep.sigma_min = float(sigma.min())
                rep.n_sigma_nonpositive = int((~(sigma > 0)).sum())
        rep.problems += _encode_problems(model, x, out)
        if rep.problems:
            return rep
        z_arg, z_base = fresh_copy(out[0])
        try:
            dec = model.decode(z_arg)
        except Exception as e:  # noqa: BLE001
            rep.problems.append(f"model.decode raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return rep
        if isinstance(dec, torch.Tensor):
            rep.decode_shape = tuple(dec.shape)
            if dec.device == x.device:
                rep.decode_finite = bool(torch.isfinite(dec).all()) if dec.is_floating_point() else None
        rep.problems += _tensor_problems(dec, "model.decode returned g(mu)", x.shape[0], x.dtype, tuple(x.shape),
                                         x.device)
        if not rep.problems:
            try:  # an argument edited in place, then randomness (sampling, dropout in training mode)
                check_not_in_place(x_arg, x, z_arg, out[0], (x_base, z_base))
                check_deterministic(model, x, out, dec)
            except InputError as e:
                rep.problems.append(str(e))
        if not rep.problems:
            warn_if_out_of_range(model, dec)
    return rep


#: Inputs per encode / decode of :func:`check_model_outputs`: its memory does not grow with the
#: batch (the --r-relative calibration checks all of a command's inputs at once: 10,000 MNIST
#: images through the conv VAE's plain decode held ~1 GiB).
CHECK_BATCH = 256


def check_mode(model: torch.nn.Module) -> None:
    """InputError when a batch norm or a dropout layer (p > 0) of ``model`` is in training mode:
    its outputs then depend on the other inputs of the batch or on chance, so no estimate, bound
    or attack is reproducible (a batch norm also fails on one input)."""
    if not isinstance(model, torch.nn.Module):
        return
    active = sorted({type(m).__name__ for m in model.modules() if m.training and (
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        or (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0))})
    if active:
        raise InputError(f"the model is in training mode with {', '.join(active)} layers, whose outputs then depend "
                         "on the batch or on chance: call model.eval() first")
    if any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        raise InputError("the model's weights were made under torch.inference_mode (inference tensors), which "
                         "autograd cannot use for the Jacobians and attacks: build or load it outside "
                         "inference_mode (torch.no_grad() is fine)")


def check_model_outputs(model: torch.nn.Module, x: torch.Tensor) -> None:
    """The cheap check every estimator and attack runs first: the model's mode (:func:`check_mode`),
    then one encode and decode of ``x`` (no gradient, :data:`CHECK_BATCH` inputs at a time),
    InputError naming the model method and the problem."""
    check_mode(model)
    check_dtype(model, x)
    with torch.no_grad():
        for start in range(0, max(1, x.shape[0]), CHECK_BATCH):
            part = x[start:start + CHECK_BATCH]
            if start == 0:  # on copies: an encode / decode that edits its argument is named as such
                arg, arg_base = fresh_copy(part)
                mu, sigma = checked_encode(model, arg)
                z, z_base = fresh_copy(mu)
                out = checked_decode(model, z, tuple(x.shape[1:]))
                check_not_in_place(arg, part, z, mu, (arg_base, z_base))
                check_deterministic(model, part, (mu, sigma), out)
                warn_if_out_of_range(model, out)
            else:
                mu, sigma = checked_encode(model, part)
                checked_decode(model, mu, tuple(x.shape[1:]))


def fresh_copy(t: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """(a copy of ``t`` to hand to a model method, its version counter now): the copy of a tensor
    made under inference mode starts at version 1, not 0, so the counter is read, not assumed."""
    c = t.clone()
    return c, _version(c)


def check_not_in_place(x_arg: torch.Tensor, x: torch.Tensor, z_arg: torch.Tensor, z: torch.Tensor,
                       versions: tuple[int | None, int | None]) -> None:
    """InputError when encode changed its argument ``x_arg`` (a copy of ``x``) or decode changed
    ``z_arg`` (a copy of ``z``): robvae differentiates with respect to x and reuses the latents
    it decodes (mu(x) is the centre of every draw), so an in-place edit would corrupt both; it
    was reported as an encoder that is "not deterministic". ``versions``: the copies' version
    counters before the calls (:func:`fresh_copy`)."""
    for what, arg, orig, name, base in (("model.encode", x_arg, x, "x", versions[0]),
                                        ("model.decode", z_arg, z, "z", versions[1])):
        # an in-place edit bumps the version even where it changes no value (z.clamp_(-1, 1) of
        # latents within [-1, 1] passed unseen)
        if not torch.equal(arg, orig) or _version(arg) != base:
            raise InputError(f"{what} modifies its input {name} in place (e.g. {name}.clamp_()): use the out-of-place "
                             f"form ({name} = {name}.clamp(...))")


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None for an inference tensor, which keeps none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class DecoderRangeWarning(UserWarning):
    """``model.decode`` returns values far outside [0, 1] (logits? [-1, 1] images?) while the
    images are in [0, 1]: the distances robvae measures are then between those values."""


#: share of decoded pixels allowed beyond [-RANGE_SLACK, 1 + RANGE_SLACK] before
#: :func:`warn_if_out_of_range` warns (a Gaussian decoder's linear output overshoots a little)
RANGE_TOLERANCE = 0.01
RANGE_SLACK = 0.5

_RANGE_WARNED: weakref.WeakSet = weakref.WeakSet()


def warn_if_out_of_range(model: torch.nn.Module, decoded: torch.Tensor) -> bool:
    """Warn (a :class:`DecoderRangeWarning`, once per model) when more than
    :data:`RANGE_TOLERANCE` of the decoded values g(mu(x)) lie beyond [-0.5, 1.5]. The protocol
    asks for reconstructions on the images' scale, [0, 1]: a decoder returning logits (without
    its sigmoid) or [-1, 1] pixels still runs, but every r, distance and radius is then measured
    on that other scale. A model whose outputs are not images on purpose (robvae's linear VAE of
    the theory) sets ``decodes_images = False``. Returns whether the values are out of range."""
    if not getattr(model, "decodes_images", True):
        return False
    far = ((decoded < -RANGE_SLACK) | (decoded > 1 + RANGE_SLACK)).float().mean()
    if float(far) <= RANGE_TOLERANCE:
        return False
    try:
        first = model not in _RANGE_WARNED
        _RANGE_WARNED.add(model)
    except TypeError:  # not weak-referenceable: warn every time
        first = True
    if first:
        lo, hi = float(decoded.min()), float(decoded.max())
        warnings.warn(
            f"model.decode returns values in [{lo:.3g}, {hi:.3g}] for images in [0, 1] "
            f"({100 * float(far):.0f}% of them beyond [-0.5, 1.5]): logits or [-1, 1] pixels? robvae measures "
            "distances between decoded images and the images' scale is assumed; apply the sigmoid / "
            "rescale inside decode", DecoderRangeWarning, stacklevel=3)
    return True


#: inputs encoded and latents decoded a second time by :func:`check_deterministic`
DETERMINISM_ROWS = 4


def check_deterministic(model: torch.nn.Module, x: torch.Tensor, encoded: tuple[torch.Tensor, torch.Tensor],
                        decoded: torch.Tensor) -> None:
    """InputError unless encoding the first :data:`DETERMINISM_ROWS` inputs of ``x`` again gives
    the same (mu, sigma) and decoding their mu again the same g(mu) (to 1e-5 relative: CUDA
    kernels may add in another order). The certificates are about the functions mu, sigma and g;
    randomness inside encode or decode (sampling, ``F.dropout(training=True)``, noise) would make
    every estimate and radius silently wrong."""
    k = min(DETERMINISM_ROWS, x.shape[0])
    mu, sigma = encoded
    again = model.encode(x[:k])
    for name, a, b in (("mu", again[0], mu[:k]), ("sigma", again[1], sigma[:k]),
                       ("g(z)", model.decode(mu[:k]), decoded[:k])):
        if not _close(a, b):
            what = "model.decode" if name == "g(z)" else "model.encode"
            raise InputError(f"{what} is not deterministic: two calls on the same input gave different {name} "
                             "(sampling, noise or functional dropout inside it?); robvae certifies the functions "
                             "mu(x), sigma(x) and g(z): move the randomness out or disable it in eval mode")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    a, b = a.double(), b.double()
    return bool(((a - b).abs() <= 1e-5 * b.abs().clamp_min(1.0)).all())


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
    lo, hi = float(xd.detach().min()), float(xd.detach().max())
    if lo < -tol or hi > 1.0 + tol:
        raise InputError(f"x + delta has values outside [0, 1] (min {lo:.4g}, max {hi:.4g})")
    return xd.clamp(0.0, 1.0) - x


def host_numpy(t: torch.Tensor):
    """``t`` as a numpy array on the host (numpy has no bfloat16: those become float32, exactly)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def rounded(v: torch.Tensor, dtype: torch.dtype, down: bool) -> torch.Tensor:
    """``v`` (float64) in ``dtype``, rounded down (a lower bound stays below) or up: a plain cast
    rounds to nearest, which put 186 of 401 float32 Clopper-Pearson lower bounds above the float64
    one (by at most 3e-8), and a bfloat16 budget of 0.3 at 0.30078."""
    out = v.to(dtype)
    if out.dtype == v.dtype:
        return out
    wrong = out.to(v.dtype) > v if down else out.to(v.dtype) < v
    step = torch.full_like(out, -math.inf if down else math.inf)
    return torch.where(wrong, torch.nextafter(out, step), out)


def as_radius(r: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A radius r (a number or a [B] tensor) as a [B] tensor of ``like``'s device/dtype; r > 0.
    A number that ``like``'s dtype cannot hold is rounded down (bfloat16: 0.3 -> 0.2988), so no
    draw beyond the requested r counts as within it."""
    if isinstance(r, (list, tuple)):  # per-input radii as a list (as torch.as_tensor takes them)
        if not r or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in r):
            raise InputError(f"r must be a number or a [B] tensor of numbers, got {r!r}")
        r = torch.tensor([float(v) for v in r], dtype=torch.float64)
    if isinstance(r, bool) or not isinstance(r, (numbers.Real, torch.Tensor, np.ndarray)) or (
            isinstance(r, torch.Tensor) and (r.dtype == torch.bool or r.is_complex())) or (
            isinstance(r, np.ndarray) and r.dtype.kind not in "iuf"):  # True was r = 1, "0.1" a torch TypeError
        raise InputError(f"r must be a number or a [B] tensor of numbers, got {r!r}")
    rt = rounded(torch.as_tensor(r, device=like.device, dtype=torch.float64), like.dtype, down=True) \
        if not isinstance(r, torch.Tensor) or r.dtype != like.dtype else r.to(like.device)
    if rt.dim() == 0:
        rt = rt.expand(batch)
    if rt.shape != (batch,):
        raise InputError(f"r must be a number or a tensor of shape [{batch}], got shape {tuple(rt.shape)}")
    if not torch.isfinite(rt).all() or (rt <= 0).any():
        raise InputError("r must be finite and > 0")
    return rt.clone()
