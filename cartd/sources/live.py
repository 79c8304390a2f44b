"""Live connectors: each platform's real API, paginated, through the shared HTTP client."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from cartd.config import Config
from cartd.sources import custom, shopify, woocommerce
from cartd.sources.http import (
    DEFAULT_RETRY_AFTER,
    MAX_PAGES,
    MAX_WAIT_SECONDS,
    Reply,
    check_url,
    request,
    retry_after,
)
from cartd.sources.model import Cart, Gathered, IntegrationError, iso

SHOPIFY_PAGE = 250
WOOCOMMERCE_PAGE = 100
# Statuses of placed WooCommerce orders, asked for on incremental polls to see recoveries.
WOOCOMMERCE_PLACED = ("processing", "completed")

SHOPIFY_QUERY = """\
query($first:Int!,$after:String,$q:String){abandonedCheckouts(first:$first,after:$after,query:$q){
 nodes{id name abandonedCheckoutUrl createdAt updatedAt completedAt
  customer{id email firstName lastName phone emailMarketingConsent{marketingState}}
  totalPriceSet{shopMoney{amount currencyCode}}
  lineItems(first:50){nodes{title variantTitle sku quantity variant{id} product{id}
    originalUnitPriceSet{shopMoney{amount currencyCode}}}}}
 pageInfo{hasNextPage endCursor}}}"""

_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?', re.IGNORECASE)
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$", re.IGNORECASE)


class _Batch(Gathered):
    """The pages' records normalised into carts (one per id); malformed ones are counted,
    not fatal."""

    __slots__ = ("normalise",)

    def __init__(self, normalise: Callable[[Any], Cart]) -> None:
        super().__init__()
        self.normalise = normalise

    def add(self, records: Any, what: str) -> None:
        if not isinstance(records, list):
            raise IntegrationError(f"malformed response: {what} is not a list")
        self.gather(records, self.normalise)


async def fetch_live(platform: str, settings: dict[str, Any], config: Config, since: datetime,
                     *, incremental: bool) -> tuple[list[Cart], Counter[str]]:
    """The carts of a live store updated after `since`, and its malformed records by reason.

    `incremental` polls (the store was read before) also ask for placed orders, so
    that carts delivered as abandoned are seen completing.
    """
    if platform == "shopify":
        api = _option(settings, "api", config.platforms.shopify.api)
        if api not in ("graphql", "rest"):
            raise IntegrationError("config.api must be graphql or rest")
        fetcher = _shopify_graphql if api == "graphql" else _shopify_rest
        batch = await fetcher(settings, config, since)
    elif platform == "woocommerce":
        batch = await _woocommerce(settings, config, since, incremental)
    else:
        batch = await _custom(settings)
    return batch.carts, batch.malformed


def _option(settings: dict[str, Any], key: str, default: str | None = None) -> str:
    value = settings.get(key, default)
    if value is None or value == "":
        raise IntegrationError(f"config.{key} is missing")
    if not isinstance(value, str):
        raise IntegrationError(f"config.{key} must be a string")
    return value


def _base(settings: dict[str, Any]) -> str:
    """`config.base_url` without its trailing slash, once it passed the URL rules."""
    return check_url(_option(settings, "base_url").rstrip("/"))


# --- Shopify ----------------------------------------------------------------


def _shopify_admin(settings: dict[str, Any], config: Config) -> tuple[str, dict[str, str], str]:
    """The Admin API root, the auth headers and the token."""
    token = _option(settings, "access_token")
    version = _option(settings, "api_version", config.platforms.shopify.api_version)
    if "base_url" in settings:
        base = _base(settings)
    else:
        domain = _option(settings, "shop_domain")
        if not _HOST.match(domain):
            raise IntegrationError("config.shop_domain must be a host name like acme.myshopify.com")
        base = f"https://{domain}"
    return f"{base}/admin/api/{version}", {"X-Shopify-Access-Token": token}, token


def _graphql_throttle(reply: Reply) -> float | None:
    """Seconds to wait when Shopify answered THROTTLED (HTTP 200 or 429), else None."""
    body = reply.body if isinstance(reply.body, dict) else {}
    if _error_extensions(body.get("errors"), "THROTTLED") is None:
        return retry_after(reply.headers) if reply.status == 429 else None
    if "Retry-After" in reply.headers:
        return retry_after(reply.headers)
    return _restore_wait(body) or DEFAULT_RETRY_AFTER


def _error_extensions(errors: Any, code: str) -> dict[str, Any] | None:
    """The `extensions` of the first GraphQL error with that `extensions.code`."""
    for error in errors if isinstance(errors, list) else []:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if isinstance(extensions, dict) and extensions.get("code") == code:
            return extensions
    return None


def _restore_wait(body: dict[str, Any]) -> float:
    """Seconds until the bucket holds the query's cost again, from `extensions.cost`."""
    extensions = body.get("extensions")
    cost = extensions.get("cost") if isinstance(extensions, dict) else None
    if not isinstance(cost, dict) or not isinstance(cost.get("throttleStatus"), dict):
        return 0.0
    status = cost["throttleStatus"]
    needed, available = cost.get("requestedQueryCost"), status.get("currentlyAvailable")
    rate = status.get("restoreRate")
    numbers = (needed, available, rate)
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        return 0.0
    return max(0.0, (needed - available) / rate) if rate > 0 else 0.0


