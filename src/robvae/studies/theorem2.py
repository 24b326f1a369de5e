"""Theorem 2 checked numerically (docs/THEORY.md section 7).

Fixed linear-Gaussian decoder p(x|z) = N(W z, s^2 I) whose columns w_i are orthogonal (W^T W =
diag(|w_i|^2)), prior N(0, I). The beta-VAE optimum q*(z|x) ~ p(z) p(x|z)^(1/beta) is Gaussian:

    sigma_i*^2 = 1 / (1 + |w_i|^2 / (beta s^2)),    mu*(x) = diag(sigma*^2) W^T x / (beta s^2),

so the encoder-mean Jacobian is diag(sigma*^2) W^T / (beta s^2) with Frobenius norm
sqrt(sum_i sigma_i*^4 |w_i|^2) / (beta s^2). Both the growth of sigma and the shrinking of the
Jacobian with beta are the reasons the beta study's trends appear.

:func:`train_linear_encoder` fits an encoder with a linear mean A x and an input-independent
sigma (one parameter per latent axis) by maximising the beta-VAE objective against the fixed
decoder with L-BFGS (plain torch), on data drawn from the decoder's own generative model. The expected
log-likelihood E_q log N(x; W z, s^2 I) is computed in closed form,
-(|x - W mu|^2 + sum_i |w_i|^2 sigma_i^2) / (2 s^2) + const, and the KL analytically (this is the
beta-VAE objective itself, without reparameterisation noise), so the fit converges to the
optimum up to optimisation error only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..fileio import write_csv, write_json
from ..objectives import gaussian_kl
from ..report.figures import theorem2_figure
from ..validation import check_positive
from ..report.html import write_study_meta
from .experiments import distinct, fmt_list


@dataclass
class Theorem2Config:
    """column_norms: |w_i| (one per latent axis, so d = len); data_dim: D >= d; noise_scale: s;
    n_data: training inputs drawn from the generative model; steps: L-BFGS iterations; seed."""

    column_norms: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    data_dim: int = 16
    noise_scale: float = 0.5
    n_data: int = 1000
    steps: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        self.column_norms = tuple(float(c) for c in self.column_norms)
        if len(self.column_norms) < 1 or any(c <= 0 for c in self.column_norms):
            raise ValueError("column_norms must be a non-empty list of positive numbers")
        if self.data_dim < len(self.column_norms):
            raise ValueError(f"data_dim ({self.data_dim}) must be >= the latent dimension ({len(self.column_norms)})")
        if not self.noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale}")


def make_decoder(config: Theorem2Config) -> torch.Tensor:
    """W [D, d] with orthogonal columns of norms ``config.column_norms`` (float64)."""
    g = torch.Generator().manual_seed(config.seed)
    d = len(config.column_norms)
    Q, _ = torch.linalg.qr(torch.randn(config.data_dim, d, generator=g, dtype=torch.float64))
    return Q * torch.tensor(config.column_norms, dtype=torch.float64)[None, :]


def exact_optimum(W: torch.Tensor, noise_scale: float, beta: float) -> dict[str, Any]:
    """The closed-form beta-VAE optimum for the decoder W: sigma* [d], Jacobian [d, D] and its norm.

    Theorem 2's setting: W [D, d] with orthogonal columns, noise_scale s > 0 and beta > 0 (InputError
    otherwise: for other columns the formula is not the optimum, and 0 / NaN settings gave 0 / NaN)."""
    check_positive(noise_scale, "noise_scale")
    check_positive(beta, "beta")
    if W.dim() != 2:
        raise InputError(f"exact_optimum: W must be a matrix [D, d], got shape {tuple(W.shape)}")
    gram = W.T @ W
    off = gram - torch.diag(gram.diagonal())
    if float(off.abs().max()) > 1e-6 * float(gram.diagonal().max()):
        raise InputError("exact_optimum: Theorem 2's closed form holds for a decoder W [D, d] with orthogonal columns "
                         f"(W^T W diagonal); the largest off-diagonal entry of W^T W is {float(off.abs().max()):.3g}")
    col2 = (W * W).sum(0)
    var = 1.0 / (1.0 + col2 / (beta * noise_scale**2))
    J = var[:, None] * W.T / (beta * noise_scale**2)
    return {"sigma": var.sqrt(), "jacobian": J, "jac_frobenius": float(torch.linalg.matrix_norm(J))}


def train_linear_encoder(W: torch.Tensor, config: Theorem2Config, beta: float) -> dict[str, Any]:
    """Fit mu(x) = A x, sigma = exp(s) (input-independent) with the beta-VAE objective.

    Returns {"A" [d, D], "sigma" [d], "jac_frobenius", "objective"} (objective per input)."""
    g = torch.Generator().manual_seed(config.seed + 1)
    D, d = W.shape
    s = config.noise_scale
    z = torch.randn(config.n_data, d, generator=g, dtype=torch.float64)
    x = z @ W.T + s * torch.randn(config.n_data, D, generator=g, dtype=torch.float64)
    A = torch.zeros(d, D, dtype=torch.float64, requires_grad=True)
    raw = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    col2 = (W * W).sum(0)
    opt = torch.optim.LBFGS([A, raw], lr=1.0, max_iter=config.steps, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        mu = x @ A.T
        sigma = raw.exp().expand_as(mu)
        exp_loglik = -((x - mu @ W.T).pow(2).sum(1) + (col2 * sigma.pow(2)).sum(1)) / (2 * s**2)
        return (exp_loglik - beta * gaussian_kl(mu, sigma)).mean()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = -objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return {"A": A.detach().clone(), "sigma": raw.exp().detach().clone(),
                "jac_frobenius": float(torch.linalg.matrix_norm(A)), "objective": float(objective())}


def theorem2_study(
    betas: Sequence[float] = (0.5, 1, 2, 4, 8, 16),
    out: str | Path | None = None,
    config: Theorem2Config | None = None,
    *,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the linear encoder for each beta and compare with the closed form.

    Returns {"rows": [...one per beta and latent axis...], "jacobian_rows": [...one per beta...],
    "summary": {...}}; with ``out`` also writes theorem2.csv, theorem2_jacobian.csv, theorem2.png,
    summary.json and study.json (seconds of work; always recomputed).
    """
    config = config or Theorem2Config()
    betas = distinct(float(b) for b in betas)  # each once
    if not betas or any(b <= 0 for b in betas):
        raise ValueError("betas must be a non-empty list of positive numbers")
    W = make_decoder(config)
    rows: list[dict[str, Any]] = []
    jrows: list[dict[str, Any]] = []
    for beta in betas:
        ex = exact_optimum(W, config.noise_scale, beta)
        fit = train_linear_encoder(W, config, beta)
        for i, wn in enumerate(config.column_norms):
            rows.append({"beta": beta, "axis": i, "column_norm": wn, "sigma_trained": float(fit["sigma"][i]),
                         "sigma_exact": float(ex["sigma"][i])})
        jrows.append({"beta": beta, "jac_frobenius_trained": fit["jac_frobenius"],
                      "jac_frobenius_exact": ex["jac_frobenius"],
                      "mean_max_abs_error": float((fit["A"] - ex["jacobian"]).abs().max())})
    sig_err = [abs(r["sigma_trained"] - r["sigma_exact"]) / r["sigma_exact"] for r in rows]
    jac_err = [abs(r["jac_frobenius_trained"] - r["jac_frobenius_exact"]) / r["jac_frobenius_exact"] for r in jrows]
    by_beta = sorted(jrows, key=lambda r: r["beta"])  # the flag is about beta's order, not the order given
    summary = {
        "betas": betas, "config": asdict(config),
        "max_rel_error_sigma": float(max(sig_err)), "max_rel_error_jacobian": float(max(jac_err)),
        "sigma_increasing_in_beta": _increasing(rows, "sigma_trained"),
        "jacobian_decreasing_in_beta": bool(all(a["jac_frobenius_trained"] > b["jac_frobenius_trained"]
                                                 for a, b in zip(by_beta, by_beta[1:]))),
    }
    result = {"rows": rows, "jacobian_rows": jrows, "summary": summary}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "theorem2.csv", rows)
        write_csv(out / "theorem2_jacobian.csv", jrows)
        theorem2_figure(rows, jrows, out / "theorem2.png", noise_scale=config.noise_scale)
        write_json(out / "summary.json", summary)
        write_study_meta(out, "theorem2", command or _command(betas, out, config), {"betas": betas, **asdict(config)},
                         figures=["theorem2.png"], tables=["theorem2.csv", "theorem2_jacobian.csv"])
    return result


def _increasing(rows: list[dict[str, Any]], key: str) -> bool:
    """Whether ``key`` grows strictly with beta on every latent axis."""
    by_beta = sorted(rows, key=lambda r: r["beta"])
    axes = {r["axis"] for r in rows}
    return all(bool(np.all(np.diff([r[key] for r in by_beta if r["axis"] == i]) > 0)) for i in axes)


def _command(betas: Sequence[float], out: Path, c: Theorem2Config) -> str:
    return (f"robvae study theorem2 --betas {fmt_list(betas)} --column-norms {fmt_list(c.column_norms)} "
            f"--data-dim {c.data_dim} --noise-scale {c.noise_scale:g} --steps {c.steps} --seed {c.seed} --out {out}")
