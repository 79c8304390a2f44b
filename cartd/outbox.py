"""Keeping stored deliveries true to what cartd knows of their carts (README "What the
receiver sees when a cart completes", "Personal data"): a cart that completed or whose
customer was erased leaves the pending deliveries that hold it, and is redacted from the
others; detected deliveries older than `webhook.max_delivery_age` expire."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import structlog

from cartd import payload
from cartd.db import Refreshed, Stale, Store

log = structlog.get_logger("cartd.outbox")

REFRESH_BATCH = 50  # stale deliveries rebuilt per transaction
WITHDRAWN = "withdrawn: every cart in it completed or its customer was erased before it was sent"


def refreshed(stale: Stale) -> Refreshed:
    """What a stale delivery becomes. Pending: without the carts that completed (detected
    deliveries only) or were erased, withdrawn when none is left. Sent, dead or withdrawn:
    as it was, with the erased customers redacted."""
    drop = set(stale.forgotten)
    if stale.type == payload.DETECTED:
        drop |= stale.completed
    if stale.status == "pending" and drop:
        body = payload.without_carts(stale.body, drop)
        if body is not None:
            return Refreshed("pending", body, stale.carts - len(drop))
        return Refreshed("withdrawn", _redacted(stale), stale.carts, WITHDRAWN)
    return Refreshed(stale.status, _redacted(stale), stale.carts)


def _redacted(stale: Stale) -> bytes | None:
    return payload.redacted(stale.body, stale.forgotten) if stale.forgotten else None


@dataclass
class Refresh:
    """What one refresh did: counts by kind, and the deliveries withdrawn."""

    counts: Counter[str] = field(default_factory=Counter)
    withdrawn: list[str] = field(default_factory=list)

    def add(self, done: list[tuple[Stale, Refreshed]], settled: list[tuple[str, str]]) -> None:
        for stale, new in done:
            if new.status == "withdrawn" and stale.status == "pending":
                self.withdrawn.append(stale.id)
            elif new.body is not None:
                self.counts["rebuilt" if new.status == "pending" else "redacted"] += 1
        for delivery_id, status in settled:
            if status == "withdrawn":
                self.withdrawn.append(delivery_id)
            else:
                self.counts["released"] += 1


async def refresh(store: Store, now: datetime, only: list[str] | None = None) -> Refresh:
    """Rebuild every stale delivery that no attempt holds (of `only`, when given)."""
    result = Refresh()
    while True:
        done, settled = await store.outbox.refresh_stale(now=now, limit=REFRESH_BATCH,
                                                  rebuild=refreshed, only=only)
        result.add(done, settled)
        if len(done) < REFRESH_BATCH:
            break
    for delivery_id in result.withdrawn:
        log.info("delivery_withdrawn", delivery_id=delivery_id)
    return result


def duration_text(seconds: float) -> str:
    """`24h`, `90m`, `45s`: a duration as the config writes it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


async def expire(store: Store, now: datetime, max_age_seconds: float) -> list[str]:
    """Dead-letter the detected deliveries not delivered within `max_age_seconds` of being
    recorded, or of their last replay (README "Delivery guarantees")."""
    ids = await store.outbox.expire(
        now=now, recorded_before=now - timedelta(seconds=max_age_seconds),
        reason=f"expired: not delivered within {duration_text(max_age_seconds)}")
    if ids:
        log.warning("deliveries_expired", count=len(ids))
    return ids


async def forget(store: Store, now: datetime, *, email: str | None = None,
                 customer_id: str | None = None,
                 integration_id: UUID | None = None) -> dict[str, int]:
    """Erase one person (by email, or by customer id within one integration) from
    everything cartd keeps; returns the counts. The log line names no personal data."""
    keys = await store.subjects.keys()
    key = keys.email(email) if integration_id is None else keys.customer(customer_id)
    carts, deliveries = await store.subjects.forget(key=key or b"", integration_id=integration_id)
    result = await refresh(store, now, only=deliveries) if deliveries else Refresh()
    counts = {
        "carts": carts,
        "deliveries_rebuilt": result.counts["rebuilt"],
        "deliveries_withdrawn": len(result.withdrawn),
        "deliveries_redacted": result.counts["redacted"],
        # in flight now: rebuilt or redacted as soon as their attempt ends
        "deliveries_in_flight": await store.outbox.count_stale(deliveries) if deliveries else 0,
    }
    log.info("subject_forgotten", by="email" if integration_id is None else "customer_id",
             **counts)
    return counts
