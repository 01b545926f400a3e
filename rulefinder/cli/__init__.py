"""The ``rulefinder`` command line. Every command has ``--help``; ``--json`` gives machine output.

One module per command group (``recordings``: inspect, reduce; ``catalogue``: rules; ``store``;
...); each registers its commands on :data:`app` when imported below.

Heavy imports (torch, the zoo, the store) happen inside the commands that need them, so
``rulefinder --help`` and ``rulefinder inspect`` start quickly.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="rulefinder",
    help="Identify the learning rule a brain area uses from recordings over the course of learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _split_csv(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:  # pragma: no cover - console entry point
    app()


# The command modules register their commands on ``app``.
from rulefinder.cli import recordings, catalogue, store  # noqa: E402,F401
from rulefinder.cli import models  # noqa: E402,F401
from rulefinder.cli import serve  # noqa: E402,F401
from rulefinder.cli import pipeline  # noqa: E402,F401
from rulefinder.cli import evaluate  # noqa: E402,F401
