"""Early abstention in certify (issue 11 item 3): an input stops drawing once an anytime-valid test
settles p < 1/2. Checked against the linear VAE's exact p (which inputs may stop), against the
same certificates without it (every other input unchanged, field by field), and for the error
rate of the stopping rule itself at p = 1/2, the worst case of its null hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from robvae.models import LinearVAE
from robvae.robustness import certify
from robvae.robustness.certify import _STORED
from robvae.robustness.sampling import count_within

S = 4000


def _linear():
    return LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1, seed=0).eval()


def test_only_inputs_settled_below_one_half_stop_and_no_other_certificate_changes():
    m = _linear()
    qs = [0.02, 0.2, 0.4, 0.6, 0.9, 0.995] * 2  # the exact p_r(x) of each input (p does not depend on x here)
    r = torch.tensor([m.s * math.sqrt(stats.chi2.ppf(q, m.latent_dim)) for q in qs], dtype=torch.float64)
    assert torch.allclose(torch.as_tensor(m.exact_p(r.numpy())), torch.tensor(qs, dtype=torch.float64))
    x = torch.rand(len(qs), 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = certify(m, x, r, n_samples=S, alpha=1e-3, generator=torch.Generator().manual_seed(3))  # the default
    b = certify(m, x, r, n_samples=S, alpha=1e-3, generator=torch.Generator().manual_seed(3), early_abstain=False)
    assert torch.equal(b.n_drawn, torch.full_like(b.n_drawn, S))
    stopped = a.n_drawn < S
    low = torch.tensor([q < 0.3 for q in qs])
    assert stopped[low].all()  # p = 0.02 and 0.2: settled well before S
    assert int(a.n_drawn[torch.tensor([q == 0.02 for q in qs])].max()) <= 200
    assert not stopped[torch.tensor([q > 0.5 for q in qs])].any()  # robust inputs never stop here
    # stopped inputs abstain in every radius, with p and p_lower from the draws made
    for name in ("radius", "radius_sound", "radius_spectral", "radius_whitened"):
        assert (getattr(a, name)[stopped] == 0).all(), name
    k = (a.p * a.n_drawn).round()
    assert torch.allclose(a.p * a.n_drawn, k) and (a.p[stopped] < 0.5).all()
    assert (b.radius_sound[stopped] == 0).all()  # the fixed-sample answer abstained there too
    # every input that did not stop: the same draws, so the same certificate, field by field
    for f in _STORED:
        assert torch.equal(getattr(a, f)[~stopped], getattr(b, f)[~stopped]), f
    s = a.summary()
    assert s["n_stopped_early"] == int(stopped.sum()) and b.summary()["n_stopped_early"] == 0
    assert a[stopped].n_drawn.shape == (int(stopped.sum()),)  # indexing and cat keep the column
    assert torch.equal(type(a).cat([a[:5], a[5:]]).n_drawn, a.n_drawn)


def _coin(p: float, generator: torch.Generator):
    """A stand-in for the decoder's per-chunk count: Binomial(c, p) draws within r per input."""
    def within(model, z, ref, rt):
        c = z.shape[0] // ref.shape[0]
        return torch.binomial(torch.full((ref.shape[0],), float(c), dtype=torch.float64),
                              torch.full((ref.shape[0],), p, dtype=torch.float64), generator=generator).long()
    return within


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_stopping_rule_error_rate(p):
    """At p = 1/2 (the hardest case of "not p < 1/2") an input may stop, though it is checked
    after every chunk, in at most a fraction alpha of cases; at p = 0.3 nearly all stop, early."""
    B, alpha = 3000, 0.05
    mu, sigma, ref = torch.zeros(B, 1), torch.ones(B, 1), torch.zeros(B, 1)
    k, n = count_within(None, mu, sigma, ref, torch.ones(B), 3000, 20, torch.Generator().manual_seed(1),
                        abstain_alpha=alpha, within=_coin(p, torch.Generator().manual_seed(2)))
    stopped = (n < 3000).double().mean().item()
    if p == 0.5:
        assert stopped <= alpha, stopped
        assert int(n.max()) == 3000 and bool((k <= n).all())
    else:
        assert stopped > 0.99 and float(n.double().median()) < 300, (stopped, float(n.double().median()))


def test_without_abstain_alpha_every_input_draws_all():
    B = 50
    mu, sigma, ref = torch.zeros(B, 1), torch.ones(B, 1), torch.zeros(B, 1)
    k, n = count_within(None, mu, sigma, ref, torch.ones(B), 500, 20, torch.Generator().manual_seed(1),
                        within=_coin(0.1, torch.Generator().manual_seed(2)))
    assert torch.equal(n, torch.full((B,), 500))


