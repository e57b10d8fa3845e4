"""Show, clear or warm the backtest cache (decoded input ranges and node outputs).

The cache lives under the state directory (<state_dir>/backtest-cache), or at --cache-url (a
path or any fsspec URL). ``stats`` prints hits,
misses, hit rate, entries, bytes and evictions; ``clear`` drops every entry; ``warm SPEC --from
T --to T`` computes the graph's nodes over the range (with any --scenario/--sweep) so later
backtests of it read them from the cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from streamdag.config import Settings, add_setting_flags, settings_from_args

if TYPE_CHECKING:
    from runtime.backtest.cache import ResultCache

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``stats|clear|warm`` and warm's spec, range and scenarios."""
    parser.add_argument("action", choices=("stats", "clear", "warm"))
    parser.add_argument("spec", metavar="SPEC", type=Path, nargs="?",
                        help="graph spec to warm (warm only)")
    parser.add_argument("--from", dest="start", metavar="T", help="start of the range to warm")
    parser.add_argument("--to", dest="end", metavar="T", help="end of the range to warm")
    parser.add_argument("--scenario", action="append", default=[], metavar="NODE.PARAM=VALUE")
    parser.add_argument("--sweep", action="append", default=[], metavar="NODE.PARAM=V1,V2")
    parser.add_argument("--json", action="store_true", help="print stats as JSON")
    parser.add_argument("--cache-url", metavar="URL", default=None,
                        help="the cache's path or fsspec URL (default <state_dir>/backtest-cache)")
    add_setting_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Carry out the action and print what it did."""
    from runtime.backtest.errors import BacktestError
    from runtime.backtest.locations import cache_directory, open_cache

    settings = settings_from_args(args)
    cache = open_cache(settings, args.cache_url)
    where = cache_directory(settings, args.cache_url)
    if args.action == "stats":
        stats = cache.stats()["disk"]
        if args.json:
            print(json.dumps(stats))
        else:
            print(f"cache {where}: {int(stats['entries'])} entries, "
                  f"{int(stats['bytes']):,} bytes; {int(stats['hits'])} hits, "
                  f"{int(stats['misses'])} misses (hit rate {stats['hit_rate']:.0%}), "
                  f"{int(stats['evictions'])} evictions")
        return 0
    if args.action == "clear":
        dropped = cache.clear()
        print(f"cleared {dropped['disk']} entries from {where}")
        return 0
    if args.spec is None or args.start is None or args.end is None:
        raise BacktestError("cache warm needs SPEC --from T --to T")
    return _warm(args, settings, cache)


def _warm(args: argparse.Namespace, settings: Settings, cache: ResultCache) -> int:
    from runtime.backtest import Scenario, backtest, parse_sweeps
    from runtime.backtest.locations import bootstrap_servers_of
    from runtime.backtest.times import parse_time
    from streamdag.spec import load_graph

    before = int(cache.stats()["disk"]["entries"])
    scenarios = (parse_sweeps(args.sweep, args.scenario) if args.sweep
                 else [Scenario.parse(args.scenario)] if args.scenario else [])
    result = backtest(load_graph(args.spec), parse_time(args.start), parse_time(args.end),
                      bootstrap_servers=bootstrap_servers_of(settings), scenarios=scenarios,
                      cache=cache)
    after = int(cache.stats()["disk"]["entries"])
    print(f"warmed: {len(result.figures['computed'])} node(s) computed, "
          f"{len(result.figures['cached'])} already cached; {after - before} new entries")
    return 0
