"""The empirical margin (issue 9): exact on the linear VAE for every seed, never fooled by one weak
attack run, seed-to-seed spread within its Monte Carlo tolerance on a trained VAE, fewer decoder rows
than the fixed-sample search, and above the Theorem 1 bound on a nonlinear VAE."""

import types

import pytest
import torch

from robvae.attacks import EnsembleAttack
from robvae.models import VAE, LinearVAE, ModelConfig
from robvae.robustness import MarginResult, certify, empirical_margin, r_min


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _linear():
    return LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, seed=0)


def _sensitive_vae():
    """An untrained MLP VAE made sensitive (larger weights, sigma ~ 0.05) so margins lie well inside
    the box (an untrained VAE at default scale is robust up to the box diameter)."""
    torch.manual_seed(0)
    m = VAE(ModelConfig(input_shape=(1, 6, 6), latent_dim=3, hidden=(32, 16))).double()
    with torch.no_grad():
        enc = [layer for layer in m.encoder.net if isinstance(layer, torch.nn.Linear)]
        for layer in enc + [layer for layer in m.decoder.net if isinstance(layer, torch.nn.Linear)]:
            layer.weight.mul_(2.0)
        enc[-1].bias[3:] -= 3.0  # pre-softplus scale: sigma ~ softplus(-3) ~ 0.05
    return m


def _check_bracket(res: MarginResult):
    ok = res.robust_clean & ~res.capped
    assert torch.all(res.margin <= res.upper)
    assert torch.all(res.tolerance[ok] >= res.upper[ok] - res.margin[ok] - 1e-12)
    assert torch.all(res.tolerance[~ok] == 0)


@pytest.mark.parametrize("mode", ["mean", "full"])
def test_linear_margin_exact_within_tolerance_for_every_seed(mode):
    m = _linear()
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)  # the box does not bind at the margin
    r = 0.25
    exact = m.exact_margin(r)
    for seed in range(5):
        res = empirical_margin(m, x, r, mode=mode, n_samples=20000, tol=1e-3, generator=_gen(seed))
        _check_bracket(res)
        assert res.robust_clean.all() and not res.capped.any() and res.mode == mode and res.preset == "cheap"
        # margin <= exact <= margin + tolerance (error <= alpha per decision), tolerance a few per cent
        assert torch.all(res.margin <= exact), (seed, res.margin, exact)
        assert torch.all(res.margin + res.tolerance >= exact), (seed, res.margin, res.tolerance, exact)
        assert torch.all(res.tolerance <= 0.15 * exact), (seed, res.tolerance, exact)
        torch.testing.assert_close(res.p_clean, torch.full((2,), float(m.exact_p(r)), dtype=torch.float64),
                                   atol=0.05, rtol=0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sequential_search_uses_fewer_decoder_rows_than_fixed_samples(seed):
    """Issue 11: >= 5x fewer decoder rows than the fixed-sample search at n_samples = 10,000 and a
    1e-3 bracket, the sequential margin never above the exact one."""
    m = _linear()
    x = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    r = 0.25
    exact = m.exact_margin(r)
    kw = dict(mode="mean", n_samples=10_000, tol=1e-3)
    seq = empirical_margin(m, x, r, generator=_gen(seed), **kw)
    fixed = empirical_margin(m, x, r, sequential=False, generator=_gen(seed), **kw)
    assert not fixed.sequential and seq.sequential
    assert fixed.decoder_rows >= 5 * seq.decoder_rows, (fixed.decoder_rows, seq.decoder_rows)
    # both find the margin: the fixed search to its bracket (with MC error), the sequential one conservatively.
    # The fixed search's decisions near the margin are coin flips (p ~ 1/2 on S draws): a final budget
    # that fails its re-decision steps down to one decided robust twice (seed 1's second input: 0.904 x
    # exact, where an unverified 1.0045 x exact was returned before)
    assert torch.all(fixed.margin <= 1.03 * exact) and torch.all(fixed.margin >= 0.85 * exact)
    assert torch.all(seq.margin <= exact) and torch.all(seq.margin >= 0.85 * exact)


class _OneWeakRun:
    """The default attack, except that its ``bad``-th call returns delta = 0 (a run that found nothing)."""

    preset = "flaky"

    def __init__(self, bad):
        self.inner, self.calls, self.bad = EnsembleAttack("cheap"), 0, bad

    def __call__(self, model, x, eps, **kw):
        self.calls += 1
        res = self.inner(model, x, eps, **kw)
        if self.calls == self.bad:
            res.delta = torch.zeros_like(res.delta)
        return res


@pytest.mark.parametrize("bad", [2, 3, 4])
def test_one_weak_run_cannot_overstate_the_margin(bad):
    """The plain bisection would accept the weak run and move the bracket above the true margin for
    good; the warm starts and the final verification must catch it."""
    m = _linear()
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    r = 0.25
    exact = m.exact_margin(r)
    atk = _OneWeakRun(bad)
    res = empirical_margin(m, x, r, atk, mode="mean", n_samples=20000, generator=_gen(2))
    assert atk.calls >= bad
    assert float(res.margin) <= exact, (float(res.margin), exact)
    assert float(res.margin + res.tolerance) >= exact
    assert res.preset == "flaky"


class _WeakFirstTime:
    """Finds nothing (delta = 0) the first time it sees a budget below ``2 * exact``, and the
    exact worst perturbation (eps times the top right-singular vector of A) otherwise: every fresh
    budget looks robust once, so only re-deciding the final budget can catch it."""

    preset = "weak-first-time"

    def __init__(self, model, exact):
        self.v1 = torch.linalg.svd(model.A)[2][0].view(1, 1, 4, 4)
        self.exact, self.seen = exact, set()

    def __call__(self, model, x, eps, **kw):
        out = []
        for e in eps.tolist():
            strong = round(e, 12) in self.seen or e > 2.01 * self.exact
            self.seen.add(round(e, 12))
            out.append(e if strong else 0.0)
        scale = torch.tensor(out, dtype=x.dtype).view(-1, 1, 1, 1)
        return types.SimpleNamespace(delta=scale * self.v1.to(x.dtype).expand_as(x), decoder_rows=0)


def test_the_margin_returned_after_the_last_search_round_was_re_decided():
    """After three failed verifications the search refined a fourth time and returned that lo
    unverified: 1.82 x the exact margin with this attack. Now a failed last lo falls back to
    budgets decided robust twice (a fresh budget fools this attack once: here none survives within
    the extra attack runs, margin 0, an unknown)."""
    m = _linear()
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    r = 0.25
    exact = m.exact_margin(r)
    res = empirical_margin(m, x, r, _WeakFirstTime(m, exact), mode="mean", n_samples=20000, eps_init=0.5 * exact,
                           generator=_gen(0))
    assert bool(res.robust_clean) and not bool(res.capped)
    assert float(res.margin) <= exact, (float(res.margin) / exact)


def test_not_robust_clean_gets_zero_and_cap():
    m = _linear()
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    r = torch.tensor([0.5 * m.exact_r_min(), 0.25], dtype=torch.float64)
    res = empirical_margin(m, x, r, mode="mean", eps_max=0.01, n_samples=2000, generator=_gen())
    assert not res.robust_clean[0] and res.margin[0] == 0 and res.p_clean[0] < 0.5
    assert res.capped[1] and res.margin[1] == 0.01
    _check_bracket(res)


def test_bound_below_margin_on_a_nonlinear_vae_and_legacy_keywords():
    """Theorem 1 (first order) must stay below the attack-based margin for every input; the old
    keyword arguments still work (with a DeprecationWarning)."""
    m = _sensitive_vae()
    x = torch.rand(6, 1, 6, 6, generator=_gen(1), dtype=torch.float64)
    r = 1.5 * r_min(m, x, 2000, generator=_gen(2))
    cert = certify(m, x, r, n_samples=2000, generator=_gen(3))
    assert not cert.abstain.any()
    for mode in ("mean", "full"):
        res = empirical_margin(m, x, r, mode=mode, n_samples=2000, eps_init=cert.radius, tol=1e-2, generator=_gen(4))
        violations = (cert.radius > res.margin).nonzero().flatten().tolist()
        assert violations == [], (mode, cert.radius, res.margin)
        assert torch.all(res.margin > 0) and not res.capped.any()
        _check_bracket(res)
    with pytest.warns(DeprecationWarning):
        old = empirical_margin(m, x[:2], r[:2], n_samples=2000, steps=10, restarts=2, eta_samples=2, tol=1e-2,
                               generator=_gen(5))
    assert old.preset == "legacy" and torch.all(old.margin > 0)


@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory):
    from robvae import load_dataset
    from robvae.training import TrainConfig, train

    run = train(TrainConfig(model=ModelConfig(latent_dim=6, hidden=(64, 32)), epochs=15, batch_size=32,
                            n_train=600, seed=0), tmp_path_factory.mktemp("digits") / "run", progress=False)
    return run.model, load_dataset("digits", "test").images[:4]


