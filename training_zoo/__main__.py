"""``python -m training_zoo run SPEC --store PATH``: train a zoo spec into a Zarr store locally."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from training_zoo.local_run import run_zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every shard of a zoo spec into a store")
    run.add_argument("spec", help="shipped spec name (smoke, default, large) or a YAML path")
    run.add_argument("--store", required=True, help="store path or fsspec URL")
    run.add_argument("--device", default="cpu", help="cpu or cuda")
    run.add_argument("--resume", action="store_true", help="skip shards already complete in the store")
    run.add_argument("--max-shards", type=int, default=None, help="run only the first N shards")
    run.add_argument("--json", action="store_true", help="print the counts as JSON")
    run.add_argument("-v", "--verbose", action="store_true", help="log every shard")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        counts = run_zoo(
            args.spec, args.store, device=args.device, resume=args.resume, max_shards=args.max_shards,
            progress=sys.stderr.isatty(),
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(counts))
    else:
        print(
            f"{counts['run']} shard(s) trained, {counts['skipped']} skipped, "
            f"{counts['networks']} networks written ({counts['diverged']} diverged) into {args.store}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
