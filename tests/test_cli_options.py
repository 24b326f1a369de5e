"""One source for every option: CLI flags generated from the typed configs carry the config's
name, default and choices; hand-written flags that set a config field use the field's default;
one default per setting (alpha); distinct flags for distinct things."""

from __future__ import annotations

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
