"""``rulefinder predict``, ``rulefinder plan`` and ``rulefinder models list|show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rulefinder.cli import JsonFlag, _fail, _split_csv, app
from rulefinder.vocabulary import DEFAULT_NOISE, NOISE_LEVELS

models_app = typer.Typer(help="The model registry: packaged and registered models with their cards.", no_args_is_help=True)
app.add_typer(models_app, name="models")

_NOISE_HELP = f"The recording's noise level: {', '.join(NOISE_LEVELS)} (SNR inf, 2, 0.5)."


def _check_noise(noise: str) -> str:
    if noise not in NOISE_LEVELS:
        _fail(f"--noise is {noise!r}: expected one of {', '.join(NOISE_LEVELS)}")
    return noise


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help=".npz, .zarr.zip, .nwb files or directories of .nwb files.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Registered model name (default: 'default').")] = None,
    noise: Annotated[str, typer.Option("--noise", help=_NOISE_HELP)] = DEFAULT_NOISE,
    area_order: Annotated[
        Optional[str], typer.Option("--area-order", help="Comma-separated areas from input to output side (NWB has none).")
    ] = None,
    group: Annotated[
        bool, typer.Option("--group", help="Combine the recordings (e.g. animals of one experiment) into one verdict.")
    ] = False,
    server: Annotated[
        Optional[str], typer.Option("--server", help="Predict through a rulefinder server at this URL (key: RULEFINDER_API_KEY).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Which learning rule does each recording look like?

    A .npz or .zarr.zip path is one recording; a directory of .nwb files, or .nwb paths given
    together, is one recording. --json prints a list of prediction results in input order
    (one element with --group).
    """
    from rulefinder.recording import RecordingError, group_inputs

    _check_noise(noise)
    order = _split_csv(area_order)
    try:
        groups = group_inputs(paths)
    except RecordingError as exc:
        _fail(str(exc))
    if server is not None:
        results = _predict_remote(server, groups, model=model, noise=noise, area_order=order, group=group)
    else:
        results = _predict_local(groups, model=model, noise=noise, area_order=order, group=group)
    labels = [str(g[0].parent) if len(g) > 1 else str(g[0]) for g in groups]
    if group:
        labels = [" + ".join(labels)]
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
        return
    for label, r in zip(labels, results, strict=True):
        typer.echo(format_result(label, r))


def _predict_local(groups, model, noise, area_order, group):
    from rulefinder.classify.predict import predict_recordings
    from rulefinder.classify.registry import ModelError, load_model
    from rulefinder.recording import RecordingError, load_recording

    recs = []
    for g in groups:
        try:
            recs.append(load_recording(g, area_order=area_order))
        except RecordingError as exc:
            _fail(str(exc))
    try:
        loaded = load_model(model or "default")
        return predict_recordings(recs, model=loaded, noise=noise, group=group)
    except (ModelError, RecordingError) as exc:
        _fail(str(exc))


def _predict_remote(server, groups, model, noise, area_order, group):
    """Hook for ``--server``: the service's Python client uploads and predicts (rulefinder.client)."""
    try:
        from rulefinder.client import predict_paths  # provided by the service's client
    except ImportError:
        _fail("--server needs rulefinder.client.predict_paths, which this installation does not have")
    try:
        return predict_paths(server, groups, model=model, noise=noise, area_order=area_order, group=group)
    except Exception as exc:  # the client raises its own clear errors
        _fail(f"{server}: {exc}")


