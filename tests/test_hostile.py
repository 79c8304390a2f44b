"""Hostile data (issue 14): no record, integration, agent, cycle, maintenance round or
reload takes down more than itself, a cart listed twice is one cart, and the real daemon
stays up while one store serves every malformed kind at once beside the healthy stores of
other agents."""

from __future__ import annotations

import copy
import json
import os
import signal
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import structlog
import yaml
from aiohttp import web

from cartd.cycle import plan
from cartd.db import AgentWork, DatabaseHealth
from cartd.metrics import Metrics
from cartd.polling import Poller, PollLoop
from cartd.rules import agent_card
from cartshop import live_custom_agent, three_mugs
from harness import (Clock, add_agent, add_agents, app_of, cartd_run, config, metric,
                     running_daemon,
                     scripted_receiver, serving, wait_until)

pytestmark = pytest.mark.reliability

RAW = "__raw__"  # a string the hostile store replaces by a raw JSON token


def _broken(now: datetime, n: int, path: tuple, value) -> dict:
    record = three_mugs(n, "USD", now)
    target = record
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return record


def hostile_records(now: datetime) -> tuple[list, Counter]:
    """One record of every malformed kind, each with the reason it is counted under."""
    kinds = [
        (("items", 0, "unit_price"), "1e400", "unit_price is too large"),
        (("items", 0, "quantity"), 10**20, "quantity must be a whole number from 1 to 99999999"),
        (("items", 0, "unit_price"), RAW + "1e400", "unit_price must be a finite number >= 0"),
        (("items", 0, "unit_price"), RAW + "NaN", "unit_price must be a finite number >= 0"),
        (("items", 0, "unit_price"), "-0.01", "unit_price must be a finite number >= 0"),
        (("items", 0, "unit_price"), "999999999.99", "amounts are too large to be written exactly"),
        (("total_value",), "1e11", "total_value is too large"),
        (("items", 0, "title"), "Mug \ud800", "item title is not valid Unicode"),
        (("items", 0, "title"), "M" * 5000, "item title is longer than 1000 characters"),
        (("cart_id",), "c\x00", "cart_id contains a NUL character"),
        (("cart_id",), KeyError, "cart_id is missing"),
        (("cart_id",), 1.5, "cart_id is not a string or a 64-bit integer"),
        (("currency",), "XAU", "currency is not an ISO 4217 code"),
        (("created_at",), "0001-01-01T00:00:00+05:00", "created_at is out of range"),
        (("abandoned_at",), "yesterday", "abandoned_at is not an ISO 8601 time"),
        (("customer",), ["dee"], "customer is not an object"),
        (("customer", "email"), 42, "email is not a string"),
        (("items",), {"0": "mug"}, "items is not a list"),
        (("items", 0), "mug", "item is not an object"),
        (("recovery_url",), "javascript:alert(1)", "recovery_url is not an http(s) URL"),
    ]
    records: list = [_broken(now, 100 + n, path, value) for n, (path, value, _) in
                     enumerate(kinds)]
    records.append("not a cart")
    reasons = Counter(reason for _, _, reason in kinds)
    reasons["cart is not an object"] += 1
    return records, reasons


def _body(records: list, following: str | None) -> str:
    """JSON as a careless store writes it: raw tokens (1e400, NaN) where RAW marks them."""
    text = json.dumps({"carts": records, "next": following})
    return text.replace(f'"{RAW}1e400"', "1e400").replace(f'"{RAW}NaN"', "NaN")


class HostileStore:
    """A custom store with two pages: every malformed kind, and a good cart listed three
    times (twice on page 1, again on page 2 with a later activity and a new title)."""

    def __init__(self, now: datetime) -> None:
        self.bad, self.reasons = hostile_records(now)
        good = three_mugs(1, "USD", now)
        twice = copy.deepcopy(good)
        latest = copy.deepcopy(good)
        latest["abandoned_at"] = (now - timedelta(minutes=90)).isoformat()
        latest["items"][0]["title"] = "Mug, latest"
        self.pages = [self.bad[:10] + [good, twice], self.bad[10:] + [latest]]
        self.root = ""

    async def handle(self, request: web.Request) -> web.Response:
        page = int(request.query.get("page", "0"))
        following = f"{self.root}/hostile?page=1" if page == 0 else None
        return web.Response(text=_body(self.pages[page], following),
                            content_type="application/json")


