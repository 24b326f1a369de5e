"""Documentation hygiene: links stay inside the repository and resolve; no pointer to the outside spec.

- Every Markdown link or image in the repository root's *.md and docs/**/*.md must be a web URL
  (http, https, mailto), an anchor in the same page, or a relative path that stays inside the
  repository and names an existing file; an anchor into a Markdown page must match one of its
  headings (GitHub / mkdocs slugs). Absolute file paths (``/home/...``, ``file:``, ``C:\\``) fail.
- No docstring under src/ mentions SPEC.md, and no source under src/, benchmarks/, examples/ or
  tests/ (this file aside) points at the project's external spec ("../shared/SPEC", "SPEC.md",
  "SPEC 6", "SPEC section 8"): the theory page is docs/THEORY.md, inside the repository.
The helpers are tested on small synthetic pages first, so each check is shown to be able to fail.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"(`+).*?\1", re.S)
# [text](target "title") and ![alt](target); the text may hold nested [..] one level deep
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXPLICIT_ID = re.compile(r"""(?:\bid\s*=\s*["']([^"']+)["']|\{#([^}\s]+)\})""")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_OUTSIDE_SPEC = re.compile(r"shared/SPEC|\bSPEC\.md\b|\bSPEC\s+(?:sections?\s+)?\d")


def _unfenced_lines(text: str) -> list[str]:
    """The lines of a page with those of fenced code blocks (fences included) blanked out."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return out


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    prose = "\n".join(_unfenced_lines(text))
    return _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose).splitlines()


def links(text: str) -> list[str]:
    """Every link target in a Markdown page (inline, reference definitions, HTML a/img), in order."""
    prose = "\n".join(_prose_lines(text))
    found = [m.group(1) for m in _INLINE_LINK.finditer(prose)]
    found += [m.group(1) for m in _REF_DEF.finditer(prose)]
    found += [m.group(1) for m in _HTML_LINK.finditer(prose)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def slug(heading: str) -> str:
    """GitHub's (and mkdocs' default toc) anchor for a heading text."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a Markdown page defines: heading slugs (with GitHub's -1, -2 for repeats) and ids.
    A heading's inline code counts, as on GitHub: "## `robvae certify`" is #robvae-certify."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _unfenced_lines(text):
        m = _HEADING.match(line)
        if m:
            base = slug(_EXPLICIT_ID.sub("", m.group(2)))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    for m in _EXPLICIT_ID.finditer(text):
        out.add(m.group(1) or m.group(2))
    return out


def link_problems(page: Path, root: Path) -> list[str]:
    """Why each bad link of ``page`` is bad (empty when every link is fine)."""
    text = page.read_text(encoding="utf-8")
    problems = []
    for target in links(text):
        where = f"{page.relative_to(root)}: {target!r}"
        if target.startswith("#"):
            if unquote(target[1:]) not in anchors(text):
                problems.append(f"{where}: no such anchor in this page")
            continue
        if re.match(r"^[a-zA-Z]:[\\/]", target) or target.startswith(("/", "\\", "file:")):
            problems.append(f"{where}: absolute file path")
            continue
        if _SCHEME.match(target):
            if not target.lower().startswith(("http://", "https://", "mailto:")):
                problems.append(f"{where}: unsupported link scheme")
            continue
        path_part, _, fragment = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        dest = (page.parent / path_part).resolve() if path_part else page.resolve()
        try:
            dest.relative_to(root.resolve())
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file in the repository")
            continue
        if fragment and dest.suffix.lower() == ".md" \
                and unquote(fragment) not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where}: no heading with anchor #{fragment} in {dest.relative_to(root.resolve())}")
    return problems


def docstrings(source: str) -> list[str]:
    """The module, class and function docstrings of a Python source."""
    tree = ast.parse(source)
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [d for d in (ast.get_docstring(n, clean=False) for n in nodes) if d]


def _pages(root: Path) -> list[Path]:
    return sorted(root.glob("*.md")) + sorted((root / "docs").rglob("*.md"))


def _sources(root: Path, *dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (root / d).rglob("*.py") if ".egg-info" not in str(p))


# --- the helpers on synthetic pages (each check can fail) -------------------------------------

