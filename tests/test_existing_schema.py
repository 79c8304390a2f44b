"""An existing database: the application tables are views over tables of another shape
(no keys, no constraints), read by a role that may only SELECT them and create its own
schema `cartd` (README "The database"). Database errors are reported as what they are."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from cartd.db import Store, problem
from cartd.polling import Poller
from harness import SLUG, cartd_run, config, scripted_receiver

# The shop's own tables: other names and columns, no keys, JSON as text (and json, not
# jsonb, in a view).
SHOP_SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.accounts (account_uuid uuid, title varchar(200), site text,
                            contact_email text, tel text, signup date);
CREATE TABLE shop.bots (bot_id uuid, account uuid, label varchar(100), kind text, state text,
                        options text);
CREATE TABLE shop.connections (conn_id uuid, bot uuid, vendor text, enabled smallint,
                               settings_json text);
CREATE VIEW companies AS
    SELECT account_uuid AS id, title AS name, site AS website, contact_email AS email,
           tel AS phone FROM shop.accounts;
CREATE VIEW company_agents AS
    SELECT bot_id AS id, account AS company_id, label AS name, kind AS template_slug,
           state = 'live' AS is_active, options::json AS settings FROM shop.bots;
CREATE VIEW agent_integrations AS
    SELECT conn_id AS id, bot AS agent_id, lower(vendor) AS platform, enabled = 1 AS is_active,
           settings_json::jsonb AS config FROM shop.connections;
"""
VIEWS = "companies, company_agents, agent_integrations"


async def grant(dsn: str, statements: str) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(statements)
    finally:
        await admin.close()


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
async def role(dsn: str) -> AsyncIterator[str]:
    """A login role of its own (roles belong to the whole server), dropped at the end
    with everything it owns in the test database."""
    name = f"reader_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN")
        yield name
        await admin.execute(f"DROP OWNED BY {name} CASCADE; DROP ROLE {name}")
    finally:
        await admin.close()


async def shop(dsn: str, agents: int) -> set[uuid.UUID]:
    """The shop's tables and views, `agents` polled agents on the three platforms (plus
    one of another kind, one switched off, one disabled connection). Returns the polled
    agents' connections."""
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(SHOP_SCHEMA)
        connections = set()
        for n in range(agents + 2):
            account, bot, conn = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            await admin.execute("INSERT INTO shop.accounts VALUES ($1, $2, $3, $4, $5, now())",
                                account, f"Shop {n}", f"https://s{n}.example.com",
                                f"team@s{n}.example.com", "+1-555-0100")
            kind, state = (SLUG, "live") if n < agents else (
                (SLUG, "paused") if n == agents else ("faq-bot", "live"))
            await admin.execute("INSERT INTO shop.bots VALUES ($1, $2, $3, $4, $5, '{}')",
                                bot, account, f"Bot {n}", kind, state)
            platform = ("Shopify", "WooCommerce", "Custom")[n % 3]
            await admin.execute(
                "INSERT INTO shop.connections VALUES ($1, $2, $3, 1, $4), ($5, $2, $3, 0, $4)",
                conn, bot, platform, json.dumps({"mode": "mock"}), uuid.uuid4())
            if n < agents:
                connections.add(conn)
    finally:
        await admin.close()
    return connections


async def test_a_cycle_on_views_without_keys_as_a_read_only_role(dsn, role, tmp_path):
    connections = await shop(dsn, 3)
    await grant(dsn, f"GRANT SELECT ON {VIEWS} TO {role};"
                     f" GRANT CREATE ON DATABASE {urlsplit(dsn).path.strip('/')} TO {role}")
    reader = as_role(dsn, role)
    probe = await asyncpg.connect(reader)
    try:  # the role really can only read the views
        for statement in ("SELECT 1 FROM shop.bots", "DELETE FROM company_agents",
                          "CREATE TABLE public.x (a int)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await probe.execute(statement)
    finally:
        await probe.close()
    async with scripted_receiver() as receiver, cartd_run(tmp_path, reader, receiver.url,
                                                          polling={"enabled": False}) as d:
        await d.start()
        code, once = await d.request("POST", "/polling/run-once")
        assert code == 200, once
        assert once["agents_found"] == 3 and once["integrations_processed"] == 3
        assert once["deliveries_succeeded"] == once["deliveries_enqueued"] > 0
        assert {json.loads(body)["integration"]["id"] for _, body in receiver.requests} == {
            str(c) for c in connections}

        await grant(dsn, f"REVOKE SELECT ON agent_integrations FROM {role}")
        code, failed = await d.request("POST", "/polling/run-once")
        status = await d.status()
        await grant(dsn, f"GRANT SELECT ON agent_integrations TO {role}")
        code_again, again = await d.request("POST", "/polling/run-once")
        healed = await d.status()
        assert await d.terminate() == 0
    expected = "permission denied [42501]: permission denied for view agent_integrations"
    assert code == 503 and failed["error"] == f"database: {expected}"
    assert status["database"] == expected
    log = d.log.read_text()
    assert '"database_permission_denied"' in log and "database_unavailable" not in log
    assert code_again == 200 and again["agents_found"] == 3 and healed["database"] == "ok"


async def test_a_schema_cartd_made_for_the_role_serves_without_create_on_the_database(
        dsn, role):
    await shop(dsn, 1)
    await grant(dsn, f"GRANT SELECT ON {VIEWS} TO {role}; CREATE SCHEMA cartd AUTHORIZATION {role}")
    store = await Store.connect(as_role(dsn, role), 1, 2)
    cfg = config()
    try:
        assert "001_init.sql" in await store.maintenance.migrate()
        with structlog.testing.capture_logs() as logs:  # no cartd_mock: mock state not kept
            summary, _ = await Poller(store, lambda: cfg, instance_id="p").run_cycle()
    finally:
        await store.close()
    assert summary.integrations_processed == 1 and summary.carts_new > 0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["mock_state_not_kept"]


async def test_database_errors_are_told_apart_with_the_servers_message(store, dsn):
    async with store.pool.acquire() as conn:
        failures = {}
        for name, statement in (
                ("query", "SELECT no_such_column FROM companies"),
                ("timeout", "SET LOCAL statement_timeout = 1; SELECT pg_sleep(1)")):
            try:
                async with conn.transaction():
                    await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                failures[name] = problem(exc)
        try:
            await conn.execute("SELECT pg_sleep(1)", timeout=0.05)
        except TimeoutError as exc:
            failures["client timeout"] = problem(exc)
    try:
        await asyncpg.connect("postgresql://cartd@127.0.0.1:9/x")
    except OSError as exc:
        failures["refused"] = problem(exc)
    assert str(failures["query"]) == (
        'query failed [42703]: column "no_such_column" does not exist')
    assert str(failures["timeout"]) == (
        "timeout [57014]: canceling statement due to statement timeout")
    assert failures["client timeout"].kind == "timeout"
    assert failures["refused"].kind == "unavailable" and failures["refused"].event == (
        "database_unavailable")
