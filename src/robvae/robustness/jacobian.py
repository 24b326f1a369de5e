"""The encoder-mean Jacobian J(x) = d mu(x) / d x (d x D) and its norms (docs/THEORY.md sections 3 and 4).

- Frobenius  ||J||_F = sqrt(sum_ij J_ij^2)  (Theorem 1)
- spectral   ||J||_2 = largest singular value (<= ||J||_F)
- whitened   ||diag(1 / sigma(x)) J||_2, sigma held at sigma(x)

Exact: one forward pass and d reverse-mode passes (vmap of the vjp over the d latent rows),
chunked over the batch. Matrix-free: Hutchinson, E_v ||J v||^2 (v ~ N(0, I_D), jvp) or
E_u ||u^T J||^2 (u ~ N(0, I_d), vjp), probes a batch dimension; power iteration on J^T J
with jvp / vjp for the spectral norms, all inputs of the batch at once.

Rows of the batch must be processed independently by the encoder (no batch-norm in train mode).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import vjp, vmap

from ..attacks.pgd import unit_rows
from ..autodiff import jv_function, model_derivatives, reverse_jv
from ..models.fast_decode import CHUNK_ELEMENTS, batches
from ..rng import randn
from ..errors import InputError
from ..validation import check_count, check_size, check_x

KINDS = ("frobenius", "spectral", "whitened")
METHODS = ("auto", "exact", "hutchinson")

#: The largest exact Jacobian (d * D numbers for one input) that ``method="auto"`` builds; above
#: it the norms come from the matrix-free estimators (with a :class:`JacobianSizeWarning`). 2^24
#: numbers are 64 MiB in float32 for one input, and the d batched reverse passes hold d copies
#: of the encoder's activations (e.g. a 256x256 RGB latent-diffusion autoencoder: d * D ~ 8e8).
EXACT_MAX_ELEMENTS = 1 << 24


class JacobianSizeWarning(UserWarning):
    """The exact Jacobian would be too large: matrix-free estimates were used instead."""


def resolve_method(method: str, d: int, D: int, max_elements: int | None = None) -> str:
    """"exact" or "hutchinson": ``method`` itself, or for "auto" exact when d * D <= ``max_elements``
    (default :data:`EXACT_MAX_ELEMENTS`), else matrix-free with a :class:`JacobianSizeWarning`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    limit = EXACT_MAX_ELEMENTS if max_elements is None else max_elements
    if d * D <= limit:
        return "exact"
    warnings.warn(
        f"the exact encoder Jacobian would hold d * D = {d} * {D} = {d * D:.3g} numbers per input "
        f"(limit {limit:.3g}): using the matrix-free estimators (Hutchinson for the Frobenius norm, power "
        f"iteration for the spectral norms); these are estimates, not bounds, so radii built on them are too",
        JacobianSizeWarning, stacklevel=3)
    return "hutchinson"


