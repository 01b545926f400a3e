"""``rulefinder inspect`` and ``rulefinder reduce``: recordings on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rulefinder.cli import JsonFlag, _fail, _split_csv, app
from rulefinder.recording import (
    RecordingError,
    group_inputs,
    load_recording_with_warnings,
    save_npz,
    summarize,
)


@app.command()
def inspect(
    paths: Annotated[list[Path], typer.Argument(help=".npz, .zarr.zip, .nwb files or directories of .nwb files.")],
    area_order: Annotated[
        Optional[str], typer.Option(help="Comma-separated areas from input to output side (NWB has none).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Summarise each recording: sessions, stimuli, units per area, NaN fraction, session_time range, warnings.

    A .npz or .zarr.zip path is one recording; a directory of .nwb files, or .nwb paths given
    together, is one recording. A recording that cannot be read (damaged or invalid) gets one
    "error: ..." line on stderr and the exit status is 2; the others are still summarised.
    """
    try:
        groups = group_inputs(paths)
    except RecordingError as exc:
        _fail(_one_line(str(exc)))
    summaries = []
    failed = False
    for group in groups:
        label = str(group[0].parent) if len(group) > 1 else str(group[0])
        try:
            rec, notes = load_recording_with_warnings(group, area_order=_split_csv(area_order))
        except RecordingError as exc:
            # a damaged or invalid file: one line on stderr, no traceback; the others are still shown
            failed = True
            typer.echo(f"error: {_one_line(str(exc))}", err=True)
            summaries.append({"source": label, "error": str(exc)})
            continue
        summaries.append(summarize(rec, source=label, warnings=notes).model_dump())
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
    else:
        for s in summaries:
            if "error" not in s:
                typer.echo(_format_summary(s))
    if failed:
        raise typer.Exit(2)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _format_summary(s: dict) -> str:
    lines = [
        s["source"],
        f"  sessions {s['sessions']}  stimuli {s['stimuli']}  units {s['units']}  "
        f"NaN {s['nan_fraction']:.1%}  session_time {s['session_time_min']:g} .. {s['session_time_max']:g}"
        + ("  (performance)" if s["has_performance"] else ""),
    ]
    depth = "input -> output" if s["area_order"] else "depth unknown"
    lines.append(f"  areas ({depth}):")
    for a in s["areas"]:
        extra = f", {a['constant_units']} constant" if a["constant_units"] else ""
        lines.append(f"    {a['area']:<16} {a['units']} units{extra}")
    for w in s["warnings"]:
        lines.append(f"  warning: {w}")
    return "\n".join(lines) + "\n"


@app.command()
def reduce(
    nwb: Annotated[list[Path], typer.Argument(help="The .nwb session files of one recording (or a directory of them).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output .npz path.")],
    area_order: Annotated[
        Optional[str], typer.Option(help="Comma-separated areas from input to output side.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Turn NWB session files into the compact NPZ form, locally (raw imaging is never read)."""
    try:
        groups = group_inputs(nwb)
        if len(groups) != 1 or any(not str(p).lower().endswith(".nwb") for p in groups[0]):
            _fail("reduce takes the .nwb session files of one recording (or one directory of them)")
        rec, notes = load_recording_with_warnings(groups[0], area_order=_split_csv(area_order))
    except RecordingError as exc:
        _fail(_one_line(str(exc)))
    if not str(out).endswith(".npz"):
        _fail(f"{out}: the output must end in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(rec, out)
    summary = summarize(rec, source=str(out), warnings=notes)
    if as_json:
        typer.echo(summary.model_dump_json(indent=2))
    else:
        for w in notes:
            typer.echo(f"warning: {w}", err=True)
        typer.echo(
            f"wrote {out} ({out.stat().st_size} bytes): {summary.sessions} sessions, "
            f"{summary.stimuli} stimuli, {summary.units} units"
        )