@pytest.mark.slow
def test_seed_to_seed_spread_within_tolerance_on_a_trained_vae(digits_vae):
    """Full encoder (on this model the mean-only setting is robust up to the box). Its p(eps) curve is
    shallow, so the Monte Carlo tolerance is wide; the margins of different seeds must still agree
    within it (the old search varied by up to 2.4x from seed to seed)."""
    model, x = digits_vae
    r = 1.2 * float(r_min(model, x, 2000, generator=_gen(0)).median())
    runs = [empirical_margin(model, x, r, n_samples=20000, tol=1e-2, generator=_gen(s)) for s in range(4)]
    margins = torch.stack([res.margin for res in runs])  # [seeds, B]
    tols = torch.stack([res.tolerance for res in runs])
    ok = torch.stack([res.robust_clean & ~res.capped for res in runs]).all(0)
    assert int(ok.sum()) >= 2, [res.p_clean for res in runs]
    spread = margins.amax(0) - margins.amin(0)
    assert torch.all(spread[ok] <= tols.amax(0)[ok] + 1e-12), (margins, tols)
    assert float((tols[:, ok] / margins[:, ok]).median()) <= 1.0, (margins, tols)  # not vacuous


def test_an_undecided_first_budget_does_not_leave_the_input_without_a_margin():
    """Found by the review of session 8: when the search's first budgets were undecided (p_r(x) of
    these inputs is 0.58 unperturbed, so the attacked estimates near the margin are hard to
    settle), it stopped after two unsettled decisions with nothing settled robust: margin 0, an
    unknown (4 of 10 digits inputs at the default n_samples). With nothing settled robust it now
    tries two more budgets below. Here: 5 of 8 unknown before, 2 now; every margin found lies
    below the exact one."""
    from scipy import stats

    vae = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, singular_values=[3.0, 2.0, 1.5, 1.0],
                           dtype=torch.float32)
    r = 0.1 * float(stats.chi2.ppf(0.58, 4)) ** 0.5  # p_clean = 0.58 for every input
    exact = vae.exact_margin(r)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    res = empirical_margin(vae, x, r, mode="mean", eps_init=torch.full((8,), 2 * exact), n_samples=1000, tol=0.05,
                           generator=torch.Generator().manual_seed(1))
    unknown = res.robust_clean & (res.margin == 0) & ~res.capped
    assert int(res.robust_clean.sum()) == 7 and int(unknown.sum()) <= 3
    assert float(res.margin.max()) <= exact