class GrowingStore:
    """A healthy custom store: every poll finds one more abandoned cart."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.carts: list[dict] = []

    async def handle(self, _: web.Request) -> web.Response:
        cart = three_mugs(len(self.carts), "EUR", datetime.now(UTC))
        cart["cart_id"] = f"{self.name}-{len(self.carts)}"
        self.carts.append(cart)
        return web.json_response({"carts": self.carts, "next": None})


async def _nested(_: web.Request) -> web.Response:
    """JSON nested deeper than any parser's recursion limit."""
    return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")


def _received(receiver) -> Counter:
    carts: Counter = Counter()
    for _, raw in receiver.requests:
        body = json.loads(raw)
        carts.update(c["cart_id"] for c in body["abandoned_carts"])
    return carts


async def test_one_store_serving_every_malformed_kind_stops_no_one(store, dsn, tmp_path):
    now = datetime.now(UTC)
    hostile = HostileStore(now)
    healthy = [GrowingStore("g"), GrowingStore("h")]
    app = web.Application()
    app.router.add_get("/hostile", hostile.handle)
    app.router.add_get("/nested", _nested)
    for shop in healthy:
        app.router.add_get(f"/{shop.name}", shop.handle)
    async with serving(app) as root, scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"interval": "1s"}) as d:
        hostile.root = root
        hostile_id = await add_agent(store, {}, "custom", {"mode": "live",
                                                           "url": f"{root}/hostile"})
        await add_agent(store, {}, "custom", {"mode": "live", "url": f"{root}/nested"})
        odd = await add_agent(store, {}, "custom", {"mode": "mock"})
        await store.pool.execute(  # jsonb keeps 1e400, which JSON readers take as infinity
            "UPDATE company_agents SET settings = '{\"abandoned_after\": 1e400}'::jsonb"
            " WHERE id = (SELECT agent_id FROM agent_integrations WHERE id = $1)", odd)
        for shop in healthy:
            await add_agent(store, {}, "custom", {"mode": "live", "url": f"{root}/{shop.name}"})
        await d.start()

        def received_three_each() -> bool:
            got = _received(receiver)
            return all(sum(1 for c in got if c.startswith(s.name)) >= 3 for s in healthy)

        await wait_until(received_three_each, timeout=60)
        assert d.process.returncode is None
        await d.wait_metric('cartd_poll_cycles_total{outcome="ok"}', lambda n: n >= 3)
        assert metric(await d.scrape(), 'cartd_poll_cycles_total{outcome="error"}') == 0
        assert await d.terminate() == 0

    got = _received(receiver)
    assert max(got.values()) == 1  # nothing twice: the good cart listed three times is one
    assert got["c1"] == 1
    [good] = [c for _, raw in receiver.requests for c in json.loads(raw)["abandoned_carts"]
              if c["cart_id"] == "c1"]
    assert good["items"][0]["title"] == "Mug, latest" and good["total_value"] == 59.97
    for shop in healthy:  # the cart each of the first cycles found, delivered once
        mine = {int(c.split("-")[1]) for c in got if c.startswith(shop.name + "-")}
        assert {0, 1, 2} <= mine
    skipped = [e for e in d.events("malformed_records_skipped")
               if e["integration_id"] == str(hostile_id)]
    assert len(skipped) >= 3  # every cycle, every bad record counted under its reason
    assert all(e["reasons"] == dict(hostile.reasons) and e["count"] == len(hostile.bad)
               for e in skipped)
    failed = [e for e in d.events("integration_failed") if e["level"] == "error"]
    assert failed and all("RecursionError" in e["exception"] for e in failed)
    assert any("abandoned_after" in e["error"] for e in d.events("agent_skipped"))
    cycles = d.events("cycle_finished")
    assert all(c["integration_errors"] == 2 for c in cycles)


