"""Monte Carlo r-robustness (docs/THEORY.md sections 2 and 5): p_r(x, delta), r_min(x) and Clopper-Pearson bounds.

With eta ~ N(0, I_d) and the maximum-likelihood reconstruction g(mu(x)):

- mode "mean" (docs/THEORY.md section 2, Theorem 1's setting):
  Delta(x, delta) = g(mu(x + delta) + eta * sigma(x)) - g(mu(x))
- mode "full" (docs/THEORY.md section 5, the full encoder an adversary attacks):
  Delta(x, delta) = g(mu(x + delta) + eta * sigma(x + delta)) - g(mu(x))

p_r(x, delta) = P_eta(||Delta(x, delta)|| <= r); r-robust iff p_r > 1/2;
r_min(x) = median ||Delta(x, 0)|| (both modes agree at delta = 0).

Draws are a batch dimension: a chunk of c draws for B inputs is one decoder call on z of shape
[B * c, d]; chunks bound the memory, which stays flat in the number of draws S.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

from ..config import ALPHA, N_SAMPLES
from ..models.fast_decode import batches, default_chunk, draw_chunks, flat_decode, row_cap, rows_independent
from ..rng import randn
from ..errors import InputError
from ..validation import as_radius, check_count, check_delta, check_level, check_size, check_x, checked_encode, rounded

MODES = ("mean", "full")


def checked_inputs(model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None,
                   mode: str) -> torch.Tensor | None:
    """Validate ``mode``, x and delta: -> the checked delta (None: delta = 0)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose 'mean' (sigma(x)) or 'full' (sigma(x+delta))")
    check_x(model, x)
    return check_delta(x, delta)


def _as_counts(k: torch.Tensor | np.ndarray | int, n: torch.Tensor | np.ndarray | int) -> list[np.ndarray]:
    """k and n (numbers, arrays or tensors) as float64 arrays broadcast against each other."""
    return np.broadcast_arrays(*(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
                                 for v in (k, n)))