async def _shopify_graphql(settings: dict[str, Any], config: Config, since: datetime) -> _Batch:
    root, headers, token = _shopify_admin(settings, config)
    batch = _Batch(shopify.normalise_graphql)
    after: str | None = None
    first = SHOPIFY_PAGE
    for _ in range(MAX_PAGES):
        variables = {"first": first, "after": after, "q": f"updated_at:>'{iso(since)}'"}
        reply = await request("POST", f"{root}/graphql.json", secrets=(token,), headers=headers,
                              json_body={"query": SHOPIFY_QUERY, "variables": variables},
                              throttle=_graphql_throttle)
        body = reply.body if isinstance(reply.body, dict) else {}
        if body.get("errors"):
            smaller = _affordable_page(body["errors"], first)
            if smaller is not None:
                first = smaller
                continue
            message = _graphql_message(body["errors"], token)
            raise IntegrationError(f"Shopify GraphQL error: {message}")
        data = body.get("data")
        connection = data.get("abandonedCheckouts") if isinstance(data, dict) else None
        if not isinstance(connection, dict):
            raise IntegrationError("malformed response: no data.abandonedCheckouts")
        batch.add(connection.get("nodes"), "abandonedCheckouts.nodes")
        page = connection.get("pageInfo")
        if not isinstance(page, dict) or not page.get("hasNextPage"):
            return batch
        if not isinstance(page.get("endCursor"), str):
            raise IntegrationError("malformed response: hasNextPage without endCursor")
        after = page["endCursor"]
        await asyncio.sleep(min(_restore_wait(body), MAX_WAIT_SECONDS))
    raise IntegrationError(f"more than {MAX_PAGES} pages of checkouts")


