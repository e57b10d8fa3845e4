"""List the checkpoint store: per region, each complete checkpoint's id, time, size and nodes."""

from __future__ import annotations

import argparse
import datetime
import json

from runtime.cli.tables import render_table
from streamdag.config import add_setting_flags, settings_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``REGION``, ``--verify``, ``--json`` and the setting flags (--checkpoint-url)."""
    parser.add_argument("region", nargs="?", default=None,
                        help="one region (default: every region in the store)")
    parser.add_argument("--verify", action="store_true",
                        help="read every snapshot back and check its size and checksum")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_setting_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Print the checkpoints; 0, or 1 when --verify found a corrupt one."""
    from runtime.checkpoints.store import CheckpointStore, CorruptCheckpointError

    settings = settings_from_args(args)
    url = settings.checkpoint.store_url(settings.state_dir)
    store = CheckpointStore(url, keep=settings.checkpoint.keep)
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
