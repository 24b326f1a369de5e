"""The ``robvae`` command line: a thin face over the library.

Each command group lives in its own module and registers itself on :data:`app`. Errors that
robvae raises on bad input (:class:`robvae.errors.RobvaeError`, plus ``ValueError``,
``FileNotFoundError`` and a diverging training's ``FloatingPointError``) are printed as one line
``robvae: error: ...`` with exit status 2, never as a traceback; click's own usage errors also
exit with 2. A command that ends with failures (``robvae sweep`` with failed trials) exits 1;
Ctrl-C prints :data:`INTERRUPTED` and exits 130.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..threads import prefer_passive_wait, set_threads

# before any command module loads torch: OpenMP reads its wait policy once, when torch loads
prefer_passive_wait()

# modules that add commands to ``app``
_COMMAND_MODULES = ("train", "robust", "study", "sweep", "report", "bench")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="robvae")
def app() -> None:
    """Train VAEs, certify their r-robustness, and attack them to check the certificates."""


def _register() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"robvae.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    _register()
    set_threads(None)  # robvae.threads' default unless --threads says otherwise
    try:
        rc = app.main(args=argv, prog_name="robvae", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C (click turns it into Abort where it catches it)
        click.echo(INTERRUPTED, err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"robvae: error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: also a read-only or full disk
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        click.echo(f"robvae: error: {msg}", err=True)
        return 2
    # with standalone_mode=False click returns the code of ``ctx.exit(code)`` / ``Exit(code)``
    # (e.g. ``robvae sweep`` with failed trials) instead of raising it
    return rc if isinstance(rc, int) else 0


#: What Ctrl-C prints (exit status 130): every finished epoch, trial and result file is saved
#: atomically, and the same command resumes from there.
INTERRUPTED = "robvae: interrupted (finished work is saved; rerun the same command to resume)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
