"""One source for every option: CLI flags generated from the typed configs carry the config's
name, default and choices; hand-written flags that set a config field use the field's default;
one default per setting (alpha); distinct flags for distinct things."""

from __future__ import annotations

import collections
import dataclasses
import typing

import click
import pytest

from robvae.cli import _register, app
from robvae.cli.options import ConfigOption
from robvae.config import ALPHA
from robvae.evaluation import EvalConfig
from robvae.models import ModelConfig
from robvae.objectives import ObjectiveConfig
from robvae.robustness import CertifyConfig, certify, r_robustness
from robvae.training import TrainConfig

_register()


def _commands(group=app, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), cmd


COMMANDS = dict(_commands())


def _field_default(cls, name):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def test_generated_options_match_their_config_fields():
    n = 0
    for cname, cmd in COMMANDS.items():
        for p in cmd.params:
            if not (isinstance(p, ConfigOption) and p.config_field):
                continue
            cls, field = p.config_field
            n += 1
            assert p.name == field, (cname, p.opts)
            assert p.default == _field_default(cls, field), (cname, field)
            tp = typing.get_type_hints(cls)[field]
            if typing.get_origin(tp) is typing.Literal:
                assert isinstance(p.type, click.Choice) and list(p.type.choices) == list(typing.get_args(tp))
            assert p.help, f"{cname} {p.opts[0]} has no help"
    assert n >= 30  # margin, certify and the studies are generated


# hand-written flags that set a config field: (command, param name) -> (config class, field)
HAND = {
    ("train", "epochs"): (TrainConfig, "epochs"), ("train", "batch_size"): (TrainConfig, "batch_size"),
    ("train", "lr"): (TrainConfig, "lr"), ("train", "seed"): (TrainConfig, "seed"),
    ("train", "arch"): (ModelConfig, "arch"), ("train", "latent_dim"): (ModelConfig, "latent_dim"),
    ("train", "tau"): (ModelConfig, "tau"), ("train", "gaussian_scale"): (ModelConfig, "gaussian_scale"),
    ("train", "objective"): (ObjectiveConfig, "name"), ("train", "beta"): (ObjectiveConfig, "beta"),
}


HAND.update({
    ("train", "dataset"): (TrainConfig, "dataset"), ("train", "data_dir"): (TrainConfig, "data_dir"),
    ("train", "n_train"): (TrainConfig, "n_train"), ("train", "device"): (TrainConfig, "device"),
    ("train", "sigma_cap"): (ModelConfig, "sigma_cap"),  # the cap of --certify-margin's Lipschitz VAE
})
#: ``robvae train`` options that set no config field (or not one to one): the lone exceptions
TRAIN_NOT_CONFIG = {
    "download", "out", "quiet", "verify_n",  # what to do, not what to train
    "certify_margin", "certify_r",  # a plan (robvae.robustness.rigorous): sets arch lipschitz-mlp and lipschitz
    "likelihood",  # adds "auto" (checked below)
    "hidden",  # a comma-separated string (checked below)
}


@pytest.mark.parametrize("key", sorted(HAND))
def test_hand_written_options_use_the_config_default(key):
    cname, pname = key
    p = next(p for p in COMMANDS[cname].params if p.name == pname)
    cls, field = HAND[key]
    assert p.default == _field_default(cls, field), (key, p.default)


def test_every_train_option_is_generated_or_checked():
    """A new ``robvae train`` flag must come from a config (config_option), be listed in HAND
    (default checked) or be named an exception: no option escapes the check."""
    params = {p.name for p in COMMANDS["train"].params}
    generated = {p.name for p in COMMANDS["train"].params if isinstance(p, ConfigOption) and p.config_field}
    hand = {pname for cname, pname in HAND if cname == "train"}
    assert not generated & hand
    loose = params - generated - hand - TRAIN_NOT_CONFIG - {"threads"}  # --threads: robvae.threads
    assert not loose, f"robvae train options with no config check: {sorted(loose)}"
    # the robust-training options added with the benchmark come from the configs
    assert {"jacobian", "jacobian_whitened", "jacobian_projections", "smooth", "smooth_noise", "smooth_divergence",
            "adversarial_eps", "adversarial_steps", "adversarial_norm"} <= generated


def _accepts(**kw) -> bool:
    try:
        ModelConfig(**kw)
    except ValueError:
        return False
    return True


