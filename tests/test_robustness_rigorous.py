"""Rigorous radii (THEORY.md section 8) and Barrett et al.'s margins (THEORY.md section 9).

Known answers for each lower bound, validity against exact Gaussian probabilities of random
half-spaces, worst cases against random (d, rho) in the constraint set, the exact linear VAE (the
mean-only radius equals s Phi^{-1}(p) / sigma_max(A) and never exceeds the true margin), a trained VAE
(never above the empirical margin), and Barrett's bounds against independent computations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from robvae.errors import InputError
from robvae.models import LinearVAE
from robvae.robustness.lipschitz import VAELipschitz
from robvae.robustness.rigorous import (
    barrett_bound1, barrett_bound2, barrett_condition, barrett_margin, bc_variance, bhattacharyya,
    bhattacharyya_bound, binary_kl, binary_kl_bound, kl_full, kl_variance, lower_bound, rigorous_certify,
    rigorous_radii, shift_bound, worst_bc_variance, worst_bhattacharyya, worst_kl_full, worst_kl_variance,
    worst_lower_bound,
)

F64 = torch.float64


# --- known answers --------------------------------------------------------------------------
def test_shift_bound_known_answers():
    assert float(shift_bound(stats.norm.cdf(1.0), 1.0)) == pytest.approx(0.5, abs=1e-12)
    assert float(shift_bound(stats.norm.cdf(2.0), 0.5)) == pytest.approx(stats.norm.cdf(1.5), abs=1e-12)
    out = shift_bound(torch.tensor([0.9, 0.6]), torch.tensor([0.0, 0.0]))
    assert torch.allclose(out, torch.tensor([0.9, 0.6], dtype=F64))


def test_divergences_against_numerical_integrals():
    d, rho = 0.7, 1.6
    p = lambda z: stats.norm.pdf(z)  # noqa: E731
    q = lambda z: stats.norm.pdf(z, loc=d, scale=rho)  # noqa: E731
    bc = integrate.quad(lambda z: math.sqrt(p(z) * q(z)), -30, 30)[0]
    kl = integrate.quad(lambda z: p(z) * (math.log(p(z)) - math.log(q(z))) if p(z) > 0 else 0.0, -30, 30)[0]
    assert float(bhattacharyya(torch.tensor([d]), torch.tensor([rho]))) == pytest.approx(bc, rel=1e-8)
    assert float(kl_full(torch.tensor([d]), torch.tensor([rho]))) == pytest.approx(kl, rel=1e-7)
    assert float(bc_variance(torch.tensor([1.0, 1.0]))) == pytest.approx(1.0)
    # KL(N(0, rho^2) || N(0, 1)) = 1/2 (rho^2 - 1 - 2 ln rho)
    assert float(kl_variance(torch.tensor([math.e], dtype=F64))) == pytest.approx(0.5 * (math.e ** 2 - 3), rel=1e-12)


def test_bhattacharyya_and_binary_kl_known_answers():
    # bhattacharyya_bound takes ln BC
    assert float(bhattacharyya_bound(0.5, 0.0)) == pytest.approx(0.5)
    assert float(bhattacharyya_bound(0.5, math.log(math.cos(math.pi / 4)))) == pytest.approx(0.0, abs=1e-15)
    # p = sin^2(pi/3) = 3/4, arccos BC = pi/6 -> sin^2(pi/6) = 1/4
    assert float(bhattacharyya_bound(0.75, math.log(math.cos(math.pi / 6)))) == pytest.approx(0.25, abs=1e-12)
    p = torch.tensor([0.9, 0.7, 0.99], dtype=F64)
    K = torch.tensor([0.05, 0.01, 0.3], dtype=F64)
    lo = binary_kl_bound(p, K)
    assert torch.all(lo <= p)
    assert torch.allclose(binary_kl(p, lo), K, atol=1e-9)
    assert float(binary_kl_bound(0.8, 0.0)) == pytest.approx(0.8)


# --- validity against exact probabilities ------------------------------------------------------
def test_lower_bounds_never_exceed_exact_halfspace_probabilities():
    """For half-spaces A = {w.z <= c}: q(A) = Phi((c - w.mu)/||sigma w||) exactly. Every bound <= q'(A)."""
    g = torch.Generator().manual_seed(0)
    n, m = 4000, 3
    w = torch.randn(n, m, generator=g, dtype=F64)
    c = torch.randn(n, generator=g, dtype=F64) * 2 + 1
    d = torch.randn(n, m, generator=g, dtype=F64) * torch.rand(n, 1, generator=g, dtype=F64)
    rho = torch.exp(0.5 * torch.randn(n, m, generator=g, dtype=F64) * torch.rand(n, 1, generator=g, dtype=F64))
    p = torch.special.ndtr(c / w.norm(dim=1))                       # q = N(0, I)
    p2 = torch.special.ndtr((c - (w * d).sum(1)) / (w * rho).norm(dim=1))  # q' = N(d, diag rho^2)
    D = d.norm(dim=1)
    assert torch.all(lower_bound(p, d, rho) <= p2 + 1e-12)
    ones = torch.ones_like(rho)
    p_shift = torch.special.ndtr((c - (w * d).sum(1)) / w.norm(dim=1))
    assert torch.all(shift_bound(p, D) <= p_shift + 1e-12)
    # Neyman-Pearson is attained by the half-space orthogonal to d
    wd = d / D[:, None]
    p_np = torch.special.ndtr(c - (wd * d).sum(1))
    assert torch.allclose(shift_bound(torch.special.ndtr(c), D), p_np, atol=1e-12)
    assert torch.all(lower_bound(p, d, ones) <= p_shift + 1e-12)


