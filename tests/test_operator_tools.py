"""The operator's tools on a real `cartd run`: previewing a store, erasing a customer,
the health of each store, and `cartd ctl` as people see it on a terminal (a real pty)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
from datetime import timedelta

import pytest

from cartd.db import Store
from cartshop import cart, complete, shops
from harness import (CARTD, FAST_RETRIES, ROOT, LateReceiver, bodies, cartd_rows, cartd_run,
                     environment, metric, scripted_receiver, wait_until)

pytestmark = pytest.mark.reliability  # part of the fault-injection suite


async def test_preview_shows_kept_and_filtered_carts_records_nothing_and_the_next_cycle_delivers(
        store, dsn, tmp_path):
    async with shops() as shop, scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"enabled": False}) as d:
        settings = {"min_value": 5, "require_marketing_consent": True}
        agent, integration = await shop.agent(store, "new", settings)
        await shop.agent(store, "other")  # another store: left out of the preview
        shop.carts["new"] = [cart("sent-before")]
        await d.start()
        assert (await d.actl("run-once"))[1]["deliveries_succeeded"] == 1
        shop.carts["new"] += [
            cart("k1", price="12.50"), cart("k2", price="3.00", quantity=3),
            cart("recent", idle=timedelta(minutes=10)), cart("old", idle=timedelta(days=8)),
            cart("cheap", price="1.00", quantity=1), cart("nocontact", email=None),
            cart("noconsent", consent=False), cart("bought"),
        ]
        complete(shop.carts["new"][-1])
        before = await cartd_rows(store)
        code, seen = await d.actl("preview", "--integration", str(integration))
        assert await cartd_rows(store) == before  # no cart, delivery, cursor or claim moved
        code_agent, by_agent = await d.actl("preview", "--agent", str(agent))
        code_bad, bad = await d.actl("preview", "--agent", "not-a-uuid")
        sent = len(receiver.requests)
        _, once = await d.actl("run-once")
    assert code == 0 and seen["recorded"] is False and seen["agents_found"] == 1
    [entry] = seen["integrations"]
    assert entry["integration_id"] == str(integration) and entry["error"] is None
    assert [c["cart_id"] for c in entry["kept"]] == ["k1", "k2"]
    assert {c["cart_id"]: c["reason"] for c in entry["filtered"]} == {
        "sent-before": "already delivered", "recent": "too recent", "old": "too old",
        "cheap": "too cheap", "nocontact": "no contact", "noconsent": "no consent",
        "bought": "completed"}
    assert entry["payloads"] == [{"type": "abandoned_cart.detected", "carts": 2,
                                  "currency": "USD", "total_value": 34.0,
                                  "bytes": entry["payloads"][0]["bytes"], "status": "pending",
                                  "error": None}]
    assert "buyer@example.com" not in json.dumps(seen)  # no personal data in the preview
    assert code_agent == 0 and [e["integration_id"] for e in by_agent["integrations"]] == [
        str(integration)]
    assert code_bad == 2 and bad["error"].startswith("agent must be a UUID")  # bad usage
    new = [(i, b) for i, b in bodies(receiver)[sent:] if b["integration"]["id"] == str(integration)]
    assert [[c["cart_id"] for c in b["abandoned_carts"]] for _, b in new] == [["k1", "k2"]]
    assert once["carts_new"] == 2


PERSON = {"email": "Zebediah.Quux@Example.org", "first": "Zebediah", "last": "Quux"}


async def test_forget_erases_a_customer_from_every_table_and_log_line(store, dsn, tmp_path):
    rejecting, down = LateReceiver(), LateReceiver()
    async with shops() as shop, scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"enabled": False},
            webhook={"allowed_override_hosts": ["127.0.0.1"], **FAST_RETRIES}) as d:
        await rejecting.up()
        rejecting.default = (422, {}, 0.0)
        shop.carts["a"] = [cart("p1", **PERSON), cart("o1")]  # delivered, then recovered
        shop.carts["b"] = [cart("p2", **PERSON)]  # rejected: dead
        shop.carts["c"] = [cart("p3", **PERSON), cart("o3")]  # receiver down: pending
        await shop.agent(store, "a")
        await shop.agent(store, "b", {"webhook_url": rejecting.url})
        await shop.agent(store, "c", {"webhook_url": down.url})
        await d.start()
        await d.actl("run-once")
        complete(shop.carts["a"][0])
        await d.actl("run-once")  # p1's recovered event is delivered
        assert sorted(b["type"][15:] for _, b in bodies(receiver)) == ["detected", "recovered"]
        code, counts = await d.actl("forget", "--email", " zebediah.quux@EXAMPLE.org ")
        await wait_until(lambda: _nothing_stale(store))
        await down.up()  # the pending delivery goes without p3
        await wait_until(lambda: len(down.requests) == 1, timeout=20)
        await d.actl("run-once")  # the store still lists p1..p3: none is sent again
        code_other, other = await d.actl("forget", "--customer-id", "cust-o1",
                                         "--integration-id", str(next(iter(
                                             await _integrations(store, "a")))))
        rows = await cartd_rows(store)
        await d.terminate()
        await rejecting.close()
        await down.close()
    log = d.log.read_text()
    assert code == 0 and counts["carts"] == 3 and counts["deliveries_withdrawn"] == 0
    assert counts["deliveries_rebuilt"] + counts["deliveries_in_flight"] == 1
    assert counts["deliveries_redacted"] == 3  # delivered, recovered, dead
    text = json.dumps(rows).lower() + log.lower()
    for secret in ("zebediah", "quux"):
        assert secret not in text
    assert "subject_forgotten" in log
    [(_, late)] = bodies(down)
    assert [c["cart_id"] for c in late["abandoned_carts"]] == ["o3"]
    assert all("p" not in c["cart_id"] for _, b in bodies(receiver)[2:]
               for c in b["abandoned_carts"])
    assert code_other == 0 and other["carts"] == 1 and other["deliveries_redacted"] == 1


async def _nothing_stale(store: Store) -> bool:
    return not await store.pool.fetchval("SELECT count(*) FROM cartd.deliveries WHERE stale")


async def _integrations(store: Store, shop: str) -> list:
    rows = await store.pool.fetch(
        "SELECT id FROM agent_integrations WHERE config ->> 'url' LIKE $1", f"%/{shop}/carts")
    return [r["id"] for r in rows]


def on_a_terminal(*args: str) -> str:
    """`cartd ctl ARGS` with its stdout on a pseudo-terminal; what it printed there."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.run([*CARTD, "ctl", *args], cwd=ROOT, stdout=follower,
                                 stderr=subprocess.PIPE, timeout=60,
                                 env=environment(COLUMNS="200"))
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything is read
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.returncode == 0, process.stderr
        return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r\n", "\n")
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


