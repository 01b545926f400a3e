"""``rulefinder serve`` (the REST API and the page) and ``rulefinder keys`` (API keys)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from rulefinder.cli import JsonFlag, _fail, app

keys_app = typer.Typer(help="API keys of the server (stored hashed under RULEFINDER_DATA_DIR).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to bind (default 127.0.0.1, or RULEFINDER_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8000, or RULEFINDER_PORT).")] = None,
) -> None:
    """The REST API (/v1/..., docs at /docs) and the web page (/).

    Auth (RULEFINDER_AUTH) is off by default on loopback and required anywhere else; binding to
    a non-loopback address with RULEFINDER_AUTH=off refuses to start.
    """
    import uvicorn

    from rulefinder.settings import Settings, effective_auth

    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = Settings().model_copy(update=updates)
    try:
        mode = effective_auth(settings)
    except ValueError as exc:
        _fail(str(exc))
    from api.app import create_app

    app_ = create_app(settings)
    typer.echo(f"rulefinder serving on http://{settings.host}:{settings.port} (auth {mode}, data {settings.data_dir})", err=True)
    uvicorn.run(app_, host=settings.host, port=settings.port, log_level="warning", access_log=False)


def _storage():
    from api.storage import Storage
    from rulefinder.settings import Settings

    return Storage(Settings().data_dir)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="A name for the key (letters, digits, - _ .).")], as_json: JsonFlag = False) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    try:
        key = _storage().create_key(name)
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"name": name, "key": key}))
    else:
        typer.echo(key)
        typer.echo(f"API key {name!r} created; it is shown only now. Use it as 'Authorization: Bearer <key>' or RULEFINDER_API_KEY.", err=True)


@keys_app.command("list")
def keys_list(as_json: JsonFlag = False) -> None:
    """The keys (names and dates; never the keys themselves)."""
    rows = _storage().list_keys()

    def iso(t):
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else None

    out = [{"name": r.name, "created": iso(r.created), "revoked": iso(r.revoked)} for r in rows]
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    if not out:
        typer.echo("no API keys (create one with `rulefinder keys create NAME`)")
    for r in out:
        typer.echo(f"{r['name']:<30} created {r['created']}" + (f"  revoked {r['revoked']}" if r["revoked"] else ""))


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: requests with it get 401 from now on (its uploads stay until retention)."""
    try:
        _storage().revoke_key(name)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    typer.echo(f"revoked {name}")
