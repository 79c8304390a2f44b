"""What a cycle would deliver, polled now and recorded nowhere (README "Previewing a
store"): the cycle's own fetch, filters and payload builder, read-only database queries."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from cartd import payload
from cartd.config import Config
from cartd.cycle import Job, build_deliveries, fetch_job, plan
from cartd.db import Store
from cartd.model import Cart

ALREADY_DELIVERED = "already delivered"


async def preview(store: Store, config: Config, now: datetime, *, agent_id: UUID | None,
                  integration_id: UUID | None, limit: int) -> dict[str, Any]:
    """Poll the matching agents (or the one given, or the one integration given) at `now`
    and return, per integration, the carts kept and those filtered out with the reason,
    and the payloads a cycle would send; at most `limit` carts are listed per list."""
    agents = await store.agents.preview(slug=config.polling.template_slug, agent_id=agent_id,
                                        integration_id=integration_id)
    jobs, unpolled = await plan(store, agents, config)
    gate = asyncio.Semaphore(config.polling.source_concurrency)

    async def fetch_one(job: Job) -> str | None:
        async with gate:
            error = await fetch_job(job, config, now)
        return None if error is None else str(error)

    errors = await asyncio.gather(*(fetch_one(job) for job in jobs))
    reasons = {id(job): _reasons(job, now) for job in jobs if job.fetched is not None}
    known = await store.outbox.known_carts([(job.integration.id, cart.cart_id) for job in jobs
                                     for cart, why in reasons.get(id(job), ()) if why is None])
    results = [_integration(job, error, reasons.get(id(job), []), known, config, now, limit)
               for job, error in zip(jobs, errors, strict=True)]
    results += [{"integration_id": f.integration_id, "agent_id": f.agent_id,
                 "platform": f.platform, "mode": f.mode, "error": f.error} for f in unpolled]
    return {
        "generated_at": now,
        "recorded": False,
        "agents_found": len(agents),
        "integrations": results,
        "carts_kept": sum(r.get("carts_kept", 0) for r in results),
        "carts_filtered": sum(r.get("carts_filtered", 0) for r in results),
        "deliveries": sum(len(r.get("payloads", ())) for r in results),
    }


def _reasons(job: Job, now: datetime) -> list[tuple[Cart, str | None]]:
    assert job.fetched is not None
    drop_reason = job.rules.drop_reason
    return [(cart, drop_reason(cart, now)) for cart in job.fetched.carts]


def _integration(job: Job, error: str | None, reasons: list[tuple[Cart, str | None]],
                 known: set[tuple[UUID, str]], config: Config, now: datetime,
                 limit: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"integration_id": job.integration.id, "agent_id": job.agent.id,
                             "platform": job.integration.platform,
                             "mode": job.integration.mode, "error": error}
    if error is not None:
        return entry
    iid = job.integration.id
    kept: list[Cart] = []
    filtered: list[tuple[Cart, str]] = []
    for cart, why in reasons:
        if why is None and (iid, cart.cart_id) in known:
            why = ALREADY_DELIVERED
        if why is None:
            kept.append(cart)
        else:
            filtered.append((cart, why))
    sent = build_deliveries(job, config, now, payload.DETECTED, kept)
    entry.update(
        carts_fetched=len(reasons), carts_kept=len(kept), carts_filtered=len(filtered),
        filtered_by_reason=dict(Counter(why for _, why in filtered)),
        kept=[_summary(cart) for cart in kept[:limit]],
        filtered=[{**_summary(cart), "reason": why} for cart, why in filtered[:limit]],
        payloads=[_payload(d.body, d.status, d.last_error) for d in sent],
    )
    return entry


def _summary(cart: Cart) -> dict[str, Any]:
    """A cart as an operator checks it, without the customer's personal data."""
    return {"cart_id": cart.cart_id, "currency": cart.currency, "total_value": cart.total_value,
            "items": cart.item_count, "abandoned_at": cart.last_activity,
            "completed_at": cart.completed_at, "has_email": bool(cart.customer.email),
            "has_phone": bool(cart.customer.phone),
            "accepts_marketing": cart.customer.accepts_marketing}


def _payload(body: bytes, status: str, error: str | None) -> dict[str, Any]:
    analytics = orjson.loads(body)["recovery_analytics"]
    return {"type": payload.DETECTED, "carts": analytics["total_carts"],
            "currency": analytics["currency"], "total_value": analytics["total_value"],
            "bytes": len(body), "status": status, "error": error}
