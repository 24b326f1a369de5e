"""Half-precision and float64 models, and the choices that keep results the same on any device.

Found by an audit of dtypes and devices (session 8): probabilities of bfloat16 / float16 models
were computed by casting the counts (501 / 1,000 read 0.5, 999 / 1,000 read 1, n > 65,504 draws
overflowed), half models crashed in r_min, the radii and the CSV writers, float16 attack norms
were off by 4x and bfloat16 budgets rounded up.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import robvae
from robvae.attacks.objectives import safe_norm
from robvae.attacks.pgd import L2, as_eps, feasible
from robvae.models import LinearVAE
from robvae.models.fast_decode import rows_independent
from robvae.robustness import certify, r_min
from robvae.robustness.sampling import RobustnessEstimate, stat_dtype
from robvae.threads import auto_executor
from robvae.validation import DecoderRangeWarning, as_radius, check_x, host_numpy, rounded

HALF = (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", HALF)
def test_probabilities_of_half_models_come_from_the_counts(dtype):
    k = torch.tensor([501, 999, 500, 35_001])
    n = torch.tensor([1000, 1000, 1000, 70_000])
    est = RobustnessEstimate.from_counts(k, n, torch.ones(4, dtype=dtype), 0.05, "mean", dtype)
    assert est.p.dtype == torch.float32
    np.testing.assert_allclose(est.p.numpy(), (k / n).numpy(), rtol=1e-7)  # not 0.5, 1.0, 0.5, 0 / nan
    assert est.robust.tolist() == [True, True, False, True]
    assert bool((est.p_lower <= est.p).all()) and bool((est.p <= est.p_upper).all())


def test_robust_is_decided_on_the_counts_beyond_float32s_resolution():
    n = 2**25
    est = RobustnessEstimate.from_counts(torch.tensor([n // 2 + 1]), n, torch.ones(1), 0.05, "mean", torch.float32)
    assert bool(est.robust[0])  # p = 0.50000003 rounds to 0.5 in float32; the counts say robust


def test_stat_dtype():
    assert stat_dtype(torch.float64) == torch.float64 and stat_dtype(torch.float32) == torch.float32
    assert stat_dtype(torch.bfloat16) == torch.float32 == stat_dtype(torch.float16)


@pytest.mark.parametrize("dtype", HALF)
def test_half_linear_vae_r_min_and_certify_run_and_agree_with_the_closed_form(dtype):
    vae = LinearVAE.random(d=3, input_shape=(1, 4, 4), s=0.1, dtype=dtype)  # QR has no half kernel
    assert vae.A.dtype == dtype
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    g = torch.Generator().manual_seed(1)
    rm = r_min(vae, x, 2000, generator=g)  # torch.quantile has no half kernel
    assert rm.dtype == dtype
    np.testing.assert_allclose(rm.float().numpy(), vae.exact_r_min(), rtol=0.06)
    r = 1.2 * vae.exact_r_min()
    cert = certify(vae, x, r, n_samples=2000, generator=torch.Generator().manual_seed(2))
    p_exact = float(vae.exact_p(float(rounded(torch.tensor(r, dtype=torch.float64), dtype, down=True))))
    assert np.all(np.abs(cert.p.numpy() - p_exact) < 0.04)
    cols = cert.as_numpy()  # no bfloat16 reaches numpy
    assert np.isfinite(cols["radius"]).all() and (cols["radius"] > 0).all()
    assert np.isfinite(cols["radius_sound"]).all()
    assert cert.summary()["n"] == 6


@pytest.mark.parametrize("dtype", HALF)
def test_half_models_never_count_a_draw_beyond_r_as_within(dtype):
    """Distances of a half model were rounded to its 8-11 bits, so one just above an r the dtype
    holds exactly (0.25, 0.5: the benchmark's radii) read as r and counted (bfloat16: 651 of
    164,000 counted draws lay beyond r). They are float32 now: each count equals the count of the
    same decoded outputs' float64 distances."""
    from robvae.robustness.sampling import count_within, draw_distances, draw_setup

    vae = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, dtype=dtype)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        mu, sigma, ref, _ = draw_setup(vae, x, None, 4000, "mean", None)
        z = (mu[:, None, :] + sigma[:, None, :] * torch.randn(8, 4000, 4, generator=torch.Generator().manual_seed(3))
             .to(dtype)).reshape(-1, 4)
        out = vae.decode(z).flatten(1).view(8, 4000, -1)
        exact = (out.double() - ref.double()[:, None, :]).norm(dim=-1)
        r = float(torch.tensor(float(exact.median())).to(dtype))  # a value the dtype holds exactly
        norms = draw_distances(vae, z, ref)
        assert norms.dtype == torch.float32
        assert torch.equal((norms <= r).sum(1), (exact <= r).sum(1))
        rt = as_radius(r, 8, x)
        k, n = count_within(vae, mu, sigma, ref, rt, 4000, 4000, torch.Generator().manual_seed(3))
        assert torch.equal(k, (exact <= r).sum(1)) and bool((n == 4000).all())


