"""``scf-nb``: event management from a terminal (also ``python -m scf_nb`` and ``python -m scf_nb.cli``).

    scf-nb events --status RUNNING            the event table, newest first, and the total it found
    scf-nb logs RID --follow                  an event's log lines, live until it ends
    scf-nb invoke transcode --event '{"src": "a.mov"}'
    scf-nb terminate RID --grace
    scf-nb show RID | overview | functions | export DIR
    scf-nb serve --port 8888 --tc-port 9000   a Jupyter server hosting the engine, for a headless machine

Every subcommand but ``serve`` is a thin adapter (``commands.py``): it makes its calls on the module API
(``scf_nb.api``: the client ``api.client()`` chooses, the engine a running server hosts for this home, else one
embedded in this process) and prints the answer (``text.py``): aligned columns and local times for people,
``--json`` for programs. ``--home DIR`` (or ``SCF_NB_HOME``) selects the store. Exit status: 0 done; 1 an
ScfError (its code and message on stderr, one line) or an event that FAILED or was ABORTED; 2 bad usage;
130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .parser import build

PROG = "scf-nb"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand (``argv``: the arguments after the program's name); returns the exit status."""
    args = build().parse_args(argv)  # bad usage exits 2 here, before the API loads
    if args.command is None:
        build().print_help(sys.stderr)
        return 2
    from .. import api
    from ..core.errors import ScfError
    from .commands import COMMANDS, UsageError
    from .text import error_line

    try:
        if getattr(args, "home", None):
            api.configure(home=args.home)
        return COMMANDS[args.command](args)
    except UsageError as e:
        args.parser.error(str(e))  # exits 2 after the subcommand's usage line, as argparse's own errors
    except ScfError as e:
        print(f"{PROG}: {error_line(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader stopped early (| head): no traceback, nothing more to print
        sys.stdout = None  # the interpreter's flush at exit would fail again
        return 141
    except OSError as e:  # a path the command was given (export's folder): the system's one-line reason
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        _close()
    return 2  # (not reached: parser.error exits)


def _close() -> None:
    """Let go of the client: an embedded engine stops (its store flushed); a server's runs on."""
    from .. import api
    from ..core.errors import ScfError

    try:
        api.shutdown()
    except (ScfError, KeyboardInterrupt):
        pass


__all__ = ["main"]
