"""The shared behaviour of robvae's typed configs: plain-JSON dicts in, dicts out, unknown keys refused."""

from __future__ import annotations

import dataclasses
import json
import reprlib
import types
import typing
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="ConfigMixin")

#: how :func:`short_repr` shortens a value: a few items of a few levels, strings and numbers cut
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 8


def short_repr(value: Any, limit: int = 100) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters ("..." where cut): a value
    read from a file (YAML aliases can nest millions of items) must not make an error line huge."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an integer too long for str() (Python's limit on int to str conversion)
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigMixin:
    """Mixed into a config dataclass: ``to_dict()`` (a plain JSON tree) and ``from_dict()``."""

    _what: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # type: ignore[call-overload]  # tuples -> lists

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Build from a dict; an unknown key is a ValueError naming it."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls._what} must be a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls._what} fields: {sorted(unknown)}")
        check_field_types(cls, d)
        return cls(**d)


def check_field_types(cls: type, d: dict[str, Any]) -> None:
    """Check every value of ``d`` against the type annotation of ``cls``'s field of that name
    (int, float, bool, str, Literal[...], tuples, X | None; nested configs are checked when they
    are built): a ValueError naming the field, the expected type and the value."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
        return
    what = getattr(cls, "_what", "config")
    for name, value in d.items():
        tp = hints.get(name)
        if tp is not None and not _matches(value, tp):
            raise ValueError(f"{what} field {name}: expected {_describe(tp)}, got {short_repr(value)}")


#: the plain annotations: (the Python types a value of it may have, how an error message names it)
_PLAIN: dict[Any, tuple[type | tuple[type, ...], str]] = {
    int: (int, "an integer"), float: ((int, float), "a number"), bool: (bool, "true or false"),
    str: (str, "a string"), type(None): (type(None), "null"),
}


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp in _PLAIN:  # a bool is neither an integer nor a number here
        return isinstance(value, _PLAIN[tp][0]) and (tp is bool or not isinstance(value, bool))
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    return True  # anything else (a class, a callable) is left to the dataclass itself


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        inner = args[0] if args else Any
        return f"a list of {_describe(inner).removeprefix('an ').removeprefix('a ')}s"
    return _PLAIN[tp][1] if tp in _PLAIN else getattr(tp, "__name__", str(tp))


#: The one default confidence level: one-sided Clopper-Pearson bounds hold with probability
#: >= 1 - ALPHA (the sound certificate, ``r_robustness``'s p_lower, the evaluation, every CLI
#: command). 0.001 as in randomized smoothing (Cohen et al. 2019): a certificate is wrong for at
#: most one input in a thousand because of Monte Carlo error.
ALPHA = 0.001

#: The one default of ``--r-relative`` (``EvalConfig.r_relative``, ``robvae certify`` / ``margin``
#: / ``study``): with no radius given, r = R_RELATIVE x the median r_min(x) over the inputs.
R_RELATIVE = 1.5

#: The one default number of Monte Carlo draws of eta per estimate of p (``certify``,
#: ``r_robustness``, ``empirical_margin``'s most draws per decision, ``EvalConfig``,
#: ``CertifyConfig``, every CLI command's ``--n-samples``).
N_SAMPLES = 1000

#: The one default relative width of the margin search's bisection bracket (``empirical_margin``'s
#: ``tol``, ``EvalConfig.margin_tol``, ``robvae margin --margin-tol``): the margin reported is the
#: bracket's lower end, so a wider bracket can only understate it.
MARGIN_TOL = 0.05
