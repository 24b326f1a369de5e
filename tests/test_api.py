"""The public API is small and static, and README.md's API table lists exactly ``robvae.__all__``."""

from __future__ import annotations

import re
from pathlib import Path

import robvae

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_api_names() -> list[str]:
    """The first-column names of the table under the README heading "## Python API"."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Python API\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert m, "README.md has no '## Python API' section with the table of robvae.__all__"
    names = []
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if cells and (found := re.fullmatch(r"`robvae\.(\w+)`|`(\w+)`", cells[0])):
            names.append(found.group(1) or found.group(2))
    return names


def test_all_is_exactly_the_readme_table():
    names = _readme_api_names()
    assert len(names) == len(set(names)), "a name appears twice in the README's API table"
    assert set(names) == set(robvae.__all__), (
        f"README table lacks {sorted(set(robvae.__all__) - set(names))}, "
        f"lists names robvae does not export {sorted(set(names) - set(robvae.__all__))}")


def test_every_public_name_is_a_real_attribute_and_static():
    for name in robvae.__all__:
        assert getattr(robvae, name) is not None, name
    assert "__getattr__" not in vars(robvae)  # plain imports, no lazy module __getattr__
    assert robvae.__version__