def test_grouped_chunks_give_the_chunk_by_chunk_counts():
    """Once most inputs stop, count_within decodes several chunks per call. A plain chunk-by-chunk
    loop (written here: draw every input's eta per chunk, count the live inputs, look at the same
    draws) must give the same k and n for every input; and the calls really were grouped."""
    from robvae.robustness.sampling import (ABSTAIN_CHECK_GROWTH, ABSTAIN_FIRST_CHECK, draw_setup, latent_draws,
                                            sequential_bernoulli_test, within_float32)
    m = _linear()
    qs = [0.02] * 9 + [0.6, 0.9, 0.995]
    r = torch.tensor([m.s * math.sqrt(stats.chi2.ppf(q, m.latent_dim)) for q in qs], dtype=torch.float64)
    x = torch.rand(len(qs), 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    S, chunk, alpha = 3000, 25, 1e-3
    with torch.inference_mode():
        mu, sigma, ref, _ = draw_setup(m, x, None, S, "mean", None)
        calls = []

        def recording(model, z, ref_, rt_):
            calls.append(z.shape[0] // ref_.shape[0])
            return within_float32(model, z, ref_, rt_)
        k, n = count_within(m, mu, sigma, ref, r, S, chunk, torch.Generator().manual_seed(5), abstain_alpha=alpha,
                            within=recording)
        # the reference: one chunk at a time
        gen = torch.Generator().manual_seed(5)
        B = len(qs)
        kr, nr = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
        live = torch.ones(B, dtype=torch.bool)
        drawn, look = 0, ABSTAIN_FIRST_CHECK
        while drawn < S:
            c = min(chunk, S - drawn)
            z = latent_draws(mu, sigma, c, gen).view(B, c, -1)
            idx = live.nonzero().squeeze(1)
            kr[idx] += within_float32(m, z[idx].reshape(-1, z.shape[-1]), ref[idx], r[idx])
            nr[idx] += c
            drawn += c
            if look <= drawn < S:
                look = math.ceil(drawn * ABSTAIN_CHECK_GROWTH)
                live[idx[sequential_bernoulli_test(kr[idx], nr[idx], alpha)[0] < 0]] = False
    assert torch.equal(k, kr) and torch.equal(n, nr)
    assert int((n < S).sum()) == 9 and max(calls) >= 3 * chunk  # 3 live inputs: several chunks per call


class _BatchDependent(torch.nn.Module):
    """A protocol model whose decode depends on the other rows of its call by rounding-sized
    amounts (as a kernel that changes path with the batch size does; a larger dependence is
    refused as not deterministic): decoding only the live inputs' rows changes every distance's
    last bits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Linear(16, 4)
        self.dec = torch.nn.Linear(4, 16)  # not "decoder": no rewrite, model.decode itself runs

    def encode(self, x):
        return self.enc(x.flatten(1)), torch.full((x.shape[0], 4), 0.5)

    def decode(self, z):
        return torch.sigmoid(self.dec(z) + 2e-6 * z.mean(0, keepdim=True).sum()).view(-1, 1, 4, 4)


def test_abstention_keeps_every_row_of_a_call_where_rows_are_not_independent():
    """Early abstention decodes only the live inputs' rows where fast_decode.rows_independent
    holds; for a decoder whose rows depend on their batch it keeps every call's rows, so an input
    that does not stop still gets exactly the counts it gets without abstention."""
    from robvae.models.fast_decode import rows_independent
    from robvae.robustness import r_robustness
    from robvae.robustness.sampling import delta_norms

    m = _BatchDependent().eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    assert not rows_independent(m, torch.zeros(6, 4)) and rows_independent(_linear().float(), torch.zeros(6, 4))
    with torch.inference_mode():
        norms = delta_norms(m, x, n_samples=400, generator=torch.Generator().manual_seed(5))
    r = torch.full((6,), 1e-6)
    r[5] = float(norms[5].median())  # five inputs stop at once, the last one draws on
    a = r_robustness(m, x, r, n_samples=400, generator=torch.Generator().manual_seed(5), abstain_alpha=1e-3)
    b = r_robustness(m, x, r, n_samples=400, generator=torch.Generator().manual_seed(5))
    assert (a.n_samples[:5] < 400).all() and int(a.n_samples[5]) == 400
    assert int(a.n_within[5]) == int(b.n_within[5])


@pytest.mark.parametrize("bad", [0.0, 1.0, 2.0, -0.1, float("nan")])
def test_abstain_alpha_outside_zero_one_is_refused(bad):
    from robvae.errors import InputError
    from robvae.robustness import r_robustness

    m = _linear()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(InputError, match="abstain_alpha must be a level in"):
        r_robustness(m, x, 0.1, n_samples=50, abstain_alpha=bad)


def test_p_upper_of_inputs_stopped_early_still_covers_p():
    """r_robustness(abstain_alpha=): an input stops because its count is low, so the Clopper-Pearson
    upper bound of the draws made fell below p in 12% of inputs at p = 0.47, alpha = 0.05 (fixed S:
    4.6%). A stopped input's p_upper is now 1/2, the bound the test settled."""
    from robvae.robustness import r_robustness

    m = _linear()
    q = 0.47
    r = m.s * math.sqrt(stats.chi2.ppf(q, m.latent_dim))
    x = torch.full((2000, 1, 4, 4), 0.5, dtype=torch.float64)  # p does not depend on x: 2,000 repeats
    est = r_robustness(m, x, r, n_samples=1000, alpha=0.05, abstain_alpha=0.05,
                       generator=torch.Generator().manual_seed(4))
    stopped = est.n_samples < 1000
    assert 0.05 < float(stopped.double().mean()) < 0.95  # both kinds present
    assert bool((est.p_upper[stopped] == 0.5).all())
    assert float((est.p_upper < q).double().mean()) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)
