"""Reading a Shopify store's abandoned checkouts: GraphQL `abandonedCheckouts` (the
default) or the legacy REST `checkouts.json`.

A read covers a window of `updated_at` (after the cursor, up to the cycle's start), in
the order of checkout ids, and remembers the last checkout it read completely: when the
cycle's budget runs out, the next cycle goes on after that id in the same window. A
connection is paged through at most CONNECTION_LIMIT objects; past that the window goes
on in a new connection after the last id. README "Connecting stores" has the figures.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cartd.model import MAX_LINES, MalformedRecord, iso, timestamp
from cartd.sources.errors import IntegrationError
from cartd.sources.http import Budget, OutOfBudget, scrub
from cartd.sources.read import Batch, Read, next_page
from cartd.sources.shopify import normalise_graphql, normalise_rest
from cartd.sources.shopify_admin import Admin, error_extensions

_LINE = """fragment Line on AbandonedCheckoutLineItem {
  title variantTitle sku quantity variant { id } product { id }
  originalUnitPriceSet { shopMoney { amount currencyCode } }
}"""

CHECKOUTS_QUERY = """query Checkouts($first: Int!, $lines: Int!, $query: String!, $after: String) {
  abandonedCheckouts(first: $first, after: $after, query: $query, sortKey: ID) {
    nodes {
      id abandonedCheckoutUrl createdAt updatedAt completedAt
      customer {
        id firstName lastName
        defaultEmailAddress { emailAddress marketingState }
        defaultPhoneNumber { phoneNumber }
      }
      totalPriceSet { shopMoney { amount currencyCode } }
      lineItems(first: $lines) { nodes { ...Line } pageInfo { hasNextPage endCursor } }
    }
    pageInfo { hasNextPage endCursor }
  }
}
""" + _LINE

LINES_QUERY = """query CheckoutLines($id: ID!, $first: Int!, $after: String) {
  node(id: $id) {
    ... on AbandonedCheckout {
      lineItems(first: $first, after: $after) { nodes { ...Line } pageInfo { hasNextPage endCursor } }
    }
  }
}
""" + _LINE

DOCUMENTS = (CHECKOUTS_QUERY, LINES_QUERY)

# Requested cost by Shopify's rules (scalars and enums 0, objects 1, a connection 2 plus
# `first` times its node's cost), from the selections above:
PAGE_COST = 3  # the abandonedCheckouts connection 2, its pageInfo 1
CHECKOUT_COST = 8  # customer 1, its email 1 and phone 1; totalPriceSet 1, shopMoney 1;
#                    the lineItems connection 2 and its pageInfo 1
LINE_COST = 4  # variant 1, product 1, originalUnitPriceSet 1, shopMoney 1
LINES_QUERY_COST = 4  # node 1, the lineItems connection 2, its pageInfo 1
MAX_COST = 1000  # the single-query maximum
MAX_FIRST = 250  # the largest page of any connection
CONNECTION_LIMIT = 25_000  # objects one connection can be paged through
INLINE_LINES = 5  # lines read with their checkout; a longer checkout's rest comes after


def checkouts_cost(first: int, lines: int) -> int:
    return PAGE_COST + first * (CHECKOUT_COST + LINE_COST * lines)


def lines_cost(first: int) -> int:
    return LINES_QUERY_COST + LINE_COST * first


CHECKOUTS_PAGE = min(MAX_FIRST, (MAX_COST - PAGE_COST) // (CHECKOUT_COST + LINE_COST * INLINE_LINES))
LINES_PAGE = min(MAX_FIRST, (MAX_COST - LINES_QUERY_COST) // LINE_COST)
REST_PAGE = 250

_ID = re.compile(r"(?:gid://shopify/AbandonedCheckout/)?([0-9]+)")


@dataclass
class Window:
    """Checkouts updated after `since` up to `until`, by id; those up to `after_id` are read."""

    since: datetime
    until: datetime
    after_id: int | None = None

    def query(self) -> str:
        terms = f"updated_at:>'{iso(self.since)}' AND updated_at:<='{iso(self.until)}'"
        return terms if self.after_id is None else f"{terms} AND id:>{self.after_id}"

    def resume(self) -> dict[str, Any]:
        return {"since": iso(self.since), "until": iso(self.until), "after_id": self.after_id}

    @classmethod
    def start(cls, since: datetime, now: datetime, resume: Any) -> Window:
        """The window a stopped read left in `resume`, else a new one up to `now`."""
        if isinstance(resume, dict):
            after = resume.get("after_id")
            try:
                return cls(timestamp(resume.get("since"), "since"),
                           timestamp(resume.get("until"), "until"),
                           after if isinstance(after, int) and not isinstance(after, bool) else None)
            except MalformedRecord:
                pass
        return cls(since.replace(microsecond=0), now.replace(microsecond=0))

    def result(self, batch: Batch, stopped: OutOfBudget | None) -> Read:
        if stopped is None:
            return Read(batch.carts, batch.malformed, self.until, self.until)
        return Read(batch.carts, batch.malformed, None, self.until, self.resume(), str(stopped))


def _checkout_number(record: Any) -> int | None:
    """The number of a checkout's id (`gid://shopify/AbandonedCheckout/123`, REST `123`)."""
    ident = record.get("id") if isinstance(record, dict) else None
    if isinstance(ident, int) and not isinstance(ident, bool):
        return ident
    match = _ID.fullmatch(ident) if isinstance(ident, str) else None
    return int(match.group(1)) if match else None


