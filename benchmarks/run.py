"""cartd benchmarks: durable delivery throughput, mock-mode cycles, memory.

    .venv/bin/python benchmarks/run.py            # the full run, a few minutes
    .venv/bin/python benchmarks/run.py --quick    # a smoke test, well under a minute

Starts its own embedded PostgreSQL (pgserver) in a temporary directory, a webhook sink
on 127.0.0.1 in a separate process, prints a table and writes benchmarks/results.json.
Everything is local, bounded by timeouts, and torn down at the end. See README.md here:
sink.py is the sink, scenarios.py the measurements (a) to (c), pooler.py (d), report.py
the table, common.py what they share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (CONCURRENCY, CYCLE_CARTS_PER_HOUR, FULL, HERE, INTERVAL, QUICK,
                    SHORT_CARTS_PER_HOUR, Postgres, quiet_logs, source_info)
from pooler import pooler_cost
from report import table
from scenarios import cycles, cycles_child, daemon_rss, durable, short_cycles, short_cycles_child
from sink import Sink, sink_main


def header(args: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """What was measured, where and how: the results' first keys."""
    return {
        "mode": "quick" if args.quick else "full",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source_info(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "parameters": {**params, "webhook_concurrency": CONCURRENCY,
                       "cycle_carts_per_hour": CYCLE_CARTS_PER_HOUR,
                       "short_carts_per_hour": SHORT_CARTS_PER_HOUR,
                       "interval_seconds": INTERVAL,
                       "sink": "aiohttp in a separate process on 127.0.0.1, answers 200",
                       "database": "embedded PostgreSQL (pgserver), Unix socket",
                       "logging": "cartd's JSON logging at level info, written to /dev/null"},
    }


async def measure(only: set[str], params: dict[str, Any], profile: bool, pg: Postgres,
                  sink: Sink, workdir: Path) -> dict[str, Any]:
    """The parts in `only`, in order; their results by part."""
    results: dict[str, Any] = {}
    if "a" in only:
        print(f"(a) durable delivery of {params['deliveries']:,} ...", flush=True)
        results["a"] = await durable(pg, sink, params["deliveries"], profile)
    if "b" in only:
        runs = []
        for agents in params["agents"]:
            print(f"(b) cycles with {agents:,} agents ...", flush=True)
            runs.append(await cycles(pg, sink, agents, profile))
        small, big = runs[0], runs[-1]
        results["b"] = {
            "runs": runs,
            "growth_first": round(big["first"]["seconds"] / small["first"]["seconds"], 2),
            "growth_second": round(big["second"]["seconds"] / small["second"]["seconds"], 2),
            "agents_ratio": big["agents"] / small["agents"],
        }
    if "c" in only:
        print(f"(c) cartd run with {params['daemon_agents']:,} agents ...", flush=True)
        daemon = await daemon_rss(pg, sink, params["daemon_agents"], workdir)
        print(f"(c) {params['short_cycles']:,} short cycles ...", flush=True)
        short = await short_cycles(pg, sink, params["short_agents"], params["short_cycles"])
        results["c"] = {"daemon": daemon, "short": short}
    if "d" in only:
        print("(d) database.pooler: none / transaction / through PgBouncer ...", flush=True)
        results["d"] = await pooler_cost(pg, sink, params["deliveries"], params["agents"][0])
    return results


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from harness import SECRET

    params = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else {"a", "b", "c", "d"}
    quiet_logs()
    results = header(args, params)
    pg = await asyncio.to_thread(Postgres)
    sink = Sink(SECRET)
    workdir = Path(tempfile.mkdtemp(prefix="cartd-bench-run-", dir="/tmp"))
    try:
        results.update(await measure(only, params, args.profile, pg, sink, workdir))
        results["database_version"] = getattr(pg, "version", None)
        results["sink"] = await sink.stats()
        if results["sink"]["bad_signatures"] or results["sink"]["unsigned"]:
            raise RuntimeError(f"the sink saw bad or missing signatures: {results['sink']}")
    finally:
        sink.close()
        await asyncio.to_thread(pg.close)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run, well under a minute")
    parser.add_argument("--only", help="comma-separated parts to run: a,b,c,d")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile (a) and the first cycles of (b) into benchmarks/profiles/;"
                             " the figures are then slowed down and results.json is not written")
    parser.add_argument("--output", default=str(HERE / "results.json"))
    parser.add_argument("--sink", metavar="SECRET", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink_main(args.sink)
        return 0
    if args.child:
        params = json.loads(args.child)
        work = {"cycles": cycles_child, "short": short_cycles_child}[params.pop("kind")]
        print(json.dumps(asyncio.run(work(**params))))
        return 0
    started = time.perf_counter()
    results = asyncio.run(main_async(args))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print()
    print(table(results))
    print(f"\n(total {results['total_seconds']:.0f} s)")
    if not args.profile:
        Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
