"""The documentation's options tables say what the command line does.

Every ``robvae`` command has its options in tables of the documentation (README.md and every
docs/*.md page; the command-line reference docs/CLI.md holds them today), each table introduced by
a marker line ``<!-- options: robvae CMD[, robvae CMD2, ...] -->`` (a table of options common to
several commands names them all) and made of rows

    | `--n-samples` | `1000` | meaning |
    | `--rigorous/--no-rigorous` | on | meaning |
    | `--out` | required | meaning |
    | `--data-dir` | - | meaning |

The first cell is the option's primary long name (a hidden old alias never appears), with the
``/--no-x`` half for a boolean flag; the second its default: a code span compared with the value
click holds (numbers numerically, text exactly), ``on`` / ``off`` for a flag, ``required``, or
``-`` (also ``none``) when there is none. Nothing is hard-coded here: the expected names and
defaults are read from the click command objects when the test runs, so a changed or added
option fails the test until the table is updated. Every command must have its table on some page,
no option may be listed twice (on one page or across pages), and an options table without a
marker, on any page, fails. The parser and the comparison are first tested on a small synthetic
page, so each check is shown to be able to fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from robvae.cli import _register, app

_register()

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def pages() -> list[Path]:
    """The pages scanned for options tables: README.md and every Markdown page under docs/ (and below)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


_MARKER = re.compile(r"^<!--\s*options:\s*(.+?)\s*-->\s*$")
_NAME_CELL = re.compile(r"`(--[\w-]+)(?:/(--[\w-]+))?`")


def _commands(group: click.Group = app, prefix: tuple[str, ...] = ("robvae",)):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), cmd


