"""Figures (matplotlib, Agg backend): image grids and study plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..io import atomic_write_bytes  # noqa: E402


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
    return save_figure(fig, path)
