"""``robvae report OUT [OUT...] [--html FILE]``: study folders into one self-contained HTML page."""

from __future__ import annotations

import click

from . import app
from ..report.html import render_report


@app.command("report")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Output HTML file (default: report.html in the first folder).")
@click.option("--title", default="robvae studies", show_default=True)
def report_cmd(folders, html_file, title) -> None:
    """Render study folders (figures embedded, tables, commands and configs) into one HTML page."""
    path = render_report(folders, html_file, title=title)
    click.echo(f"report: {path} ({len(folders)} stud{'y' if len(folders) == 1 else 'ies'}; opens with no server)")