COMMANDS: dict[str, click.Command] = dict(_commands())


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` inside a cell is not a separator."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def parse_tables(text: str) -> list[tuple[list[str], list[tuple[str, str | None, str]]]]:
    """Every marked options table of a page: ([command names], [(option, negative form, default cell)])."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        m = _MARKER.match(line.strip())
        if not m:
            continue
        names = [n.strip() for n in m.group(1).split(",") if n.strip()]
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        rows, header_seen = [], False
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            cells = _cells(lines[j])
            j += 1
            if not header_seen:  # header row, then the --- separator row
                header_seen = True
                assert [c.lower() for c in cells[:2]] == ["option", "default"], f"table for {names}: header {cells}"
                continue
            if set("".join(cells)) <= set("-: "):
                continue
            found = _NAME_CELL.fullmatch(cells[0])
            assert found, f"table for {names}: first cell {cells[0]!r} is not `--option` or `--flag/--no-flag`"
            assert len(cells) >= 3, f"table for {names}: row {cells} lacks a default or meaning cell"
            rows.append((found.group(1), found.group(2), cells[1]))
        assert rows, f"options marker for {names} is not followed by a table"
        tables.append((names, rows))
    return tables


def _primary(p: click.Option) -> str:
    aliases = set(getattr(p, "aliases", ()))
    return next(o for o in p.opts if o.startswith("--") and o not in aliases)


def visible_options(cmd: click.Command) -> dict[str, click.Option]:
    """The options ``--help`` shows, by primary long name."""
    return {_primary(p): p for p in cmd.params if isinstance(p, click.Option) and not p.hidden}


def _no_default(value) -> bool:
    return value is None or type(value).__name__ == "Sentinel" or (isinstance(value, tuple) and not value)


def default_problem(cmd: click.Command, p: click.Option, negative: str | None, cell: str) -> str | None:
    """Why a row's name and default cell disagree with option ``p`` (None when they agree)."""
    name = _primary(p)
    expected_negative = p.secondary_opts[0] if p.secondary_opts else None
    if negative != expected_negative:
        return f"{name}: the table writes {negative or 'no'} negative form, click has {expected_negative or 'none'}"
    if p.required:
        return None if cell == "required" else f"{name}: required, the table says {cell!r}"
    value = p.get_default(click.Context(cmd), call=False)
    if p.is_flag and not p.count:
        want = "on" if value is True else "off"
        return None if cell == want else f"{name}: a flag {want} by default, the table says {cell!r}"
    if _no_default(value):
        return None if cell in ("-", "none") else f"{name}: no default in click, the table says {cell!r}"
    m = re.fullmatch(r"`([^`]*)`", cell)
    if not m:
        return f"{name}: default cell {cell!r} should be a code span holding {value!r}"
    text = m.group(1)
    try:
        if isinstance(value, bool):
            same = text.lower() in (("true", "on") if value else ("false", "off"))
        elif isinstance(value, (int, float)):
            same = float(text) == float(value)
        else:
            same = text == str(value)
    except ValueError:
        same = False
    return None if same else f"{name}: click's default is {value!r}, the table says {text!r}"


def table_problems(command: str, cmd: click.Command, tables) -> list[str]:
    """Every disagreement between ``command``'s rows in ``tables`` and its click object."""
    rows = [row for names, rs in tables if command in names for row in rs]
    if not rows:
        return [f"{command}: no options table in the documentation (add one to docs/CLI.md after "
                f"'<!-- options: {command} -->')"]
    options = visible_options(cmd)
    problems = []
    listed = [r[0] for r in rows]
    dupes = sorted({n for n in listed if listed.count(n) > 1})
    if dupes:
        problems.append(f"{command}: listed twice: {dupes}")
    missing = sorted(set(options) - set(listed))
    extra = sorted(set(listed) - set(options))
    if missing:
        problems.append(f"{command}: options missing from the table: {missing}")
    if extra:
        problems.append(f"{command}: the table lists options the command does not show: {extra}")
    for name, negative, cell in rows:
        if name in options:
            problem = default_problem(cmd, options[name], negative, cell)
            if problem:
                problems.append(f"{command}: {problem}")
    return problems


# --- the parser and the checks on a synthetic command and page (each check can fail) -----------

@click.command()
@click.option("--n-samples", "--samples", "n_samples", default=1000, type=int)
@click.option("--rigorous/--no-rigorous", default=True)
@click.option("--quiet", is_flag=True)
@click.option("--out", required=True)
@click.option("--data-dir", default=None)
@click.option("--preset", default="cheap")
@click.option("--alpha", default=0.001, type=float)
@click.option("--secret", hidden=True, default=3)
def _toy(**kw):  # pragma: no cover - never invoked
    pass


_TOY_PAGE = """\
<!-- options: toy -->
| option | default | meaning |
| --- | --- | --- |
| `--n-samples` | `1000` | draws (a \\| in a cell) |
| `--rigorous/--no-rigorous` | on | also the rigorous radii |
| `--quiet` | off | no progress bar |
| `--out` | required | where |
| `--data-dir` | - | data |
| `--preset` | `cheap` | attack |
| `--alpha` | `1e-3` | level |
"""


def test_checker_accepts_a_correct_table_and_ignores_hidden_options():
    tables = parse_tables(_TOY_PAGE)
    assert tables[0][0] == ["toy"] and len(tables[0][1]) == 7
    assert table_problems("toy", _toy, tables) == []


@pytest.mark.parametrize("old, new, expect", [
    ("`1000`", "`500`", "click's default is 1000"),
    ("| on |", "| off |", "a flag on by default"),
    ("`--rigorous/--no-rigorous`", "`--rigorous`", "negative form"),
    ("| off |", "| on |", "a flag off by default"),
    ("| required |", "| - |", "required"),
    ("| - |", "| `x` |", "no default in click"),
    ("`cheap`", "`strong`", "click's default is 'cheap'"),
    ("`cheap`", "cheap", "should be a code span"),
    ("| `--preset` | `cheap` | attack |\n", "", "missing from the table: ['--preset']"),
    ("`--data-dir`", "`--samples`", "does not show: ['--samples']"),
    ("| `--alpha` |", "| `--secret` |", "does not show: ['--secret']"),
    ("| `--alpha` | `1e-3` | level |", "| `--alpha` | `1e-3` | level |\n| `--alpha` | `1e-3` | again |", "listed twice"),
])
def test_checker_flags_each_kind_of_mismatch(old, new, expect):
    page = _TOY_PAGE.replace(old, new, 1)
    assert page != _TOY_PAGE
    joined = "\n".join(table_problems("toy", _toy, parse_tables(page)))
    assert expect in joined, joined


def test_checker_flags_a_command_without_a_table():
    assert "no options table" in "\n".join(table_problems("other", _toy, parse_tables(_TOY_PAGE)))


def test_tables_on_several_pages_are_checked_together():
    """A command's rows may sit on any page; split or doubled across pages, they are still checked."""
    lines = _TOY_PAGE.splitlines()
    first, second = "\n".join(lines[:6]) + "\n", "\n".join(lines[:3] + lines[6:]) + "\n"
    assert table_problems("toy", _toy, all_tables({"a.md": first, "b.md": second})) == []
    assert "missing" in "\n".join(table_problems("toy", _toy, all_tables({"a.md": first})))
    joined = "\n".join(table_problems("toy", _toy, all_tables({"a.md": _TOY_PAGE, "b.md": _TOY_PAGE})))
    assert "listed twice" in joined, joined


# --- the repository's documentation -------------------------------------------------------------

def all_tables(texts: dict[str, str] | None = None):
    """The marked options tables of every page (README.md and docs/*.md), pooled."""
    if texts is None:
        texts = {_name(p): p.read_text(encoding="utf-8") for p in pages()}
    return [table for text in texts.values() for table in parse_tables(text)]


def test_pages_include_the_readme_and_the_command_line_reference():
    names = [_name(p) for p in pages()]
    assert names[0] == "README.md" and "docs/CLI.md" in names, names


def test_every_command_has_a_table_and_every_table_a_command():
    tables = all_tables()
    named = {n for names, _ in tables for n in names}
    assert not named - set(COMMANDS), f"options tables for unknown commands: {sorted(named - set(COMMANDS))}"
    assert not set(COMMANDS) - named, f"commands without an options table: {sorted(set(COMMANDS) - named)}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_readme_table_matches_the_command(command):
    problems = table_problems(command, COMMANDS[command], all_tables())
    assert not problems, "the documentation is out of date with the command line:\n" + "\n".join(problems)


def _option_like(rows: list[str]) -> bool:
    """A table whose body rows mostly start with an option (`--name`): an options table, whatever
    its header says."""
    firsts = [_cells(r)[0] for r in rows if not set("".join(_cells(r))) <= set("-: ")]
    return bool(firsts) and sum(bool(re.fullmatch(r"`--[a-z][\w-]*(/--[\w-]+)?`", c)) for c in firsts) * 2 > len(firsts)


def unmarked_option_tables(text: str) -> list[int]:
    """Line numbers of options tables (headed `| option | default | ...`, or whose rows mostly
    start with `--name`) that no options marker precedes: such a table would never be checked
    against the command line."""
    lines, bad = text.splitlines(), []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("|") or (i and lines[i - 1].lstrip().startswith("|")):
            continue  # only the first row of each table
        j = i
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            j += 1
        cells = [c.lower() for c in _cells(line)]
        if cells[:2] != ["option", "default"] and not _option_like(lines[i + 1:j]):
            continue
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k < 0 or not _MARKER.match(lines[k].strip()):
            bad.append(i + 1)
    return bad


def test_every_options_table_is_marked_and_so_checked():
    assert unmarked_option_tables(_TOY_PAGE) == []
    assert unmarked_option_tables("text\n\n| option | default | meaning |\n| --- | --- | --- |\n| `--n` | `3` | x |\n") == [3]
    assert unmarked_option_tables("| flag | value |\n|---|---|\n| `--n-samples` | `10000` |\n| `--r` | 1 |\n") == [1]
    assert unmarked_option_tables("| field | meaning |\n|---|---|\n| `n_used` | x |\n| `--r` | y |\n") == []
    bad = {_name(p): lines for p in pages() if (lines := unmarked_option_tables(p.read_text(encoding="utf-8")))}
    assert not bad, f"options tables without a '<!-- options: robvae CMD -->' marker (page: lines): {bad}"
