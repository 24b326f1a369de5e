"""mkdocs hooks: the site's home page is the repository's README.md, and every page under docs/
is in the navigation.

- README.md links the pages under docs/ as ``docs/NAME.md``; on the site those pages sit beside
  the home page, so the prefix is dropped. Everything else in README.md is used as it is (a link
  that does not resolve on the site fails ``mkdocs build --strict``).
- A page under docs/ links the README as ``../README.md`` (anchors allowed, e.g.
  ``../README.md#python-api``, as GitHub reads it); on the site the README is the home page,
  ``index.md``, so the link is rewritten to it (``../../README.md`` from docs/sub/, and so on).
- A Markdown page under docs/ that mkdocs.yml's ``nav`` does not list (e.g. a page added
  without touching mkdocs.yml) is added before the API reference, titled from its file name.
"""

from __future__ import annotations

import re
from pathlib import Path

_DOCS_LINK = re.compile(r"\]\(docs/")
_README_LINK = re.compile(r"\]\(((?:\.\./)+)README\.md(?=[#)])")


def _listed(nav) -> set[str]:
    out: set[str] = set()
    for item in nav or []:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            out |= _listed(value)
        elif isinstance(value, str):
            out.add(value)
    return out


def on_config(config):
    docs = Path(config.docs_dir)
    nav = config.nav
    if nav is None:
        return config
    listed = _listed(nav)
    extra = [p.relative_to(docs).as_posix() for p in sorted(docs.rglob("*.md"))]
    extra = [p for p in extra if p not in listed]
    at = next((i for i, item in enumerate(nav) if isinstance(item, dict) and "API reference" in item), len(nav))
    for rel in extra:
        nav.insert(at, {Path(rel).stem.replace("-", " ").replace("_", " ").capitalize(): rel})
        at += 1
    return config


def _to_home(markdown: str, src_uri: str) -> str:
    """``](../README.md...)`` in the page ``src_uri`` (relative to docs/) -> the home page ``index.md``."""
    depth = src_uri.count("/")  # folders below docs/

    def home(m: re.Match) -> str:
        ups = len(m.group(1)) // 3
        if ups != depth + 1:  # not the repository root's README.md: leave it to mkdocs' checks
            return m.group(0)
        return "](" + "../" * depth + "index.md"

    return _README_LINK.sub(home, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - the mkdocs hook signature
    if page.file.src_uri != "index.md":
        return _to_home(markdown, page.file.src_uri)
    readme = Path(config.config_file_path).parent / "README.md"
    return _DOCS_LINK.sub("](", readme.read_text(encoding="utf-8"))