async def test_a_cart_listed_twice_and_on_the_next_page_is_delivered_once(store):
    clock = Clock()
    shop = HostileStore(clock.now)
    app = web.Application()
    app.router.add_get("/hostile", shop.handle)
    async with serving(app) as root:
        shop.root = root
        await add_agent(store, {}, "custom", {"mode": "live", "url": f"{root}/hostile"})
        summary, _ = await Poller(store, config, instance_id="p", clock=clock).run_cycle()
    [row] = await store.pool.fetch("SELECT body, carts FROM cartd.deliveries")
    body = json.loads(row["body"], parse_float=Decimal)
    assert row["carts"] == 1 and [c["cart_id"] for c in body["abandoned_carts"]] == ["c1"]
    assert body["abandoned_carts"][0]["items"][0]["title"] == "Mug, latest"
    assert body["recovery_analytics"]["total_value"] == Decimal("59.97")
    assert body["recovery_analytics"]["total_items"] == 3
    assert (summary.carts_found, summary.carts_new) == (1, 1)


def _agent(integrations: list[dict], **company) -> AgentWork:
    return AgentWork(id=uuid.uuid4(), name="Agent", template_slug="ecommerce-abandoned-cart",
                     settings={}, integrations=integrations,
                     company={"id": "c-1", "name": "Co", "website": None, "email": None,
                              "phone": None, **company})


async def test_an_integration_listed_twice_in_a_cycle_is_polled_once(store) -> None:
    row = {"id": str(uuid.uuid4()), "platform": "custom", "config": {"mode": "mock"}}
    agents = [_agent([row, dict(row)]), _agent([dict(row)])]
    taken: set = set()
    jobs, unpolled = await plan(store, agents, config(), taken)
    assert [str(job.integration.id) for job in jobs] == [row["id"]]
    assert unpolled == []
    assert await plan(store, [_agent([dict(row)])], config(), taken) == ([], [])  # a later batch


@pytest.mark.parametrize(("company", "error"), [
    ({"name": ["Co"]}, "company name is not text"),
    ({"website": "https://co.example.com/" + "x" * 5000},
     "company website is longer than 4096 characters"),
    ({"email": 7}, "company email is not text"),
])
async def test_an_agent_whose_rows_a_payload_cannot_carry_fails_alone(
        store, company, error) -> None:
    good = _agent([{"id": str(uuid.uuid4()), "platform": "custom"}])
    bad = _agent([{"id": str(uuid.uuid4()), "platform": "custom"}], **company)
    with pytest.raises(ValueError, match=error):
        agent_card(bad)
    with structlog.testing.capture_logs() as logs:
        jobs, unpolled = await plan(store, [bad, good], config())
    assert [job.agent.id for job in jobs] == [good.id]
    assert [(f.agent_id, f.error) for f in unpolled] == [(bad.id, f"agent: {error}")]
    assert [(e["event"], e["log_level"]) for e in logs] == [("agent_skipped", "warning")]
    assert agent_card(good).agent["name"] == "Agent"


async def test_an_unexpected_exception_fails_that_cycle_and_the_next_one_runs(store):
    cfg, database, metrics = config(polling={"interval": "1h"}), DatabaseHealth(), Metrics()
    database.succeeded("cycle")  # connected
    polling = PollLoop(Poller(store, lambda: cfg, instance_id="d", clock=Clock()),
                       database=database, metrics=metrics, enabled=True)
    real = store.agents.source_states
    faults = [RuntimeError("a bug")]

    async def source_states(ids):
        if faults:
            raise faults.pop()
        return await real(ids)

    store.agents.source_states = source_states
    await add_agent(store, {}, "custom", {"mode": "mock"})
    with structlog.testing.capture_logs() as logs:
        assert await polling.run_cycle() is None
        assert (await polling.run_cycle()) is not None
    [failed] = [e for e in logs if e["event"] == "cycle_failed"]
    assert failed["log_level"] == "error" and failed["exc_info"] is True
    assert failed["error"] == "cycle failed: RuntimeError: a bug"
    assert polling.error is None and polling.cycles == 1
    samples = {s.labels["outcome"]: s.value for m in metrics.poll_cycles.collect()
               for s in m.samples if s.name.endswith("_total")}
    assert samples == {"ok": 1, "error": 1}