def draw_setup(
    model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None, n_samples: int, mode: str,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(mu, sigma, ref, chunk): the centres and scales of the latent draws z = mu + eta * sigma
    [B, d] (sigma(x) in mode "mean", sigma(x + delta) in "full"), g(mu(x)) flattened [B, D], and
    the draws per chunk. Assumes validated inputs and runs under inference mode."""
    mu0, sigma0 = model.encode(x)
    ref = flat_decode(model, mu0.clone())  # [B, D] (a copy: the centres stay mu(x) whatever decode does)
    if delta is None:
        mu, sigma = mu0, sigma0
    else:
        mu, sigma_d = checked_encode(model, x + delta)
        sigma = sigma_d if mode == "full" else sigma0
    chunk = check_size(chunk_size, "chunk_size") or default_chunk(n_samples, x.shape[0], ref.shape[1], x.device,
                                                                   model)
    return mu, sigma, ref, chunk


def latent_draws(mu: torch.Tensor, sigma: torch.Tensor, c: int, generator: torch.Generator | None) -> torch.Tensor:
    """c draws z = mu + eta * sigma per input, eta ~ N(0, I) from ``generator``: [B * c, d], the
    c draws of input b in rows b * c ... (b + 1) * c - 1."""
    B, d = mu.shape
    eta = randn((B, c, d), mu, generator)  # [B, c, d]
    return (mu[:, None, :] + eta * sigma[:, None, :]).reshape(B * c, d)


def _norm_chunks(
    model: torch.nn.Module, x: torch.Tensor, delta: torch.Tensor | None, n_samples: int, mode: str,
    chunk_size: int | None, generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    """Yield ||Delta(x, delta)|| for successive chunks of draws, each of shape [B, c].

    Assumes validated inputs and runs under inference mode (no graph is kept).
    """
    mu, sigma, ref, chunk = draw_setup(model, x, delta, n_samples, mode, chunk_size)
    yield from _draw_norms(model, mu, sigma, ref, n_samples, chunk, generator)


def _draw_norms(
    model: torch.nn.Module, mu: torch.Tensor, sigma: torch.Tensor, ref: torch.Tensor, n_samples: int, chunk: int,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    """||g(mu + eta * sigma) - ref|| for ``n_samples`` draws per input, chunk by chunk ([B, c] each);
    the centres, scales and references of :func:`draw_setup`. Runs under inference mode."""
    for c in draw_chunks(n_samples, chunk):
        yield draw_distances(model, latent_draws(mu, sigma, c, generator), ref)


def draw_distances(model: torch.nn.Module, z: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||g(z) - ref|| [L, c] for the c draws z [L * c, d] of each of L inputs (input l's in rows
    l * c ... (l + 1) * c - 1) and their references ``ref`` [L, D]. Refuses NaN / inf. More rows
    than :func:`robvae.models.fast_decode.row_cap` (one draw for each of many inputs: the
    ``--r-relative`` calibration of thousands of inputs) are decoded in groups of inputs, so the
    decoder's buffers do not grow with L; where a row decodes to the same bits in any group
    (:func:`robvae.models.fast_decode.rows_independent`) the distances are those of one call.

    The distances of a float16 / bfloat16 model are computed in float32 from its outputs (float32
    [L, c]): rounded to the model's 8-11 bits, a distance just above r read as r (bfloat16, r =
    0.25: 651 of 164,000 counted draws lay beyond r, p overstated by 3e-3)."""
    L, D = ref.shape
    c = z.shape[0] // max(1, L)
    per_call = max(1, row_cap(z.device, model) // max(1, c))
    if L > per_call:
        norms = torch.empty((L, c), dtype=stat_dtype(ref.dtype), device=ref.device)
        for s in batches(L, per_call):
            norms[s] = draw_distances(model, z[s.start * c:s.stop * c], ref[s])
        return norms
    out = flat_decode(model, z).view(L, -1, D)  # a fresh buffer (inference mode): subtract in place
    if out.dtype != stat_dtype(out.dtype):  # half precision: the difference and the norm in float32
        out, ref = out.to(stat_dtype(out.dtype)), ref.to(stat_dtype(out.dtype))
    norms = torch.linalg.vector_norm(out.sub_(ref[:, None, :]), dim=-1)  # [L, c]
    if not bool(torch.isfinite(norms).all()):  # NaN would count as "not within r": refuse instead
        raise InputError(f"model.decode returned NaN or inf for {int((~torch.isfinite(norms)).sum())} of "
                         f"{norms.numel()} latent draws z = mu + eta * sigma")
    return norms


def delta_norms(
    model: torch.nn.Module,
    x: torch.Tensor,
    delta: torch.Tensor | None = None,
    n_samples: int = N_SAMPLES,
    *,
    mode: str = "mean",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """||Delta(x, delta)|| for ``n_samples`` draws of eta: x, delta [B, *shape] -> [B, S].

    ``delta=None`` means delta = 0 (encoder noise alone). ``mode`` "mean" keeps sigma(x) (docs/THEORY.md section 2),
    "full" uses sigma(x + delta) (docs/THEORY.md section 5). ``chunk_size`` draws per decoder call (default: sized
    so a chunk of decoder outputs holds about 4M numbers; it depends on the batch and the device). The
    draws are taken chunk by chunk for every input at once, so a seed's numbers go to other inputs at
    another chunk size: a result is reproduced by the same generator seed and chunk size. float32 for a float16 / bfloat16 model
    (:func:`draw_distances`).
    """
    delta = checked_inputs(model, x, delta, mode)
    with torch.inference_mode():
        # one output buffer filled chunk by chunk: a list of small per-chunk results interleaved
        # with the large decoder buffers fragments the heap (RSS grew by GBs on 1,000 inputs)
        out = torch.empty((x.shape[0], int(n_samples)), dtype=stat_dtype(x.dtype), device=x.device)
        start = 0
        for norms in _norm_chunks(model, x, delta, n_samples, mode, chunk_size, generator):
            out[:, start:start + norms.shape[1]] = norms
            start += norms.shape[1]
        return out


def clopper_pearson(
    k: torch.Tensor | np.ndarray | int, n: torch.Tensor | np.ndarray | int, alpha: float = ALPHA
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sided Clopper-Pearson bounds for a binomial proportion, each at level 1 - alpha.

    lower = Beta^{-1}(alpha; k, n - k + 1)   (0 when k = 0)
    upper = Beta^{-1}(1 - alpha; k + 1, n - k)   (1 when k = n)
    so P(p >= lower) >= 1 - alpha and P(p <= upper) >= 1 - alpha. Returns float64 tensors of
    k's shape (on k's device when k is a tensor).
    """
    check_level(alpha, "alpha")
    device = k.device if isinstance(k, torch.Tensor) else None
    kn, nn_ = _as_counts(k, n)
    if (kn < 0).any() or (kn > nn_).any() or (nn_ < 1).any():
        raise ValueError("clopper_pearson needs 0 <= k <= n and n >= 1")
    with np.errstate(invalid="ignore"):
        lower = np.where(kn > 0, stats.beta.ppf(alpha, np.maximum(kn, 1e-300), nn_ - kn + 1), 0.0)
        # isf(alpha), not ppf(1 - alpha): 1 - alpha rounds to 1 below alpha ~ 1e-16 (upper bound 1)
        upper = np.where(kn < nn_, stats.beta.isf(alpha, kn + 1, np.maximum(nn_ - kn, 1e-300)), 1.0)
    # scipy's inverse fails (NaN) for alpha below ~1e-200 at some (k, n): the trivial bounds hold
    lower, upper = np.nan_to_num(lower, nan=0.0), np.nan_to_num(upper, nan=1.0)
    return (torch.as_tensor(lower, dtype=torch.float64, device=device),
            torch.as_tensor(upper, dtype=torch.float64, device=device))


@dataclass
class RobustnessEstimate:
    """Monte Carlo estimate of p_r(x, delta) per input (all tensors of shape [B]).

    p: the estimate n_within / n_samples.  p_lower / p_upper: one-sided Clopper-Pearson bounds at
    level 1 - alpha each (an input stopped early by ``abstain_alpha``: p_upper = 1/2, at that level).  n_within: draws with ||Delta|| <= r.  n_samples: draws used.  r: the
    radius.  robust: p > 1/2 (the point estimate, decided on the counts).  alpha, mode: as
    requested. p, p_lower and p_upper are in the model's dtype, float32 for a float16 / bfloat16
    model (:func:`stat_dtype`: 501 / 1,000 would round to 0.5 there, 999 / 1,000 to 1).
    """

    p: torch.Tensor
    p_lower: torch.Tensor
    p_upper: torch.Tensor
    n_within: torch.Tensor
    n_samples: torch.Tensor
    r: torch.Tensor
    alpha: float
    mode: str

    @property
    def robust(self) -> torch.Tensor:
        return 2 * self.n_within > self.n_samples

    @classmethod
    def from_counts(cls, k: torch.Tensor, n_samples: int | torch.Tensor, r: torch.Tensor, alpha: float, mode: str,
                    dtype: torch.dtype) -> "RobustnessEstimate":
        """The estimate from ``k`` [B] draws within r out of ``n_samples`` each (a number, or [B]
        when inputs drew different numbers; Clopper-Pearson bounds)."""
        n = torch.full_like(k, n_samples) if not isinstance(n_samples, torch.Tensor) else n_samples.to(k)
        lo, hi = clopper_pearson(k, n, alpha)
        dtype = stat_dtype(dtype)
        return cls(p=proportion(k, n, dtype), p_lower=rounded(lo, dtype, down=True),
                   p_upper=rounded(hi, dtype, down=False), n_within=k, n_samples=n,
                   r=r, alpha=float(alpha), mode=mode)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of probabilities and their bounds for a model of ``dtype``: the same for float32
    and float64, float32 for float16 / bfloat16 (whose 8-11 bits cannot hold a count's ratio:
    bfloat16 rounds 0.501 to 0.5 and 0.999 to 1, float16 overflows past 65,504 draws)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def proportion(k: torch.Tensor, n: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """k / n computed in float64 from the integer counts, then given ``dtype`` (no cast of the counts)."""
    return (k.to(torch.float64) / n.clamp_min(1).to(torch.float64)).to(stat_dtype(dtype))


def r_robustness(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    delta: torch.Tensor | None = None,
    n_samples: int = N_SAMPLES,
    *,
    alpha: float = ALPHA,
    mode: str = "mean",
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    abstain_alpha: float | None = None,
) -> RobustnessEstimate:
    """Estimate p_r(x, delta) = P_eta(||Delta(x, delta)|| <= r) from ``n_samples`` draws of eta.

    x, delta: [B, *shape]; r: a number or a [B] tensor. Memory is flat in ``n_samples`` (only
    counts are kept). See :func:`delta_norms` for ``mode`` and ``chunk_size``.
    ``abstain_alpha``: stop drawing for an input once the anytime-valid test settles p < 1/2 at
    this level (:func:`count_within`); its estimate then uses the draws made (``n_samples`` [B]),
    and its ``p_upper`` is 1/2, the bound the test settled (at level ``abstain_alpha``): a
    Clopper-Pearson bound computed at a stopping time chosen because the count was low is not
    one (at alpha = 0.05 it fell below p in 12% of inputs at p = 0.47).
    """
    check_level(alpha, "alpha")  # before the draws
    delta = checked_inputs(model, x, delta, mode)
    rt = as_radius(r, x.shape[0], x)
    with torch.inference_mode():
        mu, sigma, ref, chunk = draw_setup(model, x, delta, n_samples, mode, chunk_size)
        k, n = count_within(model, mu, sigma, ref, rt, n_samples, chunk, generator, abstain_alpha=abstain_alpha)
    return estimate_from_counts(k, n, n_samples, rt, alpha, mode, x.dtype)


def estimate_from_counts(k: torch.Tensor, n: torch.Tensor, n_samples: int, rt: torch.Tensor, alpha: float,
                         mode: str, dtype: torch.dtype) -> RobustnessEstimate:
    """The estimate of :func:`count_within`'s counts ``k`` of ``n`` draws: Clopper-Pearson bounds,
    except that an input stopped early (``n < n_samples``, settled p < 1/2 by the sequential
    test) has ``p_upper`` = 1/2, the bound that test gives at any stopping time."""
    est = RobustnessEstimate.from_counts(k, n, rt, alpha, mode, dtype)
    stopped = n < int(n_samples)
    if bool(stopped.any()):
        est.p_upper = torch.where(stopped.to(est.p_upper.device), torch.full_like(est.p_upper, 0.5), est.p_upper)
    return est


def within_float32(model: torch.nn.Module, z: torch.Tensor, ref: torch.Tensor, rt: torch.Tensor) -> torch.Tensor:
    """How many of the c draws z [L * c, d] of each of L inputs decode within ``rt`` [L] of ``ref``
    [L, D] (long [L]; :func:`draw_distances`)."""
    norms = draw_distances(model, z, ref)
    return (norms <= rt.to(norms.dtype)[:, None]).sum(dim=1)


#: Early abstention (:func:`count_within`) looks at the test first after this many draws, then
#: each time the draws have grown by this factor: the test is valid at any looks, and looking after
#: every chunk cost more than the draws it saved on small decoders (each look is a scipy call);
#: an input stops at most 25% later than it could have.
ABSTAIN_FIRST_CHECK = 32
ABSTAIN_CHECK_GROWTH = 1.25


def count_within(
    model: torch.nn.Module, mu: torch.Tensor, sigma: torch.Tensor, ref: torch.Tensor, rt: torch.Tensor,
    n_samples: int, chunk: int, generator: torch.Generator | None, *, abstain_alpha: float | None = None,
    within=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, n), long [B] each: how many of the draws per input land within ``rt`` [B] of ``ref``, out
    of how many; the centres, scales and references of :func:`draw_setup`. Runs under inference mode.

    ``n`` is ``n_samples`` for every input unless ``abstain_alpha`` is given: then after the chunks
    that reach :data:`ABSTAIN_FIRST_CHECK` draws and grow them by :data:`ABSTAIN_CHECK_GROWTH`, an
    input whose counts settle p < 1/2 in the anytime-valid test (:func:`sequential_bernoulli_test`
    at level ``abstain_alpha``, docs/THEORY.md section 11) stops drawing. It is certain to abstain
    and its p is estimated from the draws made. Every chunk still draws eta for all inputs, so an
    input that never stops gets exactly the draws, and the count, it gets without this option.
    ``within(model, z, ref, rt)``: the per-chunk count (default :func:`within_float32`).
    """
    if abstain_alpha is not None:
        check_level(abstain_alpha, "abstain_alpha")
    within = within or within_float32
    B = ref.shape[0]
    k = torch.zeros(B, dtype=torch.long, device=ref.device)
    n = torch.zeros(B, dtype=torch.long, device=ref.device)
    live = torch.ones(B, dtype=torch.bool, device=ref.device)
    rows = torch.arange(B, device=ref.device)
    # decoding only the live inputs' rows gives them their chunk's bits only where the decoder's
    # rows are independent of their batch (checked: fast_decode.rows_independent); elsewhere every
    # call keeps all rows, as without abstention, and only the live inputs' counts are kept
    # (model None: a caller's ``within`` that decodes nothing)
    subset = abstain_alpha is not None and (model is None or rows_independent(model, mu))
    drawn, check_at = 0, ABSTAIN_FIRST_CHECK
    sizes = list(draw_chunks(n_samples, chunk))
    i = 0
    while i < len(sizes):
        # the next chunks up to the next look, as many as fit in one decoder call of B * chunk rows
        # (one chunk while every input is live): each chunk's eta is drawn for every input, in
        # order, so the stream is the same however the chunks are grouped
        decoded = rows if subset else torch.arange(B, device=ref.device)
        group, rows_in_call = [], 0
        while i < len(sizes) and (not group or rows_in_call + decoded.numel() * sizes[i] <= B * chunk):
            group.append(sizes[i])
            rows_in_call += decoded.numel() * sizes[i]
            drawn += sizes[i]  # every live input has drawn this many
            i += 1
            if abstain_alpha is not None and check_at <= drawn:
                break
        zs = [latent_draws(mu, sigma, c, generator).view(B, c, -1) for c in group]  # [B, c, d] each
        z = zs[0] if len(zs) == 1 else torch.cat(zs, dim=1)
        if decoded.numel() < B:
            z = z[decoded]
        counts = within(model, z.reshape(rows_in_call, -1), ref[decoded], rt[decoded])
        k[rows] += counts if decoded.numel() == rows.numel() else counts[rows]
        n[rows] += sum(group)
        if abstain_alpha is not None and check_at <= drawn < n_samples:
            check_at = math.ceil(drawn * ABSTAIN_CHECK_GROWTH)
            settled_below = sequential_bernoulli_test(k[rows], n[rows], abstain_alpha)[0].to(rows.device) < 0
            if bool(settled_below.any()):
                live[rows[settled_below]] = False
                rows = live.nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
    return k, n


def r_min(
    model: torch.nn.Module,
    x: torch.Tensor,
    n_samples: int = N_SAMPLES,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """r_min(x) = median over eta of ||g(mu(x) + eta * sigma(x)) - g(mu(x))||: [B, *shape] -> [B].

    For r <= r_min(x) the model is not r-robust even on the clean input (docs/THEORY.md section 2).
    """
    norms = delta_norms(model, x, None, n_samples, chunk_size=chunk_size, generator=generator)
    # distances of a float16 / bfloat16 model are float32 (torch.quantile has no half kernel);
    # r_min is given in the model's dtype, as r is
    return torch.quantile(norms, 0.5, dim=1).to(x.dtype)


#: Futility rule of the sequential test (:func:`settles_by`): an input stops drawing, unsettled, once
#: its remaining draws could not settle it at n_max even at p_hat +- FUTILITY_Z standard errors.
FUTILITY_Z = 2.0


# --------------------------------------------------------------------------------------------
# Anytime-valid decision of p > p0 (issue 9): a Beta-mixture (Robbins-style) test martingale
# --------------------------------------------------------------------------------------------
#: Concentration c of the test's mixing prior Beta(2c p0, 2c (1 - p0)) (c = 1, p0 = 1/2: uniform).
#: 10 weighs the alternatives near p0, where the margin search's decisions lie: on the linear VAE
#: it settles them with ~25% fewer draws than the uniform prior (benchmarks/attacks.py).
TEST_CONCENTRATION = 10.0


def sequential_bernoulli_test(
    k: torch.Tensor | np.ndarray | int, n: torch.Tensor | np.ndarray | int, alpha: float = ALPHA, p0: float = 0.5,
    concentration: float = TEST_CONCENTRATION,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decide p > p0 or p < p0 from k successes in n Bernoulli(p) draws, valid at any stopping time.

    Two mixture likelihood ratios against p0, mixing the alternatives on each side of p0 with the
    prior pi = Beta(a0, b0), a0 = 2c p0, b0 = 2c (1 - p0), c = ``concentration`` (Robbins 1970; c = 1
    and p0 = 1/2 is the uniform mixture):
        M+_n = int_{p0}^1 (p/p0)^k ((1-p)/(1-p0))^(n-k) pi(p) dp / pi((p0, 1])
             = B(k+a0, n-k+b0) (1 - I_{p0}(k+a0, n-k+b0)) / (B(a0, b0) (1 - I_{p0}(a0, b0)) p0^k (1-p0)^(n-k)),
        M-_n = the same with I_{p0}(k+a0, n-k+b0) / I_{p0}(a0, b0) (the mass below p0).
    Under any p <= p0 each mixed component (p' > p0) is a nonnegative supermartingale, so M+ is
    one, and Ville's inequality gives P(sup_n M+_n >= 1/alpha) <= alpha: deciding "p > p0" when
    M+ >= 1/alpha is wrong with probability <= alpha however long one keeps drawing and whenever
    one looks (likewise M- for "p < p0"), whatever the prior. A larger c settles p near p0 sooner
    and p far from it later. Returns (decision int8: +1 p > p0, -1 p < p0, 0 not yet; log M+;
    log M-), vectorised over k, n (any broadcastable shapes), float64 on CPU.
    """
    check_level(alpha, "alpha")
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"p0 must be in (0, 1), got {p0}")
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    kn, nn_ = _as_counts(k, n)
    if (kn < 0).any() or (kn > nn_).any():
        raise ValueError("sequential_bernoulli_test needs 0 <= k <= n")
    a0, b0 = 2 * concentration * p0, 2 * concentration * (1 - p0)
    a, b = kn + a0, nn_ - kn + b0
    base = special.betaln(a, b) - special.betaln(a0, b0) - kn * np.log(p0) - (nn_ - kn) * np.log1p(-p0)
    with np.errstate(divide="ignore"):  # log of the posterior / prior mass above and below p0
        log_up = base + np.log(special.betaincc(a, b, p0)) - np.log(special.betaincc(a0, b0, p0))
        log_down = base + np.log(special.betainc(a, b, p0)) - np.log(special.betainc(a0, b0, p0))
    thr = -np.log(alpha)
    dec = np.where(log_up >= thr, 1, np.where(log_down >= thr, -1, 0)).astype(np.int8)
    return torch.as_tensor(dec), torch.as_tensor(log_up), torch.as_tensor(log_down)


def settles_by(k: torch.Tensor, n: torch.Tensor, n_max: int, alpha: float = ALPHA,
               z: float = FUTILITY_Z) -> torch.Tensor:
    """bool [B]: could :func:`sequential_bernoulli_test` (p0 = 1/2) still settle by n_max draws, after k
    successes in n? True when it would, were the remaining n_max - n draws to come at the optimistic
    rate p_hat + z * se (towards "p > 1/2") or p_hat - z * se (towards "p < 1/2"), with
    se = sqrt(p_hat (1 - p_hat) / n) + 1 / n. The futility rule of :func:`sequential_robustness`."""
    kf, nf = k.detach().double().cpu(), n.detach().double().cpu().clamp_min(1)
    p_hat = kf / nf
    se = (p_hat * (1 - p_hat) / nf).sqrt() + 1 / nf
    rest = (float(n_max) - nf).clamp_min(0)
    k_up = kf + rest * (p_hat + z * se).clamp(max=1.0)
    k_down = kf + rest * (p_hat - z * se).clamp(min=0.0)
    ends = torch.full_like(nf, float(n_max))
    dec_up = sequential_bernoulli_test(k_up, ends, alpha)[0]
    dec_down = sequential_bernoulli_test(k_down, ends, alpha)[0]
    return (dec_up == 1) | (dec_down == -1)


@dataclass
class SequentialDecision:
    """Per input [B]: decision (+1: p_r(x, delta) > 1/2, -1: < 1/2, 0: not settled within n_max
    draws), p (the estimate k / n), n_within k, n_samples n (draws used), alpha."""

    decision: torch.Tensor
    p: torch.Tensor
    n_within: torch.Tensor
    n_samples: torch.Tensor
    alpha: float


def sequential_robustness(
    model: torch.nn.Module,
    x: torch.Tensor,
    r: float | torch.Tensor,
    delta: torch.Tensor | None = None,
    *,
    alpha: float = ALPHA,
    n_max: int = 20000,
    n_first: int = 64,
    mode: str = "mean",
    futility: float | None = FUTILITY_Z,
    generator: torch.Generator | None = None,
) -> SequentialDecision:
    """Is p_r(x, delta) > 1/2? Draws eta in rounds (n_first, then growing the total by half) for the inputs
    not yet settled, stopping each input once :func:`sequential_bernoulli_test` at level ``alpha``
    settles it or n_max draws are spent. All unsettled inputs draw together (one batched call per
    round), so every input's count n is one of the round ends.

    futility: stop an input early, unsettled, once it cannot settle by n_max even if its remaining
    draws came at the optimistic rate p_hat +- futility * (standard error) (see
    :func:`settles_by`); None draws on to n_max. It ends draws that would mostly end unsettled
    anyway (simulated at p = 0.49, n_max = 20,000: 7.7% of the decisions that drawing on would have
    made are lost, left unsettled); a decision that is made is made by the same test, so the error
    <= alpha per decision is unchanged."""
    if futility is not None and not futility >= 0:
        raise InputError(f"futility must be >= 0 or None, got {futility}")
    check_count(n_max, 1, "n_max")  # 0 reported p = 0 from no draw at all
    check_count(n_first, 1, "n_first")
    delta = checked_inputs(model, x, delta, mode)
    B = x.shape[0]
    rt = as_radius(r, B, x)
    k = torch.zeros(B, dtype=torch.long, device=x.device)
    n = torch.zeros(B, dtype=torch.long, device=x.device)
    dec = torch.zeros(B, dtype=torch.int8)
    live = torch.ones(B, dtype=torch.bool)  # still drawing: not settled, not stopped for futility
    with torch.inference_mode():  # encoded and decoded once; each round only draws
        mu, sigma, ref, _ = draw_setup(model, x, delta, n_max, mode, None)
    total, step = 0, max(int(n_first), 1)
    while total < n_max and live.any():
        rows = live.nonzero().flatten().to(x.device)
        c = min(step, n_max - total)
        with torch.inference_mode():
            chunk = default_chunk(c, rows.numel(), ref.shape[1], x.device, model)
            k[rows] += count_within(model, mu[rows], sigma[rows], ref[rows], rt[rows], c, chunk, generator)[0]
        n[rows] += c
        total += c
        step = max(total // 2, 1)  # grow the total by half each round
        dec[rows.cpu()] = sequential_bernoulli_test(k[rows], n[rows], alpha)[0]
        live &= dec == 0
        if futility is not None and total < n_max:
            live[rows.cpu()] &= settles_by(k[rows], n[rows], n_max, alpha, futility)
    p = proportion(k, n, x.dtype)
    return SequentialDecision(decision=dec.to(x.device), p=p, n_within=k, n_samples=n, alpha=float(alpha))
