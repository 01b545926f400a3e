"""``rulefinder rules``: the learning-rule catalogue."""

from __future__ import annotations

import json

import typer

from rulefinder.cli import JsonFlag, _fail, app


@app.command()
def rules(as_json: JsonFlag = False) -> None:
    """The learning-rule catalogue: id, family, description, reference, architectures."""
    try:
        from training_zoo.rules import catalogue
    except ImportError:  # a light install (no torch): the catalogue the default model knows
        entries = _model_catalogue()
    else:
        entries = catalogue()
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        typer.echo(f"{e['id']:<30} {e['family']:<20} {', '.join(e['architectures'])}")
        typer.echo(f"    {e['description']}")
        typer.echo(f"    {e['reference']}")


def _model_catalogue() -> list[dict]:
    from rulefinder.classify.registry import ModelError, get_registry

    try:
        card = get_registry().entry("default").card
    except ModelError as exc:
        _fail(f"no training_zoo here (install rulefinder[zoo]) and no default model card: {exc}")
    return [r.model_dump(mode="json") for r in card.catalogue]
