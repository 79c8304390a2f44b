"""Faults injected into real parts (issue 7): after each, every cart is delivered,
dead-lettered with a reason, or deliberately filtered; none twice except the documented
case (a 2xx cartd never saw), which carries the same webhook-id."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiohttp import web

from cartd.db import Store
from cartd.polling import Poller
from cartd.signing import Signer
from cartshop import HeldStore, live_custom_agent, three_mugs
from harness import (CARTD, ROOT, SECRET, Clock, add_agent, add_agents, all_delivered, app_of,
                     cartd_run, config, delivering, delivery_row, enqueue, free_port, metric,
                     nothing_pending, proxied, raw_receiver, scripted_receiver, serving,
                     wait_until)

pytestmark = pytest.mark.reliability


async def deliver_until(store: Store, clock: Clock, cfg, done, timeout: float = 30) -> None:
    """Run a Deliverer, moving the clock past each retry, until `done()` holds."""
    async with delivering(store, cfg, instance_id="r-1", clock=clock) as deliverer:

        async def progressed() -> bool:
            if await done():
                return True
            if not await store.pool.fetchval(
                    "SELECT count(*) FROM cartd.deliveries WHERE lease_until IS NOT NULL"):
                clock.advance(minutes=1)  # nothing in flight: bring the next retry due
                deliverer.wake()
            return False

        await wait_until(progressed, timeout=timeout, interval=0.1)


@pytest.mark.parametrize("fault", ["reset", "slow_body", "late_2xx"])
async def test_receiver_faults_are_retried_and_end_delivered(store, fault):
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers["webhook-id"])
        await request.read()
        if len(seen) == 1 and fault == "reset":
            request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            request.transport.close()
            return web.Response()
        if len(seen) == 1 and fault == "slow_body":
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            for _ in range(20):
                await response.write(b" ")
                await asyncio.sleep(0.1)
            return response
        if len(seen) == 1 and fault == "late_2xx":
            await asyncio.sleep(1.0)  # twice the timeout
        return web.json_response({"ok": True})

    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with serving(app_of(handler)) as root:
        cfg = config(webhook={"url": f"{root}/hook", "secret": SECRET, "timeout": "500ms"})
        await deliver_until(store, clock, cfg,
                            lambda: _status(store, delivery_id, "delivered"))
    state = await delivery_row(store, delivery_id)
    assert state["attempts"] == 2
    assert seen == [delivery_id, delivery_id]  # a repeat keeps its webhook-id


async def _status(store: Store, delivery_id: str, status: str) -> bool:
    return (await delivery_row(store, delivery_id))["status"] == status


async def test_10000_carts_through_a_receiver_failing_30_percent(store):
    rng = random.Random(7)
    accepted: Counter[str] = Counter()
    carts: Counter[tuple[str, str]] = Counter()

    async def flaky(request: web.Request) -> web.Response:
        body = await request.read()
        if rng.random() < 0.3:
            return web.Response(status=rng.choice([500, 502, 503]))
        Signer((SECRET,)).verify(dict(request.headers), body)
        payload = json.loads(body)
        accepted[request.headers["webhook-id"]] += 1
        for cart in payload["abandoned_carts"]:
            carts[(payload["integration"]["id"], cart["cart_id"])] += 1
        return web.json_response({"ok": True})

    await add_agents(store, 90)
    clock = Clock()
    async with serving(app_of(flaky)) as root:
        cfg = config(webhook={"url": f"{root}/hook", "secret": SECRET,
                              "max_carts_per_payload": 10, "concurrency": 64,
                              "retry_schedule": ["1s"] * 30, "breaker_failures": 1000})
        summary, _ = await Poller(store, lambda: cfg, instance_id="p", clock=clock).run_cycle()
        assert summary.carts_new >= 10_000
        await deliver_until(store, clock, cfg, lambda: nothing_pending(store), timeout=120)
    recorded = await store.pool.fetch("SELECT integration_id, cart_id FROM cartd.sent_carts")
    assert set(carts) == {(str(r["integration_id"]), r["cart_id"]) for r in recorded}
    assert max(carts.values()) == 1 and max(accepted.values()) == 1
    assert (await store.deliveries.counts())["dead"] == 0


async def test_bad_rows_fail_alone_and_are_counted(store):
    await add_agents(store, 3)
    null_config = await add_agent(store, {}, "shopify", {})
    await store.pool.execute("UPDATE agent_integrations SET config = 'null'::jsonb WHERE id = $1",
                             null_config)  # JSON null: treated as {}
    await add_agent(store, {}, "shopify", "a string")
    await add_agent(store, {}, "magento", {"mode": "mock"})
    await add_agent(store, {}, "custom", {"mode": "sometimes"})
    await add_agent(store, [1, 2], "custom", {"mode": "mock"})
    await add_agent(store, {"min_value": "lots"}, "custom", {"mode": "mock"})
    summary, _ = await Poller(store, config, instance_id="p", clock=Clock()).run_cycle()
    assert summary.agents_found == 9
    assert summary.integrations_processed == 4
    assert summary.integration_errors == 5
    delivered = {json.loads(r["body"])["integration"]["platform"] for r in
                 await store.pool.fetch("SELECT body FROM cartd.deliveries")}
    assert delivered == {"shopify", "woocommerce", "custom"}


def test_cartd_receiver_rejects_a_tampered_signature(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [*CARTD, "receiver", "--listen", f"127.0.0.1:{port}", "--secret", SECRET], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = b'{"type":"abandoned_cart.detected","abandoned_carts":[]}'
        headers = Signer((SECRET,)).headers("msg_1", int(time.time()), body)
        answers = asyncio.run(_post_twice(port, body, headers))
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert answers == [200, 401]
    assert "REJECTED" in output


async def _post_twice(port: int, body: bytes, headers: dict[str, str]) -> list[int]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/webhook"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(url):
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        answers = []
        for payload in (body, body.replace(b"[]", b"[1]")):
            async with session.post(url, data=payload, headers=headers) as response:
                answers.append(response.status)
    return answers


async def test_no_secret_reaches_logs_status_or_metrics(store, dsn, tmp_path, pg_server):
    password = "pw-Zq81xK"
    await store.pool.execute(f"CREATE ROLE cartd_reader LOGIN SUPERUSER PASSWORD '{password}'")
    with_password = dsn.replace("postgres@", f"cartd_reader:{password}@", 1).replace(
        "postgres:@", f"cartd_reader:{password}@", 1)
    assert password in with_password
    extra = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    token = "shpat_SECRET_token_0001"
    await add_agents(store, 2)
    await add_agent(store, {}, "shopify", {"mode": "live", "shop_domain": "acme.myshopify.com",
                                           "access_token": token})
    await add_agent(store, {}, "woocommerce", {"mode": "live", "base_url": "http://10.0.0.1",
                                               "consumer_key": "ck_x", "consumer_secret": token})
    async with scripted_receiver() as receiver, cartd_run(
            tmp_path, with_password, receiver.url,
            webhook={"extra_secrets": [extra]}, logging={"level": "debug"},
            polling={"enabled": False}) as d:
        await d.start()
        _, once = await d.actl("run-once")
        assert once["integration_errors"] == 2 and once["deliveries_succeeded"] > 0, once
        d.write("webhook:\n  secret: not-a-secret-" + password + "\n")
        code, failed = await d.request("POST", "/reload")
        assert code == 400
        status = await d.status()
        metrics = await d.scrape()
        assert await d.terminate() == 0
    seen = d.log.read_text() + json.dumps(status) + json.dumps(failed) + metrics
    for secret in (password, SECRET, extra, token):
        assert secret not in seen, secret


async def test_an_agent_url_token_reaches_no_error_and_no_log_line(store, dsn, tmp_path):
    """Agent webhook URLs holding a token in their userinfo, path and query: one with a
    port no URL can have, one whose server answers no HTTP. `last_error` and the log name
    the host and what went wrong, never the URL."""
    token = "tok_Q7x2Lm"
    async with raw_receiver(b"garbage\r\n\r\n") as garbage, scripted_receiver() as receiver, \
            cartd_run(tmp_path, dsn, receiver.url, polling={"enabled": False},
                      webhook={"allowed_override_hosts": ["127.0.0.1"]},
                      platforms={"mock": {"carts_per_hour": 1}}) as d:
        await d.start()
        base = garbage.url.removesuffix("/webhook")
        for url in (f"http://user:{token}@127.0.0.1:99999/{token}?token={token}",
                    f"{base.replace('//', f'//user:{token}@')}/{token}?token={token}"):
            await add_agent(store, {"webhook_url": url}, "custom", {"mode": "mock"})
        _, once = await d.actl("run-once")
        assert once["deliveries_failed"] == once["deliveries_enqueued"] >= 2, once
        _, rows = await d.request("GET", "/deliveries")
        assert await d.terminate() == 0
    errors = {r["last_error"] for r in rows}
    invalid = "InvalidUrlClientError: invalid URL (host 127.0.0.1)"
    [answer] = errors - {invalid}
    assert invalid in errors and answer.startswith("ClientResponseError: 400 ")
    assert answer.endswith(" (host 127.0.0.1)")
    logged = {e["error"] for e in d.events("delivery_attempt")}
    assert logged == errors
    assert token not in d.log.read_text() and token not in json.dumps(rows)


async def test_an_agent_url_outside_the_allowlist_is_counted_dead_and_never_sent_even_replayed(
        store, dsn, tmp_path):
    async with scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"enabled": False},
            webhook={"allowed_override_hosts": ["127.0.0.1"]},
            platforms={"mock": {"carts_per_hour": 1}}) as d:
        await d.start()
        # The receiver answers at localhost too: only the allowlist keeps these from it.
        await add_agents(store, 1, settings={
            "webhook_url": receiver.url.replace("127.0.0.1", "localhost")})
        await add_agents(store, 1)
        _, once = await d.actl("run-once")
        _, dead = await d.request("GET", "/deliveries", status="dead")
        sent = len(receiver.requests)
        assert dead and sent == once["deliveries_succeeded"] == once["deliveries_enqueued"]
        refused = "settings.webhook_url host localhost is not in webhook.allowed_override_hosts"
        assert {r["last_error"] for r in dead} == {refused}
        text = await d.scrape()
        assert metric(text, 'cartd_deliveries_total{outcome="dead"}') == len(dead)
        code, body = await d.actl("replay", "--status", "dead")
        assert code == 0 and body == {"replayed": len(dead)}
        await d.wait_metric('cartd_deliveries_total{outcome="dead"}', lambda n: n == 2 * len(dead))
        _, again = await d.request("GET", "/deliveries", status="dead")
        text = await d.scrape()  # refused unsent: no webhook attempt
        assert metric(text, 'cartd_webhook_attempts_total{result="error"}') == 0
        assert await d.terminate() == 0
    assert {(r["id"], r["last_error"]) for r in again} == {(r["id"], refused) for r in dead}
    assert len(receiver.requests) == sent


async def test_a_cycle_held_up_by_a_slow_store_keeps_its_agents_past_the_lease(store):
    clock = Clock()
    shop = HeldStore([three_mugs(n, "USD", clock.now) for n in range(3)])
    shop.open.clear()
    cfg = config(polling={"interval": "1s"})  # a lease of 5 s, renewed every 1.7 s

    async def renewed() -> bool:
        until = await store.pool.fetchval(
            "SELECT min(lease_until) FROM cartd.agent_polls WHERE claimed_by = 'slow'")
        return until is not None and until > clock.now

    async with serving(app_of(shop.handle)) as root:
        await live_custom_agent(store, f"{root}/hook")
        slow = Poller(store, lambda: cfg, instance_id="slow", clock=clock)
        cycle = asyncio.create_task(slow.run_cycle())
        await wait_until(lambda: shop.requests > 0)
        clock.advance(seconds=60)  # long past the lease the claim took
        await wait_until(renewed)
        other, _ = await Poller(store, lambda: cfg, instance_id="other", clock=clock).run_cycle()
        shop.open.set()
        first, _ = await cycle
    assert (other.agents_found, first.agents_found, first.carts_new) == (0, 1, 3)


async def test_a_currency_mix_gives_one_payload_per_currency_with_exact_totals(store):
    clock = Clock()
    shop = HeldStore([three_mugs(n, "USD" if n % 3 else "EUR", clock.now) for n in range(9)])
    async with serving(app_of(shop.handle)) as root:
        await live_custom_agent(store, f"{root}/hook")
        summary, _ = await Poller(store, config, instance_id="p", clock=clock).run_cycle()
    bodies = [json.loads(r["body"], parse_float=Decimal)
              for r in await store.pool.fetch("SELECT body FROM cartd.deliveries")]
    by_currency = {b["recovery_analytics"]["currency"]: b for b in bodies}
    assert set(by_currency) == {"USD", "EUR"} and len(bodies) == 2
    assert by_currency["USD"]["recovery_analytics"]["total_value"] == Decimal("359.82")
    assert by_currency["EUR"]["recovery_analytics"]["total_value"] == Decimal("179.91")
    assert all(c["currency"] == b["recovery_analytics"]["currency"]
               for b in bodies for c in b["abandoned_carts"])
    assert summary.recovery_value == {"USD": Decimal("359.82"), "EUR": Decimal("179.91")}


async def test_kill_9_mid_cycle_then_restart_delivers_every_cart_once(store, dsn, tmp_path):
    clock_now = Clock(start=datetime.now(UTC)).now
    shop = HeldStore([three_mugs(n, "USD", clock_now) for n in range(20)])
    shop.open.clear()  # the cycle is stuck fetching when the daemon dies
    received: Counter[tuple[str, str]] = Counter()
    async with serving(app_of(shop.handle)) as root:
        await live_custom_agent(store, f"{root}/hook")
        await add_agents(store, 2)
        async with scripted_receiver() as receiver, cartd_run(
                tmp_path, dsn, receiver.url, polling={"interval": "1s"}) as d:
            await d.start()
            await wait_until(lambda: shop.requests > 0, timeout=20)
            await d.kill()
            shop.open.set()
        async with scripted_receiver() as receiver2, cartd_run(
                tmp_path / "again", dsn, receiver2.url,
                polling={"interval": "1s"}, shutdown_timeout="5s") as d2:
            await d2.start()
            # the dead instance's claims come back after their lease; what it delivered
            # before it died counts too
            receivers = [receiver, receiver2]
            await wait_until(lambda: _carts_of(receivers, received) >= 20, timeout=120)
            await wait_until(lambda: nothing_pending(store), timeout=30)  # the mock agents' too
            assert await d2.terminate() == 0
    _carts_of(receivers, received)  # with what went out while it stopped
    # a cart a later cycle recorded just before the stop waits for the next start
    waiting: Counter[tuple[str, str]] = Counter()
    for pending in await store.pool.fetch(
            "SELECT body FROM cartd.deliveries WHERE status = 'pending'"):
        _count_carts(json.loads(pending["body"]), waiting)
    recorded, completed = await _recorded(store)
    assert recorded - completed <= set(received) | set(waiting)
    assert max(received.values()) == 1


def _count_carts(payload: dict, counter: Counter) -> None:
    for cart in payload["abandoned_carts"]:
        counter[(payload["integration"]["id"], cart["cart_id"])] += 1


def _carts_of(receivers, received: Counter) -> int:
    received.clear()
    for _, body in (request for receiver in receivers for request in receiver.requests):
        _count_carts(json.loads(body), received)
    return sum(1 for key in received if key[1].startswith("c"))


async def test_a_database_restarting_again_and_again_loses_and_doubles_nothing(
        store, dsn, tmp_path):
    await add_agents(store, 6)
    proxy, via_proxy = proxied(dsn)
    await proxy.up()
    async with scripted_receiver() as receiver, cartd_run(
            tmp_path, via_proxy, receiver.url, polling={"interval": "1s"},
            platforms={"mock": {"carts_per_hour": 60}}) as d:
        await d.start()
        for _ in range(3):  # cut every connection in the middle of cycles and deliveries
            await wait_until(lambda: len(receiver.requests) > 0, timeout=20)
            await proxy.down()
            await asyncio.sleep(0.5)
            await proxy.up()
        await wait_until(lambda: all_delivered(store), timeout=60)
        assert await d.terminate() == 0
    await proxy.down()
    accepted = Counter()
    ids: dict[tuple[str, str], set[str]] = {}
    for headers, body in receiver.requests:
        payload = json.loads(body)
        for cart in payload["abandoned_carts"]:
            key = (payload["integration"]["id"], cart["cart_id"])
            accepted[key] += 1
            ids.setdefault(key, set()).add(headers["webhook-id"])
    recorded, completed = await _recorded(store)
    # a cart that completed while the database was away left its pending delivery: the
    # receiver never hears of it (README "What the receiver sees when a cart completes")
    assert set(accepted) <= recorded and recorded - set(accepted) <= completed
    assert all(len(v) == 1 for v in ids.values())  # a repeat is the same webhook


async def _recorded(store: Store) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The carts in the dedupe memory, and those of them seen completed."""
    rows = await store.pool.fetch(
        "SELECT integration_id::text AS i, cart_id, recovered_at FROM cartd.sent_carts")
    return ({(r["i"], r["cart_id"]) for r in rows},
            {(r["i"], r["cart_id"]) for r in rows if r["recovered_at"] is not None})


