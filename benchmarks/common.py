"""What every part of the benchmark shares: its parameters, the embedded PostgreSQL,
seeding, meters of CPU and RSS, profiling, and cartd's logging and config as the daemon
sets them up. cartd and the tests' harness are imported where they are used, so that the
sink and the measured child processes load only what they need."""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, ROOT / "tests"):  # cartd of this checkout, and the tests' harness
    if str(_path) not in sys.path:
        sys.path.insert(1, str(_path))

PLATFORMS = ("shopify", "woocommerce", "custom")
CONCURRENCY = 32

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

    def __init__(self, pg: Postgres, sink: Any) -> None:
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


async def app_rows(dsn: str, agents: int) -> None:
    """`agents` companies and polled agents, each with one mock integration per platform
    (the tests' seeding, tests/harness/seeding.py), then ANALYZE."""
    from cartd.db import Store
    from harness import add_agents

    store = await Store.connect(dsn, 1, 10)
    try:
        await add_agents(store, agents, every_platform=True, switched_off=False)
        await store.pool.execute("ANALYZE")
    finally:
        await store.close()


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
