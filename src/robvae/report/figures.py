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
