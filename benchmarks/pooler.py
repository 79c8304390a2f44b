"""(d) of README.md here: what `database.pooler: transaction` costs, directly and through
Debian's PgBouncer (started from tests/pgbouncer.py in front of the embedded server)."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from common import CpuMeter, Postgres
from scenarios import cycles, durable
from sink import Sink

POOLER_SETUPS = (
    ("direct, pooler: none", "none", False),
    ("direct, pooler: transaction", "transaction", False),
    ("PgBouncer, pooler: transaction", "transaction", True),
)


def through(front: str, dsn: str) -> str:
    """`dsn`'s database through the PgBouncer whose DSN is `front` (it serves them all)."""
    return f"{front.rsplit('/', 1)[0]}/{urlsplit(dsn).path.lstrip('/')}"


async def pooler_cost(pg: Postgres, sink: Sink, deliveries: int, agents: int) -> dict[str, Any]:
    """(a) without its bare loop and (b) for `agents`, in each of POOLER_SETUPS, twice:
    in order, then in reverse (a machine that drifts during the run favours no setup).
    Each figure is the mean of its two samples."""
    import pgbouncer  # tests/pgbouncer.py

    if pgbouncer.missing():
        return {"skipped": pgbouncer.missing()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in POOLER_SETUPS}
    with pgbouncer.pgbouncer(pg.uri, pool_size=10) as front:
        for name, pooler, bounced in (*POOLER_SETUPS, *reversed(POOLER_SETUPS)):
            route = functools.partial(through, front) if bounced else None
            a = await durable(pg, sink, deliveries, False, pooler=pooler, route=route,
                              bare_limit=False)
            with CpuMeter(pg, sink) as database_cpu:
                b = await cycles(pg, sink, agents, False, pooler=pooler, route=route)
            used = a["durable"]["cpu_seconds"]
            samples[name].append({
                "deliveries_per_second": a["durable"]["per_second"],
                "cpu_us_per_delivery": round(
                    sum(v for k, v in used.items() if k != "sink") / deliveries * 1e6),
                "first_cycle_seconds": b["first"]["seconds"],
                "next_cycle_seconds": b["second"]["seconds"],
                "first_cycle_cartd_cpu_seconds": b["first"]["process_cpu_seconds"],
                "cycles_database_cpu_seconds": round(
                    database_cpu.used["postgres"] + database_cpu.used.get("pgbouncer", 0), 2),
            })
    runs = []
    for name, pooler, bounced in POOLER_SETUPS:
        run: dict[str, Any] = {"setup": name, "pooler": pooler, "pgbouncer": bounced,
                               "samples": samples[name]}
        for key in samples[name][0]:
            run[key] = round(sum(x[key] for x in samples[name]) / len(samples[name]), 3)
        runs.append(run)
    base = runs[0]
    for run in runs:
        run["ratios"] = {key: round(run[key] / base[key], 2) for key in samples[base["setup"]][0]}
    return {"deliveries": deliveries, "agents": agents,
            "pgbouncer": "Debian 1.18, pool_mode transaction, default_pool_size 10",
            "runs": runs}
