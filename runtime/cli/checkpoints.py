"""List checkpoints: a store's, per region (each complete checkpoint's id, time, size and
nodes), or a running submission's (``streamdag checkpoints ID``: per region, checkpoints
completed and abandoned, the last one's age and size, recoveries; asked of the gateway)."""

from __future__ import annotations

import argparse
import datetime
import json
import time

from runtime.cli.tables import render_table
from streamdag.config import Settings, add_setting_flags, settings_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``REGION``, ``--verify``, ``--json`` and the setting flags (--checkpoint-url)."""
    parser.add_argument("region", nargs="?", default=None, metavar="ID|REGION",
                        help="a submission id (asks the gateway), or one region of the store "
                        "(default: every region in the store)")
    parser.add_argument("--verify", action="store_true",
                        help="read every snapshot back and check its size and checksum")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--url", default=None, help="gateway URL (default: gateway.json)")
    parser.add_argument("--token", default=None, help="gateway bearer token")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the gateway (default: 60)")
    add_setting_flags(parser, (None, "checkpoint"))


def run(args: argparse.Namespace) -> int:
    """Print the checkpoints; 0, or 1 when --verify found a corrupt one."""
    from runtime.checkpoints.store import CheckpointStore, CorruptCheckpointError

    settings = settings_from_args(args)
    url = settings.checkpoint.store_url(settings.state_dir)
    store = CheckpointStore(url, keep=settings.checkpoint.keep)
    if args.region and args.region not in store.regions():
        return _of_submission(args, settings)
    found = []
    for region in [args.region] if args.region else store.regions():
        for checkpoint_id in store.checkpoint_ids(region):
            entry: dict[str, object] = {"region": region, "checkpoint": checkpoint_id}
            try:
                manifest = store.manifest(region, checkpoint_id)
                entry.update(
                    created=datetime.datetime.fromtimestamp(manifest.created_at, datetime.UTC)
                    .strftime("%Y-%m-%d %H:%M:%S"),
                    nodes=len(manifest.snapshots),
                    bytes=sum(ref.size for ref in manifest.snapshots.values()))
                if args.verify:
                    store.load(region, checkpoint_id)
                entry["state"] = "verified" if args.verify else "complete"
            except CorruptCheckpointError as exc:
                entry["state"] = f"corrupt: {exc}"
            found.append(entry)
    if args.json:
        print(json.dumps({"url": url, "checkpoints": found}, indent=1))
    elif not found:
        print(f"no checkpoints in {url}")
    else:
        print(render_table(["region", "checkpoint", "created (UTC)", "nodes", "bytes", "state"],
                           [[e["region"], e["checkpoint"], e.get("created", "-"),
                             e.get("nodes", "-"), e.get("bytes", "-"), e["state"]]
                            for e in found]))
    return 1 if any(str(e["state"]).startswith("corrupt") for e in found) else 0


def _of_submission(args: argparse.Namespace, settings: Settings) -> int:
    from runtime.deployment.client import client_for

    regions = client_for(settings, args.url, args.token, args.timeout).checkpoints(args.region)
    if args.json:
        print(json.dumps({"submission": args.region, "regions": regions}, indent=1))
        return 0
    if not regions:
        print(f"submission {args.region} has no checkpoints (its deployment does not "
              "checkpoint: [checkpoint] enabled = true)")
        return 0
    now = time.time()
    print(render_table(
        ["region", "nodes", "completed", "abandoned", "last", "age (s)", "bytes", "recoveries"],
        [[r["region"], len(r["nodes"]), r["completed"], r["abandoned"],
          r["last_checkpoint"] or "-",
          f"{now - r['last_completed_at']:.1f}" if r["last_completed_at"] else "-",
          r["last_size_bytes"], r["recoveries"]] for r in regions]))
    return 0
