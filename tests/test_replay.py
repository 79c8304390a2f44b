"""Replay through a real `cartd run`: all dead deliveries since a time, one delivery, a
delivered one, expired ones; always with the original webhook-id."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from standardwebhooks import Webhook

from aiohttp import web

from cartd.db import Store
from harness import (SECRET, Scripted, add_agents, app_of, cartd_run, scripted_receiver, serving,
                     wait_until)


async def statuses(store: Store) -> dict[str, str]:
    return {r["id"]: r["status"] for r in await store.pool.fetch(
        "SELECT id, status FROM cartd.deliveries")}


async def test_replaying_dead_deliveries_since_a_time_resends_them_with_their_ids(
        store, dsn, tmp_path):
    async with scripted_receiver() as receiver, cartd_run(
            tmp_path, dsn, receiver.url, polling={"enabled": False},
            platforms={"mock": {"carts_per_hour": 1}}) as d:
        receiver.default = (422, {}, 0.0)  # the receiver rejects everything: dead at once
        await d.start()
        await add_agents(store, 3)
        _, first = await d.actl("run-once")
        assert first["deliveries_failed"] == first["deliveries_enqueued"] == 3
        early = set(await statuses(store))
        await asyncio.sleep(0.05)
        since = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        await add_agents(store, 4)
        await d.actl("run-once")
        late = set(await statuses(store)) - early
        assert len(late) == 4 and set((await statuses(store)).values()) == {"dead"}

        receiver.default = (200, {}, 0.0)  # fixed: replay what died since `since`
        rejected = len(receiver.requests)
        code, replayed = await d.actl("replay", "--status", "dead", "--since", since)
        assert code == 0 and replayed == {"replayed": 4}
        await wait_until(lambda: _have(store, late, "delivered"))
        resent = [h["webhook-id"] for h, _ in receiver.requests[rejected:]]
        assert sorted(resent) == sorted(late)
        assert await _have(store, early, "dead")  # older than `since`: untouched

        one = sorted(early)[0]  # one delivery by id
        code, body = await d.actl("replay", one)
        assert code == 0 and body == {"replayed": 1, "id": one}
        await wait_until(lambda: _have(store, {one}, "delivered"))
        code, body = await d.actl("replay", one)  # a delivered one is queued again too
        assert code == 0
        await wait_until(lambda: [h["webhook-id"] for h, _ in receiver.requests].count(one) == 3)
        await wait_until(lambda: _have(store, {one}, "delivered"))
        code, rest = await d.actl("replay", "--status", "dead")
        assert code == 0 and rest == {"replayed": 2}
        await wait_until(lambda: _have(store, early | late, "delivered"))
        _, status = await d.actl("status")
        _, listed = await d.actl("deliveries", "--limit", "7")
        assert {row["attempted_by"] for row in listed} == {status["instance_id"]}
        assert await d.terminate() == 0
    for headers, body in receiver.requests:
        Webhook(SECRET).verify(body, headers)
    firsts = {h["webhook-id"]: b for h, b in receiver.requests[:7]}
    assert all(firsts[h["webhook-id"]] == b for h, b in receiver.requests)  # same body, same id


class Gate(Scripted):
    """A receiver that holds each request, once it has arrived, until `opened` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = 0
        self.opened = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.opened.wait()
        return await super().handle(request)


async def test_an_expired_delivery_replayed_by_id_or_with_the_dead_is_delivered(
        store, dsn, tmp_path):
    """README "Delivery guarantees": a replayed delivery has a whole max_delivery_age from
    the replay, and starts with no attempt, status or error of before."""
    gate = Gate()
    gate.default = (503, {}, 0.0)
    gate.opened.set()
    async with serving(app_of(gate.handle)) as root, cartd_run(
            tmp_path, dsn, f"{root}/webhook", polling={"enabled": False},
            platforms={"mock": {"carts_per_hour": 1}}) as d:
        await d.start()
        await add_agents(store, 3)
        _, once = await d.actl("run-once")
        assert once["deliveries_failed"] == once["deliveries_enqueued"] == 3
        # Recorded two days ago: the daemon's health loop expires them.
        await store.pool.execute(
            "UPDATE cartd.deliveries SET created_at = created_at - interval '2 days'")
        await wait_until(lambda: _expired(store))
        expired = await d.request("GET", "/deliveries", status="dead")
        ids = sorted(row["id"] for row in expired[1])
        assert len(ids) == 3
        assert all(row["last_error"].startswith(
            "expired: not delivered within 24h (last attempt: HTTP 503") for row in expired[1])

        gate.default, first = (200, {}, 0.0), ids[0]
        gate.opened.clear()  # the replayed attempt is held at the receiver
        arrived = gate.arrived
        code, body = await d.actl("replay", first)
        assert code == 0 and body == {"replayed": 1, "id": first}
        await wait_until(lambda: gate.arrived > arrived)
        _, [row] = await d.request("GET", "/deliveries", status="pending")
        assert (row["id"], row["attempts"], row["last_status"], row["last_error"]) == (
            first, 0, None, None)
        gate.opened.set()
        await wait_until(lambda: _have(store, {first}, "delivered"))

        code, rest = await d.actl("replay", "--status", "dead")
        assert code == 0 and rest == {"replayed": 2}
        await wait_until(lambda: _have(store, set(ids), "delivered"))
        _, listed = await d.request("GET", "/deliveries")
        assert {r["id"]: (r["status"], r["attempts"], r["last_status"]) for r in listed} == {
            i: ("delivered", 1, 200) for i in ids}
        assert await d.terminate() == 0
    assert sorted(h["webhook-id"] for h, _ in gate.requests[-3:]) == ids


async def _expired(store: Store) -> bool:
    return await store.pool.fetchval(
        "SELECT count(*) = 3 FROM cartd.deliveries"
        " WHERE status = 'dead' AND last_error LIKE 'expired:%'")


async def _have(store: Store, ids: set[str], status: str) -> bool:
    current = await statuses(store)
    return all(current[i] == status for i in ids)
