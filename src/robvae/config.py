"""The shared behaviour of robvae's typed configs: plain-JSON dicts in, dicts out, unknown keys refused."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="ConfigMixin")


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
        return cls(**d)