def test_worst_cases_cover_every_feasible_pair():
    g = torch.Generator().manual_seed(1)
    n, m = 20000, 4
    d = torch.randn(n, m, generator=g, dtype=F64)
    l = torch.randn(n, m, generator=g, dtype=F64)
    D = torch.rand(n, generator=g, dtype=F64) * 2
    t = torch.rand(n, generator=g, dtype=F64) * 1.5
    d = d / d.norm(dim=1, keepdim=True) * D[:, None] * torch.rand(n, 1, generator=g, dtype=F64)
    l = l / l.norm(dim=1, keepdim=True) * t[:, None] * torch.rand(n, 1, generator=g, dtype=F64) ** 0.1
    rho = l.exp()
    assert torch.all(bc_variance(rho) >= worst_bc_variance(t, m) - 1e-12)
    assert torch.all(bc_variance(rho) >= worst_bc_variance(t) - 1e-12)
    assert torch.all(kl_variance(rho) <= worst_kl_variance(t) + 1e-12)
    assert torch.all(kl_variance(1 / rho) <= worst_kl_variance(t) + 1e-12)
    assert torch.all(bhattacharyya(d, rho) >= worst_bhattacharyya(D, t, m) - 1e-12)
    assert torch.all(kl_full(d, rho) <= worst_kl_full(D, t) + 1e-12)
    p = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=F64)
    assert torch.all(worst_lower_bound(p, D, t, m) <= lower_bound(p, d, rho) + 1e-9)
    # the worst cases are attained (all coordinates equal for BC_var, one coordinate for KL_var)
    t0 = torch.tensor(0.9, dtype=F64)
    assert float(bc_variance(torch.full((m,), float(t0 / 2)).exp())) == pytest.approx(float(worst_bc_variance(t0, m)))
    assert float(kl_variance(torch.tensor([float(t0), 0, 0, 0]).exp())) == pytest.approx(float(worst_kl_variance(t0)))


