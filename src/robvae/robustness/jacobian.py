"""The encoder-mean Jacobian J(x) = d mu(x) / d x (d x D) and its norms (SPEC 3 and 4).

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

from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

from ..models.fast_decode import CHUNK_ELEMENTS, batches
from ..rng import randn
from ..validation import check_x

KINDS = ("frobenius", "spectral", "whitened")
METHODS = ("exact", "hutchinson")


def _mean_fn(model: torch.nn.Module, scale: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x [b, *shape] -> mu(x) [b, d], divided by the fixed ``scale`` [b, d] when given (whitening)."""
    if scale is None:
        return lambda xx: model.encode(xx)[0]
    return lambda xx: model.encode(xx)[0] / scale


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
    size = chunk_size or max(1, CHUNK_ELEMENTS // (d * D))
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
        jv = vmap(lambda t: jvp(f, (x,), (t,))[1])(v)  # [P, B, d]
        sq = jv.pow(2).sum(-1)
    else:
        raise ValueError(f"unknown probe {probe!r}; choose 'vjp' (u ~ N(0, I_d)) or 'jvp' (v ~ N(0, I_D))")
    return sq.mean(0).sqrt()


def _power_spectral(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_iter: int, generator: torch.Generator | None,
) -> torch.Tensor:
    """Power iteration on J^T J (v <- J^T J v / ||J^T J v||), per input -> ||J v|| ~ ||J||_2 [B]."""
    B = x.shape[0]
    _, vjp_fn = vjp(f, x)
    v = randn(x.shape, x, generator)
    v = v / v.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny).view(B, *[1] * (x.dim() - 1))
    est = torch.zeros(B, dtype=x.dtype, device=x.device)
    for _ in range(max(1, n_iter)):
        jv = jvp(f, (x,), (v,))[1]  # [B, d]
        est = jv.norm(dim=1)
        (w,) = vjp_fn(jv)  # J^T J v
        wn = w.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        v = w / wn.view(B, *[1] * (x.dim() - 1))
    return jvp(f, (x,), (v,))[1].norm(dim=1).maximum(est).detach()


def jacobian_norm(
    model: torch.nn.Module,
    x: torch.Tensor,
    kind: str = "frobenius",
    method: str = "exact",
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
    iteration on J^T J (a lower estimate converging to ||J||_2).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    check_x(model, x)
    scale = None
    if kind == "whitened":
        with torch.inference_mode():
            scale = model.encode(x)[1].clone()
    if method == "exact":
        if kind == "frobenius":
            return encoder_jacobian(model, x, chunk_size=chunk_size).norm(dim=(1, 2))
        J = encoder_jacobian(model, x, chunk_size=chunk_size)
        if scale is not None:
            J = J / scale[:, :, None]
        return torch.linalg.matrix_norm(J, ord=2)
    with torch.inference_mode(False), torch.enable_grad():
        xc = x.clone()
        sc = None if scale is None else scale.clone()
        f = _mean_fn(model, sc)
        if kind == "frobenius":
            return _hutchinson_frobenius(f, xc, n_probes, probe, generator).detach()
        return _power_spectral(f, xc, n_iter, generator)