def _mean_fn(model: torch.nn.Module, scale: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [b, *shape] -> mu(x) [b, d], divided by the fixed ``scale`` [b, d] when given (whitening)."""
    def f(xx: torch.Tensor) -> torch.Tensor:
        with model_derivatives("model.encode"):
            mu = model.encode(xx)[0]
        return mu if scale is None else mu / scale

    return f


def _jacobian_chunk(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """J for a chunk: one forward, d vjps batched with vmap -> [b, d, D]."""
    out, vjp_fn = vjp(f, x)
    b, d = out.shape
    eye = torch.eye(d, dtype=out.dtype, device=out.device)[:, None, :].expand(d, b, d)  # rows e_i for every input
    (rows,) = vmap(vjp_fn)(eye)  # [d, b, *shape]
    return rows.reshape(d, b, -1).transpose(0, 1)


def _latent_dim(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.inference_mode():
        return int(model.encode(x[:1])[0].shape[1])


def encoder_jacobian(model: torch.nn.Module, x: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """The exact encoder-mean Jacobian J_ij = d mu_i / d x_j: x [B, *shape] -> [B, d, D].

    ``chunk_size`` inputs per pass (default: so that a chunk's Jacobians hold about 4M numbers).
    """
    check_x(model, x)
    B, D = x.shape[0], x[0].numel()
    d = _latent_dim(model, x)
    size = check_size(chunk_size, "chunk_size") or max(1, CHUNK_ELEMENTS // (d * D))
    f = _mean_fn(model)
    with torch.inference_mode(False), torch.enable_grad():
        parts = [_jacobian_chunk(f, x[s].clone()).detach() for s in batches(B, size)]
    return torch.cat(parts, dim=0)


def _hutchinson_frobenius(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_probes: int, probe: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """sqrt(mean_k ||J u_k||^2) with Gaussian probes (a vmapped batch dimension) -> [B]."""
    B = x.shape[0]
    if probe == "vjp":
        out, vjp_fn = vjp(f, x)
        u = randn((n_probes, *out.shape), out, generator)  # [P, B, d]
        (g,) = vmap(vjp_fn)(u)  # [P, B, *shape]
        sq = g.reshape(n_probes, B, -1).pow(2).sum(-1)
    elif probe == "jvp":
        v = randn((n_probes, *x.shape), x, generator)  # [P, B, *shape]
        jv = vmap(jv_function(f, x))(v)  # [P, B, d]
        sq = jv.pow(2).sum(-1)
    else:
        raise ValueError(f"unknown probe {probe!r}; choose 'vjp' (u ~ N(0, I_d)) or 'jvp' (v ~ N(0, I_D))")
    return sq.mean(0).sqrt()


def _power_spectral(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_iter: int, generator: torch.Generator | None,
) -> torch.Tensor:
    """Power iteration on J^T J (v <- J^T J v / ||J^T J v||), per input -> ||J v|| ~ ||J||_2 [B]."""
    B = x.shape[0]
    out, vjp_fn = vjp(f, x)
    jv_fn = jv_function(f, x, vjp_fn, out)
    v = unit_rows(randn(x.shape, x, generator))
    est = torch.zeros(B, dtype=x.dtype, device=x.device)
    for _ in range(max(1, n_iter)):
        jv = jv_fn(v)  # [B, d]
        est = jv.norm(dim=1)
        (w,) = vjp_fn(jv)  # J^T J v
        v = unit_rows(w).contiguous()  # some layers (group norm) need contiguous tangents
    return jv_fn(v).norm(dim=1).maximum(est).detach()


def jacobian_norm(
    model: torch.nn.Module,
    x: torch.Tensor,
    kind: str = "frobenius",
    method: str = "auto",
    *,
    n_probes: int = 64,
    n_iter: int = 50,
    probe: str = "vjp",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A norm of the encoder-mean Jacobian per input: x [B, *shape] -> [B].

    kind: "frobenius" ||J||_F, "spectral" ||J||_2 or "whitened" ||diag(1/sigma(x)) J||_2.
    method: "exact" builds J (:func:`encoder_jacobian`) and takes the norm exactly (SVD for the
    spectral kinds); "hutchinson" is matrix-free: for "frobenius" the Hutchinson estimate
    sqrt(mean over ``n_probes`` probes of ||u^T J||^2) (``probe="vjp"``) or ||J v||^2
    (``probe="jvp"``), unbiased for ||J||_F^2; for the spectral kinds ``n_iter`` steps of power
    iteration on J^T J (a lower estimate converging to ||J||_2). "auto" (the default) is "exact"
    unless the Jacobian would exceed :data:`EXACT_MAX_ELEMENTS` numbers per input, then
    "hutchinson" with a :class:`JacobianSizeWarning` (see :func:`resolve_method`).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    check_x(model, x)
    if method == "auto":  # resolved here, so that a JacobianSizeWarning points at the caller
        method = resolve_method(method, _latent_dim(model, x), x[0].numel())
    return getattr(jacobian_norms(model, x, (kind,), method=method, n_probes=n_probes, n_iter=n_iter, probe=probe,
                                  chunk_size=chunk_size, generator=generator), kind)


@dataclass
class JacobianNorms:
    """The encoder-Jacobian norms of a batch, each [B] (NaN where not requested).

    method: "exact" (from the full Jacobian) or "hutchinson" (matrix-free estimates, see
    :func:`jacobian_norm`).
    """

    frobenius: torch.Tensor
    spectral: torch.Tensor
    whitened: torch.Tensor
    method: str


def jacobian_norms(
    model: torch.nn.Module,
    x: torch.Tensor,
    norms: tuple[str, ...] = KINDS,
    *,
    method: str = "auto",
    sigma: torch.Tensor | None = None,
    max_elements: int | None = None,
    n_probes: int = 64,
    n_iter: int = 50,
    probe: str = "vjp",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> JacobianNorms:
    """The requested ``norms`` of J(x) at once: one exact Jacobian for all of them, or (when the
    exact Jacobian would be too large, see :func:`resolve_method`) the matrix-free estimators.

    ``sigma`` [B, d]: sigma(x) for the whitened norm when already at hand. ``probe``, ``chunk_size``:
    as in :func:`jacobian_norm`.
    """
    if isinstance(norms, str):  # set("frobenius") is its letters
        raise InputError(f"norms: a tuple of names, e.g. ({norms!r},); got the string {norms!r}")
    unknown = set(norms) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown norms {sorted(unknown)}; choose from {', '.join(KINDS)}")
    check_count(n_probes, 1, "n_probes")  # 0 failed inside torch; n_iter 0 returned the random start's norm
    check_count(n_iter, 1, "n_iter")
    check_x(model, x)
    nan = torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device)
    out = {k: nan for k in KINDS}
    if not norms:
        return JacobianNorms(**out, method="none")
    method = resolve_method(method, _latent_dim(model, x), x[0].numel(), max_elements)
    if "whitened" in norms and sigma is None:
        with torch.inference_mode():
            sigma = model.encode(x)[1].clone()
    if method == "exact":
        J = encoder_jacobian(model, x, chunk_size=chunk_size)
        if "frobenius" in norms:
            out["frobenius"] = J.norm(dim=(1, 2))
        # the SVD has no half / bfloat16 kernels: those Jacobians are read in float32, the result cast back
        Jw = J.float() if J.dtype in (torch.float16, torch.bfloat16) else J
        if "spectral" in norms:
            out["spectral"] = torch.linalg.matrix_norm(Jw, ord=2).to(J.dtype)
        if "whitened" in norms:
            out["whitened"] = torch.linalg.matrix_norm(Jw / sigma[:, :, None].to(Jw.dtype), ord=2).to(J.dtype)
        return JacobianNorms(**out, method=method)
    with torch.inference_mode(False), torch.enable_grad():
        xc = x.clone()
        if "frobenius" in norms:
            out["frobenius"] = _hutchinson_frobenius(_mean_fn(model), xc, n_probes, probe, generator).detach()
        if "spectral" in norms:
            out["spectral"] = _power_spectral(_mean_fn(model), xc, n_iter, generator)
        if "whitened" in norms:
            out["whitened"] = _power_spectral(_mean_fn(model, sigma.clone()), xc, n_iter, generator)
    return JacobianNorms(**out, method=method)


@dataclass
class FirstOrderCheck:
    """What :func:`first_order_check` found, per input [B]: ``consistent`` (the autograd Jacobian
    describes the encoder mean at the scale eps), ``ratio`` (the largest ||mu(x+delta) - mu(x)|| /
    ||J delta|| over the directions; inf where J delta = 0 but mu moved), ``median_ratio`` (over
    the random directions), ``top_ratio`` (along J's own top right-singular direction)."""

    consistent: torch.Tensor
    ratio: torch.Tensor
    median_ratio: torch.Tensor
    top_ratio: torch.Tensor
    eps: float

    @property
    def fraction_inconsistent(self) -> float:
        return float((~self.consistent).double().mean())

    @property
    def typical_ratio(self) -> float:
        """The median over inputs of the per-input median ratio (1 for a smooth model at small eps)."""
        return float(self.median_ratio.double().median())


#: inputs checked together by :func:`first_order_check`
FIRST_ORDER_BATCH = 64


def first_order_check(model: torch.nn.Module, x: torch.Tensor, eps: float, *, n_dirs: int = 8,
                      factor: float = 4.0, power_iters: int = 12,
                      generator: torch.Generator | None = None) -> FirstOrderCheck:
    """Whether the encoder mean's autograd Jacobian J — the reverse-mode one that Theorem 1 and
    the gradient attacks read — describes mu at the scale of a certificate, per input. For
    ``n_dirs`` random directions delta of L2 norm ``eps`` (x + delta clipped to [0, 1]) the finite
    difference ||mu(x+delta) - mu(x)|| is compared with ||J delta|| (slack 1e-6 (||J delta|| + eps
    ||J||) plus the rounding of mu itself); an input is inconsistent when the difference exceeds
    ``factor`` ||J delta|| on over half of the directions, or when J delta = 0 on any direction
    along which mu moved; and along J's own top right-singular direction (``power_iters`` steps of
    power iteration) mu must move at least ||J delta|| / ``factor`` and at most ``factor`` ||J
    delta|| (a Jacobian rotated away from the model's, which would send the attacks the wrong way).
    A smooth network passes at any small eps (the difference is J delta + O(eps^2)); gradient
    masking fails it (a quantising step gives J = 0 while mu still moves; a gradient scaled down
    shows in ``typical_ratio``, which the benchmark also bounds). A constant encoder passes."""
    check_x(model, x)
    parts = [_first_order(model, x[s], eps, int(n_dirs), float(factor), int(power_iters), generator)
             for s in batches(x.shape[0], FIRST_ORDER_BATCH)]
    return FirstOrderCheck(*(torch.cat([p[k] for p in parts]) for k in range(4)), eps=float(eps))


def _first_order(model, x, eps, n_dirs, factor, power_iters, generator):
    B = x.shape[0]
    f = _mean_fn(model)
    with torch.inference_mode(False), torch.enable_grad():
        x0 = x.detach().clone()
        out, vjp_fn = vjp(f, x0)
        out = out.detach()
        jv_rev = reverse_jv(vjp_fn, out)  # reverse mode only: the Jacobian certify and the attacks use
        jv = lambda v: jv_rev(v).detach()  # noqa: E731
        (g,) = vjp_fn(torch.ones_like(out))
        scale = (g.reshape(B, -1).norm(dim=1) / math.sqrt(out.shape[1])).detach()
        tiny = 16 * torch.finfo(out.dtype).eps * out.reshape(B, -1).norm(dim=1)  # mu's own rounding

        def moved_and_pred(v):
            v = v / v.reshape(B, -1).norm(dim=1).clamp_min(1e-30).view(B, *([1] * (x.dim() - 1)))
            xd = (x0 + eps * v).clamp(0.0, 1.0)
            delta = (xd - x0).detach()
            pred = jv(delta).reshape(B, -1).norm(dim=1)
            with torch.no_grad():
                moved = (f(xd) - out).reshape(B, -1).norm(dim=1)
            return moved, pred, 1e-6 * (pred + eps * scale) + tiny

        fails = torch.zeros(B, dtype=torch.long, device=x.device)
        masked = torch.zeros(B, dtype=torch.bool, device=x.device)
        ratios = []
        for _ in range(n_dirs):
            moved, pred, slack = moved_and_pred(randn(x0.shape, x0, generator))
            fails += (moved > factor * pred + slack).long()
            masked |= (pred <= slack) & (moved > 2 * slack)
            ratios.append(_ratio(moved, pred, slack))
        r = torch.stack(ratios)  # [n_dirs, B]
        # J's top right-singular direction (power iteration on J^T J, reverse mode)
        v = randn(x0.shape, x0, generator)
        for _ in range(power_iters):
            w = vjp_fn(jv(v))[0].detach()
            v = w / w.reshape(B, -1).norm(dim=1).clamp_min(1e-30).view(B, *([1] * (x.dim() - 1)))
        moved, pred, slack = moved_and_pred(v)
        top = _ratio(moved, pred, slack)
        bad_top = (moved > factor * pred + slack) | (moved * factor + slack < pred)
    consistent = (2 * fails <= n_dirs) & ~masked & ~bad_top
    return consistent.cpu(), r.max(0).values.cpu(), r.median(0).values.cpu(), top.cpu()


def _ratio(moved: torch.Tensor, pred: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """moved / pred (float64), 1 where neither exceeds the slack, inf where only mu moved."""
    moved, pred, slack = moved.double(), pred.double(), slack.double()
    r = moved / pred.clamp_min(1e-300)
    r = torch.where(pred > slack, r, torch.where(moved > 2 * slack, torch.full_like(r, math.inf), torch.ones_like(r)))
    return r