def test_radii_are_monotone_and_abstain():
    p = torch.tensor([0.4, 0.5, 0.7, 0.9, 0.999], dtype=F64)
    rm, rf = rigorous_radii(p, torch.full_like(p, 2.0), 0.5, 4)
    assert torch.all(rm[:2] == 0) and torch.all(rf[:2] == 0)
    assert torch.all(rf <= rm) and torch.all(rm[2:].diff() > 0) and torch.all(rf[2:].diff() > 0)
    assert torch.allclose(rm[2:], torch.special.ndtri(p[2:]) / 2.0)
    lb = worst_lower_bound(p[2:], 2.0 * rf[2:], 0.5 * rf[2:], 4)
    assert torch.all(lb > 0.5)
    above = worst_lower_bound(p[2:], 2.0 * rf[2:] * 1.001, 0.5 * rf[2:] * 1.001, 4)
    assert torch.all(above <= 0.5)
    rm0, rf0 = rigorous_radii(p, torch.full_like(p, 2.0), 0.0)
    assert torch.equal(rm0, rf0)


# --- the exact linear VAE --------------------------------------------------------------------
def test_mean_only_radius_is_exact_on_the_linear_vae_and_below_the_true_margin():
    rng = np.random.default_rng(0)
    n_checked = 0
    for seed in range(40):
        d = int(rng.integers(1, 7))
        sv = np.sort(rng.uniform(0.2, 4.0, d))[::-1]
        s = float(rng.uniform(0.02, 0.5))
        m = LinearVAE.random(d=d, input_shape=(1, 4, 4), s=s, singular_values=sv.tolist(), seed=seed)
        r = float(m.exact_r_min() * rng.uniform(0.8, 2.5))
        p = float(m.exact_p(r))
        rm, rf = rigorous_radii(torch.tensor([p], dtype=F64), torch.tensor([sv[0] / s], dtype=F64), 0.0, d)
        true = m.exact_margin(r)
        if p <= 0.5:
            assert float(rm) == 0.0 and true == 0.0
            continue
        n_checked += 1
        assert float(rm) == pytest.approx(s * stats.norm.ppf(p) / sv[0], rel=1e-6)
        assert float(rm) <= true * (1 + 1e-9)
        assert float(rf) == float(rm)
    assert n_checked >= 20


def test_rigorous_certify_with_monte_carlo_p_on_the_linear_vae():
    for seed in range(6):
        m = LinearVAE.random(d=3, input_shape=(1, 4, 4), s=0.2, singular_values=[3.0, 1.0, 0.5], seed=seed)
        r = 1.5 * m.exact_r_min()
        x = torch.rand(5, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(seed))
        cert = rigorous_certify(m, x, r, n_samples=4000, alpha=0.001, generator=torch.Generator().manual_seed(seed))
        true = m.exact_margin(r)
        assert torch.all(cert.radius_mean <= true) and torch.all(cert.radius_mean > 0)
        assert torch.equal(cert.radius_full, cert.radius_mean)
        assert cert.constants.mean == pytest.approx(3.0, rel=1e-8)
        assert torch.all(cert.p_lower <= float(m.exact_p(r)) + 0.02)


def test_rigorous_certify_rejects_bad_constants():
    m = LinearVAE.random(d=2, input_shape=(1, 2, 2), seed=0)
    with pytest.raises(InputError):
        rigorous_certify(m, torch.rand(2, 1, 2, 2, dtype=F64), 0.3, constants=VAELipschitz(-1.0, 0.0, 0.0, 1.0))


# --- Barrett et al. ---------------------------------------------------------------------------
def test_barrett_bound1_matches_a_brute_force_scan():
    rng = np.random.default_rng(3)
    for _ in range(50):
        a, b, c, s, r = rng.uniform(0.2, 3.0), rng.uniform(0.0, 3.0), rng.uniform(0.0, 3.0), rng.uniform(0.0, 0.3), rng.uniform(0.5, 4.0)
        eps = barrett_bound1(a, b, c, s, r)
        grid = np.linspace(0, 10, 200001)
        ok = b * b * grid ** 2 + (2 * s + c * grid) ** 2 <= r * r / (2 * a * a)
        brute = grid[ok].max() if ok.any() else 0.0
        if s >= r / (math.sqrt(8) * a):
            assert eps == 0.0
        else:
            assert eps == pytest.approx(brute, abs=1e-4)
            assert b * b * eps ** 2 + (2 * s + c * eps) ** 2 <= r * r / (2 * a * a) * (1 + 1e-9)
    assert barrett_bound1(1.0, 0.0, 0.0, 0.1, 1.0) == math.inf


