"""Stores speaking the custom cart API (README "Connecting stores": `GET url` answering
`{"carts": [...], "next": null}` with carts in the webhook's cart shape) on 127.0.0.1,
whose carts a test edits between polls or whose answers it holds back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from cartd.db import Store
from harness import add_agent, add_agents, serving


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


def three_mugs(n: int, currency: str, now: datetime) -> dict[str, Any]:
    """Cart `c{n}` idle for two hours: three mugs at 19.99, its line and cart totals
    stated (59.97)."""
    idle = now - timedelta(hours=2)
    return {
        "cart_id": f"c{n}",
        "customer": {"id": f"u{n}", "email": f"u{n}@example.com", "first_name": "A",
                     "last_name": "B", "phone": None, "accepts_marketing": True},
        "items": [{"product_id": "p1", "variant_id": "v1", "sku": "S", "title": "Mug",
                   "quantity": 3, "unit_price": "19.99", "line_total": "59.97"}],
        "currency": currency, "total_value": "59.97",
        "created_at": (idle - timedelta(minutes=10)).isoformat(),
        "abandoned_at": idle.isoformat(), "recovery_url": "https://shop.example.com/r",
    }


class HeldStore:
    """One custom store listing `carts` on any path, whose answers can be held back
    (`open` cleared) and that counts the requests it got."""

    def __init__(self, carts: list[dict[str, Any]]) -> None:
        self.carts = carts
        self.open = asyncio.Event()
        self.open.set()
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await self.open.wait()
        return web.json_response({"carts": self.carts, "next": None})


async def live_custom_agent(store: Store, url: str) -> uuid.UUID:
    """A polled agent whose one integration is the custom store at `url`, live; the
    integration's id."""
    return await add_agent(store, {}, "custom", {"mode": "live", "url": url})
