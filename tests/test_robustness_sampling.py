"""Monte Carlo p_r, r_min and Clopper-Pearson against the closed forms of the linear VAE (THEORY.md section 7)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

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


@pytest.mark.parametrize("p", [0.5, 0.47])
def test_sequential_test_error_rate_at_every_look(p):
    """Looking after EVERY draw (the worst case for optional stopping), the chance of ever wrongly
    deciding p > 1/2 stays below alpha (a fixed-n binomial test looked at this often would exceed it)."""
    alpha, N, T = 0.05, 1500, 400
    rng = np.random.default_rng(0)
    k = np.cumsum(rng.random((N, T)) < p, axis=1)
    n = np.broadcast_to(np.arange(1, T + 1), (N, T))
    dec = sequential_bernoulli_test(k, n, alpha)[0].numpy()
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
