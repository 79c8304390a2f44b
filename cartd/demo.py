"""Demo data (`cartd seed-demo`) and the whole system on one machine (`cartd demo`)."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import tempfile
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

from faker import Faker

from cartd.config import Config
from cartd.cycle import CycleSummary
from cartd.daemon import Daemon
from cartd.db import Store
from cartd.db.queries import load
from cartd.receiver import Received, Receiver

SQL = load("cartd", "demo.sql")
PLATFORMS = ("shopify", "woocommerce", "custom")
OTHER_TEMPLATES = ("customer-support", "lead-qualifier", "order-status")


def demo_rows(agents: int, slug: str, seed: int = 7) -> tuple[list, list, list]:
    """Companies, agents and integrations: half the agents are abandoned-cart agents
    (active, `slug`), the other half have another template or are inactive."""
    fake = Faker()
    fake.seed_instance(seed)
    rng = random.Random(seed)
    companies, agent_rows, integrations = [], [], []
    for n in range(agents):
        company_id, agent_id = uuid.UUID(int=rng.getrandbits(128)), uuid.UUID(int=rng.getrandbits(128))
        name = fake.company()
        domain = f"{fake.domain_word()}.example.com"
        companies.append((company_id, name, f"https://{domain}", f"hello@{domain}",
                          fake.numerify("+1-###-###-####")))
        matching = n % 2 == 0
        template = slug if matching or n % 4 == 1 else rng.choice(OTHER_TEMPLATES)
        active = matching or n % 4 == 3
        agent_rows.append((agent_id, company_id, f"{name} cart recovery", template, active, {}))
        platforms = [PLATFORMS[(n // 2) % 3]] + ([PLATFORMS[(n // 2 + 1) % 3]] if n % 3 == 0 else [])
        for platform in platforms:
            integrations.append((uuid.UUID(int=rng.getrandbits(128)), agent_id, platform, True,
                                 {"mode": "mock"}))
        if matching and n % 5 == 0:
            integrations.append((uuid.UUID(int=rng.getrandbits(128)), agent_id, "shopify", False,
                                 {"mode": "mock"}))
    return companies, agent_rows, integrations


async def insert_rows(
    store: Store,
    companies: list[tuple[Any, ...]],
    agents: list[tuple[Any, ...]],
    integrations: list[tuple[Any, ...]],
) -> None:
    """Insert rows into the application tables, in one transaction; each row holds its
    columns in the order of the query's parameters (`cartd/demo.sql`)."""
    async with store.pool.acquire() as conn, conn.transaction():
        await SQL["insert_company"].executemany(conn, companies)
        await SQL["insert_agent"].executemany(conn, agents)
        await SQL["insert_integration"].executemany(conn, integrations)


async def seed(store: Store, agents: int, slug: str) -> int:
    """Insert demo agents; returns how many of them cartd will poll."""
    companies, agent_rows, integrations = demo_rows(agents, slug, seed=random.getrandbits(32))
    await insert_rows(store, companies, agent_rows, integrations)
    return sum(1 for a in agent_rows if a[3] == slug and a[4])


def _money(values: dict[str, Decimal]) -> str:
    return ", ".join(f"{v:,.2f} {k}" for k, v in sorted(values.items())) or "0"


def _cycle_line(n: int, s: CycleSummary) -> str:
    return (f"cycle {n}: {s.agents_found} agents, {s.integrations_processed} integrations"
            f" on {s.platforms_processed} platforms, {s.carts_found} abandoned carts"
            f" ({s.carts_new} new, {s.carts_recovered} recovered),"
            f" {s.deliveries_enqueued} webhooks queued, value {_money(s.recovery_value)},"
            f" {s.integration_errors} errors, {s.duration_seconds:.2f}s")


def _delivery_line(r: Received) -> str:
    body = r.payload
    analytics = body.get("recovery_analytics", {})
    mark = "signature ok" if r.verified else "UNSIGNED"
    return (f"  <- {r.webhook_id} {body['integration']['platform']:<11} {body['type']:<25}"
            f" {analytics.get('total_carts', 0):>3} carts"
            f" {analytics.get('total_value', 0):>10} {analytics.get('currency', '')}  {mark}")


async def run_demo(config: Config, *, agents: int, cycles: int | None, interval: float,
                   state_dir: str | None) -> int:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = Receiver((secret,), on_delivery=lambda r: print(_delivery_line(r), flush=True))
    port = await receiver.start("127.0.0.1", 0)
    with tempfile.TemporaryDirectory(prefix="cartd-demo-") as tmp:
        state = state_dir or tmp
        Path(state).mkdir(parents=True, exist_ok=True)
        config = config.model_copy(update={  # always its own, embedded database
            "state_dir": state,
            "database": config.database.model_copy(update={"dsn": "", "pooler": "none"}),
            "polling": config.polling.model_copy(update={"interval": interval, "enabled": True}),
            "webhook": config.webhook.model_copy(update={
                "url": f"http://127.0.0.1:{port}/webhook", "secret": secret, "extra_secrets": ()}),
            "control": config.control.model_copy(update={"socket": str(Path(state) / "cartd.sock")}),
            "metrics": config.metrics.model_copy(update={"listen": ""}),
        })
        done = asyncio.Event()
        seen = {"cycles": 0}

        def on_cycle(summary: CycleSummary) -> None:
            seen["cycles"] += 1
            print(_cycle_line(seen["cycles"], summary), flush=True)
            if cycles is not None and seen["cycles"] >= cycles:
                done.set()

        async def prepare(store: Store) -> None:
            await store.maintenance.migrate(app_tables=True)
            polled = await seed(store, agents, config.polling.template_slug)
            print(f"seeded {agents} demo agents, {polled} of them abandoned-cart agents", flush=True)

        daemon = Daemon(config, on_cycle=on_cycle, prepare=prepare)
        print(f"cartd demo: receiver on 127.0.0.1:{port}, state in {state},"
              f" polling every {interval:g}s; Ctrl-C to stop", flush=True)
        runner = asyncio.create_task(daemon.run())
        stopper = asyncio.create_task(done.wait())
        await asyncio.wait([runner, stopper], return_when=asyncio.FIRST_COMPLETED)
        if done.is_set() and daemon.store is not None:
            await _settle(daemon.store, deadline=30)
        daemon.stop()
        await runner
        stopper.cancel()
        await receiver.stop()
    _final(receiver, seen["cycles"])
    return 0


async def _settle(store: Store, deadline: float) -> None:
    """Wait (bounded) until every queued webhook has had its first attempt."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        pending = await store.deliveries.recent("pending", 1000)
        if not any(d["attempts"] == 0 for d in pending):
            return
        await asyncio.sleep(0.2)


def _final(receiver: Receiver, cycles: int) -> None:
    by_platform: Counter[str] = Counter()
    carts: Counter[str] = Counter()
    value: dict[str, Decimal] = {}
    for r in receiver.received:
        platform = r.payload["integration"]["platform"]
        analytics = r.payload["recovery_analytics"]
        by_platform[platform] += 1
        carts[platform] += analytics["total_carts"]
        currency = analytics["currency"]
        value[currency] = value.get(currency, Decimal(0)) + Decimal(analytics["total_value"])
    verified = sum(1 for r in receiver.received if r.verified)
    print(f"\nsummary: {cycles} cycles, {len(receiver.received)} webhooks received"
          f" ({verified} with a valid signature)")
    for platform in PLATFORMS:
        print(f"  {platform:<11} {by_platform[platform]:>4} webhooks {carts[platform]:>6} carts")
    print(f"  value: {_money(value)}", flush=True)