def test_link_checker_flags_each_kind_of_bad_link(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "SPEC.md").write_text("# spec\n")
    (repo / "docs" / "THEORY.md").write_text("# Theory\n\n## 3. Theorem 1 and its variants\n\n## Refs\n\n## Refs\n\n"
                                             "## `robvae bench`: the benchmark\n\n```\n## not a heading\n```\n")
    (repo / "README.md").write_text(
        "# Title\n"
        "[ok](docs/THEORY.md) [ok anchor](docs/THEORY.md#3-theorem-1-and-its-variants) [dup](docs/THEORY.md#refs-1)\n"
        "[code heading](docs/THEORY.md#robvae-bench-the-benchmark) [fenced](docs/THEORY.md#not-a-heading)\n"
        "[web](https://example.org/x) [self](#title) ![img](docs/THEORY.md)\n"
        "`[in code](../shared/SPEC.md)`\n"
        "```\n[in a fence](/etc/passwd)\n```\n"
        "[escape](../elsewhere/NOTES.md) [abs](/abs-root/file.md) [missing](docs/NOPE.md)\n"
        "[bad anchor](docs/THEORY.md#4-nothing) [bad self](#nowhere) [win](C:\\x\\y.md)\n"
        "[ref]: ../outside.md\n"
        '<a href="/tmp/x.html">x</a>\n'
    )
    problems = link_problems(repo / "README.md", repo)
    joined = "\n".join(problems)
    for bad in ("../elsewhere/NOTES.md", "/abs-root/file.md", "docs/NOPE.md", "#4-nothing", "#nowhere",
                "C:\\\\x\\\\y.md", "../outside.md", "/tmp/x.html", "#not-a-heading"):
        assert bad in joined, (bad, joined)
    assert len(problems) == 9, joined
    for good in ("'docs/THEORY.md'", "#3-theorem-1-and-its-variants", "#refs-1", "example.org", "/etc/passwd",
                 "#robvae-bench-the-benchmark"):
        assert good not in joined


def test_slug_follows_github():
    assert slug("7. Exact answers: the linear VAE and Theorem 2") == "7-exact-answers-the-linear-vae-and-theorem-2"
    assert slug("The `robvae` CLI (v2)") == "the-robvae-cli-v2"
    assert slug("r-robustness and the margin") == "r-robustness-and-the-margin"


def test_docstring_checker_sees_spec_mentions():
    src = ('"""Module (see ../shared/SPEC.md)."""\n\ndef f():\n    """Uses SPEC.md section 3."""\n\n'
           'class C:\n    """Clean."""\n')
    found = [d for d in docstrings(src) if "SPEC.md" in d]
    assert len(found) == 2
    assert _OUTSIDE_SPEC.search("see SPEC 6 for details") and _OUTSIDE_SPEC.search("SPEC section 8's model")
    assert not _OUTSIDE_SPEC.search("docs/THEORY.md section 5") and not _OUTSIDE_SPEC.search("SPECIFIC 3")


# --- the repository ---------------------------------------------------------------------------

def test_markdown_links_stay_inside_the_repository_and_resolve():
    pages = _pages(ROOT)
    assert (ROOT / "docs" / "THEORY.md") in pages
    problems = [p for page in pages for p in link_problems(page, ROOT)]
    assert not problems, "bad links:\n" + "\n".join(problems)


def test_no_docstring_under_src_mentions_the_spec():
    bad = [f"{path.relative_to(ROOT)}: {d.strip().splitlines()[0][:80]!r}"
           for path in _sources(ROOT, "src") for d in docstrings(path.read_text(encoding="utf-8"))
           if "SPEC.md" in d or _OUTSIDE_SPEC.search(d)]
    assert not bad, "docstrings pointing at SPEC.md (use docs/THEORY.md):\n" + "\n".join(bad)


def test_no_source_points_at_the_outside_spec():
    bad = [f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}"
           for path in _sources(ROOT, "src", "benchmarks", "examples", "tests") if path.name != Path(__file__).name
           for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if _OUTSIDE_SPEC.search(line)]
    bad += [f"{page.relative_to(ROOT)}:{i}: {line.strip()[:100]}"
            for page in _pages(ROOT) for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if _OUTSIDE_SPEC.search(line)]
    assert not bad, "references to the external spec (use docs/THEORY.md and its section):\n" + "\n".join(bad)


@pytest.mark.parametrize("section", range(1, 12))
def test_theory_page_has_every_section(section):
    text = (ROOT / "docs" / "THEORY.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {section}\. ", text, re.M), f"docs/THEORY.md has no section {section}"
