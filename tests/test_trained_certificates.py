"""On a VAE trained on real digits: Theorem 1 never above the empirical margin (THEORY.md section 5).

bound <= R_r(x) <= R_hat_r(x): any input where the first-order bound exceeds the sampled margin is
a violation. The test reports every exception (index, bound, margin, p) in its failure message.
"""

from __future__ import annotations

import pytest
import torch

from robvae import certify, empirical_margin, load_dataset, r_min
from robvae.models import ModelConfig
from robvae.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = train(TrainConfig(model=ModelConfig(latent_dim=6, hidden=(128, 64)), epochs=25, batch_size=32,
                            n_train=800, seed=0), tmp_path_factory.mktemp("trained") / "run", progress=False)
    x = load_dataset("digits", "test").images[:16]
    return run.model, x


@pytest.mark.parametrize("mode", ["mean", "full"])
def test_bound_below_sampled_margin_on_a_trained_vae(trained, mode):
    model, x = trained
    g = torch.Generator().manual_seed(0)
    r = 1.5 * float(r_min(model, x, 2000, generator=g).median())
    cert = certify(model, x, r, n_samples=4000, generator=g)
    res = empirical_margin(model, x, r, mode=mode, eps_init=cert.radius.clamp(min=1e-3), tol=0.02,
                           n_samples=4000, steps=30, restarts=2, generator=g)
    certified = ~cert.abstain & torch.isfinite(cert.radius)
    assert int(certified.sum()) >= 12  # the check has inputs to bite on
    bad = [(i, float(cert.radius[i]), float(res.margin[i]), float(cert.p[i]))
           for i in range(len(x)) if certified[i] and cert.radius[i] > res.margin[i]]
    assert not bad, f"Theorem 1 above the sampled margin ({mode} encoder) at (index, bound, margin, p): {bad}"
    # the bound is a real, non-trivial number: same order as the margin, not vanishing
    ratio = (cert.radius[certified] / res.margin[certified]).median()
    assert 0.02 < float(ratio) <= 1.0
