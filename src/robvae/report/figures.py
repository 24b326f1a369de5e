"""Figures (matplotlib, Agg backend): image grids and study plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..fileio import atomic_write_bytes  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 120) -> Path:
    """Save a figure as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def image_grid(rows: Sequence[torch.Tensor], path: str | Path, row_titles: Sequence[str] | None = None) -> Path:
    """A grid with one row per tensor of images [n, C, H, W] in [0, 1] (grey or RGB)."""
    n = max(r.shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.2 * len(rows)), squeeze=False)
    for i, imgs in enumerate(rows):
        imgs = imgs.detach().float().cpu().clamp(0, 1)
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
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
    import numpy as np

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    axes_ids = sorted({r["axis"] for r in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, i in enumerate(axes_ids):
        rr = sorted((r for r in rows if r["axis"] == i), key=lambda r: r["beta"])
        b = np.array([r["beta"] for r in rr])
        c = colors[k % len(colors)]
        a1.plot(b, [r["sigma_exact"] for r in rr], "-", color=c, label=f"exact, |w|={rr[0]['column_norm']:g}")
        a1.plot(b, [r["sigma_trained"] for r in rr], "o", color=c, mfc="none", label="trained" if k == 0 else None)
    a1.set_xscale("log", base=2)
    a1.set_xlabel("beta")
    a1.set_ylabel("encoder sigma_i")
    a1.set_title(f"sigma*_i^2 = 1 / (1 + |w_i|^2 / (beta s^2)), s = {noise_scale:g}", fontsize=9)
    a1.legend(fontsize=7)
    jr = sorted(jrows, key=lambda r: r["beta"])
    b = [r["beta"] for r in jr]
    a2.plot(b, [r["jac_frobenius_exact"] for r in jr], "-", color="k", label="exact")
    a2.plot(b, [r["jac_frobenius_trained"] for r in jr], "o", color="C3", mfc="none", label="trained")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("beta")
    a2.set_ylabel("||J||_F of the encoder mean")
    a2.set_title("Jacobian diag(sigma*^2) W^T / (beta s^2)", fontsize=9)
    a2.legend(fontsize=8)
    fig.suptitle("Theorem 2: beta-VAE encoder trained against a fixed linear-Gaussian decoder")
    fig.subplots_adjust(wspace=0.4)
    return save_figure(fig, path)


def _finite(*arrays):
    import numpy as np

    arrs = [np.asarray(a, dtype=float) for a in arrays]
    keep = np.ones(arrs[0].shape, dtype=bool)
    for a in arrs:
        keep &= np.isfinite(a)
    return [a[keep] for a in arrs]


def scatter_bound(ax, margin, bound, *, title: str, bound_label: str = "Theorem 1 bound",
                  margin_label: str = "empirical margin", groups=None) -> dict:
    """One bound-vs-margin scatter on ``ax``: points, the y = x line, the least-squares line, and
    Pearson / Spearman rho and the count above y = x printed on the plot. Returns the statistics."""
    import numpy as np

    from ..studies.stats import count_above, least_squares, pearson, spearman

    m, b = _finite(margin, bound)
    if groups is not None:
        g = np.asarray(groups)[np.isfinite(np.asarray(margin, float)) & np.isfinite(np.asarray(bound, float))]
        for k, val in enumerate(sorted(set(g.tolist()))):
            sel = g == val
            ax.scatter(m[sel], b[sel], s=12, alpha=0.7, label=f"seed {val}")
        if len(set(g.tolist())) > 1:
            ax.legend(fontsize=7, loc="lower right")
    else:
        ax.scatter(m, b, s=12, alpha=0.7, color="C0")
    hi = float(max(m.max(initial=0), b.max(initial=0))) * 1.05 or 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="y = x")
    stats = {"n": int(m.size), "pearson": pearson(m, b), "spearman": spearman(m, b),
             "n_above": count_above(m, b)}
    slope, icpt = least_squares(m, b)
    stats["slope"], stats["intercept"] = slope, icpt
    if np.isfinite(slope):
        xs = np.array([0, hi])
        ax.plot(xs, slope * xs + icpt, "-", color="C3", lw=1.2)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel(margin_label)
    ax.set_ylabel(bound_label)
    ax.set_title(title, fontsize=9)
    ax.text(0.03, 0.97, f"Pearson rho = {stats['pearson']:.3f}\nSpearman rho = {stats['spearman']:.3f}\n"
            f"least squares: y = {slope:.3f} x + {icpt:.3f}\nabove y = x: {stats['n_above']} of {stats['n']}",
            transform=ax.transAxes, va="top", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    return stats


def bound_vs_margin_figure(rows, path, *, title: str, column: str = "radius", bound_label: str = "Theorem 1 bound",
                           margin_label: str = "empirical margin") -> dict:
    fig, ax = plt.subplots(figsize=(5.2, 5))
    use = [r for r in rows if _usable(r, column)]
    stats = scatter_bound(ax, [r["margin"] for r in use], [r[column] for r in use], title=title,
                          bound_label=bound_label, margin_label=margin_label, groups=[r.get("seed", 0) for r in use])
    save_figure(fig, path)
    return stats


def _usable(r, column) -> bool:
    import math

    b, m = float(r[column]), float(r["margin"])
    return math.isfinite(b) and b > 0 and math.isfinite(m) and not _truthy(r.get("margin_capped", False))


def _truthy(v) -> bool:
    return v is True or v == "True" or v == 1


def bound_variants_figure(rows, path, *, title: str, margin_label: str = "empirical margin") -> dict:
    """The Theorem 1 bound and its sound / spectral / whitened variants against the margin, side by side."""
    variants = [("radius", "Theorem 1 (paper)"), ("radius_sound", "sound (Clopper-Pearson p)"),
                ("radius_spectral", "spectral norm"), ("radius_whitened", "whitened by sigma")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    out = {}
    for ax, (col, label) in zip(axes, variants):
        use = [r for r in rows if _usable(r, col)]
        out[col] = scatter_bound(ax, [r["margin"] for r in use], [r[col] for r in use], title=label,
                                 bound_label=f"bound: {label}", margin_label=margin_label)
    fig.suptitle(title)
    save_figure(fig, path)
    return out


def degradation_figure(rows, path, *, title: str, margin_label: str = "empirical margin") -> dict:
    """Relative likelihood degradation under the fixed-budget attack against the margin."""

    from ..studies.stats import pearson, spearman

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    m, d = _finite([r["margin"] for r in rows], [r["likelihood_degradation"] for r in rows])
    ax.scatter(m, d, s=12, alpha=0.7, color="C2")
    ax.set_yscale("log" if (d > 0).all() and d.size and d.max() / max(d.min(), 1e-300) > 50 else "linear")
    ax.set_xlabel(margin_label)
    ax.set_ylabel("relative likelihood degradation")
    eps = rows[0]["attack_eps"] if rows else float("nan")
    ax.set_title(f"{title}\nmaximum-damage attack, ||delta|| <= {float(eps):.3g}", fontsize=9)
    st = {"n": int(m.size), "pearson": pearson(m, d), "spearman": spearman(m, d)}
    ax.text(0.97, 0.97, f"Pearson rho = {st['pearson']:.3f}\nSpearman rho = {st['spearman']:.3f}",
            transform=ax.transAxes, va="top", ha="right", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    save_figure(fig, path)
    return st


def sweep_panels_figure(table, per_seed, path, *, x: str, xlabel: str, panels, title: str, logx: bool = False,
                        p_threshold_panel: str | None = None) -> Path:
    """Panels of a metric against a swept setting: median over inputs (line), quartile band over
    inputs (shaded), and, with several seeds, each seed's median (faint markers).

    table: rows {x, metric_median, metric_q1, metric_q3} (pooled over seeds); per_seed: rows
    {x, seed, metric_median}; panels: [(metric, label)]. ``p_threshold_panel`` names the panel of
    p_r(x), drawn with the 1/2 line and the settings whose median p_r(x) <= 1/2 shaded.
    """
    import numpy as np

    n = len(panels)
    ncol = 3 if n > 4 else 2
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
    rows = sorted(table, key=lambda r: r[x])
    xs = np.array([float(r[x]) for r in rows])
    seeds = sorted({r["seed"] for r in per_seed})
    bad = [float(r[x]) for r in rows if "p_median" in r and float(r["p_median"]) <= 0.5]
    for k, (metric, label) in enumerate(panels):
        ax = axes[k // ncol][k % ncol]
        med = np.array([float(r[f"{metric}_median"]) for r in rows])
        q1 = np.array([float(r[f"{metric}_q1"]) for r in rows])
        q3 = np.array([float(r[f"{metric}_q3"]) for r in rows])
        ax.fill_between(xs, q1, q3, color="C0", alpha=0.25, label="quartiles over inputs")
        ax.plot(xs, med, "o-", color="C0", label="median over inputs")
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
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=9)
        if k == 0:
            ax.legend(fontsize=7)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    fig.suptitle(title + ("\n(red shading: median p_r(x) <= 1/2, not r-robust even unperturbed)" if bad else ""))
    fig.tight_layout()
    return save_figure(fig, path)


def _linthresh(xs) -> float:

    pos = xs[xs > 0]
    return float(pos.min()) if pos.size else 1.0