def _h(u, m):
    cm = math.pi ** -0.5 * math.exp((m - (m - 1) * math.log(m)) / 2)
    return cm * u ** (m / 2) * math.exp(-u / 2) / (u - m + 2)


@pytest.mark.parametrize("gamma", [None, 0.02])
def test_barrett_bound2_condition_holds_at_the_answer_and_fails_above(gamma):
    rng = np.random.default_rng(4)
    found = 0
    for _ in range(40):
        m = int(rng.integers(2, 12))
        a, b, c, s, r = rng.uniform(0.1, 1.0), rng.uniform(0.1, 2.0), rng.uniform(0.0, 1.0), rng.uniform(0.005, 0.1), rng.uniform(1.0, 6.0)
        eps = barrett_bound2(a, b, c, s, r, m, gamma)
        if eps == 0.0:
            assert not barrett_condition(0.0, a, b, c, s, r, m, gamma)
            continue
        found += 1
        u = (r / a - b * eps) ** 2 / ((2 * gamma ** 2) if gamma else (c * eps + 2 * s) ** 2)
        assert u > m - 2 and _h(u, m) <= 0.5 + 1e-12 and eps < r / (a * b)
        up = eps * 1.001
        u2 = (r / a - b * up) ** 2 / ((2 * gamma ** 2) if gamma else (c * up + 2 * s) ** 2)
        assert not (u2 > m - 2 and _h(u2, m) <= 0.5 and up < r / (a * b))
    assert found >= 20


def test_barrett_margin_is_the_larger_bound_and_rejects_bad_input():
    a, b, c, s, r, m = 0.5, 1.0, 0.5, 0.05, 2.0, 8
    assert barrett_margin(a, b, c, s, r, m) == max(barrett_bound1(a, b, c, s, r), barrett_bound2(a, b, c, s, r, m))
    assert barrett_margin(a, b, c, s, r, m) > 0
    with pytest.raises(InputError):
        barrett_bound1(0.0, 1.0, 1.0, 0.1, 1.0)
    with pytest.raises(InputError):
        barrett_bound2(1.0, 1.0, 1.0, 0.1, -1.0, 4)


# --- a trained VAE: never above the empirical margin -------------------------------------------
@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory, digits_small):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    run = train(TrainConfig(dataset="digits", model=ModelConfig(latent_dim=4, hidden=(64,)), epochs=8, batch_size=32,
                            seed=0), tmp_path_factory.mktemp("rig") / "run", progress=False, data=digits_small)
    return run.model, digits_small[1].images[:12]


@pytest.mark.parametrize("mode", ["mean", "full"])
def test_rigorous_radius_below_the_empirical_margin_on_a_trained_vae(trained_digits, mode):
    from robvae import certify, empirical_margin, r_min

    model, x = trained_digits
    g = torch.Generator().manual_seed(0)
    r = 1.5 * float(r_min(model, x, 2000, generator=g).median())
    cert = rigorous_certify(model, x, r, n_samples=4000, alpha=0.001, generator=g)
    radius = cert.radius_mean if mode == "mean" else cert.radius_full
    assert int((radius > 0).sum()) >= 8  # the check has inputs to bite on
    assert torch.all(cert.radius_full <= cert.radius_mean)
    res = empirical_margin(model, x, r, mode=mode, tol=0.02, n_samples=4000, generator=g)
    bad = [(i, float(radius[i]), float(res.margin[i])) for i in range(len(x)) if radius[i] > res.margin[i]]
    assert not bad, f"rigorous radius above the empirical margin ({mode}) at (index, radius, margin): {bad}"
    # relation to Theorem 1 (reported, not asserted beyond sanity): the rigorous radius is smaller here
    t1 = certify(model, x, r, n_samples=4000, generator=g).radius
    ok = radius > 0
    assert float((radius[ok] / t1[ok].double()).median()) < 1.0


