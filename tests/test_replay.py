"""Replay through a real `cartd run`: all dead deliveries since a time, one delivery, a
delivered one; always with the original webhook-id."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from standardwebhooks import Webhook

from cartd.db import Store
from harness import SECRET, add_agents, cartd_run, scripted_receiver, wait_until


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


async def _have(store: Store, ids: set[str], status: str) -> bool:
    current = await statuses(store)
    return all(current[i] == status for i in ids)
