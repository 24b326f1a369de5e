"""MaxDamageAttack / LatentAttack / OutputAttack called foolbox style, ``attack(model, x, eps, ...) -> PGDResult``,
next to the kept torchattacks style, ``Attack(model, eps)(x) -> delta``: same answers, reusable objects,
budgets, the EnsembleAttack keyword interface (empirical_margin), warm starts, error messages."""

import pytest
import torch

import robvae
from robvae.attacks import (
    LatentAttack,
    MaxDamageAttack,
    OutputAttack,
    PGDResult,
    feasible,
    get_norm,
    latent_attack,
    max_damage_attack,
    max_damage_objective,
    output_attack,
)
from robvae.models import VAE, LinearVAE, ModelConfig

REL = 1e-6


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return VAE(ModelConfig(input_shape=(1, 6, 6), latent_dim=3, hidden=(16, 8))).double()


def _x(B=4, seed=2):
    return torch.rand(B, 1, 6, 6, generator=_gen(seed), dtype=torch.float64)


def _edge_images(B, seed=0):
    """Images with many pixels exactly at 0 or 1 (the box binds) and the rest random."""
    x = torch.rand(B, 1, 6, 6, generator=_gen(seed), dtype=torch.float64)
    u = torch.rand(B, 1, 6, 6, generator=_gen(seed + 1), dtype=torch.float64)
    return torch.where(u < 0.3, torch.zeros_like(x), torch.where(u > 0.7, torch.ones_like(x), x))


def _assert_feasible(x, delta, eps, norm):
    eps = torch.as_tensor(eps, dtype=x.dtype).expand(x.shape[0])
    n = delta.flatten(1).norm(dim=1) if norm == "l2" else delta.flatten(1).abs().amax(1)
    assert torch.all(n <= eps * (1 + REL)), (n, eps)
    xa = x + delta
    assert float(xa.min()) >= -REL and float(xa.max()) <= 1 + REL


# the three attacks: (class, settings, functional form, whether targeted)
KINDS = {
    "max_damage": (MaxDamageAttack, dict(eta_samples=2), max_damage_attack, False),
    "latent": (LatentAttack, dict(c=0.01), latent_attack, True),
    "output": (OutputAttack, dict(c=0.01), output_attack, True),
}


@pytest.mark.parametrize("norm,eps", [("l2", 0.8), ("linf", 0.1)])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_both_styles_give_bit_identical_deltas(kind, norm, eps):
    cls, kw, functional, targeted = KINDS[kind]
    m, x, xt = _mlp(), _x(), _x(seed=7)
    settings = dict(norm=norm, steps=8, restarts=2, **kw)
    tgt = (xt,) if targeted else ()
    old = cls(m, eps, generator=_gen(3), **settings)(x, *tgt)
    old_run = cls(m, eps, generator=_gen(3), **settings).run(x, *tgt)
    fn = functional(m, x, *tgt, eps, generator=_gen(3), **settings)
    extra = dict(x_target=xt) if targeted else {}
    new = cls(generator=_gen(3), **settings)(m, x, eps, **extra)
    new_gen = cls(**settings)(m, x, eps, generator=_gen(3), **extra)  # the generator given at the call
    new_run = cls(**settings).run(m, x, eps, generator=_gen(3), **extra)
    assert isinstance(old, torch.Tensor) and isinstance(new, PGDResult)
    assert float(old.abs().sum()) > 0
    for res in (new, new_gen, new_run):
        assert torch.equal(res.delta, old)
        assert torch.equal(res.value, old_run.value)
    assert torch.equal(fn, old)
    # not trivially equal: another seed moves the delta
    other = cls(**settings)(m, x, eps, generator=_gen(4), **extra)
    assert not torch.equal(other.delta, old)


