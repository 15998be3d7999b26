"""The ``srdeploy`` console script's entry point: the command line, with Ctrl-C covered
from the first import on.

Importing srdeploy.cli (click and the rest) takes tens of milliseconds; a Ctrl-C in them
would print Python's traceback of an import, since the guards of srdeploy.cli.run are not
in place yet. This module imports nothing but sys and the package's constants until it
can catch that.
"""

import sys

from srdeploy import EXIT_INTERRUPTED  # the package's __init__: constants only


def run() -> None:
    try:
        from srdeploy.cli import run as command_line
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    command_line()
