"""Command line: a thin layer over the Python API. Each area registers its own commands."""

from __future__ import annotations

import signal
import sys

import typer

from ..errors import ExpertcacheError

app = typer.Typer(
    name="expertcache",
    help="Trace, measure, simulate and run expert offloading for Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text as written: shapes like [sequences, tokens, layers, k] are not markup
)


class Interrupted(Exception):
    """A command stopped by Ctrl-C after keeping its work: main says what was kept, status 130
    (143 when `signum` says SIGTERM stopped it)."""

    def __init__(self, message: str, signum: int = 0):
        super().__init__(message)
        self.signum = signum


def _register_all() -> None:
    if app.registered_commands or app.registered_groups:  # main() ran before in this process
        return
    from . import (cache_commands, capture_commands, demo_commands, locality_commands, report_commands, run_commands,
                   toy_commands, trace_commands)

    for module in (demo_commands, report_commands, trace_commands, capture_commands, locality_commands, cache_commands,
                   run_commands, toy_commands):
        module.register(app)


def _plain(e: Exception) -> str:
    """An OSError as "path: reason" rather than Python's "[Errno 2] reason: 'path'"."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def main() -> None:
    """Entry point: user mistakes end with one line on stderr and exit status 2.

    Usage errors (a missing argument, an unknown command) are click's: usage, then the error,
    status 2. Ctrl-C ends with status 130, after commands have committed what they finished;
    SIGTERM (a scheduler's or `kill`'s stop) takes the same way out, with status 143.
    """
    _stopped_by.clear()  # main may run more than once in a process (tests)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        _register_all()  # imports torch and compiles: seconds in which a Ctrl-C may come
        app()
    except (ExpertcacheError, OSError) as e:  # OSError: permissions, a full disk, a directory for a file
        print(f"error: {_plain(e)}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        _interrupted(f"interrupted: {e}", e.signum)
    except KeyboardInterrupt:  # before a command started
        _interrupted("interrupted")
    except SystemExit as e:
        if e.code == 130:  # typer's answer to a Ctrl-C inside a command that kept nothing
            _interrupted("interrupted")
        raise


_stopped_by: list[int] = []  # SIGTERM, once it arrived


def _terminate(signum, frame) -> None:
    """SIGTERM as a Ctrl-C: commands commit what they finished on the way out."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stopped_by.append(signum)
    raise KeyboardInterrupt


def _interrupted(message: str, signum: int = 0) -> None:
    """Exit with status 130 (143 after SIGTERM); a further Ctrl-C no longer interrupts the exit
    itself (threads joined at shutdown), which would end in a traceback or a death by signal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signum = signum or (_stopped_by[0] if _stopped_by else signal.SIGINT)
    if signum == signal.SIGTERM:
        message = message.replace("interrupted", "terminated", 1)
    print(message, file=sys.stderr)
    sys.exit(128 + signum)