# --- GraphQL ---------------------------------------------------------------------


async def read_graphql(admin: Admin, since: datetime, resume: Any, now: datetime,
                       budget: Budget) -> Read:
    window = Window.start(since, now, resume)
    batch = Batch(normalise_graphql)
    try:
        while await _read_connection(admin, window, batch, budget):
            pass
    except OutOfBudget as stopped:
        return window.result(batch, stopped)
    return window.result(batch, None)


async def _read_connection(admin: Admin, window: Window, batch: Batch, budget: Budget) -> bool:
    """Page through one connection of the window; True when the window goes on in a new one."""
    query, after, seen, first = window.query(), None, 0, CHECKOUTS_PAGE
    while True:
        variables = {"first": first, "lines": INLINE_LINES, "query": query, "after": after}
        body = await admin.graphql(CHECKOUTS_QUERY, variables,
                                   checkouts_cost(first, INLINE_LINES), budget)
        connection = _data(body, "abandonedCheckouts", admin)
        if connection is None:
            first = _affordable_page(body["errors"], first, admin)
            continue
        nodes = connection.get("nodes")
        if not isinstance(nodes, list):
            raise IntegrationError("malformed response: abandonedCheckouts.nodes is not a list")
        for node in nodes:
            if await _complete(admin, node, budget):
                batch.add([node], "abandonedCheckouts.nodes")
            window.after_id = _checkout_number(node) or window.after_id
            budget.progressed = True
        seen += len(nodes)
        following = _next(connection.get("pageInfo"))
        if following is None:
            return False
        if seen + first > CONNECTION_LIMIT:
            return True
        after = following


def _data(body: dict[str, Any], name: str, admin: Admin) -> dict[str, Any] | None:
    """`data.{name}`; None when the query was refused (`errors` and no data). Errors that
    come with data are about fields the app may not read (protected customer data, which
    are then null): the data stands."""
    data = body.get("data")
    value = data.get(name) if isinstance(data, dict) else None
    if isinstance(value, dict):
        return value
    if body.get("errors") and not (isinstance(data, dict) and name in data):
        return None
    if body.get("errors"):
        raise IntegrationError(f"Shopify GraphQL error: {_message(body['errors'], admin)}")
    raise IntegrationError(f"malformed response: no data.{name}")


def _field(data: Any, name: str) -> dict[str, Any]:
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, dict):
        raise IntegrationError(f"malformed response: no data.{name}")
    return value


def _next(page: Any) -> str | None:
    """The end cursor of a `pageInfo` that has a next page, else None."""
    if not isinstance(page, dict) or not page.get("hasNextPage"):
        return None
    if not isinstance(page.get("endCursor"), str):
        raise IntegrationError("malformed response: hasNextPage without endCursor")
    return page["endCursor"]


