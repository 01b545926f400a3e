"""``rulefinder store ...``: the Zarr store of zoo observables."""

from __future__ import annotations

from typing import Annotated

import typer

from rulefinder.cli import JsonFlag, _fail, app

store_app = typer.Typer(help="The Zarr store of zoo observables.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("info")
def store_info_cmd(
    path: Annotated[str, typer.Argument(help="Store path or fsspec URL (memory://, s3://...).")],
    as_json: JsonFlag = False,
) -> None:
    """Networks per rule, architecture and task; size; completeness."""
    from rulefinder.store import store_info

    try:
        info = store_info(path)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc) if path in str(exc) else f"{path}: {exc}")
    typer.echo(info.model_dump_json(indent=2) if as_json else info.to_text())
