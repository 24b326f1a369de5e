"""Monte Carlo p_r, r_min and Clopper-Pearson against the closed forms of the linear VAE (THEORY.md section 7)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from robvae.errors import InputError
from robvae.models import LinearVAE
from robvae.robustness import clopper_pearson, delta_norms, r_min, r_robustness

N = 20000


def _model():
    return LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, seed=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _delta(m, t, B, seed=1):
    """Perturbations of L2 norm t along random directions (x = 0.5 keeps x + delta in the box)."""
    v = torch.randn(B, 16, generator=_gen(seed), dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    return (t * v).view(B, 1, 4, 4)


@pytest.mark.parametrize("mode", ["mean", "full"])
@pytest.mark.parametrize("r", [0.15, 0.25, 0.4])
@pytest.mark.parametrize("t", [0.0, 0.03, 0.08])
def test_p_matches_noncentral_chi2(mode, r, t):
    m = _model()
    B = 3
    x = torch.full((B, 1, 4, 4), 0.5, dtype=torch.float64)
    delta = _delta(m, t, B) if t > 0 else None
    est = r_robustness(m, x, r, delta, N, mode=mode, alpha=0.01, generator=_gen())
    shift = (delta.flatten(1) @ m.A.T).norm(dim=1).numpy() if t > 0 else np.zeros(B)
    exact = m.exact_p(r, shift)
    se = np.sqrt(exact * (1 - exact) / N)
    assert np.all(np.abs(est.p.numpy() - exact) <= 5 * se + 1e-12), (est.p, exact)
    assert torch.all(est.p_lower <= est.p) and torch.all(est.p <= est.p_upper)
    assert est.n_within.dtype == torch.long and torch.all(est.n_samples == N)
    assert torch.equal(est.robust, est.p > 0.5)


def test_r_min_matches_chi2_median():
    m = _model()
    x = torch.rand(4, 1, 4, 4, generator=_gen(3), dtype=torch.float64)
    got = r_min(m, x, N, generator=_gen())
    med = m.exact_r_min()
    # SE of a sample median: 1 / (2 sqrt(n) f(med)), f the density of s sqrt(chi2_d)
    f = stats.chi2.pdf((med / m.s) ** 2, m.latent_dim) * 2 * med / m.s**2
    se = 1 / (2 * math.sqrt(N) * f)
    assert torch.all((got - med).abs() <= 5 * se), (got, med, se)


def test_delta_norms_shape_chunks_and_reproducible():
    m = _model()
    x = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    a = delta_norms(m, x, None, 50, chunk_size=7, generator=_gen(5))
    b = delta_norms(m, x, None, 50, chunk_size=7, generator=_gen(5))
    assert a.shape == (3, 50) and torch.equal(a, b)
    c = delta_norms(m, x, torch.zeros_like(x), 50, mode="full", chunk_size=50, generator=_gen(5))
    assert c.shape == (3, 50) and torch.all(c >= 0)


def test_per_input_radius_and_float32():
    m = LinearVAE.random(d=4, s=0.1, dtype=torch.float32)
    x = torch.full((2, 1, 4, 4), 0.5)
    est = r_robustness(m, x, torch.tensor([0.05, 1.0]), None, 2000, generator=_gen())
    assert est.p.dtype == torch.float32
    assert est.p[0] < 0.05 and est.p[1] == 1.0


def test_clopper_pearson_known_values_and_scipy():
    lo, hi = clopper_pearson(torch.tensor([0, 10]), 10, 0.05)
    assert lo[0] == 0 and hi[1] == 1
    assert math.isclose(float(hi[0]), 1 - 0.05 ** (1 / 10), rel_tol=1e-9)
    assert math.isclose(float(lo[1]), 0.05 ** (1 / 10), rel_tol=1e-9)
    for k, n in [(3, 10), (17, 40), (990, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")  # two 5% tails
        lo, hi = clopper_pearson(k, n, 0.05)
        assert math.isclose(float(lo), ci.low, rel_tol=1e-9) and math.isclose(float(hi), ci.high, rel_tol=1e-9)
    with pytest.raises(ValueError):
        clopper_pearson(5, 4, 0.05)
    # scipy's inverse returns NaN at alpha <= ~1e-200 for some (k, n); NaN p_lower made a
    # certificate's radius_sound 0 with abstain_sound False: now the trivial bounds
    lo, hi = clopper_pearson(torch.tensor([9, 3, 4]), torch.tensor([10, 5, 5]), 1e-300)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    assert bool((lo >= 0).all() and (lo <= 0.5).all() and (hi <= 1).all())


def test_input_validation():
    m = _model()
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    with pytest.raises(InputError):
        r_robustness(m, x[:, :, :2], 0.2)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        r_robustness(m, bad, 0.2)
    with pytest.raises(InputError):
        r_min(m, x + 0.7)
    with pytest.raises(InputError):
        r_robustness(m, x, 0.2, torch.full_like(x, 0.6))  # x + delta leaves the box
    with pytest.raises(InputError):
        r_robustness(m, x, 0.2, torch.zeros(2, 16, dtype=torch.float64))
    with pytest.raises(InputError):
        r_robustness(m, x, -1.0)
    with pytest.raises(ValueError):
        r_robustness(m, x, 0.2, mode="nope")


# --------------------------------------------------------------------------------------------
# the anytime-valid sequential test (issue 9)
# --------------------------------------------------------------------------------------------
from robvae.robustness import sequential_bernoulli_test, sequential_robustness  # noqa: E402
from robvae.robustness.sampling import settles_by  # noqa: E402


@pytest.mark.parametrize("p,concentration", [(0.5, 10.0), (0.47, 10.0), (0.5, 1.0), (0.47, 40.0)])
def test_sequential_test_error_rate_at_every_look(p, concentration):
    """Looking after EVERY draw (the worst case for optional stopping), the chance of ever wrongly
    deciding p > 1/2 stays below alpha (a fixed-n binomial test looked at this often would exceed it)."""
    alpha, N, T = 0.05, 1500, 400
    rng = np.random.default_rng(0)
    k = np.cumsum(rng.random((N, T)) < p, axis=1)
    n = np.broadcast_to(np.arange(1, T + 1), (N, T))
    dec = sequential_bernoulli_test(k, n, alpha, concentration=concentration)[0].numpy()
    wrong = (dec == 1).any(axis=1).mean()
    assert wrong <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / N), wrong
    # the naive repeated z-test errs far more often: the check has teeth
    z = (k - n / 2) / np.sqrt(n / 4)
    assert ((z > stats.norm.ppf(1 - alpha)).any(axis=1).mean()) > 2 * alpha


def test_sequential_test_power_and_symmetry():
    rng = np.random.default_rng(1)
    N, T = 500, 2000
    for p, sign in ((0.62, 1), (0.38, -1)):
        k = np.cumsum(rng.random((N, T)) < p, axis=1)
        dec = sequential_bernoulli_test(k[:, -1], T, 0.01)[0].numpy()
        assert (dec == sign).mean() >= 0.99
    d, up, down = sequential_bernoulli_test(np.array([30, 70]), 100, 0.01)
    assert d.tolist() == [-1, 1] and abs(float(up[1] - down[0])) < 1e-9  # k <-> n - k mirrors the two sides
    with pytest.raises(ValueError):
        sequential_bernoulli_test(5, 3)


def test_sequential_robustness_on_the_linear_vae():
    """Decisions agree with the closed form, and clear cases stop early."""
    m = _model()
    x = torch.full((6, 1, 4, 4), 0.5, dtype=torch.float64)
    r = 0.25
    ts = torch.tensor([0.0, 0.02, 0.04, 0.08, 0.12, 0.2], dtype=torch.float64)
    v1 = torch.linalg.svd(m.A).Vh[0]
    delta = (ts[:, None] * v1[None]).view(6, 1, 4, 4)
    exact = m.exact_p(r, (delta.flatten(1) @ m.A.T).norm(dim=1).numpy())
    res = sequential_robustness(m, x, r, delta, alpha=0.001, n_max=20000, mode="mean", generator=_gen(3))
    want = np.where(exact > 0.5, 1, -1)
    settled = res.decision.numpy() != 0
    assert (res.decision.numpy()[settled] == want[settled]).all(), (res.decision, exact)
    far = np.abs(exact - 0.5) > 0.15
    assert settled[far].all() and (res.n_samples.numpy()[far] < 2000).all(), (res.n_samples, exact)
    assert np.all(np.abs(res.p.numpy() - exact) <= 4 * np.sqrt(0.25 / res.n_samples.numpy()))


@pytest.mark.parametrize("c,p0,k,n", [(1.0, 0.5, 60, 100), (10.0, 0.5, 55, 100), (10.0, 0.5, 40, 100),
                                      (3.0, 0.3, 40, 100), (10.0, 0.5, 2530, 5000)])
def test_sequential_test_matches_the_mixture_integral(c, p0, k, n):
    """log M+ and log M- against the defining integrals, by quadrature (an independent computation)."""
    a0, b0 = 2 * c * p0, 2 * c * (1 - p0)
    # the likelihood ratio times the prior, scaled by its value at p_hat so the quadrature stays in range
    log_lr = lambda q: k * math.log(q / p0) + (n - k) * math.log((1 - q) / (1 - p0)) + stats.beta.logpdf(q, a0, b0)
    peak = max(log_lr(min(max(k / n, 1e-9), 1 - 1e-9)), log_lr(p0))
    f = lambda q: math.exp(log_lr(q) - peak)
    up = math.log(integrate.quad(f, p0, 1, points=[k / n], limit=200)[0] / stats.beta.sf(p0, a0, b0)) + peak
    down = math.log(integrate.quad(f, 0, p0, points=[k / n] if k / n < p0 else None, limit=200)[0]
                    / stats.beta.cdf(p0, a0, b0)) + peak
    _, lu, ld = sequential_bernoulli_test(k, n, 0.01, p0, concentration=c)
    assert abs(float(lu) - up) < 1e-6 and abs(float(ld) - down) < 1e-6, (float(lu), up, float(ld), down)


def test_a_prior_near_one_half_settles_small_gaps_sooner():
    """At p_hat = 0.54 the concentrated prior (c = 10) settles where the uniform one (c = 1) does not,
    and at p_hat = 0.95 (a far case) both settle."""
    assert sequential_bernoulli_test(1620, 3000, 0.001, concentration=10.0)[0].item() == 1
    assert sequential_bernoulli_test(1620, 3000, 0.001, concentration=1.0)[0].item() == 0
    assert sequential_bernoulli_test(95, 100, 0.001, concentration=10.0)[0].item() == 1
    with pytest.raises(ValueError, match="concentration"):
        sequential_bernoulli_test(5, 10, concentration=0.0)


def test_futility_rule():
    """settles_by: p_hat = 1/2 after half of n_max cannot settle; p_hat = 0.6 after 100 draws can. On the
    linear VAE at its exact margin (p = 1/2) the futility rule stops early, unsettled, where
    futility=None draws all n_max; a clear case settles the same with or without it."""
    k, n = torch.tensor([2500, 60]), torch.tensor([5000, 100])
    assert settles_by(k, n, 10000, 0.001).tolist() == [False, True]
    assert settles_by(torch.tensor([5000]), torch.tensor([5000]), 10000, 0.001, z=50.0).tolist() == [True]
    m = _model()
    r = 0.25
    v1 = torch.linalg.svd(m.A).Vh[0]
    t_star = m.exact_margin(r)  # p_r(x, t* v1) = 1/2 exactly
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    delta = (torch.tensor([t_star, 0.0], dtype=torch.float64)[:, None] * v1[None]).view(2, 1, 4, 4)
    assert abs(float(m.exact_p(r, float((delta[0].flatten() @ m.A.T).norm()))) - 0.5) < 1e-6
    kw = dict(alpha=0.001, n_max=20000, mode="mean")
    fut = sequential_robustness(m, x, r, delta, generator=_gen(4), **kw)
    full = sequential_robustness(m, x, r, delta, futility=None, generator=_gen(4), **kw)
    assert fut.decision[0] == 0 and full.decision[0] == 0 and full.n_samples[0] == 20000
    assert fut.n_samples[0] < 20000 / 2, fut.n_samples
    assert fut.decision[1] == full.decision[1] == 1 and fut.n_samples[1] < 2000
    with pytest.raises(InputError, match="futility"):
        sequential_robustness(m, x, r, delta, futility=-1.0, **kw)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_many_inputs_are_decoded_in_groups_with_the_same_numbers(arch, monkeypatch):
    """A chunk of more decoder rows than the cap (one draw for each of many inputs, as in the
    --r-relative calibration) is decoded in groups of inputs: the same distances, bit for bit
    (rows are padded to ROW_ALIGN), and no decoder call above the cap."""
    from robvae.models import VAE, ModelConfig
    from robvae.robustness import sampling

    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), arch=arch, latent_dim=3, hidden=(16,), conv_channels=(4, 8))).eval()
    x = torch.rand(23, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    whole = delta_norms(model, x, None, 6, chunk_size=2, generator=_gen(3))  # 46 rows per call: under the cap
    calls = []
    real = sampling.flat_decode
    monkeypatch.setattr(sampling, "flat_decode", lambda m, z: calls.append(z.shape[0]) or real(m, z))
    monkeypatch.setattr(sampling, "row_cap", lambda device, model: 10)
    grouped = delta_norms(model, x, None, 6, chunk_size=2, generator=_gen(3))
    assert torch.equal(whole, grouped)
    assert calls[0] == 23  # the references g(mu(x)), one call
    assert max(calls[1:]) <= 10 and sum(calls[1:]) == 23 * 6


def test_float32_bounds_are_rounded_outwards():
    """A float32 estimate's Clopper-Pearson bounds are the float64 ones rounded outwards (the
    largest float32 at or below the lower bound, the smallest at or above the upper), not to
    nearest: about half of them had been rounded the wrong way."""
    from robvae.robustness.sampling import RobustnessEstimate

    k = torch.arange(0, 401)
    lo, hi = clopper_pearson(k, torch.full_like(k, 400), 0.001)
    est = RobustnessEstimate.from_counts(k, 400, torch.ones(401), 0.001, "mean", torch.float32)
    assert est.p_lower.dtype == torch.float32
    assert bool((est.p_lower.double() <= lo).all()) and bool((est.p_upper.double() >= hi).all())
    up = torch.nextafter(est.p_lower, torch.full_like(est.p_lower, 2.0)).double()
    down = torch.nextafter(est.p_upper, torch.full_like(est.p_upper, -1.0)).double()
    assert bool((up > lo).all()) and bool((down < hi).all())  # the nearest float32 on the safe side
    assert int((lo.float().double() > lo).sum()) > 50  # a plain cast would have rounded these up
    same = RobustnessEstimate.from_counts(k, 400, torch.ones(401), 0.001, "mean", torch.float64)
    assert torch.equal(same.p_lower, lo.double()) and torch.equal(same.p_upper, hi.double())


def test_clopper_pearson_upper_bound_at_tiny_alpha():
    """ppf(1 - alpha) gave the trivial upper bound 1 below alpha ~ 1e-16 (1 - alpha rounds to 1);
    the k = 0 bound is 1 - alpha^(1/n) exactly."""
    from robvae.robustness import clopper_pearson

    for n, alpha in [(1000, 1e-17), (2**24, 1e-30), (50, 1e-100)]:
        lo, hi = clopper_pearson(0, n, alpha)
        assert float(lo) == 0.0
        assert float(hi) == pytest.approx(-math.expm1(math.log(alpha) / n), rel=1e-9)
    lo, hi = clopper_pearson(500, 1000, 1e-17)
    assert 0.5 < float(hi) < 0.7 and 0.3 < float(lo) < 0.5
