"""The programs' shared entry point: click's command-line handling, with the exit statuses
the commands document (docs/AGENT.md, RESCUE.md, API.md)."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from .errors import CdpError, UsageError

#: A program stopped by Ctrl-C (SIGINT), as shells report it: 128 + the signal's number.
INTERRUPTED = 130


def run_program(group: click.Group, prog: str) -> NoReturn:
    """Run `group` as the program `prog`. Unlike click's standalone mode, which exits 1
    (the status of the programs' own "other error"), a Ctrl-C, or the end of the input at
    a prompt, exits 130; a usage error exits 2, and a CdpError its own status after
    "PROG: error: ..."."""
    try:
        group.main(prog_name=prog, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(UsageError.exit_code)
    except click.Abort:
        sys.exit(INTERRUPTED)
    except CdpError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)
