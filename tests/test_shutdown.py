"""A stop has one deadline, `shutdown_timeout`, for everything in flight (a cycle as well
as attempts), and gives every claim back even when a step of the teardown fails (README
"Controlling a running daemon")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from aiohttp import web

from cartd import sources
from cartd.config import build
from cartd.daemon import Daemon
from cartd.db import NewDelivery, Store
from cartd.demo import insert_rows
from cartd.payload import dumps, new_webhook_id
from harness import SLUG, wait_until


@asynccontextmanager
async def never_answering() -> AsyncIterator[str]:
    """A server on 127.0.0.1 that holds every request open; yields its base URL."""
    forever = asyncio.Event()

    async def hold(_: web.Request) -> web.Response:
        await forever.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hold)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        forever.set()
        await runner.cleanup()


async def held(store: Store) -> dict[str, int]:
    """What instances hold: agent claims, delivery claims, places in the poll shares."""
    row = await store.pool.fetchrow(
        "SELECT (SELECT count(*) FROM cartd.agent_polls WHERE claimed_by IS NOT NULL) AS agents,"
        " (SELECT count(*) FROM cartd.deliveries WHERE claimed_by IS NOT NULL) AS deliveries,"
        " (SELECT count(*) FROM cartd.instances) AS instances")
    return dict(row)


async def test_a_teardown_step_that_fails_still_gives_every_claim_back(
        store, dsn, tmp_path, monkeypatch):
    company, agent = uuid.uuid4(), uuid.uuid4()
    async with never_answering() as url:
        await insert_rows(store, [(company, "Shop", None, None, None)],
                          [(agent, company, "Agent", SLUG, True, {})],
                          [(uuid.uuid4(), agent, "custom", True,
                            {"mode": "live", "url": f"{url}/carts"})])
        delivery = NewDelivery(new_webhook_id(), "abandoned_cart.detected", agent, uuid.uuid4(),
                               "custom", None, dumps({"abandoned_carts": []}), 1)
        await store.outbox.record(now=datetime.now(UTC), detected=[], completed=[],
                                  build=lambda *_: [delivery], sources=[], agents=[],
                                  instance="t")
        cfg = build({"database": {"dsn": dsn}, "polling": {"interval": "1h"},
                     "webhook": {"url": f"{url}/webhook", "timeout": "60s"},
                     "control": {"socket": str(tmp_path / "ctl.sock")},
                     "metrics": {"listen": ""}, "shutdown_timeout": "1s"}, env={})
        close = sources.close

        async def failing_close() -> None:
            await close()
            raise RuntimeError("a teardown step failed")

        monkeypatch.setattr(sources, "close", failing_close)
        daemon = Daemon(cfg)
        running = asyncio.create_task(daemon.run())
        # The cycle waits on the store, the attempt on the receiver: both hold claims.
        await wait_until(lambda: _holds_all(store), timeout=15)
        stopped = time.monotonic()
        daemon.stop()
        with pytest.raises(RuntimeError, match="a teardown step failed"):
            await asyncio.wait_for(running, 15)
        took = time.monotonic() - stopped
    assert await held(store) == {"agents": 0, "deliveries": 0, "instances": 0}
    assert took < 5  # the cycle waiting on the store was cut at the deadline (1 s)
    assert not (tmp_path / "ctl.sock").exists()


async def _holds_all(store: Store) -> bool:
    return all((await held(store)).values())
