"""A fake store server on 127.0.0.1 speaking Shopify (GraphQL and REST, with the client
credentials grant), WooCommerce and the custom cart API, with small pages, injected
faults and checkouts that complete later.

It behaves as the real APIs do where cartd depends on it (`../shared/reference/`,
README "Connecting stores"):
- Shopify GraphQL executes the query it receives against the Admin schema of the URL's
  version (`fixtures/shopify/`), so unknown fields fail and nullable fields come back
  null; computes the query's requested cost from the schema's types, refuses it over
  1,000 (`MAX_COST_EXCEEDED`); charges a leaky bucket (`maximum`, `restore_rate` per
  shop), answers `THROTTLED` when it cannot pay, and refunds to the actual cost; sorts
  and filters checkouts by `sortKey`, `updated_at` and `id` as its search syntax says;
  pages a connection through at most 25,000 objects.
- Client-credential tokens expire after `token_seconds`; an expired one gets a 401.
- WooCommerce sorts by the `orderby` and `order` it is asked for, filters by
  `modified_after` (dates to the second, exclusive), takes the credentials as HTTP Basic
  or query parameters, and can change orders between the pages of a read (`on_page`).

Each shop lives under its own path prefix: `http://127.0.0.1:{port}/{shop}` is the
`base_url` of a Shopify or WooCommerce integration, `{base}/carts` the custom `url`.
"""

from __future__ import annotations

import bisect
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from aiohttp import encode_basic_auth, web
from graphql import DocumentNode, GraphQLError, parse, validate

from harness import serving
from shopify_graphql import VERSIONS, Executor, requested_cost, schema

TOKEN = "shpat_fake_token_0123456789"
CLIENT_ID = "fake_client_id_0123"
CLIENT_SECRET = "shpss_fake_client_secret_0123456789"
CONSUMER_KEY = "ck_fake_key_0123456789"
CONSUMER_SECRET = "cs_fake_secret_0123456789"
CUSTOM_TOKEN = "custom-secret-0123456789"

MAX_COST = 1000
CONNECTION_LIMIT = 25_000
_TERM = re.compile(r"(updated_at|id):(<=|>=|<|>)('([^']*)'|[0-9]+)")
_WOO_ORDERBY = ("date", "modified", "id", "include", "title", "slug")


