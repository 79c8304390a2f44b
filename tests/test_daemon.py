"""`cartd run` as a real subprocess: deliveries end to end, SIGTERM, kill -9 and restart."""

from __future__ import annotations

import pytest

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import yaml
from standardwebhooks import Webhook

from cartd.db import Store
from helpers import ROOT, Scripted, add_agents, scripted_receiver, wait_until

pytestmark = pytest.mark.reliability  # part of the fault-injection suite

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write_config(tmp_path: Path, dsn: str, url: str, **webhook) -> Path:
    path = tmp_path / "cartd.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "var"),
        "database": {"dsn": dsn},
        "polling": {"interval": "1s"},
        "webhook": {"url": url, "secret": SECRET, **webhook},
        "control": {"socket": str(tmp_path / "cartd.sock")},
        "metrics": {"listen": ""},
        "logging": {"format": "json"},
        "shutdown_timeout": "5s",
    }))
    return path


@asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`cartd run`; its log goes to cartd.log beside the config."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cartd", "--config", str(config), "run",
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=(config.parent / "cartd.log").open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def carts_received(receiver: Scripted) -> list[tuple[str, str]]:
    return [(b["integration"]["id"], c["cart_id"]) for b in bodies(receiver)
            for c in b["abandoned_carts"] if b["type"] == "abandoned_cart.detected"]


def bodies(receiver: Scripted) -> list[dict]:
    return [json.loads(body, parse_float=Decimal) for _, body in receiver.requests]


async def recorded(store: Store) -> set[tuple[str, str]]:
    """The carts recorded for the receiver: those in the dedupe memory, less those that
    completed while their delivery was pending and so left it (README "What the receiver
    sees when a cart completes")."""
    rows = await store.pool.fetch(
        "SELECT s.integration_id, s.cart_id FROM cartd.sent_carts s"
        " WHERE s.recovered_at IS NULL OR EXISTS (SELECT 1 FROM cartd.deliveries d,"
        " jsonb_array_elements(convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts') e"
        " WHERE d.integration_id = s.integration_id AND d.type = 'abandoned_cart.detected'"
        " AND d.status <> 'withdrawn' AND e ->> 'cart_id' = s.cart_id)")
    return {(str(r["integration_id"]), r["cart_id"]) for r in rows}


async def accounted(received: set[tuple[str, str]], store: Store) -> bool:
    """Every recorded cart was received. Received beyond those: only carts that completed
    since and so left their delivery, which a killed instance had sent without seeing the
    answer (README "What the receiver sees when a cart completes")."""
    due = await recorded(store)
    completed = await store.pool.fetch(
        "SELECT integration_id::text, cart_id FROM cartd.sent_carts WHERE recovered_at IS NOT NULL")
    return due <= received and received - due <= {tuple(r) for r in completed}


async def test_run_delivers_signed_webhooks_from_every_platform_and_stops_on_sigterm(
        store, dsn, tmp_path):
    data = await add_agents(store, 6, skipped=4)
    async with scripted_receiver() as receiver, daemon(write_config(tmp_path, dsn, receiver.url)) as proc:
        await wait_until(lambda: {b["integration"]["platform"] for b in bodies(receiver)}
                         == {"shopify", "woocommerce", "custom"}, timeout=30)
        # The first cycle records its agents in several transactions: wait for its end.
        await wait_until(lambda: "cycle_finished" in (tmp_path / "cartd.log").read_text(),
                         timeout=30)
        await wait_until(lambda: _all_delivered(store), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        log = (tmp_path / "cartd.log").read_text()
    for headers, body in receiver.requests:
        Webhook(SECRET).verify(body, headers)
    keys = carts_received(receiver)
    assert len(keys) == len(set(keys))
    assert {k[0] for k in keys} == {str(i) for i in data.integrations}
    assert set(keys) == await recorded(store)
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    cycles = [e for e in events if e["event"] == "cycle_finished"]
    assert cycles and cycles[0]["agents_found"] == 6
    assert SECRET not in log and dsn not in log


async def _all_delivered(store: Store) -> bool:
    counts = await store.deliveries.counts()
    return counts["delivered"] > 0 and counts["pending"] == 0


async def test_kill_9_mid_delivery_then_restart_delivers_every_recorded_cart(store, dsn, tmp_path):
    await add_agents(store, 3)
    async with scripted_receiver() as receiver:
        receiver.default = (200, {}, 5.0)  # past the kill: it dies with requests in flight
        config = write_config(tmp_path, dsn, receiver.url, timeout="2s")
        async with daemon(config) as proc:
            await wait_until(lambda: receiver.active > 0, timeout=30)
            proc.kill()
            await proc.wait()
        assert (await store.deliveries.counts())["pending"] > 0
        receiver.default = (200, {}, 0.0)
        async with daemon(config) as proc:
            await wait_until(lambda: _all_delivered(store), timeout=40)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert await accounted(set(carts_received(receiver)), store)


async def test_sigterm_with_deliveries_in_flight_exits_0_and_loses_nothing(store, dsn, tmp_path):
    await add_agents(store, 3)
    async with scripted_receiver() as receiver:
        receiver.default = (200, {}, 1.0)
        config = write_config(tmp_path, dsn, receiver.url, concurrency=2)
        async with daemon(config) as proc:
            await wait_until(lambda: receiver.active > 0, timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        leased = await store.pool.fetchval(
            "SELECT count(*) FROM cartd.deliveries WHERE claimed_by IS NOT NULL")
        assert leased == 0  # claims were given back
        receiver.default = (200, {}, 0.0)
        async with daemon(config) as proc:
            await wait_until(lambda: _all_delivered(store), timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert set(carts_received(receiver)) == await recorded(store)
