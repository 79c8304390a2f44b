"""Shared fixtures: one real PostgreSQL for the session, a fresh database per test."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from cartd.db import Store

# Property tests (tests/test_fuzz.py): the CI profile runs by default; the long one by
# hand, with HYPOTHESIS_PROFILE=fuzz or `-m fuzz` (README "Reliability").
settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])


def pytest_configure(config: pytest.Config) -> None:
    wanted = "fuzz" if config.option.markexpr == "fuzz" else "ci"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", wanted))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server for the session: $CARTD_TEST_DSN if set, else pgserver."""
    if os.environ.get("CARTD_TEST_DSN"):
        yield os.environ["CARTD_TEST_DSN"]
        return
    import pgserver

    # A short path: PostgreSQL's Unix socket path must stay under ~100 bytes.
    folder = tempfile.mkdtemp(prefix="cartd-pg-", dir="/tmp")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(uri: str, name: str) -> str:
    base, _, query = uri.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
async def migrated_template(pg_server: str) -> str:
    """A database with cartd's migrations and the application tables, copied for each
    test that asks for `store` (a copy takes a third of the time of migrating)."""
    name = f"t_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    store = await Store.connect(_with_database(pg_server, name), 1, 1)
    try:
        await store.maintenance.migrate(app_tables=True)
    finally:
        await store.close()
    return name


@pytest.fixture(scope="session")
async def dropping(pg_server: str) -> AsyncIterator[set[asyncio.Task[None]]]:
    """Test databases being dropped in the background while the next tests run."""
    tasks: set[asyncio.Task[None]] = set()
    yield tasks
    await asyncio.gather(*tasks, return_exceptions=True)


async def _drop(server: str, name: str) -> None:
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def dsn(pg_server: str, request: pytest.FixtureRequest, migrated_template: str,
              dropping: set[asyncio.Task[None]]) -> AsyncIterator[str]:
    """A new database on the session's server: empty, or migrated when the test asks for
    `store` too."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    template = f' TEMPLATE "{migrated_template}"' if "store" in request.fixturenames else ""
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"{template}')
    finally:
        await admin.close()
    yield _with_database(pg_server, name)
    task = asyncio.create_task(_drop(pg_server, name))
    dropping.add(task)
    task.add_done_callback(dropping.discard)


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[Store]:
    """A migrated database with the application tables."""
    store = await Store.connect(dsn, 1, 10)
    await store.maintenance.migrate(app_tables=True)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(autouse=True)
async def _close_store_session() -> AsyncIterator[None]:
    """Close the live connectors' shared HTTP session after each test, as the daemon does."""
    yield
    from cartd import sources

    await sources.close()


@pytest.fixture
async def fake() -> AsyncIterator[Any]:
    """A fake store server (tests/fakestore.py) on 127.0.0.1."""
    from fakestore import fake_store

    async with fake_store() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Any]:
    """A scripted webhook receiver on 127.0.0.1 answering 200."""
    from harness import scripted_receiver

    async with scripted_receiver() as scripted:
        yield scripted
