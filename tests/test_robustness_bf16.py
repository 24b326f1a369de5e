"""bf16 decoding with exact counts (issue 11 item 4): the same draws must give exactly the float32
counts (an independent computation: r_robustness in float32), and the bound e must really bound
the bfloat16 decoder's error on every row (checked against the float64 decoder)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robvae.models import VAE, ModelConfig
from robvae.models.fast_decode import decoder_plan
from robvae.robustness import delta_norms, r_robustness
from robvae.robustness.bf16 import decode_bf16, r_robustness_bf16

from test_fast_decode_user import _archs


def _robvae(arch):
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=(1, 28, 28), arch=arch, latent_dim=6)).eval()


MODELS = {"robvae mlp": lambda: _robvae("mlp"), "robvae conv": lambda: _robvae("conv"),
          "user conv": lambda: _archs()["conv implicit reshape"].eval(),
          "user mlp tanh": lambda: _archs()["mlp tanh, nested, identity out"].eval()}


@pytest.mark.parametrize("name", list(MODELS))
def test_counts_equal_float32(name):
    model = MODELS[name]()
    shape = model.input_shape
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        norms = delta_norms(model, x, n_samples=300, generator=torch.Generator().manual_seed(9))
    r = norms.median(dim=1).values  # half the draws on each side: many draws near r
    stats = []
    got = r_robustness_bf16(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(9), stats=stats)
    want = r_robustness(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got.n_within, want.n_within)
    assert torch.equal(got.p, want.p)
    assert stats and 0 < stats[0].recomputed <= stats[0].draws  # draws near r were recomputed in float32


@pytest.mark.parametrize("name", list(MODELS))
def test_bound_holds(name):
    model = MODELS[name]()
    z = 2.0 * torch.randn(64, 6, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        plan = decoder_plan(model, z)
        assert plan is not None
        g, e = decode_bf16(plan, z)
        exact = model.double().decode(z.double()).flatten(1)
    err = (g.double() - exact).norm(dim=1)
    assert bool((err <= e).all()), float((err / e).max())
    assert float((e / exact.norm(dim=1)).median()) < 0.5  # and it is not vacuous


def test_unsupported_model_runs_float32():
    class Odd(nn.Module):
        def forward(self, h):
            return h * 2
    torch.manual_seed(0)
    model = _archs()["mlp relu sigmoid"]
    model.decoder.append(Odd())
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    got = r_robustness_bf16(model, x, 5.0, n_samples=50, generator=torch.Generator().manual_seed(1))
    want = r_robustness(model, x, 5.0, n_samples=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got.n_within, want.n_within)