def format_result(label: str, r) -> str:
    lines = [label]
    lines.append(
        f"  verdict {r.verdict}: {r.top_rule} (p={r.rule_probabilities[r.top_rule]:.2f}), "
        f"family {r.top_family}, optimizer {r.top_optimizer}"
    )
    acc = "n/a" if r.expected_accuracy is None else f"{r.expected_accuracy:.0%}"
    lines.append(f"  unknown score {r.unknown_score:.2f}; expected accuracy at this size ({r.noise} noise): {acc}")
    if r.confusable_with:
        lines.append(f"  confusable with: {', '.join(r.confusable_with)}")
    top = sorted(r.rule_probabilities.items(), key=lambda kv: -kv[1])[:5]
    lines.append("  rules: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    for a in r.per_area:
        best = max(a.rule_probabilities, key=a.rule_probabilities.get)
        lines.append(f"    {a.area:<20} {a.units:>5} units  {best} ({a.rule_probabilities[best]:.2f})")
    for w in r.warnings:
        lines.append(f"  warning: {w}")
    lines.append(f"  model {r.model.name} ({r.model.sha256[:12]})")
    return "\n".join(lines) + "\n"


@app.command()
def plan(
    units: Annotated[int, typer.Option("--units", help="Units you will record in the smallest area.")],
    sessions: Annotated[int, typer.Option("--sessions", help="Sessions over the course of learning.")],
    noise: Annotated[str, typer.Option("--noise", help=_NOISE_HELP)] = DEFAULT_NOISE,
    target: Annotated[Optional[float], typer.Option("--target", help="Accuracy to reach, e.g. 0.8.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Registered model name (default: 'default').")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Before recording: the accuracy to expect, the rule pairs that stay confusable, and the
    smallest recording that reaches --target."""
    from rulefinder.classify.plan import plan as make_plan
    from rulefinder.classify.registry import ModelError

    _check_noise(noise)
    try:
        result = make_plan(units, sessions, noise, target=target, model=model)
    except (ModelError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    acc = "n/a" if result.expected_accuracy is None else f"{result.expected_accuracy:.0%}"
    typer.echo(f"{units} units x {sessions} sessions at {noise} noise: expected rule accuracy {acc}")
    if result.cell is not None:
        typer.echo(f"  (measured on held-out zoo recordings of {result.cell.units} units x {result.cell.sessions} sessions)")
    for a, b in result.confusable_pairs:
        typer.echo(f"  stays confusable: {a} / {b}")
    if target is not None:
        best = result.smallest_for_target
        if best is not None:
            typer.echo(f"  smallest recording reaching {target:.0%}: {best.units} units x {best.sessions} sessions ({best.accuracy:.0%})")
            for o in result.options_for_target:
                typer.echo(f"    {o.sessions:>3} sessions: {o.units} units ({o.accuracy:.0%})")
    for w in result.warnings:
        typer.echo(f"  warning: {w}")
    typer.echo(f"  model {result.model.name} ({result.model.sha256[:12]})")


@models_app.command("list")
def models_list(as_json: JsonFlag = False) -> None:
    """Every model: packaged read-only ones and those registered under RULEFINDER_DATA_DIR."""
    from rulefinder.classify.registry import get_registry

    entries = get_registry().entries()
    if as_json:
        typer.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
        return
    if not entries:
        typer.echo("no models")
    for e in entries:
        acc = e.card.metrics.get("rule_balanced_accuracy")
        acc_s = f"  rule bal. acc {acc:.2f}" if isinstance(acc, (int, float)) else ""
        typer.echo(
            f"{e.name:<24} {e.sha256[:12]}  {e.source:<8} {len(e.card.labels['rule'])} rules, "
            f"{e.card.n_networks} networks, created {e.card.created}{acc_s}"
        )


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Model name.")] = "default", as_json: JsonFlag = False) -> None:
    """A model's card: catalogue, label sets, zoo, metrics, expected-accuracy table, commit."""
    from rulefinder.classify.registry import ModelError, get_registry

    try:
        e = get_registry().entry(name)
    except ModelError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(_entry_json(e), indent=2))
        return
    c = e.card
    typer.echo(f"{e.name}  sha256 {e.sha256}  ({e.source}: {e.path})")
    typer.echo(f"  created {c.created}  commit {c.commit or 'unknown'}  estimator {c.estimator}")
    if c.description:
        typer.echo(f"  {c.description}")
    z = c.zoo
    typer.echo(f"  zoo: {z.n_networks} networks in {z.n_shards} shards, spec hash {(z.spec_hash or 'n/a')[:12]}; trained on {c.n_samples} recordings from {c.n_networks} networks")
    typer.echo(f"  labels: {len(c.labels['rule'])} rules, {len(c.labels['family'])} families, optimizers {', '.join(c.labels['optimizer'])}")
    for r in c.catalogue:
        typer.echo(f"    {r.id:<28} {r.family:<20} {len(r.variants)} variant(s)  {r.reference}")
    if c.metrics:
        typer.echo("  metrics:")
        for k, v in c.metrics.items():
            if isinstance(v, (int, float, str, bool)):
                typer.echo(f"    {k}: {v:.3f}" if isinstance(v, float) else f"    {k}: {v}")
    if c.expected_accuracy:
        typer.echo("  expected rule accuracy (units in smallest area x sessions):")
        for noise in c.grid()["noise"]:
            cells = {(x.units, x.sessions): x.accuracy for x in c.expected_accuracy if x.noise == noise}
            us = sorted({u for u, _ in cells})
            ss = sorted({s for _, s in cells})
            typer.echo(f"    noise {noise:<9}" + "".join(f"{s:>6}s" for s in ss))
            for u in us:
                row = "".join(f"{cells[(u, s)]:>7.2f}" if (u, s) in cells else "      -" for s in ss)
                typer.echo(f"    {u:>6} units  {row}")
    for n in c.notes:
        typer.echo(f"  note: {n}")


def _entry_json(e) -> dict:
    return {"name": e.name, "sha256": e.sha256, "source": e.source, "read_only": e.read_only, "card": e.card.model_dump(mode="json")}