def _in_process(dsn: str, tmp_path, **sections) -> dict:
    """The settings of a daemon run in the test's event loop: its database, its socket,
    no metrics listener, polling off."""
    return {"database": {"dsn": dsn}, "polling": {"enabled": False},
            "control": {"socket": str(tmp_path / "ctl.sock")}, "metrics": {"listen": ""},
            **sections}


async def test_a_maintenance_round_that_raises_is_logged_once_and_the_daemon_goes_on(
        store, dsn, tmp_path, receiver):
    """Rebuilding stale deliveries raises (injected) after a cycle and in the health loop's
    rounds: the cycle's deliveries still go, the daemon stays up, the error is logged once
    with its traceback, and the outbox is settled again once the fault is gone."""
    await add_agents(store, 2)
    cfg = config(**_in_process(dsn, tmp_path, webhook={"url": receiver.url}))
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(cfg, Clock()) as daemon:
            real = daemon.store.outbox.refresh_stale
            failed: list[int] = []

            async def refresh_stale(**arguments):
                if len(failed) < 2:
                    failed.append(1)
                    raise RuntimeError("a bug")
                return await real(**arguments)

            daemon.store.outbox.refresh_stale = refresh_stale
            once = await daemon.run_once()
            assert once["deliveries_succeeded"] == once["deliveries_enqueued"] > 0
            await wait_until(lambda: any(e["event"] == "maintenance_recovered" for e in logs))
            assert (await daemon.status())["database"] == "ok"
    [event] = [e for e in logs if e["event"] == "maintenance_failed"]
    assert (event["job"], event["error"], event["log_level"], event["exc_info"]) == (
        "outbox", "RuntimeError: a bug", "error", True)
    assert len(failed) == 2


async def test_a_sighup_reload_that_fails_other_than_on_the_file_keeps_the_old_config(
        store, dsn, tmp_path):
    """Applying a valid file raises (injected: the new pool cannot be made): the old
    config stays, and the failure is logged with its traceback, counted and shown in
    /status, as a bad file is."""
    settings = _in_process(dsn, tmp_path)
    path = tmp_path / "cartd.yaml"
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(config(**settings), Clock(), config_path=path) as daemon:

            async def reconnect(*_):
                raise RuntimeError("no pool")

            daemon.store.reconnect = reconnect
            settings["polling"]["interval"] = "45s"
            settings["database"]["max_connections"] = 5  # a new pool
            path.write_text(yaml.safe_dump(settings))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_until(lambda: daemon.config_error is not None)
            status = await daemon.status()
            exposed = daemon.metrics.exposition().decode()
    assert status["interval_seconds"] == 30
    assert status["config_error"] == "config reload failed: RuntimeError: no pool"
    assert metric(exposed, 'cartd_config_reloads_total{outcome="error"}') == 1
    [event] = [e for e in logs if e["event"] == "config_reload_failed"]
    assert event["error"] == status["config_error"] and event["exc_info"] is True


async def test_a_store_error_text_with_nul_and_control_bytes_fails_that_store_alone(store):
    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"message": "down\x00\x1b[31m \ud800 again"}, status=500)

    async with serving(app_of(broken)) as root:
        iid = await live_custom_agent(store, f"{root}/carts")
        await add_agents(store, 2)  # healthy stores in the same group
        cfg = config()
        summary, _ = await Poller(store, lambda: cfg, instance_id="nul").run_cycle(force=True)
    assert summary.integration_errors == 1 and summary.carts_new > 0
    error = await store.pool.fetchval(
        "SELECT last_error FROM cartd.sources WHERE integration_id = $1", iid)
    assert error.startswith("HTTP 500 from 127.0.0.1: down") and error.isprintable()
