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


@pytest.mark.parametrize("key", sorted(HAND))
def test_hand_written_options_use_the_config_default(key):
    cname, pname = key
    p = next(p for p in COMMANDS[cname].params if p.name == pname)
    cls, field = HAND[key]
    assert p.default == _field_default(cls, field), (key, p.default)


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