async def _complete(admin: Admin, node: Any, budget: Budget) -> bool:
    """Add to a checkout the lines past its first INLINE_LINES (past MAX_LINES the
    normaliser refuses it: no more is read); False when the checkout went away meanwhile
    (it is not read half)."""
    lines = node.get("lineItems") if isinstance(node, dict) else None
    if not isinstance(lines, dict) or not isinstance(lines.get("nodes"), list):
        return True  # the normaliser counts it as malformed
    after = _next(lines.get("pageInfo"))
    gathered = list(lines["nodes"])
    while after is not None and len(gathered) <= MAX_LINES:
        variables = {"id": node.get("id"), "first": LINES_PAGE, "after": after}
        body = await admin.graphql(LINES_QUERY, variables, lines_cost(LINES_PAGE), budget)
        data = body.get("data")
        if isinstance(data, dict) and "node" in data and data["node"] is None:
            return False
        checkout = _data(body, "node", admin)
        if checkout is None:
            raise IntegrationError(f"Shopify GraphQL error: {_message(body['errors'], admin)}")
        page = _field(checkout, "lineItems")
        if not isinstance(page.get("nodes"), list):
            raise IntegrationError("malformed response: lineItems.nodes is not a list")
        gathered += page["nodes"]
        after = _next(page.get("pageInfo"))
    node["lineItems"] = {"nodes": gathered}
    return True


def _affordable_page(errors: Any, first: int, admin: Admin) -> int:
    """A smaller `first` when Shopify refused the query as too costly (its count of the
    cost differs from cartd's), else IntegrationError with Shopify's message."""
    refused = error_extensions(errors, "MAX_COST_EXCEEDED")
    if refused is None or first == 1:
        raise IntegrationError(f"Shopify GraphQL error: {_message(errors, admin)}")
    cost, limit = refused.get("cost"), refused.get("maxCost")
    if isinstance(cost, int) and isinstance(limit, int) and cost > limit > 0:
        return max(1, min(first - 1, first * limit // cost))
    return first // 2


def _message(errors: Any, admin: Admin) -> str:
    first = errors[0] if isinstance(errors, list) and errors else errors
    message = first.get("message") if isinstance(first, dict) else first
    return " ".join(scrub(str(message), admin.secrets()).split())[:200]


# --- REST (legacy) ------------------------------------------------------------------

_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?', re.IGNORECASE)


async def read_rest(admin: Admin, since: datetime, resume: Any, now: datetime,
                    budget: Budget) -> Read:
    """`checkouts.json` of the window, by id from `since_id`, following `Link: rel="next"`."""
    window = Window.start(since, now, resume)
    batch = Batch(normalise_rest)
    url = f"{admin.root}/checkouts.json"
    params: dict[str, str] | None = {
        "limit": str(REST_PAGE), "updated_at_min": iso(window.since),
        "updated_at_max": iso(window.until), "since_id": str(window.after_id or 0)}
    try:
        while True:
            reply = await admin.send("GET", url, budget, params=params)
            body = reply.body if isinstance(reply.body, dict) else {}
            checkouts = body.get("checkouts")
            batch.add(checkouts, "checkouts")
            numbers = [n for n in map(_checkout_number, checkouts) if n is not None]
            window.after_id = max(numbers, default=window.after_id)
            budget.progressed = True
            following = _next_link(reply.headers.get("Link"))
            if following is None:
                return window.result(batch, None)
            url, params = next_page(following, url), None  # it carries its own query
            pause = _bucket_wait(reply.headers.get("X-Shopify-Shop-Api-Call-Limit"))
            if pause:
                budget.check_wait(pause, f"pacing requests to {admin.host}")
                await asyncio.sleep(pause)
    except OutOfBudget as stopped:
        return window.result(batch, stopped)


def _next_link(header: str | None) -> str | None:
    """The `rel="next"` URL of a `Link` header, exactly as given."""
    if not header:
        return None
    for part in header.split(","):
        match = _NEXT_LINK.search(part)
        if match:
            return match.group(1).strip()
    return None


def _bucket_wait(header: str | None) -> float:
    """A second's pause when the leaky bucket (`32/40`, leaking 2/s) is nearly full."""
    used, _, size = (header or "").partition("/")
    if not (used.isdigit() and size.isdigit()):
        return 0.0
    return 1.0 if int(size) - int(used) < 2 else 0.0