async def test_a_statement_timeout_fails_the_cycle_and_the_daemon_recovers(
        store, dsn, tmp_path):
    await add_agents(store, 2)
    database = dsn.split("?")[0].rsplit("/", 1)[1]
    await store.pool.execute(f'ALTER DATABASE "{database}" SET statement_timeout = \'300ms\'')
    async with scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"interval": "1s"}) as d:
        async with store.pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE cartd.agent_polls IN ACCESS EXCLUSIVE MODE")
            await d.start()
            await d.wait_metric('cartd_poll_cycles_total{outcome="error"}', lambda n: n >= 1,
                                timeout=20)
        await d.wait_status(lambda status: status["database"] == "ok", timeout=20)
        await wait_until(lambda: all_delivered(store), timeout=30)
        assert await d.terminate() == 0
    assert "canceling statement due to statement timeout" in d.log.read_text()


async def test_oversized_control_bodies_are_refused(store, dsn, tmp_path):
    import aiohttp

    async with scripted_receiver() as receiver, cartd_run(tmp_path, dsn, receiver.url) as d:
        await d.start()
        connector = aiohttp.UnixConnector(path=str(d.socket))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post("http://cartd/reload", data=b"x" * (1 << 20)) as r:
                assert r.status == 413 and "error" in await r.json()
        code, status = await d.request("GET", "/status")
        assert code == 200 and status["config_error"] is None
        assert await d.terminate() == 0