@dataclass
class FakeCart:
    """One checkout (a WooCommerce order); `total` is a stated total (a discount) when set.

    Lines are (title, quantity, unit price); a title may be None, and `bare_lines` makes
    every line's variant, product and SKU null. `customer=False` is a guest (null)."""

    number: int
    email: str
    lines: list[tuple[str | None, int, str]]
    created: datetime
    updated: datetime
    currency: str = "USD"
    completed: datetime | None = None
    total: str | None = None
    customer: bool = True
    consent: bool = True
    bare_lines: bool = False
    status: str | None = None  # WooCommerce: placed orders are `processing` unless set
    meta: list[dict[str, Any]] = field(default_factory=list)  # WooCommerce order meta

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
        lines: list[tuple[str | None, int, str]] = [
            (f"Product {number}", 1 + n % 3, f"{10 + n}.{n % 100:02d}"), ("Gift Card", 1, "5.05")]
        cart = FakeCart(number, f"buyer{number}@example.com", lines[: 1 + n % 2],
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


def _second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


@dataclass
class Bucket:
    """Shopify's leaky bucket of GraphQL points."""

    maximum: float = 2000.0
    restore_rate: float = 100.0
    available: float = 2000.0
    at: float = field(default_factory=time.monotonic)

    def refill(self) -> float:
        now = time.monotonic()
        self.available = min(self.maximum, self.available + self.restore_rate * (now - self.at))
        self.at = now
        return self.available

    def status(self) -> dict[str, float]:
        return {"maximumAvailable": self.maximum, "currentlyAvailable": round(self.available, 2),
                "restoreRate": self.restore_rate}


@dataclass
class Accounting:
    """What the fake Shopify answered: requests and points (requested, actually charged)."""

    requests: int = 0
    throttled: int = 0
    refused: int = 0  # MAX_COST_EXCEEDED
    requested: int = 0
    actual: int = 0


@dataclass
class Shop:
    name: str
    carts: list[FakeCart]
    page_size: int = 3  # at most this many records per page, whatever is asked for
    statuses_seen: list[str] = field(default_factory=list)
    # Answered, one per request, before the normal answers: (status, headers, JSON body).
    faults: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    token: str = TOKEN
    bucket: Bucket = field(default_factory=Bucket)
    accounting: Accounting = field(default_factory=Accounting)
    connection_limit: int = CONNECTION_LIMIT
    token_seconds: int = 86399
    granted: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    issued: list[str] = field(default_factory=list)  # every token granted
    # Called after each WooCommerce page is served, with the number of that page.
    on_page: Callable[[int], None] | None = None
    # Whether the app was approved for protected customer data; if not, customers are null
    # and the reply carries an ACCESS_DENIED error beside its data.
    customer_data: bool = True
    _sorted: list[FakeCart] = field(default_factory=list, repr=False)

    def complete(self, number: int, at: datetime, status: str | None = None) -> None:
        """The checkout became an order at `at` (WooCommerce: with that status)."""
        cart = self.cart(number)
        cart.completed = cart.updated = at
        cart.status = status

    def cart(self, number: int) -> FakeCart:
        return next(c for c in self.carts if c.number == number)

    def by_number(self) -> list[FakeCart]:
        """The carts by number (kept while no cart is added or taken)."""
        if len(self._sorted) != len(self.carts):
            self._sorted = sorted(self.carts, key=lambda c: c.number)
        return self._sorted

    def authorised(self, token: str | None) -> bool:
        if token == self.token:
            return True
        expiry = self.granted.get(token or "")
        return expiry is not None and time.monotonic() < expiry


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

    def shopify(self, name: str, api: str = "graphql", token: str = TOKEN,
                version: str = "2026-10") -> dict[str, Any]:
        return {"mode": "live", "shop_domain": f"{name}.myshopify.com", "access_token": token,
                "api": api, "api_version": version, "base_url": self.base(name)}

    def shopify_client(self, name: str, secret: str = CLIENT_SECRET) -> dict[str, Any]:
        """A Dev Dashboard app's integration: client credentials, no token."""
        return {"mode": "live", "shop_domain": f"{name}.myshopify.com", "client_id": CLIENT_ID,
                "client_secret": secret, "base_url": self.base(name)}

    def woocommerce(self, name: str, secret: str = CONSUMER_SECRET, **options: Any) -> dict[str, Any]:
        return {"mode": "live", "base_url": self.base(name), "consumer_key": CONSUMER_KEY,
                "consumer_secret": secret, **options}

    def custom(self, name: str) -> dict[str, Any]:
        return {"mode": "live", "url": f"{self.base(name)}/carts",
                "headers": {"Authorization": f"Bearer {CUSTOM_TOKEN}"}}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{shop}/admin/oauth/access_token", self._grant)
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
        body = await request.json() if request.content_type == "application/json" else None
        form = dict(await request.post()) if request.method == "POST" and body is None else None
        shop.requests.append({"method": request.method, "path": request.path,
                              "query": dict(request.query), "headers": dict(request.headers),
                              "json": body, "form": form, "at": time.monotonic()})
        if shop.faults:
            status, headers, payload = shop.faults.pop(0)
            return shop, web.json_response(payload, status=status, headers=headers)
        return shop, None

    # --- Shopify ---------------------------------------------------------------

    async def _grant(self, request: web.Request) -> web.Response:
        """The client credentials grant (form-encoded or JSON)."""
        shop, early = await self._enter(request)
        if early:
            return early
        sent = shop.requests[-1]["form"] or shop.requests[-1]["json"] or {}
        if (sent.get("grant_type") != "client_credentials" or sent.get("client_id") != CLIENT_ID
                or sent.get("client_secret") != CLIENT_SECRET):
            return web.json_response({"error": "invalid_client",
                                      "error_description": "Client authentication failed"},
                                     status=401)
        token = f"shpat_{secrets.token_hex(16)}"
        shop.granted[token] = time.monotonic() + shop.token_seconds
        shop.issued.append(token)
        return web.json_response({"access_token": token, "scope": "read_orders,read_customers",
                                  "expires_in": shop.token_seconds})

    def _shopify_auth(self, request: web.Request, shop: Shop) -> web.Response | None:
        if shop.authorised(request.headers.get("X-Shopify-Access-Token")):
            return None
        return web.json_response({"errors": "[API] Invalid API key or access token "
                                            "(unrecognized login or wrong password)"}, status=401)

    async def _graphql(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        early = early or self._shopify_auth(request, shop)
        if early:
            return early
        version = request.match_info["version"]
        if version not in VERSIONS:
            return web.json_response({"errors": "Not Found"}, status=404)
        sent = shop.requests[-1]["json"] or {}
        variables = sent.get("variables") or {}
        try:
            document = _document(version, sent.get("query") or "")
        except GraphQLError as exc:
            return web.json_response({"errors": [{"message": exc.message}]})
        return web.json_response(_run(shop, version, document, variables))

    async def _rest(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        early = early or self._shopify_auth(request, shop)
        if early:
            return early
        query = request.query
        if "page_info" in query:  # Shopify forbids other filters beside page_info
            assert set(query) <= {"page_info", "limit"}, query
            filters = dict(part.split("=", 1) for part in query["page_info"].split("|"))
        else:
            filters = {k: query[k] for k in ("updated_at_min", "updated_at_max", "since_id")
                       if k in query}
        offset = int(filters.pop("offset", 0))
        carts = sorted(_rest_filter(shop.carts, filters), key=lambda c: c.number)
        size = min(int(query.get("limit", 50)), shop.page_size)
        headers = {"X-Shopify-Shop-Api-Call-Limit": f"{len(shop.requests)}/40"}
        if offset + size < len(carts):
            page_info = "|".join(f"{k}={v}" for k, v in {**filters, "offset": offset + size}.items())
            url = request.url.with_query({"limit": str(size), "page_info": page_info})
            headers["Link"] = f'<{url}>; rel="next"'
        return web.json_response({"checkouts": [_rest_checkout(c) for c in
                                                carts[offset:offset + size]]}, headers=headers)

    # --- WooCommerce -----------------------------------------------------------

    async def _woocommerce(self, request: web.Request) -> web.Response:
        shop, early = await self._enter(request)
        if early:
            return early
        query = request.query
        basic = encode_basic_auth(CONSUMER_KEY, CONSUMER_SECRET)
        in_query = (query.get("consumer_key"), query.get("consumer_secret"))
        if request.headers.get("Authorization") != basic and in_query != (CONSUMER_KEY,
                                                                           CONSUMER_SECRET):
            return _woo_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        orderby, order = query.get("orderby", "date"), query.get("order", "desc")
        per_page = int(query.get("per_page", 10))
        if orderby not in _WOO_ORDERBY or order not in ("asc", "desc") or not 1 <= per_page <= 100:
            return _woo_error(400, "rest_invalid_param", "Invalid parameter(s): orderby, order, per_page")
        statuses = query.get("status", "any").split(",")
        shop.statuses_seen.append(query.get("status", ""))
        orders = [c for c in shop.carts if _woo_status(c) in statuses or "any" in statuses]
        if "modified_after" in query or "modified_before" in query:
            assert query.get("dates_are_gmt") == "true"
        if "modified_after" in query:
            orders = [c for c in orders if _second(c.updated) > _time(query["modified_after"])]
        if "modified_before" in query:
            orders = [c for c in orders if _second(c.updated) < _time(query["modified_before"])]
        key = {"modified": lambda c: (_second(c.updated), c.number), "id": lambda c: c.number,
               }.get(orderby, lambda c: (_second(c.created), c.number))
        orders.sort(key=key, reverse=order == "desc")
        size = min(per_page, shop.page_size)
        page = int(query.get("page", 1))
        pages = max(1, -(-len(orders) // size))
        answer = web.json_response(
            [_woo_order(c) for c in orders[(page - 1) * size:page * size]],
            headers={"X-WP-Total": str(len(orders)), "X-WP-TotalPages": str(pages)},
        )
        if shop.on_page is not None:
            shop.on_page(page)
        return answer

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


# --- Shopify GraphQL execution -----------------------------------------------------


@lru_cache(maxsize=64)
def _document(version: str, query: str) -> DocumentNode:
    """The parsed query, once it passed validation against the version's schema."""
    document = parse(query)
    errors = validate(schema(version), document)
    if errors:
        raise errors[0]
    return document


def _run(shop: Shop, version: str, document: DocumentNode, variables: dict[str, Any]) -> Any:
    """Charge the bucket and execute, as Shopify does."""
    accounting, bucket = shop.accounting, shop.bucket
    accounting.requests += 1
    cost = requested_cost(schema(version), document, variables)
    if cost > MAX_COST:
        accounting.refused += 1
        return {"errors": [{"message": f"Query cost is {cost}, which exceeds the single query "
                                       f"max cost limit ({MAX_COST}).",
                            "extensions": {"code": "MAX_COST_EXCEEDED", "cost": cost,
                                           "maxCost": MAX_COST}}]}
    if bucket.refill() < cost:
        accounting.throttled += 1
        return {"errors": [{"message": "Throttled", "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": {"requestedQueryCost": cost, "actualQueryCost": None,
                                        "throttleStatus": bucket.status()}}}
    bucket.available -= cost
    executor = Executor(schema(version), document, variables)
    root = _Root(shop)
    try:
        data = executor.run({"abandonedCheckouts": root.checkouts, "node": root.node})
    except GraphQLError as exc:
        bucket.available += cost
        return {"errors": [{"message": exc.message}], "data": None}
    bucket.available += cost - executor.cost
    accounting.requested += cost
    accounting.actual += executor.cost
    answer: dict[str, Any] = {
        "data": data, "extensions": {"cost": {"requestedQueryCost": cost,
                                              "actualQueryCost": executor.cost,
                                              "throttleStatus": bucket.status()}}}
    if root.hidden:
        answer["errors"] = [{"message": "This app is not approved to access the Customer object.",
                             "extensions": {"code": "ACCESS_DENIED"}}]
    return answer


class _Root:
    """The query root's fields, resolved from the shop's carts."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.hidden = False  # a customer was withheld (protected customer data)

    def checkouts(self, first: int | None = None, after: str | None = None,
                  query: str | None = None, sortKey: str | None = None,  # noqa: N803
                  reverse: bool = False, **_: Any) -> dict[str, Any]:
        if sortKey not in (None, "ID") or reverse:
            raise GraphQLError("the fake store sorts abandoned checkouts by ID only")
        if first is None or not 0 <= first <= 250:
            raise GraphQLError("first must be between 0 and 250")
        # The cursor says how many objects came before and the last id returned.
        position, last = map(int, after.split(":")) if after else (0, -1)
        if position + first > self.shop.connection_limit:
            raise GraphQLError(f"Pagination is limited to {self.shop.connection_limit} objects: "
                               "narrow the query with search filters")
        size = min(first, self.shop.page_size)
        found = _search(self.shop.by_number(), query or "", last, size + 1)
        nodes = [self._node(c) for c in found[:size]]
        end = f"{position + len(nodes)}:{found[len(nodes) - 1].number}" if nodes else None
        return {"nodes": nodes, "pageInfo": {
            "hasNextPage": len(found) > size, "hasPreviousPage": position > 0,
            "startCursor": f"{position}:{last}" if nodes else None, "endCursor": end}}

    def node(self, id: str) -> dict[str, Any] | None:  # noqa: A002
        number = id.rsplit("/", 1)[-1]
        carts = self.shop.by_number()
        at = bisect.bisect_left(carts, int(number), key=lambda c: c.number) if number.isdigit() else 0
        found = at < len(carts) and str(carts[at].number) == number
        return self._node(carts[at]) if found else None

    def _node(self, cart: FakeCart) -> dict[str, Any]:
        node = _node(cart)
        if not self.shop.customer_data and node["customer"] is not None:
            node["customer"], self.hidden = None, True
        return node


def _search(carts: list[FakeCart], query: str, after: int, limit: int) -> list[FakeCart]:
    """Up to `limit` carts with a number above `after` (`carts` are by number) that match
    Shopify's search syntax as far as cartd uses it: `updated_at` and `id` comparisons
    joined by AND; anything else is refused (a test must see it)."""
    tests: list[Callable[[FakeCart], bool]] = []
    for term in filter(None, (t.strip() for t in query.split(" AND "))):
        match = _TERM.fullmatch(term)
        if match is None:
            raise GraphQLError(f"unsupported search term in the fake store: {term}")
        name, op, bound, quoted = match.groups()
        if name == "updated_at":
            moment = _time(quoted)
            tests.append(lambda c, op=op, moment=moment: _compare(_second(c.updated), op, moment))
        elif op in (">", ">="):
            after = max(after, int(bound) - (op == ">="))
        else:
            tests.append(lambda c, op=op, number=int(bound): _compare(c.number, op, number))
    found = []
    for cart in carts[bisect.bisect_right(carts, after, key=lambda c: c.number):]:
        if all(test(cart) for test in tests):
            found.append(cart)
            if len(found) == limit:
                break
    return found


def _compare(value: Any, op: str, bound: Any) -> bool:
    return {"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound}[op]


def _rest_filter(carts: list[FakeCart], filters: dict[str, str]) -> list[FakeCart]:
    found = list(carts)
    if "updated_at_min" in filters:
        found = [c for c in found if _second(c.updated) >= _time(filters["updated_at_min"])]
    if "updated_at_max" in filters:
        found = [c for c in found if _second(c.updated) <= _time(filters["updated_at_max"])]
    if "since_id" in filters:
        found = [c for c in found if c.number > int(filters["since_id"])]
    return found


def _money(amount: str, currency: str) -> dict[str, Any]:
    money = {"amount": amount, "currencyCode": currency}
    return {"shopMoney": money, "presentmentMoney": money}


def _line(cart: FakeCart, n: int, line: tuple[str | None, int, str]) -> dict[str, Any]:
    title, qty, price = line
    bare = cart.bare_lines
    return {
        "title": title, "variantTitle": None, "quantity": qty,
        "sku": None if bare else f"SKU-{n}",
        "variant": None if bare else {"id": f"gid://shopify/ProductVariant/{n}"},
        "product": None if bare else {"id": f"gid://shopify/Product/{n}"},
        "originalUnitPriceSet": _money(price, cart.currency),
    }


def _node(cart: FakeCart) -> dict[str, Any]:
    """The checkout as the schema's resolvers see it (only what is selected is sent)."""
    lines = [_line(cart, n, line) for n, line in enumerate(cart.lines, 1)]

    def line_items(first: int | None = None, after: str | None = None,
                   **_: Any) -> dict[str, Any]:
        start = int(after) if after else 0
        page = lines[start:start + (first or 0)]
        end = start + len(page)
        return {"nodes": page, "pageInfo": {
            "hasNextPage": end < len(lines), "hasPreviousPage": start > 0,
            "startCursor": str(start) if page else None, "endCursor": str(end) if page else None}}

    customer = None
    if cart.customer:
        customer = {
            "id": f"gid://shopify/Customer/{cart.number}", "firstName": "Ada",
            "lastName": "Lovelace",
            "defaultEmailAddress": {"emailAddress": cart.email, "marketingState":
                                    "SUBSCRIBED" if cart.consent else "NOT_SUBSCRIBED"},
            "defaultPhoneNumber": None,
        }
    return {
        "__typename": "AbandonedCheckout",
        "id": f"gid://shopify/AbandonedCheckout/{cart.number}",
        "name": f"#{cart.number}",
        "abandonedCheckoutUrl": f"https://shop.example.com/checkouts/{cart.number}/recover",
        "createdAt": _z(cart.created),
        "updatedAt": _z(cart.updated),
        "completedAt": None if cart.completed is None else _z(cart.completed),
        "customer": customer,
        "totalPriceSet": _money(str(cart.value), cart.currency),
        "lineItems": line_items,
    }


def _rest_checkout(cart: FakeCart) -> dict[str, Any]:
    """The 2025-01+ shape: consent is the checkout's `buyer_accepts_marketing`."""
    return {
        "id": cart.number,
        "email": cart.email,
        "phone": None,
        "buyer_accepts_marketing": cart.consent,
        "abandoned_checkout_url": f"https://shop.example.com/checkouts/{cart.number}/recover",
        "created_at": _z(cart.created),
        "updated_at": _z(cart.updated),
        "completed_at": None if cart.completed is None else _z(cart.completed),
        "currency": cart.currency,
        "total_price": str(cart.value),
        "customer": None if not cart.customer else {
            "id": cart.number, "email": cart.email, "first_name": "Ada",
            "last_name": "Lovelace", "phone": None},
        "line_items": [
            {"title": title, "variant_title": None, "quantity": qty, "price": price,
             "variant_id": None if cart.bare_lines else n,
             "product_id": None if cart.bare_lines else n,
             "sku": None if cart.bare_lines else f"SKU-{n}"}
            for n, (title, qty, price) in enumerate(cart.lines, 1)
        ],
    }


def _woo_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "data": {"status": status}},
                             status=status)


def _woo_status(cart: FakeCart) -> str:
    if cart.status is not None:
        return cart.status
    return "pending" if cart.completed is None else "processing"


def _woo_order(cart: FakeCart) -> dict[str, Any]:
    return {
        "id": cart.number,
        "number": str(cart.number),
        "status": _woo_status(cart),
        "currency": cart.currency,
        "date_created_gmt": _gmt(cart.created),
        "date_modified_gmt": _gmt(cart.updated),
        "date_paid_gmt": None if cart.completed is None or cart.status == "on-hold"
        else _gmt(cart.completed),
        "total": str(cart.value),
        "customer_id": 0,
        "billing": {"first_name": "Ada", "last_name": "Lovelace", "email": cart.email, "phone": ""},
        "line_items": [
            {"id": n, "name": title, "product_id": n, "variation_id": 0, "quantity": qty,
             "subtotal": str(Decimal(price) * qty), "total": str(Decimal(price) * qty),
             "sku": f"SKU-{n}", "price": float(price)}
            for n, (title, qty, price) in enumerate(cart.lines, 1)
        ],
        "meta_data": cart.meta,
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
