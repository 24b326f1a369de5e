"""What every study folder holds besides its tables and figures: ``study.json``.

study.json = {"study": name, "command": the exact robvae command line that reproduces the
folder, "config": every setting, "figures": [png names], "tables": [csv names], "robvae": version,
"created": UTC time}. The HTML report (:mod:`robvae.report.html`) reads it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import read_json, write_json

STUDY_FILE = "study.json"


def write_study_meta(out: Path, study: str, command: str, config: dict[str, Any], *,
                     figures: Sequence[str] = (), tables: Sequence[str] = (),
                     extra: dict[str, Any] | None = None) -> Path:
    from .. import __version__

    meta = {"study": study, "command": command, "config": config, "figures": list(figures), "tables": list(tables),
            "robvae": __version__, "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if extra:
        meta.update(extra)
    return write_json(Path(out) / STUDY_FILE, meta)


def read_study_meta(folder: str | Path) -> dict[str, Any]:
    return read_json(Path(folder) / STUDY_FILE, "study description")


def fmt_list(values: Sequence[float | int]) -> str:
    """[1.0, 2.0, 0.5] -> "1,2,0.5" (the CLI's list syntax)."""
    return ",".join(f"{v:g}" for v in values)