def _affordable_page(errors: Any, first: int) -> int | None:
    """A smaller `first` when Shopify refused the query as too costly, else None.

    Line items multiply a page's cost, so a page of 250 checkouts can exceed the
    single-query limit; the error states both the cost and the limit.
    """
    refused = _error_extensions(errors, "MAX_COST_EXCEEDED")
    if refused is None or first == 1:
        return None
    cost, limit = refused.get("cost"), refused.get("maxCost")
    if isinstance(cost, int) and isinstance(limit, int) and cost > limit > 0:
        return max(1, min(first - 1, first * limit // cost))
    return first // 2


def _graphql_message(errors: Any, token: str) -> str:
    first = errors[0] if isinstance(errors, list) and errors else errors
    message = first.get("message") if isinstance(first, dict) else first
    return " ".join(str(message).replace(token, "***").split())[:200]


async def _shopify_rest(settings: dict[str, Any], config: Config, since: datetime) -> _Batch:
    root, headers, token = _shopify_admin(settings, config)
    batch = _Batch(shopify.normalise_rest)
    url = f"{root}/checkouts.json"
    params: dict[str, str] | None = {"limit": str(SHOPIFY_PAGE), "updated_at_min": iso(since)}
    for _ in range(MAX_PAGES):
        reply = await request("GET", url, secrets=(token,), headers=headers, params=params)
        body = reply.body if isinstance(reply.body, dict) else {}
        batch.add(body.get("checkouts"), "checkouts")
        following = _next_link(reply.headers.get("Link"))
        if following is None:
            return batch
        url, params = following, None  # the next URL carries its own query
        await asyncio.sleep(_bucket_wait(reply.headers.get("X-Shopify-Shop-Api-Call-Limit")))
    raise IntegrationError(f"more than {MAX_PAGES} pages of checkouts")


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


# --- WooCommerce ------------------------------------------------------------


def _statuses(settings: dict[str, Any], config: Config, incremental: bool) -> str:
    configured = settings.get("statuses", config.platforms.woocommerce.statuses)
    if (not isinstance(configured, list | tuple) or not configured
            or not all(isinstance(s, str) and s for s in configured)):
        raise IntegrationError("config.statuses must be a non-empty list of order statuses")
    wanted = list(dict.fromkeys(configured))
    if incremental:
        wanted += [s for s in WOOCOMMERCE_PLACED if s not in wanted]
    return ",".join(wanted)


async def _woocommerce(settings: dict[str, Any], config: Config, since: datetime,
                       incremental: bool) -> _Batch:
    base = _base(settings)
    key, secret = _option(settings, "consumer_key"), _option(settings, "consumer_secret")
    # WooCommerce reads dates in the site's time zone unless told they are GMT.
    params = {"status": _statuses(settings, config, incremental),
              "per_page": str(WOOCOMMERCE_PAGE),
              "modified_after": iso(since).removesuffix("Z"), "dates_are_gmt": "true"}
    batch = _Batch(woocommerce.normalise)
    auth = {"Authorization": aiohttp.encode_basic_auth(key, secret)}
    for page in range(1, MAX_PAGES + 1):
        reply = await request("GET", f"{base}/wp-json/wc/v3/orders", secrets=(key, secret),
                              headers=auth, params=params | {"page": str(page)})
        batch.add(reply.body, "orders")
        pages = reply.headers.get("X-WP-TotalPages", "1").strip()
        if not pages.isdigit():
            raise IntegrationError("malformed response: X-WP-TotalPages is not a number")
        if page >= int(pages):
            return batch
    raise IntegrationError(f"more than {MAX_PAGES} pages of orders")


# --- custom -----------------------------------------------------------------


def _custom_headers(settings: dict[str, Any]) -> dict[str, str]:
    headers = settings.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise IntegrationError("config.headers must map header names to strings")
    return headers


async def _custom(settings: dict[str, Any]) -> _Batch:
    url = check_url(_option(settings, "url"))
    headers = _custom_headers(settings)
    secrets = _header_secrets(tuple(headers.values()))
    batch = _Batch(custom.normalise)
    seen = {url}
    for _ in range(MAX_PAGES):
        reply = await request("GET", url, secrets=secrets, headers=headers)
        body = reply.body if isinstance(reply.body, dict) else {}
        batch.add(body.get("carts"), "carts")
        following = body.get("next")
        if following is None:
            return batch
        if not isinstance(following, str) or following in seen or not urlsplit(following).hostname:
            raise IntegrationError("malformed response: next must be a new absolute URL or null")
        url = following
        seen.add(url)
    raise IntegrationError(f"more than {MAX_PAGES} pages of carts")


def _header_secrets(values: tuple[str, ...]) -> tuple[str, ...]:
    """Header values and their parts (`Bearer <token>`: the token too)."""
    return values + tuple(part for value in values for part in value.split() if len(part) >= 8)