def test_max_damage_call_overrides_mode_and_r_is_unused():
    m, x = _mlp(), _x()
    atk = MaxDamageAttack(steps=6, eta_samples=3, mode="full")
    mean = atk(m, x, 0.5, mode="mean", generator=_gen(1))
    ref = MaxDamageAttack(steps=6, eta_samples=3, mode="mean")(m, x, 0.5, generator=_gen(1))
    full = atk(m, x, 0.5, generator=_gen(1))
    assert torch.equal(mean.delta, ref.delta) and not torch.equal(mean.delta, full.delta)
    assert atk.mode == "full"
    with_r = atk(m, x, 0.5, r=0.3, generator=_gen(1))  # r is accepted and ignored by the damage objective
    assert torch.equal(with_r.delta, full.delta)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_object_reused_on_two_models_gives_each_models_answer(kind):
    cls, kw, functional, targeted = KINDS[kind]
    m1, m2, x, xt = _mlp(0), _mlp(1), _x(), _x(seed=7)
    settings = dict(steps=6, restarts=2, **kw)
    extra = dict(x_target=xt) if targeted else {}
    tgt = (xt,) if targeted else ()
    atk = cls(**settings)
    r1 = atk(m1, x, 0.6, generator=_gen(0), **extra)
    r2 = atk(m2, x, 0.6, generator=_gen(0), **extra)
    assert torch.equal(r1.delta, functional(m1, x, *tgt, 0.6, generator=_gen(0), **settings))
    assert torch.equal(r2.delta, functional(m2, x, *tgt, 0.6, generator=_gen(0), **settings))
    assert not torch.equal(r1.delta, r2.delta)
    assert atk.model is None and atk.eps is None
    # an object bound to m1 (torchattacks style) attacks m2 foolbox style without forgetting m1 / its eps /
    # its generator's stream
    bound = cls(m1, 0.3, generator=_gen(5), **settings)
    r2b = bound(m2, x, 0.6, generator=_gen(0), **extra)
    assert torch.equal(r2b.delta, r2.delta)
    assert bound.model is m1 and bound.eps == 0.3
    assert torch.equal(bound(x, *tgt), functional(m1, x, *tgt, 0.3, generator=_gen(5), **settings))


@pytest.mark.parametrize("norm,eps", [("l2", 1.5), ("l2", 0.05), ("linf", 0.3), ("linf", 0.02)])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_foolbox_style_respects_the_budget_and_the_box(kind, norm, eps):
    cls, kw, _, targeted = KINDS[kind]
    m, x = _mlp(), _edge_images(5)
    extra = dict(x_target=_edge_images(5, seed=9)) if targeted else {}
    atk = cls(norm=norm, steps=10, restarts=2, generator=_gen(1), **kw)
    res = atk(m, x, eps, **extra)
    _assert_feasible(x, res.delta, eps, norm)
    assert float(res.delta.abs().sum()) > 0
    # per-input budgets, and a warm start far outside the ball and the box
    e = torch.tensor([0.0, 0.5 * eps, eps, 2 * eps, eps], dtype=torch.float64)
    res = atk(m, x, e, warm_start=torch.full_like(x, 3.0), **extra)
    _assert_feasible(x, res.delta, e, norm)
    assert float(res.delta[0].abs().max()) == 0.0


@pytest.mark.parametrize("kw", [dict(eta_samples=0), dict(eta_samples=1, norm="l2")])
def test_max_damage_attack_as_empirical_margin_attack_never_exceeds_the_exact_margin(kw):
    """R_hat is an upper estimate of the true margin: a too-weak attack (or one ignoring eps / returning a
    wrong delta) overstates it. The PGD damage attack finds the linear VAE's optimum, so R_hat <= R_r."""
    m = LinearVAE.random(d=4, s=0.1, singular_values=[3.0, 2.0, 1.5, 1.0])
    x = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)  # the box does not bind near the margin
    for r in (0.25, 0.3):
        exact = m.exact_margin(r)
        atk = MaxDamageAttack(steps=40, restarts=2, **kw)
        res = robvae.empirical_margin(m, x, r, attack=atk, n_samples=4000, generator=_gen(0))
        assert res.preset == "MaxDamageAttack" and res.n_attacks > 0
        assert torch.all(res.robust_clean)
        assert torch.all(res.margin <= exact * (1 + 1e-9)), (res.margin, exact)
        assert torch.all(res.margin >= 0.7 * exact), (res.margin, exact)  # and not trivially small
        assert atk.model is None and atk.eps is None


def test_warm_start_never_makes_the_objective_worse():
    m, x = _mlp(), _x(B=6, seed=11)
    f = max_damage_objective(m, x, eta_samples=0)
    nrm = get_norm("l2")
    eps = 1.0

    def value(d):
        with torch.no_grad():
            return f((x + d).unsqueeze(0))[0]

    strong = MaxDamageAttack(steps=60, restarts=6, eta_samples=0)(m, x, eps, generator=_gen(1))
    weak = MaxDamageAttack(steps=2, restarts=1, eta_samples=0)
    cold = weak(m, x, eps, generator=_gen(2))
    for warm in (strong.delta, 5.0 * strong.delta, -strong.delta):  # also infeasible / poor warm starts
        res = weak(m, x, eps, warm_start=warm, generator=_gen(2))
        _assert_feasible(x, res.delta, eps, "l2")
        w = value(feasible(x, warm, torch.full((x.shape[0],), eps, dtype=x.dtype), nrm))
        assert torch.all(res.value >= w), (res.value - w)
        assert torch.all(res.value >= cold.value), (res.value - cold.value)  # the same seed, plus one start
        torch.testing.assert_close(res.value, value(res.delta))
    # the warm start mattered: the weak attack alone is worse than with the strong warm start
    res = weak(m, x, eps, warm_start=strong.delta, generator=_gen(2))
    assert torch.any(res.value > cold.value + 1e-6)
    # with draws of eta (a noisy objective) the warm start still gives a feasible result
    noisy = MaxDamageAttack(steps=3, eta_samples=2, norm="linf")(m, x, 0.1, warm_start=strong.delta,
                                                                 generator=_gen(3))
    _assert_feasible(x, noisy.delta, 0.1, "linf")


