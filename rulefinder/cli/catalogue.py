"""``rulefinder rules``: the learning-rule catalogue."""

from __future__ import annotations

import json

import typer

from rulefinder.cli import JsonFlag, app


@app.command()
def rules(as_json: JsonFlag = False) -> None:
    """The learning-rule catalogue: id, family, description, reference, architectures."""
    from training_zoo.rules import catalogue

    entries = catalogue()
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        typer.echo(f"{e['id']:<30} {e['family']:<20} {', '.join(e['architectures'])}")
        typer.echo(f"    {e['description']}")
        typer.echo(f"    {e['reference']}")