def test_half_theorem1_radius_is_finite_where_p_rounds_to_one_in_half():
    from robvae.robustness.certify import theorem1_radius

    p = torch.tensor([0.999])
    got = theorem1_radius(p, torch.tensor([0.1], dtype=torch.bfloat16), torch.tensor([2.0], dtype=torch.bfloat16))
    assert math.isfinite(float(got[0])) and float(got[0]) == pytest.approx(0.1 * 3.0902 / 2.0, rel=1e-2)


def test_safe_norm_of_float16_is_the_norm():
    v = torch.tensor([[0.03, 0.04], [0.0, 0.0], [3.0, 4.0]], dtype=torch.float16)
    got = safe_norm(v)
    assert got.dtype == torch.float16
    np.testing.assert_allclose(got.float().numpy(), [0.05, 0.0, 5.0], rtol=2e-3, atol=1e-6)  # was 0.0132 for 0.05


@pytest.mark.parametrize("dtype", (*HALF, torch.float32, torch.float64))
def test_half_budgets_and_radii_round_down_and_projections_stay_inside(dtype):
    like = torch.zeros(3, dtype=dtype)
    for value in (0.3, 0.7, 1.1):
        assert float(as_eps(value, 3, like)[0]) <= value
        assert float(as_radius(value, 3, like)[0]) <= value
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    delta = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    for value in (0.3, 0.7):
        eps = as_eps(value, 64, x)
        d = feasible(x, delta, eps, L2())
        assert float(d.double().flatten(1).norm(dim=1).max()) <= value  # was up to 0.3016 for 0.3 in bfloat16
        assert float((x + d).min()) >= 0 and float((x + d).max()) <= 1


def test_rounded_is_outward():
    v = torch.tensor([0.3, 1 / 3, 0.7], dtype=torch.float64)
    for dtype in (torch.float32, *HALF):
        assert bool((rounded(v, dtype, down=True).double() <= v).all())
        assert bool((rounded(v, dtype, down=False).double() >= v).all())


def test_host_numpy_takes_bfloat16():
    got = host_numpy(torch.tensor([0.5, 1.25], dtype=torch.bfloat16))
    assert got.dtype == np.float32 and got.tolist() == [0.5, 1.25]


def test_row_independence_is_never_assumed_off_the_cpu():
    vae = robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).eval()
    assert rows_independent(vae, torch.zeros(4, 3))  # the CPU check passes for robvae's MLP
    assert not rows_independent(vae, torch.zeros(4, 3, device="meta"))  # other devices: never assumed


def test_auto_executor_runs_serially_on_a_gpu(monkeypatch):
    monkeypatch.setattr(robvae.threads, "cores", lambda: 16)
    assert auto_executor(10**9, "auto", None, "cpu") == ("local", 16)
    assert auto_executor(10**9, "auto", None, "cuda") == ("serial", 1)
    assert auto_executor(10**9, "auto", None, "cuda:1") == ("serial", 1)
    assert auto_executor(10**9, "local", 2, "cuda") == ("local", 2)  # an explicit choice is kept


def test_internal_generators_are_cpu_generators():
    """Seeds give the same draws on every device only if the generators are CPU ones (robvae.rng
    moves their draws): training, the bench and the margin search build theirs on the CPU."""
    from robvae.bench.protocol import _generator
    from robvae.training import _epoch_generator

    assert _epoch_generator(0, 1, 2).device.type == "cpu"
    assert _generator(0, 1).device.type == "cpu"


class _Logits(torch.nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self, scale: float):
        super().__init__()
        self.lin = torch.nn.Linear(64, 3)
        self.out = torch.nn.Linear(3, 64)
        self.scale = scale

    def encode(self, x):
        mu = self.lin(x.flatten(1))
        return mu, torch.full_like(mu, 0.1)

    def decode(self, z):
        return (self.scale * (self.out(z) - 3.0)).view(-1, 1, 8, 8)  # logits when scale is large


