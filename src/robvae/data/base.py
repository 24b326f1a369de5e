"""The in-memory data set every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageDataset:
    """images: float32 [N, C, H, W] in [0, 1]; labels: int64 [N]; name and split for reports."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image shape [C, H, W]."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int | None) -> "ImageDataset":
        """The first n inputs (all when n is None)."""
        if n is None or n >= len(self):
            return self
        return ImageDataset(self.images[:n], self.labels[:n], self.name, self.split)
