"""The measurements (a), (b) and (c) of README.md here: durable delivery against a bare
aiohttp loop, full mock-mode cycles, and memory (a real `cartd run`, and 1,000 short
cycles). (b) and the short cycles of (c) run in a fresh Python process (`run.py --child`)
so that their heap and RSS are their own."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import (CONCURRENCY, CYCLE_CARTS_PER_HOUR, HERE, INTERVAL, PLATFORMS, ROOT,
                    SHORT_CARTS_PER_HOUR, CpuMeter, Postgres, RssSampler, app_rows, bench_config,
                    migrated_database, migrated_store, profiled, quiet_logs, rss_mb)
from sink import Sink

# --------------------------------------------------------------------------------------
# (a) durable delivery throughput


def sample_bodies(count: int, now: datetime) -> list[tuple[str, str, bytes, int]]:
    """Realistic webhook bodies: 1 to 3 mock carts each, built by cartd.payload."""
    from cartd import payload
    from cartd.sources.mock import mock_carts
    from harness import SLUG

    mock = bench_config().platforms.mock
    out = []
    n = 0
    while len(out) < count:
        platform_ = PLATFORMS[n % 3]
        iid = uuid.UUID(int=n + 1)
        carts, _ = mock_carts(platform_, str(iid), now - timedelta(hours=24), None, now, mock)
        carts = [c for c in carts if c.completed_at is None and c.has_contact]
        by_currency = [c for c in carts if c.currency == carts[0].currency] if carts else []
        chunk = by_currency[: 1 + n % 3]
        n += 1
        if not chunk:
            continue
        body = payload.build(
            event=payload.DETECTED, now=now,
            agent={"id": str(uuid.UUID(int=10**6 + n)), "name": f"Agent {n}",
                   "company": f"Company {n}", "company_id": str(uuid.UUID(int=2 * 10**6 + n)),
                   "template_slug": SLUG},
            company={"id": str(uuid.UUID(int=2 * 10**6 + n)), "name": f"Company {n}",
                     "website": f"https://c{n}.example.com", "email": f"team@c{n}.example.com",
                     "phone": "+1-555-0100"},
            integration={"id": str(iid), "platform": platform_, "mode": "mock"},
            carts=chunk,
        )
        out.append((platform_, str(iid), body, len(chunk)))
    return out


async def bare_loop(url: str, secret: str, items: list[tuple[str, bytes]], concurrency: int
                    ) -> dict[str, Any]:
    """The limit: one ClientSession, `concurrency` workers, sign and POST each body."""
    import aiohttp

    from cartd import __version__
    from cartd.signing import Signer

    signer = Signer((secret,))
    errors = 0
    todo = iter(items)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        timeout = aiohttp.ClientTimeout(total=15)
        for wid, body in todo:
            headers = {"content-type": "application/json", "user-agent": f"cartd/{__version__}",
                       **signer.headers(wid, int(time.time()), body)}
            async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                    timeout=timeout) as response:
                await response.content.read(4096)
                if response.status != 200:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"requests": len(items), "seconds": round(seconds, 3),
            "per_second": round(len(items) / seconds, 1), "errors": errors}


async def outbox_rows(dsn: str, n: int) -> list[tuple[str, bytes]]:
    """`n` pending deliveries of realistic bodies written into cartd.deliveries with one
    COPY; their (webhook id, body)."""
    import asyncpg

    from cartd import payload

    now = datetime.now(UTC)
    bodies = sample_bodies(200, now)
    rows, items = [], []
    for k in range(n):
        platform_, iid, body, carts = bodies[k % len(bodies)]
        wid = payload.new_webhook_id()
        rows.append((wid, payload.DETECTED, uuid.UUID(int=k + 1), uuid.UUID(iid), platform_, None,
                     body, carts, "pending", now - timedelta(seconds=1), now))
        items.append((wid, body))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "deliveries", schema_name="cartd", records=rows,
            columns=["id", "type", "agent_id", "integration_id", "platform", "url", "body",
                     "carts", "status", "next_attempt_at", "created_at"])
        await conn.execute("ANALYZE cartd.deliveries")
    finally:
        await conn.close()
    return items


async def deliver_all(store: Any, config: Any, n: int) -> tuple[float, dict[str, int]]:
    """Run the Deliverer until `n` outcomes are recorded in the table; (seconds, outcomes)."""
    from cartd.delivery import Deliverer

    done = asyncio.Event()
    outcomes: dict[str, int] = {}

    def on_outcome(_row: Any, attempt: Any, status: str) -> None:
        outcomes[status] = outcomes.get(status, 0) + 1
        if sum(outcomes.values()) >= n:
            done.set()

    deliverer = Deliverer(store, lambda: config, instance_id="bench", on_outcome=on_outcome)
    started = time.perf_counter()
    task = asyncio.create_task(deliverer.run())
    waiter = asyncio.ensure_future(done.wait())
    await asyncio.wait([waiter, task], timeout=max(120, n / 50),
                       return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        await task  # raises what stopped it
        raise RuntimeError("the Deliverer stopped before delivering everything")
    if not done.is_set():
        waiter.cancel()
        deliverer.stop()
        raise TimeoutError(f"only {outcomes} of {n} attempts within the time limit")
    # The last outcomes are written right after on_outcome: wait for them in the table.
    while await store.pool.fetchval(
            "SELECT count(*) FROM cartd.deliveries WHERE status = 'delivered'") < n:
        if time.perf_counter() - started > max(120, n / 50):
            raise TimeoutError("deliveries not all recorded")
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - started
    deliverer.stop()
    await asyncio.wait_for(task, 30)
    return seconds, outcomes


async def durable(pg: Postgres, sink: Sink, n: int, profile: bool, *, pooler: str = "none",
                  route: Callable[[str], str] | None = None, bare_limit: bool = True
                  ) -> dict[str, Any]:
    """(a). For (d): the Deliverer's pool with `database.pooler: {pooler}`, reaching the
    database at `route(dsn)` (PgBouncer) when given; without `bare_limit`, no bare loop."""
    from cartd.db import Store

    dsn = await pg.create("bench_delivery")
    await (await migrated_store(dsn)).close()
    store = await Store.connect(route(dsn) if route else dsn, 1, 10, pooler=pooler)
    items = await outbox_rows(dsn, n)
    body_bytes = sum(len(b) for _, b in items) / n

    # Warm the sink and the loopback path, then the bare limit.
    await bare_loop(sink.url, sink.secret, items[: min(1000, n)], CONCURRENCY)
    if bare_limit:
        with CpuMeter(pg, sink) as bare_cpu:
            bare = await bare_loop(sink.url, sink.secret, items, CONCURRENCY)
        bare["cpu_seconds"] = bare_cpu.used

    config = bench_config(webhook={"url": sink.url, "secret": sink.secret,
                                   "concurrency": CONCURRENCY})
    with profiled(profile, "a_durable_delivery"), CpuMeter(pg, sink) as durable_cpu:
        seconds, outcomes = await deliver_all(store, config, n)
    counts = await store.deliveries.counts()
    await store.close()
    rate = n / seconds
    result = {
        "deliveries": n, "concurrency": CONCURRENCY, "mean_body_bytes": round(body_bytes),
        "durable": {"seconds": round(seconds, 3), "per_second": round(rate, 1),
                    "outcomes": outcomes, "table": counts,
                    "cpu_seconds": durable_cpu.used},
    }
    if bare_limit:
        result.update({"bare": bare, "ratio": round(rate / bare["per_second"], 3),
                       "target_ratio": 0.5})
    return result


# --------------------------------------------------------------------------------------
# (b) full mock-mode cycles


async def child(kind: str, timeout: float, **params: Any) -> dict[str, Any]:
    """Run `kind` (cycles or short) in a fresh Python process: its own heap, its own RSS."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "run.py"), "--child",
        json.dumps({"kind": kind, **params}), stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode:
        raise RuntimeError(f"the {kind} process exited with {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


async def cycles(pg: Postgres, sink: Sink, agents: int, profile: bool, *,
                 pooler: str = "none", route: Callable[[str], str] | None = None
                 ) -> dict[str, Any]:
    """(b); for (d) with `database.pooler: {pooler}`, through `route(dsn)` when given."""
    dsn = await migrated_database(pg, f"bench_cycle_{agents}")
    started = time.perf_counter()
    await app_rows(dsn, agents)
    seed_seconds = time.perf_counter() - started
    out = await child("cycles", max(300, agents / 10), dsn=route(dsn) if route else dsn,
                      agents=agents, profile=profile, sink_url=sink.url, secret=sink.secret,
                      pooler=pooler)
    out["seed_seconds"] = round(seed_seconds, 2)
    return out


async def cycles_child(dsn: str, agents: int, profile: bool, sink_url: str, secret: str,
                       pooler: str) -> dict[str, Any]:
    """The cycles of (b), in a fresh process (the parent has seeded the database)."""
    from cartd.daemon import tune_gc
    from cartd.polling import Poller
    from cartd.db import Store

    quiet_logs()
    tune_gc()  # as `cartd run` does
    store = await Store.connect(dsn, 1, 10, pooler=pooler)
    config = bench_config(platforms={"mock": {"carts_per_hour": CYCLE_CARTS_PER_HOUR}},
                          polling={"interval": INTERVAL},
                          webhook={"url": sink_url, "secret": secret})
    t0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    poller = Poller(store, lambda: config, instance_id="bench", clock=lambda: t0)
    out: dict[str, Any] = {"agents": agents, "integrations": agents * 3,
                           "measured": "a fresh Python process running Poller.run_cycle"}
    # The first cycle, then three incremental ones an interval apart; "second" is the
    # median of those three (one small cycle alone is noisy).
    runs = []
    for k in range(4):
        label = "first" if k == 0 else f"incremental_{k}"
        now = t0 + timedelta(seconds=INTERVAL * k)
        with RssSampler() as rss, profiled(profile and k < 2, f"b_cycle_{agents}_{label}"):
            began, cpu = time.perf_counter(), time.process_time()
            summary, ids = await poller.run_cycle(now=now)
            seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        runs.append((label, seconds, summary, rss.peak, cpu))
    incremental = sorted(runs[1:], key=lambda r: r[1])
    out["incremental_seconds"] = [round(r[1], 3) for r in runs[1:]]
    for label, seconds, summary, peak, cpu in (runs[0], ("second", *incremental[1][1:])):
        out[label] = {
            "seconds": round(seconds, 3),
            "process_cpu_seconds": round(cpu, 3),
            "agents": summary.agents_found,
            "integrations": summary.integrations_processed,
            "errors": summary.integration_errors,
            "carts_found": summary.carts_found,
            "carts_new": summary.carts_new,
            "carts_recovered": summary.carts_recovered,
            "deliveries_enqueued": summary.deliveries_enqueued,
            "carts_per_second": round(summary.carts_found / seconds, 1),
            "agents_per_second": round(summary.agents_found / seconds, 1),
            "benchmark_process_peak_rss_mb": round(peak, 1),
        }
    await store.close()
    return out


# --------------------------------------------------------------------------------------
# (c) memory: a real `cartd run` under (b)-like load, and 1,000 short cycles


async def daemon_rss(pg: Postgres, sink: Sink, agents: int, workdir: Path) -> dict[str, Any]:
    """A real `cartd run`, started as the tests start it (tests/harness/daemon.py): one
    cycle at start, then the delivery of its webhooks; its RSS all along."""
    from cartd.db import Store
    from harness import cartd_run, nothing_pending, wait_until

    dsn = await migrated_database(pg, "bench_daemon")
    await app_rows(dsn, agents)
    before = (await sink.stats())["requests"]
    limit = 600
    result: dict[str, Any] = {"agents": agents, "integrations": agents * 3,
                              "measured": "the `cartd run` subprocess (psutil RSS every 50 ms)"}
    store = await Store.connect(dsn, 1, 2)
    try:
        async with cartd_run(
                workdir, dsn, sink.url, polling={"interval": "1h"},  # one cycle, at start
                platforms={"mock": {"carts_per_hour": CYCLE_CARTS_PER_HOUR}},
                webhook={"secret": sink.secret, "concurrency": CONCURRENCY},
                metrics={"listen": ""}, logging={"level": "info"}) as daemon:
            started = time.perf_counter()
            await daemon.start()  # READY=1
            with RssSampler(daemon.process.pid) as rss:
                idle_rss = rss_mb(daemon.process.pid)
                status = await daemon.wait_status(lambda s: s["cycles"] >= 1, timeout=limit,
                                                  interval=0.1)
                result["cycle_seconds"] = round(time.perf_counter() - started, 2)
                result["rss_after_cycle_mb"] = round(rss_mb(daemon.process.pid), 1)
                await wait_until(lambda: nothing_pending(store), timeout=limit, interval=0.1)
                result["all_delivered_seconds"] = round(time.perf_counter() - started, 2)
                result["rss_end_mb"] = round(rss_mb(daemon.process.pid), 1)
            result["exit_code"] = await daemon.terminate()
    finally:
        await store.close()
    cycle = status["last_cycle"]
    result.update({
        "rss_idle_mb": round(idle_rss, 1),
        "peak_rss_mb": round(rss.peak, 1),
        "carts_new": cycle["carts_new"], "deliveries_enqueued": cycle["deliveries_enqueued"],
        "daemon_cycle_duration_seconds": cycle["duration_seconds"],
        "webhooks_received": (await sink.stats())["requests"] - before,
    })
    return result


async def short_cycles(pg: Postgres, sink: Sink, agents: int, count: int) -> dict[str, Any]:
    """Runs `short_cycles_child` in a fresh process, so that its RSS is its own."""
    dsn = await migrated_database(pg, "bench_short")
    await app_rows(dsn, agents)
    return await child("short", max(300, count), dsn=dsn, url=sink.url, secret=sink.secret,
                       agents=agents,
                       count=count)


async def short_cycles_child(dsn: str, url: str, secret: str, agents: int, count: int
                             ) -> dict[str, Any]:
    """`count` forced cycles with an injected clock 30 s apart, the Deliverer running as in
    the daemon; RSS of this process every count/10 cycles."""
    import gc

    from cartd.daemon import tune_gc
    from cartd.delivery import Deliverer
    from cartd.polling import Poller
    from cartd.db import Store

    quiet_logs()
    tune_gc()  # as `cartd run` does
    store = await Store.connect(dsn, 1, 10)
    config = bench_config(platforms={"mock": {"carts_per_hour": SHORT_CARTS_PER_HOUR}},
                          polling={"interval": INTERVAL},
                          webhook={"url": url, "secret": secret, "concurrency": CONCURRENCY})
    # Simulated time ends at the real now, so that every delivery is due at once.
    clock = [datetime.now(UTC) - timedelta(seconds=INTERVAL * count)]
    deliverer = Deliverer(store, lambda: config, instance_id="bench-short")
    poller = Poller(store, lambda: config, instance_id="bench-short", clock=lambda: clock[0],
                    on_enqueued=lambda _: deliverer.wake())
    task = asyncio.create_task(deliverer.run())
    every = max(1, count // 10)
    samples, carts = [], 0
    began = time.perf_counter()
    try:
        for k in range(1, count + 1):
            summary, _ = await poller.run_cycle(force=True, now=clock[0])
            carts += summary.carts_new
            clock[0] += timedelta(seconds=INTERVAL)
            if k == 1 or k % every == 0:
                samples.append({"cycle": k, "rss_mb": round(rss_mb(), 1),
                                "gc_objects": len(gc.get_objects())})
    finally:
        deliverer.stop()
        await asyncio.wait_for(task, 60)
    seconds = time.perf_counter() - began
    counts = await store.deliveries.counts()
    await store.close()
    after_warmup = samples[1] if len(samples) > 1 else samples[0]
    return {
        "agents": agents, "integrations": agents * 3, "cycles": count,
        "carts_per_hour": SHORT_CARTS_PER_HOUR, "clock_step_seconds": INTERVAL,
        "measured": "a fresh Python process running Poller + Deliverer only, RSS via psutil",
        "seconds": round(seconds, 2), "carts_new": carts, "deliveries": counts,
        "samples": samples,
        "rss_first_mb": samples[0]["rss_mb"], "rss_last_mb": samples[-1]["rss_mb"],
        "growth_after_warmup_mb": round(samples[-1]["rss_mb"] - after_warmup["rss_mb"], 1),
    }