async def test_a_failing_store_shows_in_ctl_in_metrics_and_ctl_reads_well_on_a_terminal(
        store, dsn, tmp_path):
    async with shops() as shop, scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"interval": "1s"}) as d:
        shop.carts["good"] = [cart("g1")]
        shop.failing["bad"] = 500
        _, good = await shop.agent(store, "good")
        _, bad = await shop.agent(store, "bad")
        await d.start()
        await wait_until(lambda: _failures(store, bad, 2), timeout=30)
        code, failing = await d.actl("integrations", "--failing")
        code_all, every = await d.actl("integrations")
        await d.wait_metric('cartd_integrations_failing{platform="custom"}', lambda n: n == 1,
                            timeout=20)
        scraped = await d.scrape()
        socket = str(d.socket)
        status, table, listed, raw = await asyncio.gather(*(  # four terminals at once
            asyncio.to_thread(on_a_terminal, "--socket", socket, *args)
            for args in (["status"], ["integrations"], ["deliveries"], ["status", "--json"])))
    assert code == 0 and [i["id"] for i in failing] == [str(bad)]
    [entry] = failing
    assert entry["consecutive_failures"] >= 2 and "500" in entry["last_error"]
    assert entry["platform"] == "custom" and entry["mode"] == "live"
    assert entry["last_success_at"] is None and entry["last_polled_at"]
    assert code_all == 0 and {i["id"] for i in every} == {str(good), str(bad)}
    assert metric(scraped, 'cartd_integrations_failing{platform="custom"}') == 1
    assert metric(scraped, 'cartd_integrations_failing{platform="shopify"}') == 0
    assert metric(scraped, 'cartd_integration_poll_age_seconds{platform="custom"}') > 0
    assert re.search(r"^● cartd \S+ - running, polling every 1s$", status, re.M), status
    for field in ("Instance", "Started", "Last cycle", "Deliveries", "Database", "Config",
                  "Config error"):
        assert re.search(rf"^\s*{field}: ", status, re.M), (field, status)
    assert re.search(r"Deliveries: \d+ pending, \d+ dead, \d+ delivered", status)
    assert re.search(r"Last cycle: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, [\d.]+s: 2 agents", status)
    assert "Database: ok" in status and "Config error: none" in status
    header, *lines = table.strip().splitlines()
    assert header.split() == ["ID", "AGENT", "PLATFORM", "MODE", "LAST", "POLL", "LAST",
                              "SUCCESS", "FAILURES", "LAST", "ERROR"]
    assert lines[0].startswith(str(bad)) and "500" in lines[0]
    assert listed.splitlines()[0].split()[:3] == ["ID", "STATUS", "TYPE"]
    assert json.loads(raw)["state"] == "running"  # --json on a terminal: the JSON


async def _failures(store: Store, integration, n: int) -> bool:
    failures = await store.pool.fetchval(
        "SELECT consecutive_failures FROM cartd.sources WHERE integration_id = $1", integration)
    return (failures or 0) >= n
