"""FLOPs of a decoder counted from its layer shapes (multiply-adds x 2; activations not counted).

- Linear:           2 * in * out per row
- ConvTranspose2d:  2 * Cin * Cout / groups * kh * kw * H_in * W_in per image
- Conv2d:           2 * Cin / groups * Cout * kh * kw * H_out * W_out per image

Counted with forward hooks during one decoder call on a few rows, then per row, so the count
follows whatever the model really runs (any robvae-protocol model built from these layers).
"""

from __future__ import annotations

import torch
from torch import nn


def _layer_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> float:
    if isinstance(module, nn.Linear):
        rows = inp.numel() // module.in_features
        return 2.0 * module.in_features * module.out_features * rows
    if isinstance(module, nn.ConvTranspose2d):
        n, cin, h, w = inp.shape
        kh, kw = module.kernel_size
        return 2.0 * cin * module.out_channels / module.groups * kh * kw * h * w * n
    if isinstance(module, nn.Conv2d):
        n, cout, h, w = out.shape
        kh, kw = module.kernel_size
        return 2.0 * module.in_channels / module.groups * cout * kh * kw * h * w * n
    return 0.0


def per_row(fn, module: nn.Module, latent_dim: int, rows: int = 4, device="cpu") -> float:
    """FLOPs per row of ``fn(z)`` for z [rows, latent_dim], counting the layers inside ``module``."""
    total = [0.0]

    def hook(m, args, out):
        total[0] += _layer_flops(m, args[0], out)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.ConvTranspose2d, nn.Conv2d))]
    try:
        with torch.inference_mode():
            fn(torch.zeros(rows, latent_dim, device=device))
    finally:
        for h in handles:
            h.remove()
    return total[0] / rows


def decoder_flops(model: nn.Module, device="cpu") -> float:
    """FLOPs of one decoder call g(z) per latent row for a robvae VAE."""
    return per_row(model.decode, model, int(model.latent_dim), device=device)


def encoder_flops(model: nn.Module, device="cpu") -> float:
    """FLOPs of one encoder call per image (counted the same way)."""
    total = [0.0]

    def hook(m, args, out):
        total[0] += _layer_flops(m, args[0], out)

    handles = [m.register_forward_hook(hook) for m in model.encoder.modules()
               if isinstance(m, (nn.Linear, nn.ConvTranspose2d, nn.Conv2d))]
    try:
        with torch.inference_mode():
            model.encode(torch.zeros(2, *model.input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total[0] / 2