@pytest.fixture(scope="module")
def trained_digits_conv(tmp_path_factory, digits_small):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    cfg = ModelConfig(arch="conv", latent_dim=4, conv_channels=(8, 16), conv_hidden=32)
    run = train(TrainConfig(dataset="digits", model=cfg, epochs=8, batch_size=32, seed=0),
                tmp_path_factory.mktemp("rigc") / "run", progress=False, data=digits_small)
    return run.model, digits_small[1].images[:12]


@pytest.mark.parametrize("mode", ["mean", "full"])
def test_rigorous_radius_of_a_conv_vae_with_torus_bounds_below_the_empirical_margin(trained_digits_conv, mode,
                                                                                     monkeypatch):
    """The convolutions' norms from their periodic extensions (forced: dense limit 0; the route
    CIFAR-size layers take), on a trained conv VAE: the rigorous radius stays below the margin
    the attack finds, and is at least as large as with the shape-free bounds."""
    from robvae import empirical_margin, r_min
    from robvae.robustness import lipschitz as lip

    model, x = trained_digits_conv
    g = torch.Generator().manual_seed(0)
    r = 1.5 * float(r_min(model, x, 2000, generator=g).median())
    monkeypatch.setattr(lip, "DENSE_LIMIT", 0)
    torus = lip._vae_lipschitz(model, tuple(model.input_shape))
    cert = rigorous_certify(model, x, r, n_samples=4000, alpha=0.001, generator=g, constants=torus)
    radius = cert.radius_mean if mode == "mean" else cert.radius_full
    assert int((radius > 0).sum()) >= 6  # the check has inputs to bite on
    res = empirical_margin(model, x, r, mode=mode, tol=0.02, n_samples=4000, generator=g)
    bad = [(i, float(radius[i]), float(res.margin[i])) for i in range(len(x)) if radius[i] > res.margin[i]]
    assert not bad, f"rigorous radius above the empirical margin ({mode}) at (index, radius, margin): {bad}"
    monkeypatch.setattr(lip, "conv_periodic_bound", lambda *a: None)
    free = lip._vae_lipschitz(model, tuple(model.input_shape))
    assert torus.mean < free.mean


def test_plan_certified_margin_picks_the_largest_constant():
    from robvae.robustness.rigorous import lipschitz_vae_barrett_constants, plan_certified_margin

    for eps, r, m in [(0.5, 2.0, 8), (0.2, 1.0, 16), (2.0, 3.0, 4)]:
        plan = plan_certified_margin(eps, r, m, sigma_cap=0.1)
        assert plan.margin >= eps
        worse = barrett_margin(*lipschitz_vae_barrett_constants(plan.lipschitz * 1.01, 0.1, m), r, m)
        assert worse < eps * (1 + 1e-3)
    with pytest.raises(InputError, match="cannot certify"):
        plan_certified_margin(5.0, 0.01, 8, sigma_cap=1.0)
    with pytest.raises(InputError, match="eps"):
        plan_certified_margin(-1.0, 1.0, 8)


