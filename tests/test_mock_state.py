"""Mock state lives apart from cartd's own schema (README "The database"): when each mock
store opened is kept in `cartd_mock.stores`, made at the first mock poll, also by a role
that may not create schemas once one is made for it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from cartd.config import build
from cartd.db import Store
from cartd.demo import insert_rows
from cartd.polling import Poller

SLUG = "ecommerce-abandoned-cart"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


async def mock_agent(store: Store) -> uuid.UUID:
    """One matching agent with one mock store; returns the store's integration id."""
    company, agent, integration = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await insert_rows(store, [(company, "Shop", None, "team@shop.example.com", None)],
                      [(agent, company, "Agent", SLUG, True, {})],
                      [(integration, agent, "custom", True, {"mode": "mock"})])
    return integration


async def cycle(store: Store, now: datetime) -> int:
    """One forced cycle at `now`; the carts it kept."""
    cfg = build({}, env={})
    summary, _ = await Poller(store, lambda: cfg, instance_id="p",
                              clock=lambda: now).run_cycle(force=True)
    return summary.carts_found


async def test_a_mock_store_opens_at_its_first_poll_and_keeps_that_time(store):
    integration = await mock_agent(store)
    assert await cycle(store, NOW) > 50  # 24 hours of history at 6 carts an hour
    assert await cycle(store, NOW + timedelta(hours=3)) < 50  # then only what is new
    rows = await store.pool.fetch("SELECT integration_id, opened_at FROM cartd_mock.stores")
    assert [tuple(r) for r in rows] == [(integration, NOW - timedelta(hours=24))]
    columns = await store.pool.fetch("SELECT column_name FROM information_schema.columns"
                                     " WHERE table_schema = 'cartd' AND table_name = 'sources'")
    assert "mock_epoch" not in {r["column_name"] for r in columns}


async def test_a_role_without_create_on_the_database_polls_mock_stores(store, dsn):
    await mock_agent(store)
    role = f"mocker_{uuid.uuid4().hex[:10]}"
    await store.pool.execute(
        f"CREATE ROLE {role} LOGIN; GRANT SELECT ON companies, company_agents,"
        f" agent_integrations TO {role}; CREATE SCHEMA cartd_mock AUTHORIZATION {role};"
        f" GRANT USAGE ON SCHEMA cartd TO {role};"
        f" GRANT ALL ON ALL TABLES IN SCHEMA cartd TO {role}")
    parts = urlsplit(dsn)
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    try:
        reader = await Store.connect(as_role, 1, 2)
        try:
            assert await cycle(reader, NOW) > 50
        finally:
            await reader.close()
        probe = await asyncpg.connect(as_role)
        try:  # it really may not create a schema
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await probe.execute("CREATE SCHEMA elsewhere")
        finally:
            await probe.close()
    finally:
        await store.pool.execute(f"DROP OWNED BY {role} CASCADE; DROP ROLE {role}")
