"""What cartd recorded, read from its tables: deliveries and the carts' dedupe memory."""

from __future__ import annotations

from typing import Any

from cartd.db import Store


async def delivery_row(store: Store, delivery_id: str) -> dict[str, Any]:
    """The delivery's row of cartd.deliveries, every column."""
    return dict(await store.pool.fetchrow(
        "SELECT * FROM cartd.deliveries WHERE id = $1", delivery_id))


async def nothing_pending(store: Store) -> bool:
    return (await store.deliveries.counts())["pending"] == 0


async def all_delivered(store: Store) -> bool:
    """Something was delivered and nothing is pending."""
    counts = await store.deliveries.counts()
    return counts["delivered"] > 0 and counts["pending"] == 0


async def recorded(store: Store) -> set[tuple[str, str]]:
    """The carts recorded for the receiver: those in the dedupe memory, less those that
    completed while their delivery was pending and so left it (README "What the receiver
    sees when a cart completes")."""
    rows = await store.pool.fetch(
        "SELECT s.integration_id, s.cart_id FROM cartd.sent_carts s"
        " WHERE s.recovered_at IS NULL OR EXISTS (SELECT 1 FROM cartd.deliveries d,"
        " jsonb_array_elements(convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts') e"
        " WHERE d.integration_id = s.integration_id AND d.type = 'abandoned_cart.detected'"
        " AND d.status <> 'withdrawn' AND e ->> 'cart_id' = s.cart_id)")
    return {(str(r["integration_id"]), r["cart_id"]) for r in rows}


async def accounted(received: set[tuple[str, str]], store: Store) -> bool:
    """Every recorded cart was received. Received beyond those: only carts that completed
    since and so left their delivery, which a killed instance had sent without seeing the
    answer (README "What the receiver sees when a cart completes")."""
    due = await recorded(store)
    completed = await store.pool.fetch(
        "SELECT integration_id::text, cart_id FROM cartd.sent_carts WHERE recovered_at IS NOT NULL")
    return due <= received and received - due <= {tuple(r) for r in completed}


async def cartd_rows(store: Store) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table of the schema cartd, each column as text (bytea decoded as
    escaped text, so that text inside a payload shows), rows sorted."""
    columns = await store.pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'cartd' ORDER BY table_name, ordinal_position")
    tables: dict[str, list[str]] = {}
    for c in columns:
        name = f'"{c["column_name"]}"'
        tables.setdefault(c["table_name"], []).append(
            f"encode({name}, 'escape')" if c["data_type"] == "bytea" else f"{name}::text")
    out = {}
    for table, exprs in tables.items():
        rows = await store.pool.fetch(f'SELECT {", ".join(exprs)} FROM cartd."{table}"')
        out[table] = sorted(tuple("" if v is None else v for v in r) for r in rows)
    return out
