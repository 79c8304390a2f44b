"""A fake store server on 127.0.0.1 speaking Shopify (GraphQL and REST), WooCommerce and
the custom cart API, with small pages, injected faults and checkouts that complete later.

Each shop lives under its own path prefix: `http://127.0.0.1:{port}/{shop}` is the
`base_url` of a Shopify or WooCommerce integration, `{base}/carts` the custom `url`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import encode_basic_auth, web

from helpers import serving

TOKEN = "shpat_fake_token_0123456789"
CONSUMER_KEY = "ck_fake_key_0123456789"
CONSUMER_SECRET = "cs_fake_secret_0123456789"
CUSTOM_TOKEN = "custom-secret-0123456789"

_SINCE = re.compile(r"updated_at:>'([^']+)'")


@dataclass
class FakeCart:
    """One checkout; `total` is a stated total (a discount) when set."""

    number: int
    email: str
    lines: list[tuple[str, int, str]]  # title, quantity, unit price
    created: datetime
    updated: datetime
    currency: str = "USD"
    completed: datetime | None = None
    total: str | None = None

    @property
    def value(self) -> Decimal:
        if self.total is not None:
            return Decimal(self.total)
        return sum((Decimal(price) * qty for _, qty, price in self.lines), Decimal(0))


def make_carts(count: int, now: datetime, *, first: int = 1000, fresh: int = 0,
               completed: int = 0) -> list[FakeCart]:
    """`count` carts idle 2 to 5 hours, then `fresh` carts idle 10 minutes (not yet
    abandoned) and `completed` carts that were placed; every 4th has a stated discount."""
    carts = []
    for n in range(count + fresh + completed):
        number = first + n
        idle = timedelta(minutes=10) if count <= n < count + fresh else timedelta(hours=2, minutes=n)
        updated = now - idle
        lines = [(f"Product {number}", 1 + n % 3, f"{10 + n}.{n % 100:02d}"),
                 ("Gift Card", 1, "5.05")][: 1 + n % 2]
        cart = FakeCart(number, f"buyer{number}@example.com", lines,
                        created=updated - timedelta(minutes=20), updated=updated)
        if n % 4 == 3:
            cart.total = str((cart.value * Decimal("0.9")).quantize(Decimal("0.01")))
        if n >= count + fresh:
            cart.completed = cart.updated
        carts.append(cart)
    return carts


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gmt(moment: datetime) -> str:
    return _z(moment).removesuffix("Z")


def _time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class Shop:
    name: str
    carts: list[FakeCart]
    page_size: int = 3
    statuses_seen: list[str] = field(default_factory=list)
    # Answered, one per request, before the normal answers: (status, headers, JSON body).
    faults: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    token: str = TOKEN

    def complete(self, number: int, at: datetime) -> None:
        """The checkout became an order at `at`."""
        cart = next(c for c in self.carts if c.number == number)
        cart.completed = cart.updated = at


class FakeStore:
    def __init__(self) -> None:
        self.shops: dict[str, Shop] = {}
        self.root = ""

    def add(self, name: str, carts: list[FakeCart], **options: Any) -> Shop:
        shop = Shop(name, carts, **options)
        self.shops[name] = shop
        return shop

    def base(self, name: str) -> str:
        return f"{self.root}/{name}"

    def shopify(self, name: str, api: str = "graphql", token: str = TOKEN) -> dict[str, Any]:
        return {"mode": "live", "shop_domain": f"{name}.myshopify.com", "access_token": token,
                "api": api, "base_url": self.base(name)}

    def woocommerce(self, name: str, secret: str = CONSUMER_SECRET) -> dict[str, Any]:
        return {"mode": "live", "base_url": self.base(name), "consumer_key": CONSUMER_KEY,
                "consumer_secret": secret}

    def custom(self, name: str) -> dict[str, Any]:
        return {"mode": "live", "url": f"{self.base(name)}/carts",
                "headers": {"Authorization": f"Bearer {CUSTOM_TOKEN}"}}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{shop}/admin/api/{version}/graphql.json", self._graphql)
        app.router.add_get("/{shop}/admin/api/{version}/checkouts.json", self._rest)
        app.router.add_get("/{shop}/wp-json/wc/v3/orders", self._woocommerce)
        app.router.add_get("/{shop}/carts", self._custom)
        return app

    async def _enter(self, request: web.Request) -> tuple[Shop, web.Response | None]:
        """The shop, and the response to send instead of the normal one (fault or 404)."""
        shop = self.shops.get(request.match_info["shop"])
        if shop is None:
            return Shop("", []), web.json_response({"errors": "Not Found"}, status=404)
        body = await request.json() if request.method == "POST" else None
        shop.requests.append({"method": request.method, "query": dict(request.query),
                              "headers": dict(request.headers), "json": body,
                              "at": time.monotonic()})
        if shop.faults:
            status, headers, payload = shop.faults.pop(0)
            return shop, web.json_response(payload, status=status, headers=headers)
        return shop, None

    # --- Shopify ---------------------------------------------------------------

    def _shopify_auth(self, request: web.Request, shop: Shop) -> web.Response | None:
        if request.headers.get("X-Shopify-Access-Token") == shop.token:
            return None
        return web.json_response({"errors": "[API] Invalid API key or access token "
                                            "(unrecognized login or wrong password)"}, status=401)

    async def _graphql(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        early = early or self._shopify_auth(request, shop)
        if early:
            return early
        variables = shop.requests[-1]["json"]["variables"]
        match = _SINCE.fullmatch(variables.get("q") or "")
        since = _time(match.group(1)) if match else None
        carts = [c for c in shop.carts if since is None or c.updated > since]
        start = int(variables.get("after") or 0)
        size = min(variables["first"], shop.page_size)
        page = carts[start:start + size]
        more = start + size < len(carts)
        return web.json_response({
            "data": {"abandonedCheckouts": {
                "nodes": [_graphql_node(c) for c in page],
                "pageInfo": {"hasNextPage": more, "endCursor": str(start + size) if more else None},
            }},
            "extensions": {"cost": {"requestedQueryCost": 52, "actualQueryCost": 12,
                                    "throttleStatus": {"maximumAvailable": 2000.0,
                                                       "currentlyAvailable": 1988,
                                                       "restoreRate": 100.0}}},
        })

    async def _rest(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        early = early or self._shopify_auth(request, shop)
        if early:
            return early
        query = request.query
        if "page_info" in query:  # Shopify forbids other filters beside page_info
            assert set(query) <= {"page_info", "limit"}, query
            since_text, start = query["page_info"].split("|")
            since = _time(since_text) if since_text else None
            offset = int(start)
        else:
            since = _time(query["updated_at_min"]) if "updated_at_min" in query else None
            offset = 0
        carts = [c for c in shop.carts if since is None or c.updated >= since]
        size = min(int(query.get("limit", 50)), shop.page_size)
        headers = {"X-Shopify-Shop-Api-Call-Limit": f"{len(shop.requests)}/40"}
        if offset + size < len(carts):
            page_info = f"{_z(since) if since else ''}|{offset + size}"
            url = request.url.with_query({"limit": str(size), "page_info": page_info})
            headers["Link"] = f'<{url}>; rel="next"'
        return web.json_response({"checkouts": [_rest_checkout(c) for c in
                                                carts[offset:offset + size]]}, headers=headers)

    # --- WooCommerce -----------------------------------------------------------

    async def _woocommerce(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        if early:
            return early
        if request.headers.get("Authorization") != encode_basic_auth(CONSUMER_KEY, CONSUMER_SECRET):
            return web.json_response({"code": "woocommerce_rest_cannot_view",
                                      "message": "Sorry, you cannot list resources.",
                                      "data": {"status": 401}}, status=401)
        query = request.query
        statuses = query.get("status", "any").split(",")
        shop.statuses_seen.append(query.get("status", ""))
        since = _time(query["modified_after"]) if "modified_after" in query else None
        assert since is None or query.get("dates_are_gmt") == "true"
        orders = [c for c in shop.carts if _woo_status(c) in statuses
                  and (since is None or c.updated > since)]
        size = min(int(query.get("per_page", 10)), shop.page_size)
        page = int(query.get("page", 1))
        pages = max(1, -(-len(orders) // size))
        return web.json_response(
            [_woo_order(c) for c in orders[(page - 1) * size:page * size]],
            headers={"X-WP-Total": str(len(orders)), "X-WP-TotalPages": str(pages)},
        )

    # --- custom ----------------------------------------------------------------

    async def _custom(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        if early:
            return early
        if request.headers.get("Authorization") != f"Bearer {CUSTOM_TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        start = int(request.query.get("cursor", 0))
        end = start + shop.page_size
        following = str(request.url.with_query({"cursor": str(end)}))
        return web.json_response({
            "carts": [_custom_cart(c) for c in shop.carts[start:end]],
            "next": following if end < len(shop.carts) else None,
        })


def _graphql_node(cart: FakeCart) -> dict[str, Any]:
    def money(amount: str) -> dict[str, Any]:
        return {"shopMoney": {"amount": amount, "currencyCode": cart.currency}}

    return {
        "id": f"gid://shopify/AbandonedCheckout/{cart.number}",
        "name": f"#{cart.number}",
        "abandonedCheckoutUrl": f"https://shop.example.com/checkouts/{cart.number}/recover",
        "createdAt": _z(cart.created),
        "updatedAt": _z(cart.updated),
        "completedAt": None if cart.completed is None else _z(cart.completed),
        "customer": {"id": f"gid://shopify/Customer/{cart.number}", "email": cart.email,
                     "firstName": "Ada", "lastName": "Lovelace", "phone": None,
                     "emailMarketingConsent": {"marketingState": "SUBSCRIBED"}},
        "totalPriceSet": money(str(cart.value)),
        "lineItems": {"nodes": [
            {"title": title, "variantTitle": None, "sku": f"SKU-{n}", "quantity": qty,
             "variant": {"id": f"gid://shopify/ProductVariant/{n}"},
             "product": {"id": f"gid://shopify/Product/{n}"},
             "originalUnitPriceSet": money(price)}
            for n, (title, qty, price) in enumerate(cart.lines, 1)
        ]},
    }


def _rest_checkout(cart: FakeCart) -> dict[str, Any]:
    return {
        "id": cart.number,
        "email": cart.email,
        "phone": None,
        "abandoned_checkout_url": f"https://shop.example.com/checkouts/{cart.number}/recover",
        "created_at": _z(cart.created),
        "updated_at": _z(cart.updated),
        "completed_at": None if cart.completed is None else _z(cart.completed),
        "currency": cart.currency,
        "total_price": str(cart.value),
        "customer": {"id": cart.number, "email": cart.email, "first_name": "Ada",
                     "last_name": "Lovelace", "phone": None,
                     "email_marketing_consent": {"state": "subscribed"}},
        "line_items": [
            {"title": title, "variant_title": None, "quantity": qty, "price": price,
             "variant_id": n, "product_id": n, "sku": f"SKU-{n}"}
            for n, (title, qty, price) in enumerate(cart.lines, 1)
        ],
    }


def _woo_status(cart: FakeCart) -> str:
    return "pending" if cart.completed is None else "processing"


def _woo_order(cart: FakeCart) -> dict[str, Any]:
    return {
        "id": cart.number,
        "number": str(cart.number),
        "status": _woo_status(cart),
        "currency": cart.currency,
        "date_created_gmt": _gmt(cart.created),
        "date_modified_gmt": _gmt(cart.updated),
        "date_paid_gmt": None if cart.completed is None else _gmt(cart.completed),
        "total": str(cart.value),
        "customer_id": 0,
        "billing": {"first_name": "Ada", "last_name": "Lovelace", "email": cart.email, "phone": ""},
        "line_items": [
            {"id": n, "name": title, "product_id": n, "variation_id": 0, "quantity": qty,
             "subtotal": str(Decimal(price) * qty), "total": str(Decimal(price) * qty),
             "sku": f"SKU-{n}", "price": float(price)}
            for n, (title, qty, price) in enumerate(cart.lines, 1)
        ],
        "meta_data": [],
    }


def _custom_cart(cart: FakeCart) -> dict[str, Any]:
    record: dict[str, Any] = {
        "cart_id": f"c{cart.number}",
        "customer": {"id": str(cart.number), "email": cart.email, "first_name": "Ada",
                     "last_name": "Lovelace", "phone": None, "accepts_marketing": True},
        "items": [{"product_id": str(n), "variant_id": None, "sku": f"SKU-{n}", "title": title,
                   "quantity": qty, "unit_price": float(price)}
                  for n, (title, qty, price) in enumerate(cart.lines, 1)],
        "currency": cart.currency,
        "total_value": float(cart.value),
        "created_at": _z(cart.created),
        "abandoned_at": _z(cart.updated),
    }
    if cart.completed is not None:
        record["completed_at"] = _z(cart.completed)
        record["order_id"] = f"o{cart.number}"
    return record


@asynccontextmanager
async def fake_store() -> AsyncIterator[FakeStore]:
    """A FakeStore listening on 127.0.0.1 for the duration of the block."""
    store = FakeStore()
    async with serving(store.app()) as root:
        store.root = root
        yield store
