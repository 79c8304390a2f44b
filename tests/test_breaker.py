"""The per-destination circuit breaker and fair shares, in process against real
receivers on 127.0.0.1 (each port its own destination) and a real PostgreSQL."""

from __future__ import annotations

import pytest

import asyncio
import time
from datetime import timedelta

from cartd.attempts import Attempt, destination, failed
from cartd.db import Store
from harness import Clock, config, delivering, enqueue, scripted_receiver, wait_until

pytestmark = pytest.mark.reliability  # part of the fault-injection suite


async def delivered(store: Store, ids: list[str]) -> bool:
    return (await store.deliveries.attempt_states(ids))["delivered"] == len(ids)


async def attempts(store: Store, ids: list[str]) -> list[int]:
    rows = await store.pool.fetch("SELECT attempts FROM cartd.deliveries WHERE id = ANY($1)", ids)
    return sorted(r["attempts"] for r in rows)


def test_destination_is_scheme_host_and_port():
    assert destination("http://127.0.0.1:8080/a?b") == "http://127.0.0.1:8080"
    assert destination("https://Hooks.Example.com/x") == "https://hooks.example.com:443"
    assert destination("http://user:pw@h/") == "http://h:80"
    assert destination("http://127.0.0.1:8080/a") != destination("http://127.0.0.1:8081/a")
    assert failed(Attempt("5xx", 500, "")) and failed(Attempt("timeout", None, ""))
    assert failed(Attempt("4xx", 429, "")) and failed(Attempt("3xx", 302, ""))
    assert not failed(Attempt("2xx", 200, None)) and not failed(Attempt("4xx", 422, ""))


async def test_breaker_opens_holds_the_destination_probes_and_closes(store):
    clock = Clock()
    async with scripted_receiver() as bad, scripted_receiver() as good:
        bad.default = (500, {}, 0.0)
        # The good destination is an agent's own URL: its host must be allowed.
        cfg = config(webhook={"url": bad.url, "breaker_failures": 3, "breaker_probe": "30s",
                              "concurrency": 2, "allowed_override_hosts": ["127.0.0.1"]})
        bad_ids = await enqueue(store, clock.now, 6)
        gauge: list[int] = []
        async with delivering(store, cfg, instance_id="b-1", clock=clock,
                              on_breakers=gauge.append) as deliverer:
            await wait_until(lambda: gauge == [1])
            await asyncio.sleep(0.5)
            assert len(bad.requests) == 3
            # The held deliveries are due but wait, not failed and not counted.
            assert await attempts(store, bad_ids) == [0, 0, 0, 1, 1, 1]
            assert (await store.deliveries.counts())["pending"] == 6

            good_ids = await enqueue(store, clock.now, 5, good.url)
            deliverer.wake()
            await wait_until(lambda: delivered(store, good_ids))
            assert len(bad.requests) == 3

            clock.advance(seconds=30)  # one probe per breaker_probe
            deliverer.wake()
            await wait_until(lambda: len(bad.requests) == 4)
            await asyncio.sleep(0.5)
            assert len(bad.requests) == 4 and gauge == [1]

            bad.default = (200, {}, 0.0)
            clock.advance(seconds=30)  # the next probe succeeds and closes it
            deliverer.wake()
            await wait_until(lambda: gauge == [1, 0])
            clock.advance(minutes=1)  # the retries of the failed attempts come due
            deliverer.wake()
            await wait_until(lambda: delivered(store, bad_ids))
    ids = [h["webhook-id"] for h, _ in bad.requests]
    assert set(ids) == set(bad_ids) and len(ids) == 6 + 3 + 1  # 3 failures, 1 failed probe


async def test_a_slow_destination_gets_half_the_slots_while_another_has_work(store):
    clock = Clock()
    async with scripted_receiver() as slow, scripted_receiver() as fast:
        slow.default = (200, {}, 1.0)
        fast.default = (200, {}, 0.05)
        cfg = config(webhook={"url": slow.url, "concurrency": 4,
                              "allowed_override_hosts": ["127.0.0.1"]})  # fast: an agent's URL
        slow_ids = await enqueue(store, clock.now - timedelta(minutes=1), 12)
        fast_ids = await enqueue(store, clock.now, 12, fast.url)  # queued behind the slow
        async with delivering(store, cfg, instance_id="f-1", clock=clock):
            started = time.monotonic()
            await wait_until(lambda: delivered(store, fast_ids), timeout=5)
            # Had the slow one taken every slot, the first fast one would have waited 1 s.
            assert time.monotonic() - started < 1.0
            assert fast.peak == 2 and len(slow.requests) <= 4
            # Alone with work, a destination that answers well uses every slot.
            await wait_until(lambda: delivered(store, slow_ids), timeout=15)
            assert slow.peak == 4
    assert sorted(h["webhook-id"] for h, _ in slow.requests) == sorted(slow_ids)


async def test_a_failing_destination_never_takes_more_than_half_the_slots(store):
    clock = Clock()
    async with scripted_receiver() as failing:
        failing.default = (503, {}, 0.3)
        cfg = config(webhook={"url": failing.url, "concurrency": 4, "breaker_failures": 100})
        await enqueue(store, clock.now, 20)
        async with delivering(store, cfg, instance_id="f-2", clock=clock):
            # Before any answer it looks healthy and alone: every slot. Once it fails, half.
            await wait_until(lambda: len(failing.requests) >= 5, timeout=10)
            failing.peak = failing.active
            await wait_until(lambda: len(failing.requests) >= 16, timeout=10)
    assert failing.peak <= 2