def test_decoders_returning_logits_are_warned_about_once():
    torch.manual_seed(0)
    x = robvae.load_dataset("digits", "test").images[:8]
    model = _Logits(4.0).eval()
    with pytest.warns(DecoderRangeWarning, match="logits"):
        check_x(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecoderRangeWarning)
        check_x(model, x)  # once per model
        check_x(_Logits(0.05).eval(), x)  # values near [0, 1]: no warning
        vae = robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).eval()
        check_x(vae, x)
        check_x(LinearVAE.random(d=3, input_shape=(1, 8, 8), dtype=torch.float32), x)


def test_ray_certify_tasks_ask_for_a_gpu_share_on_a_gpu():
    """Found by the device audit: Ray hides the GPUs from a task that asks for none, so
    `robvae certify --executor ray --device cuda` could not load the run in its tasks."""
    from robvae.sweep.shard import shard_ray_options

    assert shard_ray_options("cpu", 4, 1) == {"num_cpus": 1}
    assert shard_ray_options("cuda", 4, 1) == {"num_cpus": 1, "num_gpus": 0.25}
    assert shard_ray_options("cuda:1", 1, 2) == {"num_cpus": 2, "num_gpus": 1.0}


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
def test_ensemble_attack_never_exceeds_the_budget_asked_for(dtype):
    """Found by the session's review: as_eps built a float32 tensor from the number first, so a
    float64 model's budget 0.3 became 0.30000001192 and all 16 deltas exceeded 0.3."""
    from robvae.attacks import EnsembleAttack

    vae = LinearVAE.random(d=3, input_shape=(1, 4, 4), s=0.1, dtype=dtype)
    x = (torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25).to(dtype)
    res = EnsembleAttack("cheap", generator=torch.Generator().manual_seed(1))(vae, x, 0.3, r=0.2)
    norms = res.delta.double().flatten(1).norm(dim=1)
    assert float(norms.max()) <= 0.3 and float(norms.max()) > 0.25  # on the budget's sphere, never past it


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
@pytest.mark.parametrize("norm_name", ("linf", "l2"))
def test_small_budgets_are_never_exceeded(dtype, norm_name):
    """Found by the review of the margin-search commit: x + delta rounded to nearest landed up to
    half an ulp of x beyond delta, so small budgets were exceeded (bfloat16 linf by 79%, float32
    l2 by 2e-5 relative, float64 linf by 7e-18): box now rounds towards x."""
    from robvae.attacks.pgd import get_norm

    norm = get_norm(norm_name)
    g = torch.Generator().manual_seed(0)
    for value in (1e-3, 3e-3, 0.0176832771301269, 0.05):
        x = torch.rand(64, 1, 28, 28, generator=g).to(dtype)
        eps = as_eps(value, 64, x)
        d = feasible(x, torch.randn(64, 1, 28, 28, generator=g).to(dtype), eps, norm)
        assert float(norm.norm(d.double()).max()) <= float(eps.double().max())
        assert float((x.double() + d.double()).min()) >= 0 and float((x.double() + d.double()).max()) <= 1


@pytest.mark.parametrize("dtype", HALF)
def test_half_models_get_no_rigorous_radius(dtype):
    """Found by audit h79: a bfloat16 LinearVAE (one latent, singular value 100, s = 0.05) got a
    rigorous radius of 1.07e-3, yet a perturbation of 0.9 x that moved its bfloat16 mu by one
    rounding step (0.25 = 5 sigma) and p fell to 0.007; float16 broke at 0.3 x. Rigorous radii
    assume exact arithmetic: half models are refused (before any draw), float32 copies work."""
    from robvae.errors import InputError
    from robvae.robustness.rigorous import rigorous_certify, rigorous_columns

    vae = LinearVAE.random(d=1, input_shape=(1, 2, 2), s=0.05, singular_values=[100.0], seed=3, dtype=dtype)
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    with pytest.raises(InputError, match=f"exact arithmetic.*{str(dtype).removeprefix('torch.')}"):
        rigorous_certify(vae, x, 0.1, n_samples=200)
    with pytest.raises(InputError, match="exact arithmetic"):
        certify(vae, x, 0.1, n_samples=10**9, rigorous=True)  # refused before the draws
    with pytest.raises(InputError, match="exact arithmetic"):
        rigorous_columns(vae, x, torch.full((2,), 0.9), torch.full((2,), 0.05, dtype=dtype))
    full = vae.float()
    cert = rigorous_certify(full, x.float(), 0.1, n_samples=200, generator=torch.Generator().manual_seed(1))
    assert cert.radius_full.shape == (2,)
