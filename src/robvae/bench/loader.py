"""User models for the benchmark: ``"my_pkg.my_module:build"`` specs.

The callable takes no arguments and returns ``(model, name)`` (or the model alone, named after
the callable, as ``robvae certify --model`` takes it): a robvae protocol model
(``encode(x) -> (mu, sigma)``, ``decode(z) -> mean``; optionally ``log_likelihood(x, z)`` for the
ELBO and the likelihood degradation) and the name it appears under on the leaderboard.
:func:`resolve_spec` checks that the spec imports (before anything runs); :func:`build_model`
calls it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import short_repr
from ..errors import RobvaeError
from ..models.protocol import import_spec, register_user_code


class ModelSpecError(RobvaeError):
    """A ``module:callable`` model spec that does not import or does not return a model."""


def resolve_spec(spec: str) -> Callable[[], object]:
    """The callable named by ``"package.module:callable"``; ModelSpecError naming the problem
    (:func:`robvae.models.protocol.import_spec`: the current folder is importable, as with ``python -m``)."""
    if not isinstance(spec, str):
        raise ModelSpecError(f"model spec {short_repr(spec)}: expected MODULE:CALLABLE, e.g. my_pkg.models:build")
    obj = import_spec(spec, f"model spec {spec!r}", ModelSpecError)
    if not callable(obj):
        raise ModelSpecError(f"model spec {spec!r}: {spec.partition(':')[2]!r} is not callable")
    return obj


def build_model(spec: str) -> tuple[torch.nn.Module, str]:
    """Call the spec's callable; it returns (model, name) with a protocol model, or the model
    alone (as for ``robvae certify --model``), which is then named after the callable."""
    try:
        out = resolve_spec(spec)()
    except SystemExit as e:  # a script's main() behind the callable: it would end the whole benchmark
        raise ModelSpecError(f"model spec {spec!r}: {spec.partition(':')[2]}() called sys.exit({e.code!r}) instead "
                             "of returning a model") from e
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], str):
        model, name = out
    elif not isinstance(out, tuple):
        model, name = out, spec.partition(":")[2]
    else:
        raise ModelSpecError(f"model spec {spec!r}: the callable must return a model or (model, name), got a "
                             f"tuple of {len(out)}")
    if not (callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None))):
        raise ModelSpecError(f"model spec {spec!r}: the model needs encode(x) -> (mu, sigma) and decode(z)")
    if not name.strip():
        raise ModelSpecError(f"model spec {spec!r}: empty model name")
    if isinstance(model, torch.nn.Module):
        register_user_code(model)
    return model, name
