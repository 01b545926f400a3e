"""``rulefinder pipeline run CONFIG``: zoo -> store -> features -> model on Ray (pipelines/)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rulefinder.cli import JsonFlag, _fail, app

pipeline_app = typer.Typer(help="Batch pipeline on Ray: a config to a registered model.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("run")
def pipeline_run_cmd(
    config: Annotated[str, typer.Argument(help="Shipped config (smoke, default, large) or a YAML path.")],
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster to join (else RAY_ADDRESS, else a local Ray).")] = None,
    store: Annotated[Optional[str], typer.Option("--store", help="Store path or fsspec URL (default: OUT/store.zarr).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Output directory (default: runs/<config>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run: skip complete shards and features.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print networks, shards and a time estimate; run nothing.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name (default: <config>-<short hash>).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a registered model of the same name.")] = False,
    num_cpus: Annotated[Optional[int], typer.Option("--num-cpus", help="CPUs of the local Ray (default: all).")] = None,
    until: Annotated[str, typer.Option("--until", help="Stop after this stage: train, features, fit, evaluate or register.")] = "register",
    as_json: JsonFlag = False,
) -> None:
    """Train the config's zoo (one Ray task per shard), compute features, fit, evaluate, register."""
    from pipelines.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    if dry_run:
        _dry_run(cfg, address, as_json)
        return
    from pipelines.run import Pipeline, PipelineError, format_summary

    try:
        summary = Pipeline(cfg, address=address, store=store, out=out, resume=resume, name=name,
                           replace=replace, num_cpus=num_cpus, until=until).run()
    except (PipelineError, ConfigError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, default=str) if as_json else format_summary(summary))
    if summary["failed"] or any(s["status"] == "failed" for s in summary["stages"].values()):
        raise typer.Exit(1)


def _dry_run(cfg, address: str | None, as_json: bool) -> None:
    """The estimate for the cluster at ``address`` (joined to read its resources), or this machine."""
    from pipelines.cluster import resolve_address
    from pipelines.estimate import estimate, format_estimate

    cluster = None
    if resolve_address(address):
        from pipelines.cluster import connect, disconnect

        try:
            info = connect(address)
            cluster = info.as_dict()
        finally:
            disconnect()
    est = estimate(cfg, cluster)
    typer.echo(json.dumps({"config": cfg.name, "model": cfg.model_name(), **est.as_dict()}, indent=2)
               if as_json else format_estimate(cfg, est))
