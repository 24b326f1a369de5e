"""The ``robvae`` command line: a thin face over the library.

Each command group lives in its own module and registers itself on :data:`app`. Errors that
robvae raises on bad input (:class:`robvae.errors.RobvaeError`, plus ``ValueError``,
``FileNotFoundError`` and a diverging training's ``FloatingPointError``) are printed as one line
``robvae: error: ...`` with exit status 2, never as a traceback; click's own usage errors also
exit with 2. A command that ends with failures (``robvae sweep`` with failed trials) exits 1;
Ctrl-C prints :data:`INTERRUPTED` (or :data:`INTERRUPTED_NOTHING_SAVED`) and exits 130; SIGTERM
is handled the same way and exits 143.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import click

from ..models.protocol import ROBVAE_DIR, USER_CODE_FILES
from ..threads import prefer_passive_wait, set_threads

# before any command module loads torch: OpenMP reads its wait policy once, when torch loads
prefer_passive_wait()

# modules that add commands to ``app``
_COMMAND_MODULES = ("train", "robust", "study", "sweep", "report", "bench")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a cluster's scheduler ending a job), handled as Ctrl-C is: every
    block that cleans up on Ctrl-C (locks, trial records, worker pools) does so."""


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM: ``terminated``) inside a command, carried past click's own handler,
    which would print a blank line on stderr before robvae's one-line message."""

    def __init__(self, terminated: bool):
        super().__init__("interrupted")
        self.terminated = terminated


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Interrupted(isinstance(e, Terminated)) from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="robvae")
def app() -> None:
    """Train VAEs, certify their r-robustness, and attack them to check the certificates."""


def _register() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"robvae.cli.{name}")


def _terminate(signum, frame) -> None:
    raise Terminated()


def _robvae_warning(show):
    """``warnings.showwarning`` for the command line: robvae's own warnings (its warning classes, or
    a message that starts with "robvae:") as one line ``robvae: warning: ...`` like its other
    notes, instead of Python's ``FILE:LINE: Category: message`` and a line of robvae's source;
    other libraries' warnings as Python shows them (``show``)."""
    def _show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if category.__module__.split(".")[0] == "robvae" or text.startswith("robvae:"):
            click.echo(f"robvae: warning: {text.removeprefix('robvae:').strip()}", err=True)
        else:
            show(message, category, filename, lineno, file, line)
    return _show


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    _register()
    set_threads(None)  # robvae.threads' default unless --threads says otherwise
    args = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    show = warnings.showwarning
    warnings.showwarning = _robvae_warning(show)
    try:
        rc = app.main(args=argv, prog_name="robvae", standalone_mode=False)
    except (_Interrupted, click.exceptions.Abort, KeyboardInterrupt) as e:  # Ctrl-C (click: Abort where it catches it)
        click.echo(INTERRUPTED if command in RESUMABLE else INTERRUPTED_PARTLY if command in WRITES_AS_IT_GOES
                   else INTERRUPTED_NOTHING_SAVED, err=True)
        terminated = getattr(e, "terminated", False) or isinstance(e, Terminated) or isinstance(e.__cause__, Terminated)
        return 143 if terminated else 130
    except _NO_ARGS_IS_HELP as e:  # `robvae` or `robvae study` alone: the help, not an error (click >= 8.2)
        click.echo(e.format_message(), err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"robvae: error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: also a read-only or full disk
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        click.echo(f"robvae: error: {msg}", err=True)
        return 2
    except Exception as e:  # a user's model failing, or memory: one line; a robvae bug keeps its traceback
        msg = _outside_error(e)
        if msg is None:
            raise
        click.echo(f"robvae: error: {msg}", err=True)
        return 2
    except SystemExit as e:  # sys.exit() inside the user's model while it ran: it ended robvae without a word
        frame = _user_frame(e.__traceback__)
        if frame is None:
            raise
        click.echo(f"robvae: error: your code called sys.exit({e.code!r}) ({_where(frame)})", err=True)
        return 2
    finally:
        warnings.showwarning = show
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    # with standalone_mode=False click returns the code of ``ctx.exit(code)`` / ``Exit(code)``
    # (e.g. ``robvae sweep`` with failed trials) instead of raising it
    return rc if isinstance(rc, int) else 0


#: click >= 8.2 raises this for a group called without its command; older click has no such class
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _user_frame(tb) -> traceback.FrameSummary | None:
    """The innermost frame of ``tb`` that is robvae's or the user's own code
    (:data:`robvae.models.protocol.USER_CODE_FILES`: a ``--model`` module and its model's
    classes), when it is the user's; None otherwise (libraries' frames, wherever they are
    installed, decide nothing: a robvae bug below a user's frame is robvae's)."""
    last = None
    for frame in traceback.extract_tb(tb):
        path = str(Path(frame.filename).resolve()) if not frame.filename.startswith("<") else ""
        if path.startswith(ROBVAE_DIR) or path in USER_CODE_FILES:
            last = (frame, path in USER_CODE_FILES)
    return last[0] if last and last[1] else None


def _outside_error(e: BaseException) -> str | None:
    """The one-line message for an error that is not robvae's own bug (audit h80: these ended in a
    traceback and status 1): memory running out, or an exception raised in the user's own model
    code; None otherwise (a robvae bug keeps its traceback)."""
    first = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in first
                                                                       or "out of memory" in first.lower())):
        return f"out of memory ({type(e).__name__}: {first[:200]}); use fewer inputs, draws or a smaller model"
    frame = _user_frame(e.__traceback__)
    if frame is None:
        return None
    return f"your code raised {type(e).__name__}: {first[:300]} ({_where(frame)})"


def _where(frame: traceback.FrameSummary) -> str:
    return f"{Path(frame.filename).name}:{frame.lineno}, in {frame.name}"


#: What Ctrl-C prints (exit status 130; SIGTERM: 143) for the commands that resume
#: (:data:`RESUMABLE`): every finished epoch, trial, shard and result file is saved atomically,
#: and the same command resumes from there.
INTERRUPTED = "robvae: interrupted (whatever had finished is saved; rerun the same command to resume)"
#: ... for ``report`` (with ``--model`` it certifies, attacks and measures margins, writing each
#: result when it is done) ...
INTERRUPTED_PARTLY = ("robvae: interrupted (the results finished before it are written; rerun the command to "
                      "make them all)")
#: ... and for the others (attack, margin), which write their files at the end (the summary JSON
#: last: a CSV without it is not a result, and robvae report says so).
INTERRUPTED_NOTHING_SAVED = "robvae: interrupted (no complete result was written; rerun the command to start again)"
RESUMABLE = frozenset({"train", "certify", "sweep", "study", "bench", "demo"})  # demo: its run resumes
WRITES_AS_IT_GOES = frozenset({"report"})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
