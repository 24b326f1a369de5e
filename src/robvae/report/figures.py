"""Figures (matplotlib, Agg backend): image grids and study plots. Figures draw what they are
given: every statistic printed on them is computed by the caller (:mod:`robvae.stats`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import load_dataset
from ..fileio import atomic_write_bytes
from ..stats import BoundStats, Correlation
from ..training import RECON_FILE


def pyplot():
    """matplotlib.pyplot with the Agg backend, imported on the first figure: it costs about 0.4 s,
    which ``import robvae`` (and every command that draws nothing) should not pay."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: "matplotlib.figure.Figure", path: str | Path, dpi: int = 120,
                bbox_inches: str | None = "tight") -> Path:
    """Save a figure as PNG atomically and close it (``bbox_inches``: matplotlib's; None: the whole figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches=bbox_inches)
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def is_image_batch(x: torch.Tensor) -> bool:
    """Whether ``x`` [N, ...] is a batch of grey or RGB images [N, 1 or 3, H, W] that
    :func:`image_grid` can draw."""
    return x.dim() == 4 and x.shape[1] in (1, 3)


def image_grid(rows: Sequence[torch.Tensor], path: str | Path, row_titles: Sequence[str] | None = None) -> Path:
    """A grid with one row per tensor of images [n, C, H, W] in [0, 1] (grey or RGB)."""
    n = max(r.shape[0] for r in rows)
    fig, axes = pyplot().subplots(len(rows), n, figsize=(1.1 * n, 1.2 * len(rows)), squeeze=False)
    for i, imgs in enumerate(rows):
        imgs = imgs.detach().float().cpu().clamp(0, 1)
        for j in range(n):
            ax = axes[i][j]
            ax.set(xticks=[], yticks=[])
            if j < imgs.shape[0]:
                img = imgs[j]
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
            if j == 0 and row_titles:
                ax.set_ylabel(row_titles[i], fontsize=8)
    return save_figure(fig, path)


# --- study figures ---------------------------------------------------------------------------

def theorem2_figure(rows: Sequence[dict], jrows: Sequence[dict], path: str | Path, *, noise_scale: float) -> Path:
    """Theorem 2: trained (markers) vs exact (lines) sigma_i and ||J||_F against beta."""
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(10, 4))
    axes_ids = sorted({r["axis"] for r in rows})
    colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for k, i in enumerate(axes_ids):
        rr = sorted((r for r in rows if r["axis"] == i), key=lambda r: r["beta"])
        b = np.array([r["beta"] for r in rr])
        c = colors[k % len(colors)]
        a1.plot(b, [r["sigma_exact"] for r in rr], "-", color=c, label=f"exact, |w|={rr[0]['column_norm']:g}")
        a1.plot(b, [r["sigma_trained"] for r in rr], "o", color=c, mfc="none", label="trained" if k == 0 else None)
    a1.set_xscale("log", base=2)
    a1.set(xlabel="beta", ylabel="encoder sigma_i")
    a1.set_title(f"sigma*_i^2 = 1 / (1 + |w_i|^2 / (beta s^2)), s = {noise_scale:g}", fontsize=9)
    a1.legend(fontsize=7)
    jr = sorted(jrows, key=lambda r: r["beta"])
    b = [r["beta"] for r in jr]
    a2.plot(b, [r["jac_frobenius_exact"] for r in jr], "-", color="k", label="exact")
    a2.plot(b, [r["jac_frobenius_trained"] for r in jr], "o", color="C3", mfc="none", label="trained")
    a2.set_xscale("log", base=2)
    a2.set(yscale="log", xlabel="beta", ylabel="||J||_F of the encoder mean")
    a2.set_title("Jacobian diag(sigma*^2) W^T / (beta s^2)", fontsize=9)
    a2.legend(fontsize=8)
    fig.suptitle("Theorem 2: beta-VAE encoder trained against a fixed linear-Gaussian decoder")
    fig.subplots_adjust(wspace=0.4)
    return save_figure(fig, path)


def save_reconstructions(run, path: str | Path | None = None, n: int = 10) -> Path:
    """``reconstructions.png`` of a trained run (a :class:`robvae.training.Run`): the first n
    held-out images above their reconstructions g(mu(x)). Default path: the run folder's."""
    model = run.model
    data = load_dataset(run.config.dataset, "test", run.config.data_dir)
    x = data.images[:n].to(next(model.parameters()).device)
    with torch.inference_mode():
        rec = model.reconstruct(x)
    return image_grid([x, rec], path if path is not None else Path(run.path) / RECON_FILE,
                      row_titles=["input", "g(mu(x))"])


