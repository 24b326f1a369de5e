"""User models for the benchmark: ``"my_pkg.my_module:build"`` specs.

The callable takes no arguments and returns ``(model, name)``: a robvae protocol model
(``encode(x) -> (mu, sigma)``, ``decode(z) -> mean``; optionally ``log_likelihood(x, z)`` for the
ELBO and the likelihood degradation) and the name it appears under on the leaderboard.
:func:`resolve_spec` checks that the spec imports (before anything runs); :func:`build_model`
calls it. (A small local loader: replace with the project-wide one when it lands.)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import RobvaeError


class ModelSpecError(RobvaeError):
    """A ``module:callable`` model spec that does not import or does not return a model."""


def resolve_spec(spec: str) -> Callable[[], object]:
    """The callable named by ``"package.module:callable"``; ModelSpecError naming the problem.

    The current folder is importable (as with ``python -m``), so a local ``my_models.py`` works.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or "" in spec.split(":"):
        raise ModelSpecError(f"model spec {spec!r}: expected 'package.module:callable'")
    mod_name, attr = spec.split(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module's: one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelSpecError(f"model spec {spec!r}: cannot import {mod_name!r} ({type(e).__name__}: {first})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"model spec {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"model spec {spec!r}: {attr!r} is not callable")
    return obj


def build_model(spec: str) -> tuple[torch.nn.Module, str]:
    """Call the spec's callable; it must return (model, name) with a protocol model."""
    out = resolve_spec(spec)()
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], str)):
        raise ModelSpecError(f"model spec {spec!r}: the callable must return (model, name), got {type(out).__name__}")
    model, name = out
    if not (callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))):
        raise ModelSpecError(f"model spec {spec!r}: the model needs encode(x) -> (mu, sigma) and decode(z)")
    if not name.strip():
        raise ModelSpecError(f"model spec {spec!r}: empty model name")
    return model, name
