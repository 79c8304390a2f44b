"""`cartd run` as a real subprocess: deliveries end to end, SIGTERM, kill -9 and restart."""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from harness import (SECRET, accounted, add_agents, all_delivered, bodies, cartd_run,
                     carts_received, recorded, scripted_receiver, wait_until)

pytestmark = pytest.mark.reliability  # part of the fault-injection suite

FAST = {"polling": {"interval": "1s"}}


async def test_run_delivers_signed_webhooks_from_every_platform_and_stops_on_sigterm(
        store, dsn, tmp_path):
    data = await add_agents(store, 6, skipped=4)
    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url,
                                                          **FAST) as d:
        await d.start()
        await wait_until(lambda: {b["integration"]["platform"] for _, b in bodies(receiver)}
                         == {"shopify", "woocommerce", "custom"}, timeout=30)
        # The first cycle records its agents in several transactions: wait for its end.
        await d.wait_status(lambda status: status["cycles"] >= 1, timeout=30)
        await wait_until(lambda: all_delivered(store), timeout=30)
        assert await d.terminate() == 0
        log = d.log.read_text()
    for headers, body in receiver.requests:
        Webhook(SECRET).verify(body, headers)
    keys = carts_received(receiver)
    assert len(keys) == len(set(keys))
    assert {k[0] for k in keys} == {str(i) for i in data.integrations}
    assert set(keys) == await recorded(store)
    cycles = d.events("cycle_finished")
    assert cycles and cycles[0]["agents_found"] == 6
    assert SECRET not in log and dsn not in log


async def test_kill_9_mid_delivery_then_restart_delivers_every_recorded_cart(store, dsn, tmp_path):
    await add_agents(store, 3)
    async with scripted_receiver() as receiver:
        receiver.default = (200, {}, 2.0)  # past the kill: it dies with requests in flight
        # The killed instance's deliveries come back when their lease (timeout + 10 s) ends.
        webhook = {"timeout": "1s"}
        async with cartd_run(tmp_path, dsn, receiver.url, webhook=webhook, **FAST) as d:
            await d.start()
            await wait_until(lambda: receiver.active > 0, timeout=30)
            await d.kill()
        assert (await store.deliveries.counts())["pending"] > 0
        receiver.default = (200, {}, 0.0)
        async with cartd_run(tmp_path, dsn, receiver.url, webhook=webhook, **FAST) as d:
            await d.start()
            await wait_until(lambda: all_delivered(store), timeout=40)
            assert await d.terminate() == 0
    assert await accounted(set(carts_received(receiver)), store)


async def test_sigterm_with_deliveries_in_flight_exits_0_and_loses_nothing(store, dsn, tmp_path):
    await add_agents(store, 3)
    async with scripted_receiver() as receiver:
        receiver.default = (200, {}, 0.5)  # in flight at the SIGTERM, which waits for it
        webhook = {"concurrency": 2}
        async with cartd_run(tmp_path, dsn, receiver.url, webhook=webhook, **FAST) as d:
            await d.start()
            await wait_until(lambda: receiver.active > 0, timeout=30)
            assert await d.terminate() == 0
        leased = await store.pool.fetchval(
            "SELECT count(*) FROM cartd.deliveries WHERE claimed_by IS NOT NULL")
        assert leased == 0  # claims were given back
        receiver.default = (200, {}, 0.0)
        async with cartd_run(tmp_path, dsn, receiver.url, webhook=webhook, **FAST) as d:
            await d.start()
            await wait_until(lambda: all_delivered(store), timeout=30)
            assert await d.terminate() == 0
    assert set(carts_received(receiver)) == await recorded(store)
