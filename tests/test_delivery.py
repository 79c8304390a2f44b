"""Delivery against real aiohttp receivers: outcomes, retries, signatures, concurrency."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import asyncpg
import pytest
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from cartd.attempts import Attempt, decide, retry_after_seconds
from cartd.db import Store
from cartd.delivery import UNRECORDED_MAX
from harness import (SECRET, Clock, Scripted, config, delivering, delivery_row, enqueue, free_port,
                     raw_receiver, wait_until)

pytestmark = pytest.mark.reliability  # part of the fault-injection suite


def cfg_for(receiver: Scripted, **webhook):
    return config(webhook={"url": receiver.url, "secret": SECRET, **webhook})


async def attempts_reach(store: Store, delivery_id: str, n: int) -> None:
    await wait_until(lambda: _attempts(store, delivery_id, n))


async def _attempts(store: Store, delivery_id: str, n: int) -> bool:
    return (await delivery_row(store, delivery_id))["attempts"] >= n


async def test_503_twice_then_200_delivers_on_the_third_attempt_with_the_same_id(store, receiver):
    receiver.script = [(503, {}, 0), (503, {}, 0), (200, {}, 0)]
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with delivering(store, cfg_for(receiver), clock=clock) as deliverer:
        for n in (1, 2):
            await attempts_reach(store, delivery_id, n)
            state = await delivery_row(store, delivery_id)
            assert state["status"] == "pending" and state["last_status"] == 503
            clock.now = state["next_attempt_at"] + timedelta(milliseconds=1)
            deliverer.wake()
        await attempts_reach(store, delivery_id, 3)
    state = await delivery_row(store, delivery_id)
    assert state["status"] == "delivered" and state["delivered_at"] is not None
    assert [h["webhook-id"] for h, _ in receiver.requests] == [delivery_id] * 3
    for headers, body in receiver.requests:
        Webhook(SECRET).verify(body, headers)
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"].startswith("cartd/")


@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_4xx_dead_letters_at_once(store, receiver, status):
    receiver.default = (status, {}, 0)
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with delivering(store, cfg_for(receiver), clock=clock):
        await attempts_reach(store, delivery_id, 1)
    state = await delivery_row(store, delivery_id)
    assert (state["status"], state["attempts"], state["last_status"]) == ("dead", 1, status)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 301, 302])
async def test_retryable_answers_schedule_a_retry(store, receiver, status):
    receiver.default = (status, {"Location": receiver.url + "/elsewhere"}, 0)
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with delivering(store, cfg_for(receiver), clock=clock):
        await attempts_reach(store, delivery_id, 1)
    state = await delivery_row(store, delivery_id)
    assert state["status"] == "pending" and state["last_status"] == status
    delay = (state["next_attempt_at"] - clock.now).total_seconds()
    assert 4.0 <= delay <= 6.0
    assert len(receiver.requests) == 1  # redirects are not followed


async def test_a_timeout_is_retried(store, receiver):
    receiver.default = (200, {}, 1.0)  # well past the timeout
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with delivering(store, cfg_for(receiver, timeout="300ms"), clock=clock):
        await attempts_reach(store, delivery_id, 1)
    state = await delivery_row(store, delivery_id)
    assert state["status"] == "pending" and "0.3s" in state["last_error"]


async def test_a_connection_error_is_retried(store):
    port = free_port()
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    cfg = config(webhook={"url": f"http://127.0.0.1:{port}/hook"})
    async with delivering(store, cfg, clock=clock):
        await attempts_reach(store, delivery_id, 1)
    state = await delivery_row(store, delivery_id)
    assert state["status"] == "pending" and state["last_status"] is None and state["last_error"]


async def test_retry_after_is_clamped_to_twice_the_scheduled_delay(store, receiver):
    receiver.default = (429, {"Retry-After": "3600"}, 0)
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with delivering(store, cfg_for(receiver, retry_jitter=0), clock=clock):
        await attempts_reach(store, delivery_id, 1)
    state = await delivery_row(store, delivery_id)
    assert state["next_attempt_at"] - clock.now == timedelta(seconds=10)


async def test_at_most_concurrency_requests_in_flight(store, receiver):
    receiver.default = (200, {}, 0.2)
    clock = Clock()
    ids = await enqueue(store, clock.now, 20)
    async with delivering(store, cfg_for(receiver, concurrency=4), clock=clock):
        await wait_until(lambda: _all_delivered(store, ids), timeout=20)
    assert receiver.peak == 4
    assert sorted(h["webhook-id"] for h, _ in receiver.requests) == sorted(ids)


async def test_a_database_that_records_no_outcome_stops_new_attempts(store, dsn, receiver):
    """While outcomes cannot be written, at most (1 + UNRECORDED_MAX) x concurrency
    webhooks go out (what a crash then would send twice); once the database writes again,
    every delivery is recorded and none was sent twice."""
    # Outcome writes change a row's status; claims do not. The test holds the lock that
    # a status change waits for.
    await store.pool.execute("""
        CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
        CREATE TRIGGER hold BEFORE UPDATE ON cartd.deliveries FOR EACH ROW
            WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION test_hold();
    """)
    holder = await asyncpg.connect(dsn)
    await holder.execute("SELECT pg_advisory_lock(4242)")
    clock = Clock()
    ids = await enqueue(store, clock.now, 300)
    bound = (1 + UNRECORDED_MAX) * 4
    async with delivering(store, cfg_for(receiver, concurrency=4), clock=clock):
        try:
            await wait_until(lambda: len(receiver.requests) >= UNRECORDED_MAX * 4)
            for _ in range(20):  # a second without outcomes: the count must stay bounded
                assert len(receiver.requests) <= bound
                await asyncio.sleep(0.05)
        finally:
            await holder.close()
        await wait_until(lambda: _all_delivered(store, ids), timeout=30)
    sent = [h["webhook-id"] for h, _ in receiver.requests]
    assert sorted(sent) == sorted(ids)


async def test_a_reason_phrase_no_row_can_hold_is_recorded_readable_and_delivery_goes_on(store):
    """A receiver answering a reason phrase with a NUL and bytes that are not UTF-8
    (PostgreSQL stores neither): the outcome is written with them replaced, and the
    retry is delivered; before, the writer retried that outcome for ever and every
    later attempt waited behind it."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    odd = b"HTTP/1.1 503 \xff\x00 down\r\nContent-Length: 0\r\n\r\n"
    clock = Clock()
    [delivery_id] = await enqueue(store, clock.now)
    async with raw_receiver(ok, (odd,)) as raw, delivering(
            store, config(webhook={"url": raw.url}), clock=clock) as deliverer:
        await attempts_reach(store, delivery_id, 1)
        state = await delivery_row(store, delivery_id)
        assert (state["status"], state["last_status"], state["last_error"]) == (
            "pending", 503, "HTTP 503 \ufffd\ufffd down")
        clock.now = state["next_attempt_at"] + timedelta(milliseconds=1)
        deliverer.wake()
        await attempts_reach(store, delivery_id, 2)
    assert (await delivery_row(store, delivery_id))["status"] == "delivered"
    assert raw.requests == 2


