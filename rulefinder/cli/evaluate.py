"""``rulefinder evaluate``: grouped, honest evaluation of the rule identifier on a zoo store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rulefinder.cli import JsonFlag, _fail, _split_csv, app


@app.command("evaluate")
def evaluate_cmd(
    store: Annotated[str, typer.Option("--store", help="Zoo store path or fsspec URL.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for metrics.json, report.html and figures.")],
    splits: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated subset of: lofo_arch, lofo_task, lovo_variant, loro, lofo_family, grid, performance_matched, controls (default: all)."),
    ] = None,
    classifier: Annotated[str, typer.Option(help="Classifier: logreg or hgb.")] = "logreg",
    feature_set: Annotated[str, typer.Option(help="'+'-joined feature sets: stats, change, structure.")] = "stats+change+structure",
    max_iter: Annotated[int, typer.Option(help="Boosting / solver iterations.")] = 100,
    grid_networks: Annotated[int, typer.Option(help="Held-out networks per virtual-experiment grid cell.")] = 60,
    augment: Annotated[int, typer.Option(help="Random degraded views per training network for the grid's models.")] = 1,
    cache: Annotated[Optional[Path], typer.Option(help="Directory caching per-network features between runs.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate on splits grouped by shard; writes metrics.json, report.html and PNG figures."""
    from rulefinder.classify.evaluate import SPLITS, evaluate
    from rulefinder.store import StoreError

    chosen = _split_csv(splits) or list(SPLITS)
    bad = [s for s in chosen if s not in SPLITS]
    if bad:
        _fail(f"--splits: unknown {bad}: expected some of {list(SPLITS)}")
    params = {"classifier": classifier, "feature_set": feature_set, "max_iter": max_iter}
    try:
        metrics = evaluate(
            store, out, splits=chosen, params=params, cache_dir=cache,
            grid_networks=grid_networks, augment=augment, progress=not as_json,
        )
    except (FileNotFoundError, StoreError, ValueError) as exc:
        _fail(str(exc) if store in str(exc) else f"{store}: {exc}")
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for key, value in metrics.items():
        if not isinstance(value, (dict, list)):
            typer.echo(f"{key:<40} {value}")
    typer.echo(f"report: {out / 'report.html'}")
