"""The fast decode route of robvae's own VAE gives the numbers of model.decode (to rounding)."""

from __future__ import annotations

import pytest
import torch

from robvae.models import VAE, ModelConfig
from robvae.models.fast_decode import _is_thin_deconv, flat_decode


def _conv(dtype, c=1, hw=28, channels=(8, 16)):
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=(c, hw, hw), arch="conv", latent_dim=5, conv_channels=channels,
                           conv_hidden=32)).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("grad", [False, True])
def test_flat_decode_equals_decode(arch, dtype, tol, grad):
    model = _conv(dtype) if arch == "conv" else VAE(ModelConfig(input_shape=(1, 28, 28), latent_dim=5)).to(dtype)
    z = torch.randn(37, 5, dtype=dtype)
    ref = model.decode(z).flatten(1).detach()
    if grad:
        out = flat_decode(model, z.requires_grad_())
        assert out.requires_grad
    else:
        with torch.inference_mode():
            out = flat_decode(model, z)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.detach(), ref, atol=tol, rtol=0)


def test_the_thin_last_layer_really_takes_the_subpixel_route():
    model = _conv(torch.float64)
    last = model.decoder.deconv[-1]
    assert _is_thin_deconv(last)  # 8 -> 1 channels
    z = torch.randn(4, 5, dtype=torch.float64)
    with torch.inference_mode():
        before = flat_decode(model, z)
    with torch.no_grad():  # a weight update must invalidate the cached sub-pixel kernel
        last.weight.mul_(-2.0)
    with torch.inference_mode():
        after = flat_decode(model, z)
    torch.testing.assert_close(after, model.decode(z).flatten(1).detach(), atol=1e-12, rtol=0)
    assert not torch.allclose(before, after)


def test_the_subpixel_route_is_cpu_only():
    """On CUDA cuDNN's transposed convolution (TF32 by default, as model.decode runs it) and a
    float32 GEMM differ by ~5e-4 per pixel (audit h62): off the CPU the layer runs itself."""
    last = _conv(torch.float32).decoder.deconv[-1]
    assert _is_thin_deconv(last)
    assert not _is_thin_deconv(last.to("meta"))  # any device but the CPU


def test_colour_conv_and_user_overrides():
    model = _conv(torch.float64, c=3, hw=32, channels=(16, 16))
    z = torch.randn(6, 5, dtype=torch.float64)
    with torch.inference_mode():
        torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), atol=1e-12, rtol=0)

    class Shifted(VAE):  # a user's subclass with its own decode: must be respected
        def decode(self, z):
            return super().decode(z) * 0.5

    torch.manual_seed(0)
    user = Shifted(ModelConfig(input_shape=(1, 8, 8), latent_dim=5)).double()
    z = torch.randn(3, 5, dtype=torch.float64)
    with torch.inference_mode():  # to rounding: flat_decode pads the 3 rows to ROW_ALIGN
        torch.testing.assert_close(flat_decode(user, z), user.decode(z).flatten(1), atol=1e-12, rtol=0)


def test_every_cached_derived_weight_follows_a_weight_change():
    """Mutating any decoder parameter in place (as an optimiser step does) changes the fast route too."""
    model = _conv(torch.float64)
    z = torch.randn(5, 5, dtype=torch.float64)
    for name, p in model.decoder.named_parameters():
        with torch.inference_mode():
            flat_decode(model, z)  # fill the caches
        with torch.no_grad():
            p.add_(0.05 * torch.randn_like(p))
        with torch.inference_mode():
            torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), atol=1e-12, rtol=0,
                                       msg=lambda m: f"{name}: {m}")