async def test_outcomes_that_fail_to_be_written_are_attempted_again_and_later_ones_written(
        store, receiver):
    """An unexpected exception writing a batch of outcomes (injected, once) is logged with
    its traceback; the writer goes on, later outcomes are written, and the batch's
    deliveries are attempted again, with the same webhook-id, once their lease runs
    out."""
    real = store.deliveries.record_outcomes
    given_up: list[str] = []

    async def fails_once(outcomes, instance):
        if not given_up:
            given_up.extend(o.id for o in outcomes)
            raise RuntimeError("a bug")
        return await real(outcomes, instance)

    store.deliveries.record_outcomes = fails_once
    clock = Clock()
    first = await enqueue(store, clock.now, 3)
    with capture_logs() as logs:
        async with delivering(store, cfg_for(receiver), clock=clock) as deliverer:
            await wait_until(lambda: given_up)
            later = await enqueue(store, clock.now, 2)
            deliverer.wake()
            await wait_until(lambda: _all_delivered(store, [*later, *set(first) - set(given_up)]))
            assert set(given_up) <= set(first)
            assert not await _all_delivered(store, given_up)  # still claimed by the lost batch
            clock.advance(minutes=1)  # their lease runs out
            deliverer.wake()
            await wait_until(lambda: _all_delivered(store, [*first, *later]))
    [failed] = [e for e in logs if e["event"] == "delivery_outcomes_failed"]
    assert failed["log_level"] == "error" and failed["exc_info"] is True
    assert failed["error"] == "RuntimeError: a bug" and failed["count"] == len(given_up)
    sent = [h["webhook-id"] for h, _ in receiver.requests]
    assert sorted(sent) == sorted([*first, *later, *given_up])  # the lost batch twice


async def _all_delivered(store: Store, ids: list[str]) -> bool:
    return (await store.deliveries.attempt_states(ids))["delivered"] == len(ids)


def test_the_retry_schedule_and_dead_lettering():
    cfg = config(webhook={"retry_jitter": 0.2})
    clock = Clock()
    failure = Attempt("5xx", 500, "HTTP 500")
    rng = random.Random(1)
    schedule = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    for n, base in enumerate(schedule):
        status, at = decide(failure, n, cfg, clock.now, rng)
        assert status == "pending"
        assert base * 0.8 <= (at - clock.now).total_seconds() <= base * 1.2
    assert decide(failure, len(schedule), cfg, clock.now, rng) == ("dead", None)
    assert list(cfg.webhook.retry_schedule) == schedule  # README "Delivery guarantees", about 75 h in all


def test_retry_after_forms():
    clock = Clock()
    assert retry_after_seconds("120", clock.now) == 120
    assert retry_after_seconds("Mon, 23 Nov 2026 12:01:00 GMT", clock.now) == 60
    assert retry_after_seconds("soon", clock.now) is None
    cfg = config(webhook={"retry_jitter": 0})
    small = Attempt("5xx", 503, "HTTP 503", retry_after=1)
    assert decide(small, 1, cfg, clock.now)[1] == clock.now + timedelta(seconds=300)
    ignored = Attempt("5xx", 500, "HTTP 500", retry_after=3000)
    assert decide(ignored, 1, cfg, clock.now)[1] == clock.now + timedelta(seconds=300)
