"""cartd benchmarks: durable delivery throughput, mock-mode cycles, memory.

    .venv/bin/python benchmarks/run.py            # the full run, a few minutes
    .venv/bin/python benchmarks/run.py --quick    # a smoke test, well under a minute

Starts its own embedded PostgreSQL (pgserver) in a temporary directory, a webhook sink
on 127.0.0.1 in a separate process, prints a table and writes benchmarks/results.json.
Everything is local, bounded by timeouts, and torn down at the end. See README.md here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

SLUG = "ecommerce-abandoned-cart"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks example secret
PLATFORMS = ("shopify", "woocommerce", "custom")
CONCURRENCY = 32
VERIFY_EVERY = 100  # the sink checks the signature of every 100th request

FULL = {"deliveries": 20_000, "agents": (1_000, 10_000), "daemon_agents": 10_000,
        "short_cycles": 1_000, "short_agents": 100}
QUICK = {"deliveries": 2_000, "agents": (200, 1_000), "daemon_agents": 1_000,
         "short_cycles": 100, "short_agents": 100}

# (b): 24 h of first-poll history at the default 6 carts/hour would be ~144 carts per
# integration (4.3 M at 10k agents); 0.25/hour gives ~6 per integration.
CYCLE_CARTS_PER_HOUR = 0.25
# (c) short cycles: the default rate, so that each cycle brings a few new carts.
SHORT_CARTS_PER_HOUR = 6.0
INTERVAL = 30.0


# --------------------------------------------------------------------------------------
# the sink: a separate process, so that it never shares the measured event loop


def sink_main() -> None:
    """`run.py --sink`: answer 200 to every POST; print the port; GET /stats counts."""
    from aiohttp import web

    from cartd.signing import SignatureError, Signer

    signer = Signer((SECRET,))
    stats = {"requests": 0, "verified": 0, "bad_signatures": 0, "unsigned": 0}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        stats["requests"] += 1
        if stats["requests"] % VERIFY_EVERY == 1:
            if "webhook-signature" not in request.headers:
                stats["unsigned"] += 1
            else:
                try:
                    signer.verify(dict(request.headers), body)
                    stats["verified"] += 1
                except SignatureError:
                    stats["bad_signatures"] += 1
        return web.Response(status=200)

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def main() -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/webhook", hook)
        app.router.add_get("/stats", get_stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        # Stop when the parent goes away, whatever happens to it.
        loop.add_reader(sys.stdin.fileno(), stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class Sink:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--sink"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT),
        )
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError("the sink did not start")
        self.port = int(line)
        self.url = f"http://127.0.0.1:{self.port}/webhook"

    async def stats(self) -> dict[str, int]:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{self.port}/stats") as r:
            return await r.json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------
# helpers


class Postgres:
    """An embedded PostgreSQL in a temporary directory; one database per measurement."""

    def __init__(self) -> None:
        import pgserver

        self.folder = tempfile.mkdtemp(prefix="cartd-bench-", dir="/tmp")  # short socket path
        self.server = pgserver.get_server(self.folder, cleanup_mode="stop")
        self.uri = self.server.get_uri()

    def dsn(self, name: str) -> str:
        base, _, query = self.uri.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    async def create(self, name: str) -> str:
        import asyncpg

        admin = await asyncpg.connect(self.uri)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
            version = await admin.fetchval("SHOW server_version")
        finally:
            await admin.close()
        self.version = version
        return self.dsn(name)

    def close(self) -> None:
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def source_info() -> dict[str, Any]:
    """Which cartd was measured: the checkout's commit and whether cartd/ has local edits."""
    info: dict[str, Any] = {"path": str(ROOT)}
    try:
        info["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        info["cartd_modified"] = bool(subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "cartd"],
            capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def quiet_logs() -> None:
    """cartd's own logging set-up (level info, JSON), written to /dev/null: the cost of
    rendering every log line is measured, not the terminal's."""
    from cartd import logs

    real, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    try:
        logs.configure("info", "json")
    finally:
        sys.stderr = real


def postgres_pids(folder: str) -> list[int]:
    """The embedded server's processes (postmaster and backends)."""
    import psutil

    try:
        postmaster = int(Path(folder, "postmaster.pid").read_text().split()[0])
        proc = psutil.Process(postmaster)
        return [postmaster, *(c.pid for c in proc.children(recursive=True))]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def pgbouncer_pids() -> list[int]:
    """The PgBouncer this benchmark started, if any."""
    import psutil

    return [c.pid for c in psutil.Process().children() if c.name() == "pgbouncer"]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes and of their children that have exited (PostgreSQL
    backends that closed during a measurement are counted in the postmaster's)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


class CpuMeter:
    """CPU seconds used by the measured process, the sink and PostgreSQL over a block."""

    def __init__(self, pg: Postgres, sink: Sink) -> None:
        self.groups = {"benchmark": lambda: [os.getpid()], "sink": lambda: [sink.proc.pid],
                       "postgres": lambda: postgres_pids(pg.folder)}
        if pgbouncer_pids():  # (d)
            self.groups["pgbouncer"] = pgbouncer_pids
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._pids = {k: f() for k, f in self.groups.items()}
        self._start = {k: cpu_seconds(p) for k, p in self._pids.items()}
        return self

    def __exit__(self, *_: Any) -> None:
        for k, f in self.groups.items():
            pids = sorted(set(self._pids[k]) | set(f()))
            self.used[k] = round(cpu_seconds(pids) - self._start[k], 2)


def rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss / 2**20


class RssSampler:
    """Peak RSS of a process, sampled every `every` seconds on a thread."""

    def __init__(self, pid: int | None = None, every: float = 0.05) -> None:
        self.pid, self.every = pid or os.getpid(), every
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        proc = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc.memory_info().rss / 2**20)
            except psutil.Error:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def profiled(enabled: bool, name: str) -> Iterator[None]:
    if not enabled:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        folder = HERE / "profiles"
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.txt").write_text(out.getvalue())
        profile.dump_stats(str(folder / f"{name}.prof"))


def bench_config(**sections: Any) -> Any:
    from cartd.config import build

    return build(sections, env={})


async def app_rows(dsn: str, agents: int, *, platforms: tuple[str, ...] = PLATFORMS) -> None:
    """`agents` companies and polled agents, each with one mock integration per platform."""
    import asyncpg

    conn = await asyncpg.connect(dsn)  # plain text jsonb, as COPY expects
    try:
        companies, rows, integrations = [], [], []
        for n in range(agents):
            company, agent = uuid.uuid4(), uuid.uuid4()
            companies.append((company, f"Company {n}", f"https://c{n}.example.com",
                              f"team@c{n}.example.com", "+1-555-0100"))
            rows.append((agent, company, f"Agent {n}", SLUG, True, "{}"))
            for p in platforms:
                integrations.append((uuid.uuid4(), agent, p, True, '{"mode": "mock"}'))
        async with conn.transaction():
            await conn.copy_records_to_table(
                "companies", records=companies, columns=["id", "name", "website", "email", "phone"])
            await conn.copy_records_to_table(
                "company_agents", records=rows,
                columns=["id", "company_id", "name", "template_slug", "is_active", "settings"])
            await conn.copy_records_to_table(
                "agent_integrations", records=integrations,
                columns=["id", "agent_id", "platform", "is_active", "config"])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def migrated_store(dsn: str) -> Any:
    from cartd.db import Store

    store = await Store.connect(dsn, 1, 10)
    await store.maintenance.migrate(app_tables=True)
    return store


async def migrated_database(pg: Postgres, name: str) -> str:
    """A new database with cartd's and the application's tables; its DSN."""
    dsn = await pg.create(name)
    store = await migrated_store(dsn)
    await store.close()
    return dsn


# --------------------------------------------------------------------------------------
# (a) durable delivery throughput


def sample_bodies(count: int, now: datetime) -> list[tuple[str, str, bytes, int]]:
    """Realistic webhook bodies: 1 to 3 mock carts each, built by cartd.payload."""
    from cartd import payload
    from cartd.sources.mock import mock_carts

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


async def bare_loop(url: str, items: list[tuple[str, bytes]], concurrency: int) -> dict[str, Any]:
    """The limit: one ClientSession, `concurrency` workers, sign and POST each body."""
    import aiohttp

    from cartd import __version__
    from cartd.signing import Signer

    signer = Signer((SECRET,))
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


async def durable(pg: Postgres, sink: Sink, n: int, profile: bool, *, pooler: str = "none",
                  route: Callable[[str], str] | None = None, bare_limit: bool = True
                  ) -> dict[str, Any]:
    """(a). For (d): the Deliverer's pool with `database.pooler: {pooler}`, reaching the
    database at `route(dsn)` (PgBouncer) when given; without `bare_limit`, no bare loop."""
    import asyncpg

    from cartd import payload
    from cartd.delivery import Deliverer
    from cartd.db import Store

    dsn = await pg.create("bench_delivery")
    await (await migrated_store(dsn)).close()
    store = await Store.connect(route(dsn) if route else dsn, 1, 10, pooler=pooler)
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
    body_bytes = sum(len(b) for _, b in items) / n

    # Warm the sink and the loopback path, then the bare limit.
    await bare_loop(sink.url, items[: min(1000, n)], CONCURRENCY)
    if bare_limit:
        with CpuMeter(pg, sink) as bare_cpu:
            bare = await bare_loop(sink.url, items, CONCURRENCY)
        bare["cpu_seconds"] = bare_cpu.used

    config = bench_config(webhook={"url": sink.url, "secret": SECRET,
                                   "concurrency": CONCURRENCY})
    done = asyncio.Event()
    outcomes: dict[str, int] = {}

    def on_outcome(_row: Any, attempt: Any, status: str) -> None:
        outcomes[status] = outcomes.get(status, 0) + 1
        if sum(outcomes.values()) >= n:
            done.set()

    deliverer = Deliverer(store, lambda: config, instance_id="bench", on_outcome=on_outcome)
    with profiled(profile, "a_durable_delivery"), CpuMeter(pg, sink) as durable_cpu:
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
        sys.executable, str(Path(__file__).resolve()), "--child",
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


async def cycles(pg: Postgres, agents: int, profile: bool, sink_url: str, *,
                 pooler: str = "none", route: Callable[[str], str] | None = None
                 ) -> dict[str, Any]:
    """(b); for (d) with `database.pooler: {pooler}`, through `route(dsn)` when given."""
    dsn = await migrated_database(pg, f"bench_cycle_{agents}")
    started = time.perf_counter()
    await app_rows(dsn, agents)
    seed_seconds = time.perf_counter() - started
    out = await child("cycles", max(300, agents / 10), dsn=route(dsn) if route else dsn,
                      agents=agents, profile=profile, sink_url=sink_url, pooler=pooler)
    out["seed_seconds"] = round(seed_seconds, 2)
    return out


async def cycles_child(dsn: str, agents: int, profile: bool, sink_url: str,
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
                          webhook={"url": sink_url, "secret": SECRET})
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
    import asyncpg
    import yaml

    dsn = await migrated_database(pg, "bench_daemon")
    await app_rows(dsn, agents)
    conf = {
        "state_dir": str(workdir / "var"),
        "polling": {"interval": "1h"},  # one cycle, at start
        "platforms": {"mock": {"carts_per_hour": CYCLE_CARTS_PER_HOUR}},
        "webhook": {"url": sink.url, "concurrency": CONCURRENCY},
        "control": {"socket": str(workdir / "cartd.sock")},
        "metrics": {"listen": ""},
        "logging": {"level": "info", "format": "json"},
    }
    path = workdir / "cartd.yaml"
    path.write_text(yaml.safe_dump(conf))
    log_path = workdir / "daemon.log"
    env = {**os.environ, "CARTD_DATABASE_DSN": dsn, "CARTD_WEBHOOK_SECRET": SECRET}
    before = (await sink.stats())["requests"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cartd", "run", "--config", str(path)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    limit = 600
    result: dict[str, Any] = {"agents": agents, "integrations": agents * 3,
                              "measured": "the `cartd run` subprocess (psutil RSS every 50 ms)"}
    conn = await asyncpg.connect(dsn)
    try:
        with RssSampler(proc.pid) as rss:
            started = time.perf_counter()
            cycle: dict[str, Any] | None = None
            idle_rss = None
            while time.perf_counter() - started < limit:
                if proc.poll() is not None:
                    raise RuntimeError(f"cartd run exited with {proc.returncode}: "
                                       + log_path.read_text()[-2000:])
                if idle_rss is None and "\"started\"" in log_path.read_text(errors="replace"):
                    idle_rss = rss_mb(proc.pid)
                if cycle is None:
                    for line in log_path.read_text(errors="replace").splitlines():
                        if '"cycle_finished"' in line:
                            cycle = json.loads(line)
                            result["cycle_seconds"] = round(time.perf_counter() - started, 2)
                            result["rss_after_cycle_mb"] = round(rss_mb(proc.pid), 1)
                if cycle is not None:
                    pending = await conn.fetchval(
                        "SELECT count(*) FROM cartd.deliveries WHERE status = 'pending'")
                    if pending == 0:
                        result["all_delivered_seconds"] = round(time.perf_counter() - started, 2)
                        break
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("cartd run did not finish its cycle and deliveries in time")
            result["rss_end_mb"] = round(rss_mb(proc.pid), 1)
    finally:
        await conn.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    delivered = (await sink.stats())["requests"] - before
    result.update({
        "rss_idle_mb": round(idle_rss or 0, 1),
        "peak_rss_mb": round(rss.peak, 1),
        "carts_new": cycle["carts_new"], "deliveries_enqueued": cycle["deliveries_enqueued"],
        "daemon_cycle_duration_seconds": cycle["duration_seconds"],
        "webhooks_received": delivered,
        "exit_code": proc.returncode,
    })
    return result


async def short_cycles(pg: Postgres, sink: Sink, agents: int, count: int) -> dict[str, Any]:
    """Runs `short_cycles_child` in a fresh process, so that its RSS is its own."""
    dsn = await migrated_database(pg, "bench_short")
    await app_rows(dsn, agents)
    return await child("short", max(300, count), dsn=dsn, url=sink.url, agents=agents,
                       count=count)


async def short_cycles_child(dsn: str, url: str, agents: int, count: int) -> dict[str, Any]:
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
                          webhook={"url": url, "secret": SECRET, "concurrency": CONCURRENCY})
    # Simulated time ends at the real now, so that every delivery is due at once.
    start = datetime.now(UTC) - timedelta(seconds=INTERVAL * count)
    clock = [start]
    deliverer = Deliverer(store, lambda: config, instance_id="bench-short")
    poller = Poller(store, lambda: config, instance_id="bench-short", clock=lambda: clock[0],
                    on_enqueued=lambda _: deliverer.wake())
    task = asyncio.create_task(deliverer.run())
    every = max(1, count // 10)
    samples = []
    carts = 0
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


# --------------------------------------------------------------------------------------
# (d) what `database.pooler: transaction` costs

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
    sys.path.insert(0, str(ROOT / "tests"))
    import pgbouncer

    if pgbouncer.missing():
        return {"skipped": pgbouncer.missing()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in POOLER_SETUPS}
    with pgbouncer.pgbouncer(pg.uri, pool_size=10) as front:
        for name, pooler, bounced in (*POOLER_SETUPS, *reversed(POOLER_SETUPS)):
            route = functools.partial(through, front) if bounced else None
            a = await durable(pg, sink, deliveries, False, pooler=pooler, route=route,
                              bare_limit=False)
            with CpuMeter(pg, sink) as database_cpu:
                b = await cycles(pg, agents, False, sink.url, pooler=pooler, route=route)
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


# --------------------------------------------------------------------------------------
# the run


def table(results: dict[str, Any]) -> str:
    lines = []

    def row(name: str, value: str, note: str = "") -> None:
        lines.append(f"  {name:<46} {value:>14}  {note}")

    a = results.get("a")
    if a:
        lines.append(f"(a) durable delivery: {a['deliveries']:,} deliveries, concurrency "
                     f"{a['concurrency']}, ~{a['mean_body_bytes']} B bodies, signed")
        row("cartd Deliverer (PostgreSQL outbox)", f"{a['durable']['per_second']:,.0f} /s",
            f"{a['durable']['seconds']:.2f} s")
        row("bare aiohttp loop (same bodies, signed)", f"{a['bare']['per_second']:,.0f} /s",
            f"{a['bare']['seconds']:.2f} s")
        row("ratio durable / bare", f"{a['ratio']:.2f}",
            "target >= 0.5: " + ("met" if a["ratio"] >= 0.5 else "NOT met"))
        for name, part in (("durable", a["durable"]), ("bare", a["bare"])):
            used = part["cpu_seconds"]
            row(f"CPU per request, {name} (us)",
                f"{sum(used.values()) / a['deliveries'] * 1e6:,.0f}",
                ", ".join(f"{k} {v / a['deliveries'] * 1e6:,.0f}" for k, v in used.items()))
    b = results.get("b")
    if b:
        lines.append(f"(b) mock-mode cycle, 3 integrations per agent, carts_per_hour "
                     f"{CYCLE_CARTS_PER_HOUR} (first poll: 24 h of history), no delivery")
        for run in b["runs"]:
            for label, name in (("first", "first cycle"), ("second", "next cycle (median of 3)")):
                c = run[label]
                row(f"{run['agents']:,} agents, {name}",
                    f"{c['seconds']:.2f} s",
                    f"{c['carts_found']:,} carts, {c['carts_per_second']:,.0f} carts/s, "
                    f"{c['deliveries_enqueued']:,} webhooks queued")
        k = f"x{b['agents_ratio']:g}"
        row(f"growth, {k} agents: first cycle time", f"x{b['growth_first']:.2f}", f"linear = {k}")
        row(f"growth, {k} agents: next cycle time", f"x{b['growth_second']:.2f}",
            f"linear = {k}")
        big = b["runs"][-1]["first"]["seconds"]
        if b["runs"][-1]["agents"] >= 10_000:
            row("target: 10,000-agent cycle < 10 s", f"{big:.2f} s",
                "met" if big < 10 else "NOT met")
    c = results.get("c")
    if c:
        d = c.get("daemon")
        if d:
            lines.append(f"(c) memory: `cartd run`, {d['agents']:,} agents x 3, one cycle + "
                         "delivery of its webhooks")
            row("cartd run peak RSS", f"{d['peak_rss_mb']:.1f} MB",
                f"idle {d['rss_idle_mb']:.1f} MB, target < 150 MB: "
                + ("met" if d["peak_rss_mb"] < 150 else "NOT met"))
            row("cartd run cycle / all delivered", f"{d['cycle_seconds']:.1f} s",
                f"{d['all_delivered_seconds']:.1f} s for {d['webhooks_received']:,} webhooks")
        s = c.get("short")
        if s:
            lines.append(f"    {s['cycles']:,} short cycles, {s['agents']} agents x 3, "
                         f"RSS of a Poller+Deliverer process every {max(1, s['cycles'] // 10)} cycles")
            row("RSS first / last sample", f"{s['rss_first_mb']:.1f} / {s['rss_last_mb']:.1f} MB",
                f"growth after warm-up {s['growth_after_warmup_mb']:+.1f} MB")
            row("samples (MB)", "", " ".join(f"{x['rss_mb']:.0f}" for x in s["samples"]))
    d = results.get("d")
    if d and "runs" in d:
        lines.append(f"(d) database.pooler: {d['deliveries']:,} durable deliveries, then (b) "
                     f"with {d['agents']:,} agents, per setup; x = ratio to the first row")
        for run in d["runs"]:
            x = run["ratios"]
            row(f"{run['setup']}: deliveries",
                f"{run['deliveries_per_second']:,.0f} /s",
                f"x{x['deliveries_per_second']:.2f}; CPU {run['cpu_us_per_delivery']:,.0f} us"
                f" per delivery, x{x['cpu_us_per_delivery']:.2f} (cartd + database side)")
            row(f"{run['setup']}: first cycle", f"{run['first_cycle_seconds']:.2f} s",
                f"x{x['first_cycle_seconds']:.2f}; cartd CPU x{x['first_cycle_cartd_cpu_seconds']:.2f},"
                f" database CPU x{x['cycles_database_cpu_seconds']:.2f}; next cycle"
                f" {run['next_cycle_seconds']:.2f} s x{x['next_cycle_seconds']:.2f}")
    elif d:
        lines.append(f"(d) skipped: {d['skipped']}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    params = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else {"a", "b", "c", "d"}
    quiet_logs()
    results: dict[str, Any] = {
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
    pg = await asyncio.to_thread(Postgres)
    sink = Sink()
    workdir = Path(tempfile.mkdtemp(prefix="cartd-bench-run-", dir="/tmp"))
    try:
        if "a" in only:
            print(f"(a) durable delivery of {params['deliveries']:,} ...", flush=True)
            results["a"] = await durable(pg, sink, params["deliveries"], args.profile)
        if "b" in only:
            runs = []
            for agents in params["agents"]:
                print(f"(b) cycles with {agents:,} agents ...", flush=True)
                runs.append(await cycles(pg, agents, args.profile, sink.url))
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
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink_main()
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