def test_certify_can_add_the_rigorous_radii():
    from robvae import certify

    m = LinearVAE.random(d=3, input_shape=(1, 4, 4), s=0.2, singular_values=[3.0, 1.0, 0.5], seed=0)
    x = torch.rand(4, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    r = 1.5 * m.exact_r_min()
    cert = certify(m, x, r, n_samples=2000, rigorous=True, generator=torch.Generator().manual_seed(1))
    rm = cert.extras["radius_rigorous_mean"]
    assert torch.allclose(rm, 0.2 * torch.special.ndtri(cert.p_lower.double()) / 3.0, rtol=1e-6)
    assert torch.all(rm <= m.exact_margin(r)) and torch.equal(rm, cert.extras["radius_rigorous_full"])
    assert "median_radius_rigorous_mean" in cert.summary()
    assert "radius_rigorous_mean" not in certify(m, x, r, n_samples=200).extras


# --- found by an audit of the formulas (session 6) -------------------------------------------------
def _mp_worst_lower_bound(p, D, t, m):
    """worst_lower_bound in 40-digit arithmetic (mpmath), written from docs/THEORY.md section 8."""
    import mpmath as mp

    mp.mp.dps = 40
    p, D, t = mp.mpf(p), mp.mpf(D), mp.mpf(t)
    log_bc_var = -(mp.mpf(m) / 2) * mp.log(mp.cosh(t / mp.sqrt(m)))
    kl_var = (mp.exp(2 * t) - 1 - 2 * t) / 2
    tv = min(mp.sqrt(1 - mp.exp(2 * log_bc_var)), mp.sqrt(kl_var / 2))
    a = max(mp.ncdf(mp.sqrt(2) * mp.erfinv(2 * p - 1) - D) - tv, 0)
    bc = mp.exp(log_bc_var - D ** 2 / 4)
    b = mp.sin(max(0, mp.asin(mp.sqrt(p)) - mp.acos(bc))) ** 2
    kl = kl_var + D ** 2 * mp.exp(2 * t) / 2
    lo, hi = mp.mpf(0), p  # the smallest q with kl(p || q) <= KL
    for _ in range(200):
        q = (lo + hi) / 2
        val = p * mp.log(p / q) + (1 - p) * mp.log((1 - p) / (1 - q))
        lo, hi = (lo, q) if val <= kl else (q, hi)
    return max(a, b, lo)


@pytest.mark.parametrize("gap", [1e-6, 1e-5, 1e-4, 1e-2])
def test_full_radius_holds_in_exact_arithmetic_near_one_half(gap):
    """Near p_lower = 1/2 the float64 bounds cancelled (1 - BC^2 and arccos BC from BC near 1, a
    binary KL of 1e-14 from four logarithms of 0.35): a full radius came out 0.2% too large at
    p_lower - 1/2 = 1.5e-7, 3x at 1e-8. At the returned radius the worst-case bound, recomputed
    in 40 digits, is above 1/2."""
    g = np.random.default_rng(int(-math.log10(gap)))
    for _ in range(6):
        ld, lls, m = float(g.uniform(0.01, 3)), float(g.uniform(0.1, 8)), int(g.choice([1, 4, 64]))
        p = 0.5 + gap * float(g.uniform(1, 3))
        _, rf = rigorous_radii(torch.tensor([p], dtype=F64), torch.tensor([ld], dtype=F64), lls, m)
        eps = float(rf[0])
        assert eps > 0
        assert _mp_worst_lower_bound(p, ld * eps, lls * eps, m) > 0.5, (p, ld, lls, m, eps)


def test_an_overflowing_divergence_never_certifies():
    """D = 0 with e^(2t) overflowing made the KL bound 0 * inf = NaN, which the bisection read as
    "infeasible everywhere" and returned p itself: a full radius of 1e6 for L_D = 0."""
    assert float(worst_lower_bound(0.6, 0.0, 400.0, 4)) == 0.0
    assert float(binary_kl_bound(0.6, float("nan"))) == 0.0
    _, rf = rigorous_radii(torch.tensor([0.6], dtype=F64), torch.tensor([0.0], dtype=F64), 1.0, 4)
    assert 0 < float(rf[0]) < 1  # sigma moving alone (L_D = 0) still limits the radius
    assert _mp_worst_lower_bound(0.6, 0.0, float(rf[0]), 4) > 0.5
    with pytest.raises(InputError, match="must be finite and >= 0"):
        rigorous_radii(torch.tensor([0.7], dtype=F64), torch.tensor([-1.0], dtype=F64), 1.0, 4)
    with pytest.raises(InputError, match="log-sigma constant"):
        rigorous_radii(torch.tensor([0.7], dtype=F64), torch.tensor([1.0], dtype=F64), -1.0, 4)


def test_barrett_bound_2_needs_two_latent_dimensions():
    """Inglot's chi-square tail bound behind bound 2 holds for m >= 2; at m = 1 its test passed at
    every u, so any budget below r / (a b) was certified, even where P(||g(z') - g(z)|| <= r) is
    0.0056 unperturbed (a trained one-latent Lipschitz VAE printed a margin that 0/20 inputs met)."""
    from robvae.robustness.rigorous import barrett_bound1, barrett_bound2, barrett_margin, plan_certified_margin

    with pytest.raises(InputError, match="m >= 2"):
        barrett_bound2(1.0, 1.0, 0.0, 100.0, 1.0, 1)
    for s in (0.1, 1.0, 100.0):
        assert barrett_margin(1.0, 1.0, 0.0, s, 1.0, 1) == barrett_bound1(1.0, 1.0, 0.0, s, 1.0)
    assert barrett_margin(1.0, 1.0, 0.0, 100.0, 1.0, 1) == 0.0
    with pytest.raises(InputError, match="cannot certify"):
        plan_certified_margin(0.5, 0.02, 1, sigma_cap=1.0)
    # chi-square check of bound 2 for m >= 2: where it certifies u, P(chi2_m >= u) < 1/2
    from robvae.robustness.rigorous import _log_cm

    for m in (2, 3, 10, 50):
        u = np.linspace(m - 1.999, 5 * m + 20, 4000)
        ok = (_log_cm(m) + (m / 2) * np.log(u) - u / 2 - np.log(u - m + 2)) <= math.log(0.5)
        assert (stats.chi2.sf(u[ok], m) < 0.5).all()


def test_barrett_bound_1_at_extreme_scales():
    """r^2 / (2 a^2) overflowed (r = 1e200: an infinite margin) or a^2 underflowed (a = 1e-170: a
    ZeroDivisionError); solved in units of r / (sqrt 2 a) it is finite and below r / (sqrt 2 a b)."""
    from robvae.robustness.rigorous import barrett_bound1

    big = barrett_bound1(1.0, 1.0, 0.0, 0.0, 1e200)
    assert math.isfinite(big) and big == pytest.approx(1e200 / math.sqrt(2), rel=1e-12)
    tiny = barrett_bound1(1e-170, 1.0, 0.0, 0.0, 1.0)
    assert tiny == pytest.approx(1.0 / (math.sqrt(2) * 1e-170), rel=1e-12)
    assert barrett_bound1(1.0, 2.0, 0.5, 0.1, 1.0) == pytest.approx(_bound1_direct(1.0, 2.0, 0.5, 0.1, 1.0), rel=1e-12)


def _bound1_direct(a, b, c, s, r):
    R = r * r / (2 * a * a)
    qa = b * b + c * c
    return (-2 * s * c + math.sqrt(4 * s * s * c * c - qa * (4 * s * s - R))) / qa


# --- found by an audit (session 13): a stale latent_dim -------------------------------------------
def _relatent(model, d_new):
    """robvae's MLP VAE with its encoder's last Linear and decoder's first Linear replaced for a
    latent size d_new, model.latent_dim left as it was (what a user rewiring layers does): mean
    rows 2..d_new-1 large, rows 0..1 small, so splitting the rows at the old size hides them."""
    from torch import nn

    hidden = model.encoder.net[-1].in_features
    with torch.no_grad():
        last = nn.Linear(hidden, 2 * d_new)
        last.weight.mul_(0.05)
        last.weight[2:d_new].mul_(60)
        last.bias.zero_()
        last.bias[d_new:] = -3.0
        model.encoder.net[-1] = last
        model.decoder.net[0] = nn.Linear(d_new, model.decoder.net[0].out_features)
    return model


def test_a_stale_latent_dim_is_refused_not_split_at():
    """vae_lipschitz split the encoder's last layer at model.latent_dim: with the layers replaced
    for 6 latent dimensions and latent_dim still 2, L_mu covered 2 of the 6 mean rows (0.027
    against 1.907) and an attack broke the rigorous radius at 0.18x it (p = 0 in 20,000 draws).
    Now every rigorous path refuses the model in one line; with latent_dim set, the constant is the
    independent split's."""
    from robvae import certify
    from robvae.models import VAE, ModelConfig
    from robvae.robustness.lipschitz import lipschitz_bound, spectral_norm, vae_lipschitz
    from robvae.robustness.rigorous import rigorous_columns

    torch.manual_seed(0)
    model = _relatent(VAE(ModelConfig(input_shape=(1, 8, 8), arch="mlp", latent_dim=2, hidden=(32,))).eval(), 6)
    x = 0.5 + 0.05 * torch.rand(2, 1, 8, 8)
    msg = r"VAE.latent_dim is 2 but its encoder gives 6 latent dimensions \(layers replaced\?\): set model.latent_dim = 6"
    with pytest.raises(InputError, match=msg):
        vae_lipschitz(model)
    with pytest.raises(InputError, match=msg):
        rigorous_certify(model, x, 0.05, n_samples=100)
    with pytest.raises(InputError, match=msg):
        certify(model, x, 0.05, n_samples=100, rigorous=True)
    with pytest.raises(InputError, match=msg):  # constants given: the radius's m is still checked
        rigorous_columns(model, x, torch.tensor([0.9, 0.9]), torch.tensor([0.05, 0.05]), VAELipschitz(1.0, 1.0, 1.0, 1.0))
    model.latent_dim = 6
    want = lipschitz_bound(model.encoder.net[:-1]) * spectral_norm(model.encoder.net[-1].weight[:6])
    assert vae_lipschitz(model).mean == pytest.approx(want, rel=1e-6) and want > 50 * 0.0272


def test_rigorous_columns_use_the_width_encode_gives():
    """A protocol model without a latent_dim attribute: the full radius uses the width its encoder
    gives (it was infinity, which is safe but loose); an attribute that disagrees is refused."""
    from robvae.robustness.rigorous import rigorous_columns

    class User(torch.nn.Module):
        input_shape = (1, 2, 2)

        def __init__(self, d):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2 * d)

        def encode(self, x):
            mu, s = self.lin(x.flatten(1)).chunk(2, dim=1)
            return mu, torch.nn.functional.softplus(s) + 0.1

        def decode(self, z):
            return torch.sigmoid(z.sum(dim=1, keepdim=True)).expand(-1, 4).view(-1, 1, 2, 2)

    p, smin = torch.tensor([0.9, 0.99], dtype=F64), torch.tensor([0.2, 0.3], dtype=F64)
    L = VAELipschitz(2.0, 0.5, 0.5, 1.0)
    x = torch.rand(2, 1, 2, 2)
    got = rigorous_columns(User(3), x, p, smin, L)
    want = rigorous_radii(p, 2.0 / smin, 0.5, 3)
    assert torch.equal(got["radius_rigorous_full"], want[1]) and torch.equal(got["radius_rigorous_mean"], want[0])
    assert not torch.equal(want[1], rigorous_radii(p, 2.0 / smin, 0.5, math.inf)[1])  # m matters here
    stale = User(3)
    stale.latent_dim = 2
    with pytest.raises(InputError, match="User.latent_dim is 2 but its encoder gives 3"):
        rigorous_columns(stale, x, p, smin, L)


def test_a_planned_margin_survives_the_trained_weights_small_excess_over_l():
    """Where bound 1 stops giving a margin, Barrett's margin falls steeply in L: a plan for 1e-5 at
    r = 2 (1.001e-5 at L exactly) measured 9.7e-6 on the trained weights, whose norms exceed L by
    ~5e-7 (h74). The plan now holds with the constants 1e-5 above L (20x that excess), at every eps."""
    from robvae.robustness.rigorous import LIPSCHITZ_EXCESS, lipschitz_vae_barrett_constants, plan_certified_margin

    assert LIPSCHITZ_EXCESS >= 1e-5
    for eps in (0.5, 1e-3, 1e-5, 1e-8, 1e-30, 1e-300):
        for r, m in ((2.0, 4), (1.0, 8), (3.0, 2)):
            try:
                plan = plan_certified_margin(eps, r, m)
            except InputError:
                continue
            measured = barrett_margin(*lipschitz_vae_barrett_constants(plan.lipschitz * (1 + 1e-5), 0.1, m), r, m)
            assert measured >= eps, (eps, r, m, plan.lipschitz, measured)