def test_train_choices_are_the_configs_choices():
    """Choices of the str fields without a Literal, against what the configs accept: every choice
    is accepted, and nothing the configs accept beyond the choices is missing (lipschitz-mlp is
    reached through --certify-margin, auto resolves to bernoulli / gaussian)."""
    opt = {p.name: p for p in COMMANDS["train"].params}
    archs = ("mlp", "conv", "lipschitz-mlp", "resnet", "cnn")
    assert [a for a in archs if _accepts(arch=a, **({"hidden": (8,)} if a == "lipschitz-mlp" else {}))] == \
        [*opt["arch"].type.choices, "lipschitz-mlp"]
    likelihoods = ("bernoulli", "gaussian", "cbernoulli", "laplace", "categorical")
    assert [v for v in likelihoods if _accepts(likelihood=v)] == [c for c in opt["likelihood"].type.choices
                                                                   if c != "auto"]
    assert opt["likelihood"].default == "auto" and "cbernoulli" in opt["likelihood"].type.choices
    names = []
    for v in (*opt["objective"].type.choices, "vae", "info-vae"):
        try:
            ObjectiveConfig(v)
            names.append(v)
        except ValueError:
            pass
    assert names == list(opt["objective"].type.choices)
    assert ObjectiveConfig().name == opt["objective"].default
    assert tuple(int(h) for h in opt["hidden"].default.split(",")) == ModelConfig().hidden


def test_one_alpha_default_everywhere():
    import inspect

    assert CertifyConfig().alpha == EvalConfig().alpha == ALPHA
    assert inspect.signature(certify).parameters["alpha"].default == ALPHA
    assert inspect.signature(r_robustness).parameters["alpha"].default == ALPHA
    for cname, cmd in COMMANDS.items():
        for p in cmd.params:
            if p.name == "alpha":
                assert p.default == ALPHA, cname


def test_one_default_for_draws_margin_tolerance_and_relative_radius():
    """N_SAMPLES, MARGIN_TOL and R_RELATIVE are declared once (robvae.config): every public function
    and every command option of that meaning defaults to them, so a Python call and the command line
    answer the same question. The one exception is the certified study's --n-samples (2,000 for its
    Barrett verification), listed here so that a new one cannot slip in."""
    import inspect

    import robvae
    import robvae.robustness as rb
    from robvae.config import MARGIN_TOL, N_SAMPLES, R_RELATIVE

    assert (N_SAMPLES, MARGIN_TOL, R_RELATIVE) == (1000, 0.05, 1.5)
    assert CertifyConfig().n_samples == EvalConfig().n_samples == N_SAMPLES
    assert EvalConfig().margin_tol == MARGIN_TOL and EvalConfig().r_relative == R_RELATIVE
    seen = set()
    for mod in (robvae, rb):
        for name in mod.__all__:
            f = getattr(mod, name)
            if not inspect.isfunction(f):
                continue
            ps = inspect.signature(f).parameters
            if "n_samples" in ps and ps["n_samples"].default is not inspect.Parameter.empty:
                assert ps["n_samples"].default == N_SAMPLES, name
                seen.add(name)
            if "alpha" in ps:
                assert ps["alpha"].default == ALPHA, name
    assert {"certify", "r_robustness", "empirical_margin", "r_min"} <= seen
    assert inspect.signature(robvae.empirical_margin).parameters["tol"].default == MARGIN_TOL
    checked = collections.Counter()
    for cname, cmd in COMMANDS.items():
        for p in cmd.params:
            if p.name == "n_samples" and cname != "study certified":
                assert p.default == N_SAMPLES, cname
                checked[p.name] += 1
            elif p.name == "margin_tol":
                assert p.default == MARGIN_TOL, cname
                checked[p.name] += 1
            elif p.name == "r_relative":
                assert p.default == R_RELATIVE, cname
                checked[p.name] += 1
    assert checked["n_samples"] >= 5 and checked["margin_tol"] >= 4 and checked["r_relative"] >= 6, checked


def test_distinct_flags_for_distinct_things_and_old_names_still_work():
    certify_flags = {o for p in COMMANDS["certify"].params for o in p.opts}
    attack_flags = {o for p in COMMANDS["attack"].params for o in p.opts}
    assert "--jacobian-norm" in certify_flags and "--threat" in attack_flags
    # --norm is kept only as a hidden alias
    for cname in ("certify", "attack"):
        for p in COMMANDS[cname].params:
            if "--norm" in p.opts:
                assert isinstance(p, ConfigOption) and "--norm" in p.aliases
                rec = p.get_help_record(click.Context(COMMANDS[cname]))
                assert "--norm" not in rec[0]


@pytest.mark.parametrize("argv", [
    ["margin", "RUN", "--seed", "-1"],
    ["report", "F", "--seed", "-1"],
    ["study", "bound-vs-margin", "--dataset", "digits", "--out", "o", "--eval-seed", "-2"],
])
def test_every_seed_option_refuses_negative_seeds(argv, capsys):
    """Found by the docs walk-through: the README promised exit 2 for a negative seed, but seeds
    generated from EvalConfig (margin, report, the studies' --eval-seed) took any integer."""
    from robvae.cli import main

    assert main(argv) == 2
    assert "is not in the range 0<=x" in capsys.readouterr().err


def test_unbounded_float_options_read_finite_in_help():
    """`robvae train --help` showed `x<=None` for --beta and --tau."""
    from click.testing import CliRunner

    from robvae.cli import app

    out = CliRunner().invoke(app, ["train", "--help"]).output
    assert "None]" not in out and "x<=None" not in out