def test_error_messages_name_the_call_styles_and_the_missing_budget():
    m, x = _mlp(), _x()
    for atk, args in ((MaxDamageAttack(steps=2), (x,)), (LatentAttack(), (x, x)), (OutputAttack(), (x, x))):
        name = type(atk).__name__
        for call in (atk, atk.run):
            with pytest.raises(ValueError, match=f"{name} was built without a model") as e:
                call(*args)
            assert "foolbox style" in str(e.value) and "torchattacks style" in str(e.value)
            assert f"{name}(model, eps" in str(e.value)
    with pytest.raises(ValueError, match="needs a budget eps"):
        MaxDamageAttack(steps=2)(m, x)
    with pytest.raises(ValueError, match="needs a budget eps"):
        MaxDamageAttack(steps=2).run(m, x, None)
    with pytest.raises(ValueError, match="needs a budget eps"):
        MaxDamageAttack(m, None)  # the torchattacks-style constructor keeps refusing a missing budget
    # a budget at construction serves foolbox-style calls too (the call's wins)
    a = MaxDamageAttack(eps=0.4, steps=3)(m, x, generator=_gen(0))
    b = MaxDamageAttack(eps=9.0, steps=3)(m, x, 0.4, generator=_gen(0))
    assert torch.equal(a.delta, b.delta)
    for cls in (LatentAttack, OutputAttack):
        with pytest.raises(ValueError, match="x_target"):
            cls(steps=2)(m, x, 0.1)
    with pytest.raises(ValueError, match="must be a robvae model"):
        MaxDamageAttack(0.1)
    with pytest.raises(ValueError, match="warm_start has shape"):
        MaxDamageAttack(steps=2)(m, x, 0.1, warm_start=x[:2])


def test_ensemble_and_margin_arguments_are_checked_with_errors_that_name_them():
    """An audit (h56) found: a call-time target the constructor would refuse ran as "p" and was
    reported as given (or crashed without r); warm starts of another batch size, eval_draws <= 0
    (candidates judged on 1 draw), PGD's negative step size named "eps"; empirical_margin's eps_max
    0 / NaN / negative, negative max_iter / max_unsettled (margins of 0 for robust inputs) and a
    wrongly shaped eps_init gave raw errors or wrong answers."""
    from robvae.attacks import EnsembleAttack
    from robvae.errors import InputError
    from robvae.robustness import empirical_margin

    m, x = _mlp(), _x(B=3)
    with pytest.raises(ValueError, match="unknown target 'pp'"):
        EnsembleAttack("cheap")(m, x, 0.1, r=0.25, target="pp")
    with pytest.raises(ValueError, match="unknown target 'pp'"):
        EnsembleAttack("cheap")(m, x, 0.1, target="pp")
    with pytest.raises(ValueError, match=r"warm_start has shape \(2, 1, 6, 6\), x has \(3, 1, 6, 6\)"):
        EnsembleAttack("cheap")(m, x, 0.1, warm_start=x[:2])
    for bad in (0, -5):
        with pytest.raises(InputError, match=f"eval_draws must be an integer >= 1, got {bad}"):
            EnsembleAttack("cheap", eval_draws=bad)
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        MaxDamageAttack(steps=2, step_size=-1.0)(m, x, 0.1)
    for kw, needle in [(dict(eps_max=0.0), "eps_max must be a finite number > 0"),
                       (dict(eps_max=float("nan")), "eps_max must be a finite number > 0"),
                       (dict(eps_max=-1.0), "eps_max must be a finite number > 0"),
                       (dict(max_iter=-1), "max_iter must be an integer >= 1"),
                       (dict(max_unsettled=-5), "max_unsettled must be an integer >= 0"),
                       (dict(tol=0.0), "tol must be a finite number > 0"),
                       (dict(alpha=1.5), "alpha must be a level in"),
                       (dict(eps_init=torch.ones(2)), r"eps_init must be a number or a tensor of shape \[3\]")]:
        with pytest.raises(InputError, match=needle):
            empirical_margin(m, x, 0.5, n_samples=10, **kw)
    # a per-input eps_init of the right shape (0 and inf replaced by r) still runs
    res = empirical_margin(m, x, 0.5, n_samples=50, max_iter=2, eps_init=torch.tensor([0.0, float("inf"), 0.2]),
                           generator=_gen(0))
    assert res.margin.shape == (3,) and bool(torch.isfinite(res.margin).all())
