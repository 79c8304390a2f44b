"""Stores speaking the custom cart API (README "Connecting stores": `GET url` answering
`{"carts": [...], "next": null}` with carts in the webhook's cart shape) on 127.0.0.1,
whose carts a test edits between polls, and receivers that come up late."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from cartd.db import Store
from helpers import Scripted, add_agents, serving


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cart(cart_id: str, *, idle: timedelta = timedelta(hours=2), price: str = "19.99",
         quantity: int = 2, email: str | None = "buyer@example.com", first: str = "Ada",
         last: str = "Lovelace", customer_id: str | None = None, consent: bool = True,
         phone: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """A custom-platform cart idle for `idle`, with one line of `quantity` x `price`."""
    last_activity = (now or datetime.now(UTC)) - idle
    return {
        "cart_id": cart_id,
        "customer": {"id": customer_id or f"cust-{cart_id}", "email": email,
                     "first_name": first, "last_name": last, "phone": phone,
                     "accepts_marketing": consent},
        "items": [{"product_id": "p1", "variant_id": "v1", "sku": "SKU-1", "title": "Mug",
                   "quantity": quantity, "unit_price": price}],
        "currency": "USD",
        "created_at": z(last_activity - timedelta(minutes=20)),
        "abandoned_at": z(last_activity),
        "recovery_url": f"https://shop.example.com/recover/{cart_id}",
    }


def complete(entry: dict[str, Any]) -> None:
    """The customer bought: the store reports the cart completed, with its order."""
    entry["completed_at"] = z(datetime.now(UTC))
    entry["order_id"] = f"order-{entry['cart_id']}"


class Shops:
    """Several shops under one server: `/{name}/carts`; a shop may answer an error."""

    def __init__(self) -> None:
        self.carts: dict[str, list[dict[str, Any]]] = {}
        self.failing: dict[str, int] = {}
        self.root = ""

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["shop"]
        if name in self.failing:
            return web.json_response({"error": "store down"}, status=self.failing[name])
        return web.json_response({"carts": self.carts.get(name, []), "next": None})

    def url(self, name: str) -> str:
        self.carts.setdefault(name, [])
        return f"{self.root}/{name}/carts"

    async def agent(self, store: Store, name: str, settings: dict[str, Any] | None = None
                    ) -> tuple[uuid.UUID, uuid.UUID]:
        """A polled agent whose one integration is this shop, live; (agent id, integration id)."""
        data = await add_agents(store, 1, platforms=("custom",), settings=settings,
                                integration_config={"mode": "live", "url": self.url(name)})
        return data.polled_agents[0], next(iter(data.integrations))


@asynccontextmanager
async def shops() -> AsyncIterator[Shops]:
    server = Shops()
    app = web.Application()
    app.router.add_get("/{shop}/carts", server.handle)
    async with serving(app) as root:
        server.root = root
        yield server


class LateReceiver(Scripted):
    """A receiver whose port is chosen now and that listens only once `up()` is called:
    until then every attempt is refused, and nothing reaches it."""

    def __init__(self) -> None:
        super().__init__()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        self._runner: web.AppRunner | None = None

    async def up(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def bodies(receiver: Scripted) -> list[tuple[str, dict[str, Any]]]:
    """(webhook-id, body) of every request the receiver got, money as Decimal."""
    return [(headers["webhook-id"], json.loads(body, parse_float=Decimal))
            for headers, body in receiver.requests]


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