def scatter_bound(ax, margin, bound, stats: BoundStats, *, title: str, bound_label: str = "Theorem 1 bound",
                  margin_label: str = "empirical margin", groups=None) -> BoundStats:
    """One bound-vs-margin scatter on ``ax``: the usable inputs (``stats.mask``), the y = x line,
    the least-squares line, and the statistics of ``stats`` printed on the plot (computed by
    :func:`robvae.stats.bound_stats`, never here). Returns ``stats``."""
    use = np.asarray(stats.mask, dtype=bool)
    m, b = np.asarray(margin, dtype=float)[use], np.asarray(bound, dtype=float)[use]
    if groups is not None:
        g = np.asarray(groups)[use]
        for val in sorted(set(g.tolist())):
            sel = g == val
            ax.scatter(m[sel], b[sel], s=12, alpha=0.7, label=f"seed {val}")
        if len(set(g.tolist())) > 1:
            ax.legend(fontsize=7, loc="lower right")
    else:
        ax.scatter(m, b, s=12, alpha=0.7, color="C0")
    hi = float(max(m.max(initial=0), b.max(initial=0))) * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="y = x")
    if np.isfinite(stats.slope):
        xs = np.array([0, hi])
        ax.plot(xs, stats.slope * xs + stats.intercept, "-", color="C3", lw=1.2)
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel=margin_label, ylabel=bound_label)
    ax.set_title(title, fontsize=9)
    ax.text(0.03, 0.97, f"Pearson rho = {stats.pearson:.3f}\nSpearman rho = {stats.spearman:.3f}\n"
            f"least squares: y = {stats.slope:.3f} x + {stats.intercept:.3f}\n"
            f"above y = x: {stats.n_violations} of {stats.n_used}",
            transform=ax.transAxes, va="top", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    return stats


def _col(rows, k) -> np.ndarray:
    return np.array([float(r[k]) for r in rows], dtype=float)


def bound_vs_margin_figure(rows, path, stats: BoundStats, *, title: str, column: str = "radius",
                           bound_label: str = "Theorem 1 bound", margin_label: str = "empirical margin") -> Path:
    """The bound ``column`` of per-input ``rows`` against their margin, with ``stats`` (its BoundStats)."""
    fig, ax = pyplot().subplots(figsize=(5.2, 5))
    scatter_bound(ax, _col(rows, "margin"), _col(rows, column), stats, title=title, bound_label=bound_label,
                  margin_label=margin_label, groups=[r.get("seed", 0) for r in rows])
    return save_figure(fig, path)


#: the bound columns of the variants figure, with their labels
VARIANTS = [("radius", "Theorem 1 (paper)"), ("radius_sound", "sound (Clopper-Pearson p)"),
            ("radius_spectral", "spectral norm"), ("radius_whitened", "whitened by sigma")]


def bound_variants_figure(rows, path, stats: dict[str, BoundStats], *, title: str,
                          margin_label: str = "empirical margin") -> Path:
    """The Theorem 1 bound and its sound / spectral / whitened variants against the margin, side
    by side; ``stats``: column -> its BoundStats."""
    fig, axes = pyplot().subplots(1, len(VARIANTS), figsize=(18, 4.6))
    for ax, (col, label) in zip(axes, VARIANTS):
        scatter_bound(ax, _col(rows, "margin"), _col(rows, col), stats[col], title=label,
                      bound_label=f"bound: {label}", margin_label=margin_label)
    fig.suptitle(title)
    return save_figure(fig, path)


def degradation_figure(rows, path, corr: Correlation, *, title: str, margin_label: str = "empirical margin") -> Path:
    """Relative likelihood degradation under the fixed-budget attack against the margin, with
    ``corr`` (:func:`robvae.stats.correlation` of the two columns) printed on it."""
    fig, ax = pyplot().subplots(figsize=(5.2, 4.6))
    m, d = _col(rows, "margin"), _col(rows, "likelihood_degradation")
    keep = np.isfinite(m) & np.isfinite(d)
    m, d = m[keep], d[keep]
    ax.scatter(m, d, s=12, alpha=0.7, color="C2")
    ax.set(yscale="log" if (d > 0).all() and d.size and d.max() / max(d.min(), 1e-300) > 50 else "linear",
           xlabel=margin_label, ylabel="relative likelihood degradation")
    eps = rows[0]["attack_eps"] if rows else float("nan")
    ax.set_title(f"{title}\nmaximum-damage attack, ||delta|| <= {float(eps):.3g}", fontsize=9)
    ax.text(0.97, 0.97, f"Pearson rho = {corr.pearson:.3f}\nSpearman rho = {corr.spearman:.3f}",
            transform=ax.transAxes, va="top", ha="right", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    return save_figure(fig, path)


def _panels(n: int, ncol: int, width: float, height: float):
    """A figure of n panels of width x height inches, ncol to a row, the cells left over hidden:
    (fig, the n axes in reading order)."""
    nrow = -(-n // ncol)
    fig, axes = pyplot().subplots(nrow, ncol, figsize=(width * ncol, height * nrow), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def sweep_panels_figure(table, per_seed, path, *, x: str, xlabel: str, panels, title: str, logx: bool = False,
                        p_threshold_panel: str | None = None) -> Path:
    """Panels of a metric against a swept setting: median over inputs (line), quartile band over
    inputs (shaded), and, with several seeds, each seed's median (faint markers).

    table: rows {x, metric_median, metric_q1, metric_q3} (pooled over seeds; a true
    ``metric_median_at_cap`` marks a median that is only a lower bound); per_seed: rows
    {x, seed, metric_median}; panels: [(metric, label)]. ``p_threshold_panel`` names the panel of
    p_r(x), drawn with the 1/2 line and the settings whose median p_r(x) <= 1/2 shaded.
    """
    fig, axes = _panels(len(panels), 3 if len(panels) > 4 else 2, 5, 3.6)
    rows = sorted(table, key=lambda r: r[x])
    xs = np.array([float(r[x]) for r in rows])
    seeds = sorted({r["seed"] for r in per_seed})
    bad = [float(r[x]) for r in rows if "p_median" in r and float(r["p_median"]) <= 0.5]
    for k, (ax, (metric, label)) in enumerate(zip(axes, panels)):
        med, q1, q3 = (np.array([float(r[f"{metric}_{q}"]) for r in rows]) for q in ("median", "q1", "q3"))
        ax.fill_between(xs, q1, q3, color="C0", alpha=0.25, label="quartiles over inputs")
        ax.plot(xs, med, "o-", color="C0", label="median over inputs")
        at_cap = np.array([str(r.get(f"{metric}_median_at_cap")) == "True" for r in rows], dtype=bool)
        if at_cap.any():  # half or more of the margins at the search's largest budget
            ax.plot(xs[at_cap], med[at_cap], "^", color="C3", ms=9,
                    label="median at the search's cap (a lower bound)")
        if len(seeds) > 1:
            for j, s in enumerate(seeds):
                ps = sorted((r for r in per_seed if r["seed"] == s), key=lambda r: r[x])
                ax.plot([float(r[x]) for r in ps], [float(r[f"{metric}_median"]) for r in ps], "x:", color="0.4",
                        alpha=0.7, ms=5, lw=0.8, label="seed medians" if j == 0 else None)
        if metric == p_threshold_panel:
            ax.axhline(0.5, color="C3", ls="--", lw=1, label="p = 1/2")
        for b in bad:
            ax.axvspan(b * (0.93 if logx else 1) - (0 if logx else 0.01 * (xs.max() - xs.min() or 1)),
                       b * (1.07 if logx else 1) + (0 if logx else 0.01 * (xs.max() - xs.min() or 1)),
                       color="C3", alpha=0.12, lw=0)
        if logx:
            ax.set_xscale("symlog" if (xs <= 0).any() else "log", base=2, **({"linthresh": _linthresh(xs)} if (xs <= 0).any() else {}))
        ax.set(xlabel=xlabel, ylabel=label)
        ax.set_title(label, fontsize=9)
        if k == 0 or at_cap.any():
            ax.legend(fontsize=7)
    fig.suptitle(title + ("\n(red shading: median p_r(x) <= 1/2, not r-robust even unperturbed)" if bad else ""))
    fig.tight_layout()
    return save_figure(fig, path)


def _linthresh(xs) -> float:
    pos = xs[xs > 0]
    return float(pos.min()) if pos.size else 1.0


def number_or_none(v) -> float | None:
    """float(v), or None for NaN and for what is not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def sweep_figure(rows: list[dict], axis: str, metrics: list[str], path: Path) -> bool:
    """A sweep's results table (rows of robvae.sweep.collect): each metric against the first numeric grid axis: one point per finished trial, mean line."""
    done = [r for r in rows if r["status"] == "done" and number_or_none(r.get(axis)) is not None]
    if not done:
        return False
    fig, axes = _panels(len(metrics), min(3, len(metrics)), 4.2, 3.3)
    for k, (ax, m) in enumerate(zip(axes, metrics)):
        pts = [(number_or_none(r[axis]), number_or_none(r.get(m))) for r in done]
        pts = [(x, y) for x, y in pts if y is not None]
        xs = sorted({x for x, _ in pts})
        ax.plot([x for x, _ in pts], [y for _, y in pts], "x", color="0.45", label="trials")
        ax.plot(xs, [sum(y for x2, y in pts if x2 == x) / sum(1 for x2, _ in pts if x2 == x) for x in xs], "o-",
                color="C0", label="mean")
        ax.set_xlabel(axis)
        ax.set_title(m, fontsize=10)
        if len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log", base=2)
        if k == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


def bench_tradeoff_figure(rows: Sequence[dict], path: str | Path, *, title: str) -> Path:
    """The benchmark's trade-off plot: held-out ELBO against the certified fraction (left) and
    against the median empirical margin (right), one point per leaderboard row (keys ``name``,
    ``method``, ``elbo``, ``certified_fraction``, ``median_margin``), coloured by method. Rows
    without an ELBO (models without a likelihood) are listed in the caption, not drawn."""
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.8))
    drawn = [r for r in rows if r.get("elbo") not in (None, "") and np.isfinite(float(r["elbo"]))]
    methods = list(dict.fromkeys(str(r.get("method", r["name"])) for r in drawn))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, key, label in ((axes[0], "certified_fraction", "certified fraction (sound Theorem 1 radius >= eps)"),
                           (axes[1], "median_margin", "median empirical margin")):
        for m in methods:
            sel = [r for r in drawn if str(r.get("method", r["name"])) == m]
            ax.scatter([float(r[key]) for r in sel], [float(r["elbo"]) for r in sel], s=30, color=colours[m], label=m)
            for r in sel:
                ax.annotate(str(r["name"]), (float(r[key]), float(r["elbo"])), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set(xlabel=label, ylabel="held-out ELBO (nats per image; higher is better)")
        ax.grid(alpha=0.3)
    if drawn:  # (no model with an ELBO: no labelled points, and matplotlib warns about an empty legend)
        axes[0].legend(fontsize=7, loc="best")
    missing = [str(r["name"]) for r in rows if r not in drawn]
    fig.suptitle(title + (f"\n(no ELBO, not drawn: {', '.join(missing)})" if missing else ""), fontsize=10)
    return save_figure(fig, path)
